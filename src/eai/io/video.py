"""Video files: MediaPipe Pose (the optional extra `video`) finds the body in each frame; `eai.io.pose_landmarks`
turns its landmarks into a `Motion`.

Frames are read with OpenCV at the video's own frame rate. MediaPipe Pose (0.10.21, model_complexity 1: the
models inside its wheel, offline) follows one person: the one its detector is surest of in the first frame
where it finds a body, then tracked from frame to frame (found again when lost). A video of several people gives
the person it followed, and the notes say so; crop the video to the person you mean.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from eai.errors import EaiError, FormatError
from eai.io.pose_landmarks import Landmarks, landmarks_to_motion
from eai.motion import Motion

EXTRA = ("reading video needs the optional extra 'video' (MediaPipe Pose and OpenCV): pip install 'eai[video]', "
         "or make video")
MODEL_COMPLEXITY = 1  # the only MediaPipe 0.10.21 pose model inside its wheel (0 and 2 download at run time)


def _backend():
    """(cv2, mediapipe's pose solution), or EaiError naming the extra when it is not installed."""
    try:
        import cv2
        from mediapipe.python.solutions import pose
    except ImportError:
        raise EaiError(EXTRA) from None
    return cv2, pose


def extract_landmarks(path: str | Path, progress: bool | None = None) -> Landmarks:
    """Run MediaPipe Pose over every frame of a video: its landmarks, fps and frame size, and in the notes the
    frames per second pose extraction ran at. progress: a bar over frames (None: when stderr is a terminal)."""
    from tqdm import tqdm

    path = str(path)
    if not Path(path).is_file():
        raise FormatError("no such file", path)
    cv2, mp_pose = _backend()
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise FormatError("OpenCV cannot open this video (an unsupported or damaged file?)", path)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
    if not (np.isfinite(fps) and fps > 0):
        raise FormatError("the video states no frame rate", path)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    world, image, vis = [], [], []
    nan = np.full((33, 3), np.nan)
    start = time.perf_counter()
    with mp_pose.Pose(static_image_mode=False, model_complexity=MODEL_COMPLEXITY, smooth_landmarks=True) as pose, \
            tqdm(total=total, unit="frame", desc="pose", disable=(None if progress is None else not progress),
                 leave=False) as bar:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            r = pose.process(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if r.pose_world_landmarks is None or r.pose_landmarks is None:
                world.append(nan)
                image.append(nan[:, :2])
                vis.append(np.zeros(33))
            else:
                world.append([(p.x, p.y, p.z) for p in r.pose_world_landmarks.landmark])
                image.append([(p.x * w, p.y * h) for p in r.pose_landmarks.landmark])
                vis.append([p.visibility for p in r.pose_world_landmarks.landmark])
            bar.update()
    cap.release()
    seconds = time.perf_counter() - start
    if not world:
        raise FormatError("the video has no frame OpenCV can read", path)
    n = len(world)
    lm = Landmarks(np.asarray(world, float), np.asarray(image, float), np.asarray(vis, float), fps, (w, h), path)
    lm.notes.append(f"pose extraction: MediaPipe Pose {MODEL_COMPLEXITY}, {n} frames in {seconds:.1f} s "
                    f"({n / max(seconds, 1e-9):.1f} frames/s); the person followed is the one MediaPipe detected "
                    "first and tracked (one person per video)")
    lm.extraction_fps = n / max(seconds, 1e-9)
    return lm


def read_video(path: str | Path, progress: bool | None = None) -> Motion:
    """A video of one person as a mediapipe33 `Motion`: (T, 33, 3) metres, y up, at the video's fps, the root's
    travel restored (eai.io.pose_landmarks). meta['pose_fps']: frames per second of pose extraction."""
    lm = extract_landmarks(path, progress)
    m = landmarks_to_motion(lm)
    m.meta["pose_fps"] = round(lm.extraction_fps, 2)
    return m
