"""Forward kinematics for BVH hierarchies, vectorised over frames and over the joints of one tree depth."""
from __future__ import annotations

import numpy as np

from eai.io.hierarchy import CHANNEL_NAMES, Hierarchy


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions stored component-first, (4, ...) as w, x, y, z."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw])


def _qmul_axis(q: np.ndarray, axis: int, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """q * (cos + sin * e_axis): a product with a rotation about one coordinate axis, without the zeros."""
    out = q * cos
    i = axis + 1
    j, k = 1 + (axis + 1) % 3, 1 + (axis + 2) % 3  # e_i e_j = e_k cyclically
    out[0] -= q[i] * sin
    out[i] += q[0] * sin
    out[j] += q[k] * sin
    out[k] -= q[j] * sin
    return out


def _qrotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (3, ...) by unit quaternions q (4, ...)."""
    w, u = q[0], q[1:]
    c = _cross(u, v)
    return v + 2.0 * (w * c + _cross(u, c))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross product of component-first vectors (3, ...)."""
    return np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def forward_kinematics(h: Hierarchy, frames: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """World joint positions (T, J, 3) in file units from channel values (T, C) in degrees.

    Rotation channels compose in their listed order (R = R1 R2 R3), and the local transform of a joint is
    translation (OFFSET, with position channels replacing components) then rotation. Rotations are unit
    quaternions stored component-first, so every step is a handful of whole-array operations, batched over
    frames and over the joints of one tree depth. `offsets` (T, J, 3), if given, replaces h.offsets per frame
    (several clips of one skeleton structure in one pass).
    """
    T, J = frames.shape[0], len(h.names)
    local_t = np.empty((3, T, J))
    local_t[:] = h.offsets.T[:, None, :] if offsets is None else offsets.transpose(2, 0, 1)
    local_q = np.zeros((4, T, J), np.float32)
    local_q[0] = 1.0
    groups: dict[str, tuple[list[int], list[list[int]]]] = {}
    moved: list[tuple[int, int, int]] = []  # (axis, joint, column) of each position channel
    col = 0
    for j, chans in enumerate(h.channels):
        axes, cols = "", []
        for ch in chans:
            axis, kind = CHANNEL_NAMES[ch]
            if kind == "position":
                moved.append(("XYZ".index(axis), j, col))
            else:
                axes += axis
                cols.append(col)
            col += 1
        if axes:
            joints, col_lists = groups.setdefault(axes, ([], []))
            joints.append(j)
            col_lists.append(cols)
    if moved:
        ax, jj, cc = np.asarray(moved).T
        local_t[ax, :, jj] = frames[:, cc].T
    for axes, (joints, col_lists) in groups.items():  # joints sharing one channel order, together
        half = np.radians(frames[:, np.asarray(col_lists)].astype(np.float32)) * np.float32(0.5)  # (T, G, k)
        cos, sin = np.cos(half), np.sin(half)
        q = np.zeros((4,) + half.shape[:2], np.float32)
        q[0] = cos[..., 0]
        q[1 + "XYZ".index(axes[0])] = sin[..., 0]
        for k in range(1, len(axes)):
            q = _qmul_axis(q, "XYZ".index(axes[k]), cos[..., k], sin[..., k])
        local_q[:, :, joints] = q
    parents = np.asarray(h.parents)
    depth = np.zeros(J, int)
    for j, p in enumerate(h.parents):
        depth[j] = 0 if p < 0 else depth[p] + 1
    pos = np.empty((3, T, J))
    rot = np.empty((4, T, J), np.float32)
    for d in range(depth.max() + 1):
        idx = np.flatnonzero(depth == d)
        if d == 0:
            pos[:, :, idx], rot[:, :, idx] = local_t[:, :, idx], local_q[:, :, idx]
            continue
        par = parents[idx]
        qp = rot[:, :, par]
        pos[:, :, idx] = pos[:, :, par] + _qrotate(qp, local_t[:, :, idx])
        rot[:, :, idx] = _qmul(qp, local_q[:, :, idx])
    return pos.transpose(1, 2, 0)
