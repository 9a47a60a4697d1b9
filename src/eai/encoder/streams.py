"""From faced windows to the encoder's input: joint/bone/motion streams, and the training augmentation."""
from __future__ import annotations

import numpy as np

from eai.skeleton.registry import canonical
from eai.skeleton.unify import mirror, rotate_y

STREAMS = ("joints", "bones", "motion")


def make_streams(w: np.ndarray, mask: np.ndarray, streams=STREAMS) -> np.ndarray:
    """(N, T, K, 3) body-height units -> (N, 3*S, T, K) float32: joints, bones (joint minus parent) and
    motion (frame-to-frame displacement), in that order; absent joints are zero in every stream."""
    parents = np.array([max(p, 0) for p in canonical().parents])
    out = []
    for s in streams:
        if s == "joints":
            v = w
        elif s == "bones":
            v = w - w[:, :, parents]
        elif s == "motion":
            v = np.zeros_like(w)
            v[:, :-1] = w[:, 1:] - w[:, :-1]
        else:
            raise ValueError(f"unknown stream {s!r}")
        out.append(v)
    x = np.concatenate(out, axis=-1) * mask[:, None, :, None]  # (N, T, K, 3S)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def augment(w: np.ndarray, mask: np.ndarray, rng: np.random.Generator, yaw_deg: float = 30.0,
            scale: float = 0.1, mirror_p: float = 0.5, drop_p: float = 0.05, speed: float = 0.1):
    """Random yaw, scale, mirror, temporal speed change and joint dropout of faced windows (N, T, K, 3)."""
    N, T, K, _ = w.shape
    out = w.copy()
    m = mask.copy()
    if speed:  # resample each window at a random rate around 1 (keeps T frames, anchored at frame 0)
        rate = rng.uniform(1 - speed, 1 + speed, N)
        t = np.clip(np.arange(T)[None] * rate[:, None], 0, T - 1)
        i0 = np.floor(t).astype(int)
        i1 = np.minimum(i0 + 1, T - 1)
        f = (t - i0)[..., None, None]
        n = np.arange(N)[:, None]
        out = (1 - f) * out[n, i0] + f * out[n, i1]
    if yaw_deg:
        out = rotate_y(out, np.radians(rng.uniform(-yaw_deg, yaw_deg, N)))
    if scale:
        out = out * rng.uniform(1 - scale, 1 + scale, (N, 1, 1, 1))
    flip = rng.random(N) < mirror_p
    if flip.any():
        out[flip], m[flip] = mirror(out[flip], m[flip])
    if drop_p:
        drop = rng.random((N, K)) < drop_p
        drop[:, canonical().index("pelvis")] = False
        m = m & ~drop
    return out.astype(np.float32), m
