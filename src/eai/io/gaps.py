"""Untracked samples: frames or joints a recorder wrote as exactly (0, 0, 0), or flagged as not tracked.

`missing` is (T, J) bool over positions (T, J, 3). A zero is missing data, never a position: frames with no
tracked joint at the start or end are dropped, shorter gaps inside are filled by linear interpolation in
time, a joint tracked in fewer than half the frames is removed (absent, so masked downstream, never
invented), and each repair is counted in the motion's meta and notes.
"""
from __future__ import annotations

import numpy as np

from eai.errors import FormatError, warn
from eai.motion import Motion

MAX_GAP_S = 1.0  # longest run of untracked frames filled by interpolation
MIN_TRACKED = 0.5  # share of frames a joint must be tracked in to be kept


def zero_samples(positions: np.ndarray, per_joint: bool) -> np.ndarray:
    """(T, J) True where a joint is exactly at (0, 0, 0); with per_joint False only whole zero frames count
    (a joint may truly sit at the origin when the origin is on the body, as in BVH or NPZ)."""
    z = np.all(positions == 0, axis=-1)
    return z if per_joint else z & z.all(axis=1, keepdims=True)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D bool array."""
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _interpolate(pos: np.ndarray, missing: np.ndarray) -> None:
    """Fill each joint's missing frames in place, linearly between its tracked frames (held at the ends)."""
    t = np.arange(pos.shape[0])
    for j in np.flatnonzero(missing.any(axis=0)):
        ok = ~missing[:, j]
        for a in range(3):
            pos[~ok, j, a] = np.interp(t[~ok], t[ok], pos[ok, j, a])


def repair_untracked(m: Motion, missing: np.ndarray) -> Motion:
    """The motion with its untracked samples repaired as the module says; notes say what was done."""
    if not missing.any():
        return m
    T = m.n_frames
    seen = ~missing.all(axis=1)
    if not seen.any():
        raise FormatError("no frame has a tracked joint (every value is zero or flagged not tracked)", m.source)
    first, last = int(np.argmax(seen)), int(T - 1 - np.argmax(seen[::-1]))
    pos = m.positions[first:last + 1].astype(np.float64)
    missing = missing[first:last + 1]
    empty = missing.all(axis=1)
    longest = max((b - a for a, b in _runs(empty)), default=0)
    if longest > MAX_GAP_S * m.fps:
        a, b = max(_runs(empty), key=lambda r: r[1] - r[0])
        raise FormatError(f"no body tracked in frames {first + a}-{first + b - 1} ({longest / m.fps:.1f} s, "
                          f"over the {MAX_GAP_S:g} s eai fills); cut the clip there", m.source)
    keep = (~missing).mean(axis=0) >= MIN_TRACKED
    if not keep.any():
        raise FormatError("no joint is tracked in half the frames or more", m.source)
    partial = missing & ~empty[:, None]
    _interpolate(pos, missing & keep)
    dropped = T - (last - first + 1)
    filled = int(empty.sum())
    samples = int(partial[:, keep].sum())
    removed = [n for n, k in zip(m.joints, keep) if not k]
    m.meta.update(filled_frames=filled, dropped_frames=dropped, filled_samples=samples, removed_joints=removed)
    out = drop_joints(Motion(pos, m.joints, m.parents, m.fps, m.layout, m.label, m.source, m.meta), keep)
    said = []
    if dropped:
        said.append(f"dropped {dropped} untracked frame(s) at the start or end")
    if filled:
        said.append(f"filled {filled} untracked frame(s) by interpolation")
    if samples:
        said.append(f"filled {samples} untracked joint sample(s) by interpolation")
    if removed:
        said.append(f"removed joint(s) tracked in under half the frames: {', '.join(removed)}")
    for s in said:
        out.note(s)
    if filled or removed:
        warn("; ".join(said), m.source)
    return out


def drop_joints(m: Motion, keep: np.ndarray) -> Motion:
    """The motion without the joints where `keep` (J,) is False; their children hang on their parents."""
    if keep.all():
        return m
    new = np.cumsum(keep) - 1
    parents = []
    for j in np.flatnonzero(keep):
        p = m.parents[j]
        while p >= 0 and not keep[p]:
            p = m.parents[p]
        parents.append(int(new[p]) if p >= 0 else -1)
    return Motion(m.positions[:, keep], [n for n, k in zip(m.joints, keep) if k], parents, m.fps, m.layout,
                  m.label, m.source, m.meta)
