"""MediaPipe Pose landmarks to a `Motion`: the video path's geometry, apart from running the model (`eai.io.video`).

MediaPipe gives, per frame, 33 *world* landmarks in metres (origin at the hip midpoint, re-centred every frame;
x to image right, y down, z away from the camera) with a visibility score, and the same 33 in the image. So the
world landmarks hold the posture but not the body's travel; this module puts the travel back:

- **Scale**: metres per pixel at the body, per frame, = the summed length of the trunk (shoulder midpoint to
  hip midpoint), thighs and shins in the world landmarks, projected on the image plane (x, y), over their
  summed length in the image. The body's size in metres is MediaPipe's own estimate (its world landmarks are
  metric for an adult body); nothing else is assumed about the person. Smoothed over SCALE_SMOOTH_S.
- **Root travel**: the image hip midpoint times that scale gives the travel across the image (x) and up and down
  (y); depth (z) comes from the scale's change, assuming a pinhole camera of FIELD_OF_VIEW_DEG horizontal field
  of view (a phone or webcam): depth = focal length in pixels x metres per pixel. The camera is assumed still
  and level (a tilted camera reads as a leaning body).
- **Untracked samples**: a joint under VISIBILITY_MIN, or every joint of a frame without a person, is missing
  data, repaired as every reader's (`eai.io.gaps`: gaps inside up to 1 s filled by linear interpolation,
  untracked frames at the ends dropped, a joint seen in under half the frames removed).
- **Jitter**: a Savitzky-Golay filter (polynomial order SMOOTH_ORDER over SMOOTH_S seconds, the odd number of
  frames nearest, at least 5) on every coordinate: it keeps a movement's peaks and timing (no lag, unlike a
  causal One-Euro filter, which only a live stream needs) and removes frame-to-frame tremor.
- Axes: turned to y up (a half turn about x: y down, z away becomes y up, z towards the camera; no mirroring).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import savgol_filter

from eai.errors import FormatError
from eai.io.gaps import repair_untracked
from eai.motion import Motion

VISIBILITY_MIN = 0.5  # MediaPipe's visibility below this: the joint is missing data
FIELD_OF_VIEW_DEG = 60.0  # horizontal field of view assumed for depth from scale
SMOOTH_S, SMOOTH_ORDER = 0.25, 2  # Savitzky-Golay window (seconds) and polynomial order for the joints
SCALE_SMOOTH_S = 1.0  # window over which metres per pixel is smoothed (its frame-to-frame noise is depth noise)
LAYOUT = "mediapipe33"
# segments whose world length over image length gives metres per pixel: trunk, thighs, shins (MediaPipe indices)
_HIPS, _SHOULDERS = (23, 24), (11, 12)
_LIMBS = ((23, 25), (25, 27), (24, 26), (26, 28))
_Y_UP = np.diag([1.0, -1.0, -1.0])  # MediaPipe (x right, y down, z away) -> y up, z towards the camera


@dataclass
class Landmarks:
    """What MediaPipe Pose gave for a video, frame by frame (T frames, 33 landmarks in MediaPipe's order).

    world: (T, 33, 3) metres, origin at the hip midpoint, x right, y down, z away; NaN where no person was found.
    image: (T, 33, 2) pixels, x right, y down; NaN where no person was found.
    visibility: (T, 33) in [0, 1]; 0 where no person was found. size: (width, height) of the frames in pixels.
    """

    world: np.ndarray
    image: np.ndarray
    visibility: np.ndarray
    fps: float
    size: tuple[int, int]
    source: str = ""
    notes: list[str] = field(default_factory=list)
    extraction_fps: float = 0.0  # frames per second MediaPipe ran at

    @property
    def found(self) -> np.ndarray:
        """(T,) frames where a person was found."""
        return np.isfinite(self.world).all(axis=(1, 2))


def _smooth(x: np.ndarray, fps: float, seconds: float, order: int) -> np.ndarray:
    """Savitzky-Golay along time (axis 0) over the odd number of frames nearest `seconds` (at least 5)."""
    w = max(int(round(seconds * fps)) // 2 * 2 + 1, 5)
    if x.shape[0] < w:
        return x
    return savgol_filter(x, w, order, axis=0)


def _fill(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """A (T,) series with its not-ok samples interpolated linearly in time (held at the ends)."""
    t = np.arange(len(v))
    return np.interp(t, t[ok], v[ok]) if ok.any() else v


def metres_per_pixel(lm: Landmarks) -> np.ndarray:
    """(T,) metres per pixel at the body: trunk, thighs and shins (those whose ends are seen), world length on
    the image plane over image length; frames without a person interpolated; smoothed over SCALE_SMOOTH_S."""
    def segs(p: np.ndarray) -> list[np.ndarray]:
        mid = lambda ij: p[:, list(ij)].mean(axis=1)  # noqa: E731
        return [mid(_SHOULDERS) - mid(_HIPS)] + [p[:, b] - p[:, a] for a, b in _LIMBS]

    seen = lm.visibility >= VISIBILITY_MIN  # a barely seen joint is placed badly: its segments are left out
    used = [seen[:, list(_SHOULDERS + _HIPS)].all(axis=1)] + [seen[:, a] & seen[:, b] for a, b in _LIMBS]
    world = sum(np.where(u, np.linalg.norm(s[:, :2], axis=-1), 0) for u, s in zip(used, segs(lm.world)))
    image = sum(np.where(u, np.linalg.norm(s, axis=-1), 0) for u, s in zip(used, segs(lm.image)))
    ok = lm.found & (image > 1.0)
    s = np.where(ok, world / np.where(ok, image, 1.0), np.nan)
    return _smooth(_fill(s, ok), lm.fps, SCALE_SMOOTH_S, 1)


def focal_pixels(width: int) -> float:
    """Focal length in pixels of a pinhole camera `width` pixels wide with FIELD_OF_VIEW_DEG horizontally."""
    return (width / 2) / np.tan(np.radians(FIELD_OF_VIEW_DEG) / 2)


def root_track(lm: Landmarks) -> np.ndarray:
    """(T, 3) the hip midpoint in camera space, metres, MediaPipe's axes (x right, y down, z away): the image
    hip midpoint back-projected at the depth its scale gives (frames without a person interpolated)."""
    s = metres_per_pixel(lm)
    hip = lm.image[:, list(_HIPS)].mean(axis=1)  # (T, 2) pixels
    ok = lm.found
    hip = np.stack([_fill(hip[:, a], ok) for a in range(2)], axis=1)
    w, h = lm.size
    centre = np.array([w / 2, h / 2])
    return np.column_stack([(hip - centre) * s[:, None], focal_pixels(w) * s])


def landmarks_to_motion(lm: Landmarks) -> Motion:
    """The 33 landmarks as a mediapipe33 `Motion` (y up, metres) with the root's travel restored, untracked
    samples repaired and jitter smoothed (see the module). FormatError when no frame has a person."""
    from eai.skeleton.registry import registry

    if not lm.found.any():
        raise FormatError("no person found in any frame of the video (MediaPipe Pose saw no body); eai needs one "
                          "person, whole body in view", lm.source)
    layout = registry().get(LAYOUT)
    pos = lm.world + root_track(lm)[:, None]
    missing = ~lm.found[:, None] | (lm.visibility < VISIBILITY_MIN)
    pos = np.where(missing[..., None], 0.0, pos)
    meta = {"format": "video", "layout": LAYOUT, "up": "-y", "units": "metres (MediaPipe world landmarks)",
            "image_size": list(lm.size)}
    m = Motion(pos.astype(np.float32), list(layout.joints), list(layout.parents), lm.fps, LAYOUT, source=lm.source,
               meta=meta)
    for n in lm.notes:
        m.note(n)
    m = repair_untracked(m, missing)
    m.positions = (_smooth(m.positions.astype(np.float64), m.fps, SMOOTH_S, SMOOTH_ORDER) @ _Y_UP.T).astype(np.float32)
    m.note(f"root travel from the image hip track: metres per pixel from MediaPipe's trunk and leg lengths, depth "
           f"from its change with a {FIELD_OF_VIEW_DEG:g} degree field of view; camera assumed still and level")
    m.note(f"joints under visibility {VISIBILITY_MIN:g} are missing data; Savitzky-Golay smoothing over "
           f"{SMOOTH_S:g} s (order {SMOOTH_ORDER}); turned from MediaPipe's y down to y up")
    return m
