"""Speed and memory of the video path on this machine's cores: a video through MediaPipe Pose to a skeleton.

Reports frames per second of pose extraction (MediaPipe Pose, model_complexity 1) and of the whole `read_video`
(extraction, root restoration, gap repair, smoothing), the median of repeated runs, beside the reference measured
in the same run: decoding the same frames with OpenCV alone; and the process's peak resident memory. Needs the
extra 'video' (make video). Usage:
    python bench/bench_video.py [--video ../shared/data/video/pose_segmentation.mp4] [--repeats 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics

from timing import times  # bench/timing.py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", default="../shared/data/video/pose_segmentation.mp4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()

    import cv2

    from eai.io.pose_landmarks import landmarks_to_motion
    from eai.io.video import extract_landmarks

    def decode() -> int:
        cap, n = cv2.VideoCapture(args.video), 0
        while cap.read()[0]:
            n += 1
        cap.release()
        return n

    frames = decode()
    got = {}

    def whole() -> None:
        lm = extract_landmarks(args.video, progress=False)
        got["pose_fps"] = got.get("pose_fps", []) + [lm.extraction_fps]
        landmarks_to_motion(lm)

    t_decode = statistics.median(times(decode, args.repeats, warmup=1))
    t_whole = statistics.median(times(whole, args.repeats, warmup=1))
    out = {
        "video": os.path.basename(args.video), "frames": frames, "cores": os.cpu_count(), "repeats": args.repeats,
        "pose_extraction_fps_median": round(statistics.median(got["pose_fps"][1:]), 1),
        "read_video_fps_median": round(frames / t_whole, 1),
        "read_video_s_median": round(t_whole, 3),
        "reference_decode_only_fps_median": round(frames / t_decode, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
