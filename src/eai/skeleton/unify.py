"""The unified skeleton: canonical joints with a presence mask, root-centred, facing +z, height-scaled, resampled."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eai.motion import Motion
from eai.skeleton.registry import Layout, registry

UP = np.array([0.0, 1.0, 0.0])


@dataclass
class UnifiedMotion:
    """A motion on the canonical skeleton.

    positions: (T, K, 3) float32 in body heights, origin at the first frame's pelvis (on the ground plane
    for x/z, the pelvis height kept), body facing +z at the first frame. Absent joints sit on their nearest
    present ancestor and are False in `mask` (K,). height: metres per unit. source_fps: the file's own
    frame rate, before resampling to `fps`.
    """

    positions: np.ndarray
    mask: np.ndarray
    fps: float
    height: float
    layout: str
    source: str = ""
    label: str | None = None
    group: str = ""
    source_fps: float = 0.0

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    def metres(self) -> np.ndarray:
        """(T, K, 3) positions in metres (same orientation and origin)."""
        return self.positions * self.height


def to_canonical(motion: Motion, layout: Layout | None = None) -> tuple[np.ndarray, np.ndarray, Layout]:
    """Map a motion's joints onto the canonical skeleton: (T, K, 3) metres, presence mask (K,), layout."""
    reg = registry()
    if layout is None and motion.layout in reg.layouts:  # the reader knows it (a Kinect file with some joints)
        layout = reg.layouts[motion.layout]
    if layout is None:
        layout, index = reg.detect(motion.joints, motion.source or None)
    else:
        lk = {k: i for i, k in enumerate(motion.joints)}
        index = [lk.get(n, -1) for n in layout.joints]
    can = reg.canonical
    T = motion.n_frames
    out = np.zeros((T, can.n, 3), np.float32)
    mask = np.zeros(can.n, bool)
    for j, c in enumerate(layout.canonical):
        if c and index[j] >= 0:
            k = can.index(c)
            out[:, k] = motion.positions[:, index[j]]
            mask[k] = True
    for c, parts in layout.derived.items():
        k = can.index(c)
        src = [index[layout.joints.index(p)] for p in parts]
        if not mask[k] and all(i >= 0 for i in src):
            out[:, k] = motion.positions[:, src].mean(axis=1)
            mask[k] = True
    _fill_absent(out, mask, can.parents)
    return out, mask, layout


def _fill_absent(x: np.ndarray, mask: np.ndarray, parents: tuple[int, ...]) -> None:
    """Put absent joints on their nearest present ancestor (or the mean of present joints) in place."""
    present = np.flatnonzero(mask)
    if present.size == 0:
        return
    for k in range(len(parents)):  # canonical order is topological: parents come first
        if mask[k]:
            continue
        p = parents[k]
        x[:, k] = x[:, p] if p >= 0 else x[:, present].mean(axis=1)


def across_body(x: np.ndarray, mask: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The body's left-minus-right vector, horizontal: the sum of (left - right) over the hips and the shoulders
    present, with y set to 0. x (..., K, 3), mask (K,) or (..., K) -> (..., 3), summed in `dtype`.
    The forward direction is this vector crossed with up: (-a_z, 0, a_x). The one facing rule of eai: unify,
    the encoder's windows and the descriptors all use it."""
    can = registry().canonical
    mask = np.asarray(mask, bool)
    across = np.zeros(x.shape[:-2] + (3,), dtype)
    for side in ("hip", "shoulder"):
        li, ri = can.index("l_" + side), can.index("r_" + side)
        ok = mask[..., li] & mask[..., ri]
        across += np.where(np.asarray(ok)[..., None], x[..., li, :] - x[..., ri, :], 0)
    across[..., 1] = 0.0
    return across


def facing_angle(x: np.ndarray, mask: np.ndarray) -> float | None:
    """Yaw (radians) of the body's forward direction in one frame (K, 3), or None if it cannot be told
    (`across_body` is zero: no hips or shoulders)."""
    across = across_body(x, mask)
    if np.linalg.norm(across) < 1e-6:
        return None
    fwd = np.cross(across, UP)
    return float(np.arctan2(fwd[0], fwd[2]))


def rotate_y(x: np.ndarray, angle: float | np.ndarray) -> np.ndarray:
    """Rotate points (..., 3) about the vertical axis by `angle` radians (scalar, or one per leading item)."""
    c, s = np.cos(angle), np.sin(angle)
    if np.ndim(angle):
        shape = (-1,) + (1,) * (x.ndim - 2)
        c, s = np.reshape(c, shape), np.reshape(s, shape)
    out = x.copy()
    out[..., 0] = c * x[..., 0] + s * x[..., 2]
    out[..., 2] = -s * x[..., 0] + c * x[..., 2]
    return out


def body_height(x: np.ndarray, mask: np.ndarray) -> float | None:
    """Metres from ankle to head along the skeleton (median bone lengths, both legs averaged), or None."""
    can = registry().canonical
    trunk = ["pelvis", "spine", "chest", "neck", "head"]

    def chain(names: list[str]) -> float | None:
        pts = [can.index(n) for n in names if mask[can.index(n)]]
        if len(pts) < 2 or pts[0] != can.index(names[0]) or pts[-1] != can.index(names[-1]):
            return None
        seg = np.linalg.norm(np.diff(x[:, pts], axis=1), axis=-1)  # (T, n-1)
        return float(np.median(seg, axis=0).sum())

    legs = [v for v in (chain([f"{s}_ankle", f"{s}_knee", f"{s}_hip", "pelvis"]) for s in "lr") if v]
    up = chain(trunk)
    if not legs or up is None:
        return None
    return float(np.mean(legs) + up)


def resample(x: np.ndarray, fps_in: float, fps_out: float) -> np.ndarray:
    """Linear resampling of (T, ...) frames from fps_in to fps_out."""
    if abs(fps_in - fps_out) < 1e-3 * fps_out:
        return x
    T = x.shape[0]
    n = int(np.floor((T - 1) * fps_out / fps_in + 1e-6)) + 1  # never past the last real frame
    t = np.arange(n) * (fps_in / fps_out)
    i0 = np.clip(np.floor(t).astype(int), 0, T - 1)
    i1 = np.minimum(i0 + 1, T - 1)
    w = (t - i0).reshape((-1,) + (1,) * (x.ndim - 1))
    return ((1 - w) * x[i0] + w * x[i1]).astype(x.dtype)


def _first_pose(x: np.ndarray, mask: np.ndarray) -> int:
    """Index of the first frame whose present joints are not all at one point: an all-zero frame is a
    recorder's 'no body seen', never a pose to centre or face the clip on."""
    if not mask.any():
        return 0
    spread = np.ptp(x[:, mask], axis=1).max(axis=-1)  # (T,)
    found = np.flatnonzero(spread > 0)
    return int(found[0]) if found.size else 0


def unify(motion: Motion, fps: float = 30.0, layout: Layout | None = None) -> UnifiedMotion:
    """Canonical joints + mask, root-centred, facing +z at the first frame, scaled by body height, at `fps`."""
    x, mask, layout = to_canonical(motion, layout)
    x = resample(x, motion.fps, fps)
    pelvis = registry().canonical.index("pelvis")
    ref = _first_pose(x, mask)
    origin = x[ref, pelvis].copy()
    origin[1] = 0.0  # keep heights above the floor: bounce and crouch stay visible
    x = x - origin
    yaw = facing_angle(x[ref], mask)
    if yaw is not None:
        x = rotate_y(x, -yaw)
    height = body_height(x, mask) or 1.0
    return UnifiedMotion((x / height).astype(np.float32), mask, fps, height, layout.name,
                         motion.source, motion.label, source_fps=float(motion.fps))


def mirror(x: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Left/right swap of canonical joints (..., K, 3) and the x axis; the mask swaps too."""
    idx = registry().canonical.mirror_index
    out = x[..., idx, :].copy()
    out[..., 0] *= -1
    return out, None if mask is None else mask[..., idx]
