"""Procedural emotional motion: walk cycles and standing gestures whose speed, stride, arm swing, posture,
head pitch and jerkiness vary by emotion. It makes test fixtures and offline demo data; it never replaces
real data in a reported figure.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eai.io import write_motion
from eai.motion import Motion
from eai.skeleton.registry import Layout, canonical, registry
from eai.skeleton.unify import rotate_y


@dataclass(frozen=True)
class Style:
    speed: float  # m/s when walking
    step_rate: float  # steps/s
    arm_swing: float  # rad
    lean: float  # trunk forward lean, deg
    head: float  # head pitch, deg (positive: lowered)
    spread: float  # arm abduction, rad (expansiveness)
    bounce: float  # pelvis bob, m
    jerk: float  # amplitude of abrupt perturbations, m
    gesture: float  # standing arm-raise amplitude, rad


STYLES = {
    "neutral": Style(1.20, 1.85, 0.35, 2, 0, 0.10, 0.020, 0.000, 0.5),
    "happy": Style(1.45, 2.10, 0.60, -2, -8, 0.30, 0.040, 0.004, 1.2),
    "sad": Style(0.60, 1.25, 0.10, 10, 28, 0.02, 0.008, 0.000, 0.2),
    "angry": Style(1.80, 2.40, 0.50, 9, 5, 0.25, 0.025, 0.015, 1.0),
    "proud": Style(1.00, 1.60, 0.35, -6, -15, 0.25, 0.020, 0.000, 0.6),
    "not-confident": Style(0.80, 1.60, 0.15, 6, 15, 0.04, 0.012, 0.006, 0.3),
    "tired": Style(0.75, 1.40, 0.15, 12, 32, 0.06, 0.010, 0.002, 0.2),
}

# Segment lengths as fractions of body height.
SEG = dict(pelvis=0.53, hip_w=0.055, thigh=0.245, shin=0.245, foot=0.08, spine=0.07, chest=0.10, neck=0.10,
           head=0.08, collar=0.05, shoulder_w=0.11, upper=0.17, fore=0.15, hand=0.06)


def _smooth_noise(rng: np.random.Generator, T: int, dims: tuple, cutoff: int) -> np.ndarray:
    n = rng.standard_normal((T + 2 * cutoff,) + dims)
    k = np.hanning(2 * cutoff + 1)
    k /= k.sum()
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, n)[:T]


def generate(emotion: str, seconds: float = 6.0, fps: float = 30.0, content: str = "walk",
             seed: int = 0) -> np.ndarray:
    """One clip on the canonical skeleton: (T, K, 3) metres, y up."""
    st = STYLES[emotion]
    rng = np.random.default_rng(seed)
    can = canonical()
    T = int(seconds * fps)
    t = np.arange(T) / fps
    H = rng.uniform(1.55, 1.90)
    jit = lambda v, r=0.12: v * (1 + rng.uniform(-r, r))  # noqa: E731 - per-clip variation
    walking = content == "walk"
    rate, speed = jit(st.step_rate), jit(st.speed) if walking else 0.0
    phase = np.pi * rate * t + rng.uniform(0, 2 * np.pi)  # one stride (two steps) per 2*pi
    lean = np.radians(jit(st.lean, 0.3) + 2 * np.sin(0.3 * t))
    head = np.radians(jit(st.head, 0.3) + 3 * np.sin(0.5 * t + 1))
    P = np.zeros((T, can.n, 3))
    J = {n: i for i, n in enumerate(can.names)}
    up, fwd, left = np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), np.array([1.0, 0, 0])
    bob = st.bounce * np.cos(2 * phase) if walking else 0.004 * np.sin(0.8 * t)
    P[:, J["pelvis"]] = up * (SEG["pelvis"] * H + bob)[:, None] + fwd * (speed * t)[:, None]
    trunk = np.stack([np.zeros(T), np.cos(lean), np.sin(lean)], 1)
    for a, b, seg in (("pelvis", "spine", "spine"), ("spine", "chest", "chest"), ("chest", "neck", "neck")):
        P[:, J[b]] = P[:, J[a]] + trunk * SEG[seg] * H
    hd = np.stack([np.zeros(T), np.cos(lean + head), np.sin(lean + head)], 1)
    P[:, J["head"]] = P[:, J["neck"]] + hd * SEG["head"] * H
    for s, sign in (("l", 1.0), ("r", -1.0)):
        leg_phase = phase + (0 if s == "l" else np.pi)
        amp = 0.45 * speed / max(st.speed, 0.1) * 0.6 + (0.05 if walking else 0.0)
        hip_a = amp * np.sin(leg_phase) if walking else 0.03 * np.sin(0.7 * t)
        knee_a = (np.clip(np.sin(leg_phase + 1.2), 0, None) * (0.9 * amp + 0.1)) if walking else 0.05 + 0 * t
        P[:, J[f"{s}_hip"]] = P[:, J["pelvis"]] + left * sign * SEG["hip_w"] * H
        thigh = np.stack([np.zeros(T), -np.cos(hip_a), np.sin(hip_a)], 1)
        P[:, J[f"{s}_knee"]] = P[:, J[f"{s}_hip"]] + thigh * SEG["thigh"] * H
        shin = np.stack([np.zeros(T), -np.cos(hip_a - knee_a), np.sin(hip_a - knee_a)], 1)
        P[:, J[f"{s}_ankle"]] = P[:, J[f"{s}_knee"]] + shin * SEG["shin"] * H
        P[:, J[f"{s}_toe"]] = P[:, J[f"{s}_ankle"]] + (fwd - 0.4 * up) / np.hypot(1, 0.4) * SEG["foot"] * H
        P[:, J[f"{s}_collar"]] = P[:, J["chest"]] + trunk * 0.06 * H + left * sign * SEG["collar"] * H
        P[:, J[f"{s}_shoulder"]] = P[:, J[f"{s}_collar"]] + left * sign * SEG["shoulder_w"] * H - up * 0.01 * H
        if walking:
            swing = jit(st.arm_swing, 0.2) * np.sin(leg_phase + np.pi)
            raise_ = np.zeros(T)
        else:
            swing = 0.1 * np.sin(0.9 * t)
            raise_ = st.gesture * np.clip(np.sin(2 * np.pi * rng.uniform(0.2, 0.4) * t + sign), 0, None)
        ab = jit(st.spread, 0.3) + 0.5 * raise_
        upper = np.stack([sign * np.sin(ab), -np.cos(ab) * np.cos(swing + raise_), np.cos(ab) * np.sin(swing + raise_)], 1)
        P[:, J[f"{s}_elbow"]] = P[:, J[f"{s}_shoulder"]] + upper * SEG["upper"] * H
        bend = 0.3 + 0.5 * np.clip(swing + raise_, 0, None)
        fore = np.stack([upper[:, 0], upper[:, 1] * np.cos(bend), upper[:, 2] * np.cos(bend) + np.sin(bend)], 1)
        fore /= np.linalg.norm(fore, axis=1, keepdims=True)
        P[:, J[f"{s}_wrist"]] = P[:, J[f"{s}_elbow"]] + fore * SEG["fore"] * H
        P[:, J[f"{s}_hand"]] = P[:, J[f"{s}_wrist"]] + fore * SEG["hand"] * H
    if st.jerk:  # abrupt, jerky perturbations: smoothed noise with sudden kicks
        kicks = (rng.random((T, 1, 1)) < 0.08) * rng.standard_normal((T, can.n, 3))
        P += st.jerk * (4 * _smooth_noise(rng, T, (can.n, 3), 2) + np.cumsum(kicks, 0) * 0.3)
    P += 0.002 * _smooth_noise(rng, T, (can.n, 3), 3)  # sensor-like tremor
    P = rotate_y(P, rng.uniform(-np.pi, np.pi)) + np.array([rng.uniform(-2, 2), 0, rng.uniform(-2, 2)])
    return P.astype(np.float32)


def express(P: np.ndarray, layout: Layout, fps: float, label: str | None = None) -> Motion:
    """Put canonical positions (T, K, 3) on a layout's joints.

    Mapped joints take their canonical joint, and the joints a derived canonical joint is the mean of (COCO's
    ears for the head) take that joint, so reading the motion back gives P. Any other joint sits on its nearest
    placed ancestor; failing that (MediaPipe's nose, the root of its tree) on its first placed descendant, or,
    for a root above the pelvis without one (Bandai's joint_Root), on the ground under the pelvis.
    """
    can = canonical()
    T = P.shape[0]
    placed: dict[int, np.ndarray] = {j: P[:, can.index(c)] for j, c in enumerate(layout.canonical) if c}
    for c, parts in layout.derived.items():
        if c not in layout.canonical:
            for part in parts:
                placed.setdefault(layout.joints.index(part), P[:, can.index(c)])
    children: dict[int, list[int]] = {j: [] for j in range(len(layout.joints))}
    for j, p in enumerate(layout.parents):
        if p >= 0:
            children[p].append(j)

    def ancestor(j: int) -> int | None:
        a = layout.parents[j]
        while a >= 0 and a not in placed:
            a = layout.parents[a]
        return a if a >= 0 else None

    def descendant(j: int) -> int | None:  # depth first, in the layout's order
        for c in children[j]:
            if c in placed:
                return c
            d = descendant(c)
            if d is not None:
                return d
        return None

    ground = P[:, can.index("pelvis")] * np.array([1, 0, 1])
    for j in range(len(layout.joints)):
        if j not in placed and ancestor(j) is None:
            pelvis_below = "pelvis" in (layout.canonical[c] for c in children[j])
            d = None if pelvis_below else descendant(j)
            placed[j] = ground if d is None else placed[d]
    out = np.zeros((T, len(layout.joints), 3), np.float32)
    for j in range(len(layout.joints)):
        out[:, j] = placed[j] if j in placed else placed[ancestor(j)]
    return Motion(out, list(layout.joints), list(layout.parents), fps, layout=layout.name, label=label)


FORMAT_BY_LAYOUT = {"bandai22": ".bvh", "kinect25": ".csv"}


def write_dataset(out: str | Path, layouts: list[str], clips_per_label: int = 6, seconds: float = 6.0,
                  emotions: list[str] | None = None, seed: int = 0, fps: float = 30.0) -> list[Path]:
    """Write a label-folder dataset OUT/<emotion>/<clip> (BVH for bandai22, Kinect CSV for kinect25, NPZ
    otherwise), cycling through the given layouts and through walking and standing clips."""
    reg = registry()
    written = []
    for e_i, emotion in enumerate(emotions or list(STYLES)):
        for k in range(clips_per_label):
            layout = reg.get(layouts[k % len(layouts)])
            content = "walk" if k % 3 != 2 else "stand"
            P = generate(emotion, seconds, fps, content, seed=seed * 100003 + e_i * 1009 + k)
            m = express(P, layout, fps, emotion)
            path = Path(out) / emotion / f"{content}_{k:03d}_{layout.name}{FORMAT_BY_LAYOUT.get(layout.name, '.npz')}"
            write_motion(m, path)
            written.append(path)
    return written
