"""Video files: MediaPipe Pose (the optional extra `video`) finds the body in each frame; `eai.io.pose_landmarks`
turns its landmarks into a `Motion`.

Frames are read with OpenCV at the video's own frame rate. MediaPipe Pose (0.10.21, model_complexity 1: the
models inside its wheel, offline) follows one person. So that it follows the one we choose, every frame first goes
through MediaPipe's selfie segmentation (also in the wheel), which finds every person as a blob: with several
people in view, the largest and most central (blob area times closeness to the frame's centre) is chosen in the
first frame that has several, then followed as the blob nearest to where it was, and the others are greyed out
before pose estimation. The notes and a warning say so.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from eai.errors import EaiError, FormatError, warn
from eai.io.pose_landmarks import Landmarks, landmarks_to_motion
from eai.motion import Motion

EXTRA = ("reading video needs the optional extra 'video' (MediaPipe Pose and OpenCV): pip install 'eai[video]', "
         "or make video")
MODEL_COMPLEXITY = 1  # the only MediaPipe 0.10.21 pose model inside its wheel (0 and 2 download at run time)
MIN_PERSON_AREA = 0.01  # a segmented blob over this share of the frame is a person,
PART_OF_LARGEST = 0.2  # and over this share of the largest blob's area


class _People:
    """Every person in a frame (selfie segmentation blobs) and the one followed; the others greyed out."""

    def __init__(self, cv2, segmentation):
        self.cv2, self.seg = cv2, segmentation
        self.target: np.ndarray | None = None
        self.most, self.frames_several, self.choice = 1, 0, ""

    def isolate(self, rgb: np.ndarray) -> np.ndarray:
        mask = self.seg.process(rgb).segmentation_mask > 0.5
        n, lab, st, cen = self.cv2.connectedComponentsWithStats(mask.astype(np.uint8))
        floor = max(MIN_PERSON_AREA * mask.size, PART_OF_LARGEST * st[1:, 4].max(initial=0))
        big = [i for i in range(1, n) if st[i, 4] >= floor]  # a limb cut off from its body is a small blob
        if not big:
            return rgb
        self.most = max(self.most, len(big))
        h, w = mask.shape
        centre, diag = np.array([w / 2, h / 2]), np.hypot(w, h)
        off = {i: float(np.linalg.norm(cen[i] - centre)) / diag for i in big}
        if self.target is not None:
            keep = min(big, key=lambda i: np.linalg.norm(cen[i] - self.target))
        else:
            keep = max(big, key=lambda i: st[i, 4] * (1 - off[i]))
        if len(big) > 1 and not self.choice:
            largest, central = max(big, key=lambda i: st[i, 4]), min(big, key=off.get)
            which = ("largest and most central" if keep == largest == central else "largest" if keep == largest
                     else "most central" if keep == central else "one followed so far")
            self.choice = f"the {which} ({100 * st[keep, 4] / mask.size:.0f} % of the frame, centre at " \
                          f"{100 * cen[keep][0] / w:.0f} % across)"
        self.target = cen[keep]
        if len(big) < 2:
            return rgb
        self.frames_several += 1
        out = rgb.copy()
        out[np.isin(lab, [i for i in big if i != keep])] = 128
        return out

    def note(self, n_frames: int) -> str | None:
        if self.most < 2:
            return None
        return (f"several people in view (up to {self.most} in a frame, {self.frames_several} of {n_frames} "
                f"frames): followed {self.choice}, chosen in the first frame with several and tracked; the others "
                "were greyed out before pose estimation (crop the video to choose another)")


def _backend():
    """(cv2, mediapipe's pose solution), or EaiError naming the extra when it is not installed."""
    try:
        import cv2
        from mediapipe.python.solutions import pose, selfie_segmentation
    except ImportError:
        raise EaiError(EXTRA) from None
    return cv2, pose, selfie_segmentation


def extract_landmarks(path: str | Path, progress: bool | None = None) -> Landmarks:
    """Run MediaPipe Pose over every frame of a video: its landmarks, fps and frame size, and in the notes the
    frames per second pose extraction ran at. progress: a bar over frames (None: when stderr is a terminal)."""
    from tqdm import tqdm

    path = str(path)
    if not Path(path).is_file():
        raise FormatError("no such file", path)
    cv2, mp_pose, mp_seg = _backend()
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
            mp_seg.SelfieSegmentation(model_selection=0) as seg, tqdm(total=total, unit="frame", desc="pose", disable=(None if progress is None else not progress),
                 leave=False) as bar:
        people = _People(cv2, seg)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            r = pose.process(people.isolate(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
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
                    f"({n / max(seconds, 1e-9):.1f} frames/s)")
    several = people.note(n)
    if several:
        lm.notes.append(several)
        warn(several, path)
    lm.extraction_fps = n / max(seconds, 1e-9)
    return lm


def read_video(path: str | Path, progress: bool | None = None) -> Motion:
    """A video of one person as a mediapipe33 `Motion`: (T, 33, 3) metres, y up, at the video's fps, the root's
    travel restored (eai.io.pose_landmarks). meta['pose_fps']: frames per second of pose extraction."""
    lm = extract_landmarks(path, progress)
    m = landmarks_to_motion(lm)
    m.meta["pose_fps"] = round(lm.extraction_fps, 2)
    return m
