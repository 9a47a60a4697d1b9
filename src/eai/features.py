"""Interpretable movement descriptors, with units: the evidence for explanations and the baseline's features.

Each descriptor is computed only from the canonical joints a skeleton really has; one that needs an
absent joint is reported as missing (None, with the reason), never invented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.signal import find_peaks, savgol_filter

from eai.skeleton.registry import canonical
from eai.skeleton.unify import across_body


@dataclass(frozen=True)
class Descriptor:
    name: str
    unit: str
    needs: tuple[str, ...]  # canonical joints it cannot do without
    meaning: str


@dataclass
class Clip:
    """What descriptors read: metres (T, K, 3), presence mask (K,), fps, and derivatives computed once."""

    x: np.ndarray
    mask: np.ndarray
    fps: float

    def __post_init__(self):
        T = self.x.shape[0]
        win = min(9, T if T % 2 else T - 1)
        self.smooth_ok = win >= 5
        dt = 1.0 / self.fps
        if self.smooth_ok:  # Savitzky-Golay: derivatives without amplifying mocap jitter
            d = lambda k: savgol_filter(self.x, win, 3 if win > 3 else 2, deriv=k, delta=dt, axis=0)  # noqa: E731
            self.v, self.a, self.j = d(1), d(2), d(3)
        else:
            self.v = np.gradient(self.x, dt, axis=0) if T > 1 else np.zeros_like(self.x)
            self.a = self.j = None

    def idx(self, name: str) -> int:
        return canonical().index(name)

    def has(self, *names: str) -> bool:
        return all(self.mask[self.idx(n)] for n in names)

    def joint(self, name: str) -> np.ndarray:
        return self.x[:, self.idx(name)]

    def forward(self) -> np.ndarray:
        """Per-frame horizontal unit forward direction (T, 3) from hips and shoulders; +z if neither."""
        across = across_body(self.x, self.mask)
        fwd = np.stack([-across[:, 2], np.zeros(len(across)), across[:, 0]], axis=1)  # across x up
        n = np.linalg.norm(fwd, axis=1, keepdims=True)
        return np.where(n > 1e-6, fwd / np.maximum(n, 1e-9), np.array([0.0, 0.0, 1.0]))


def _speeds(c: Clip) -> np.ndarray:
    """Per-frame mean speed of the present joints (T,) m/s."""
    return np.linalg.norm(c.v[:, c.mask], axis=-1).mean(axis=1)


def _mean_norm(d: np.ndarray | None, mask: np.ndarray) -> float | None:
    return None if d is None else float(np.linalg.norm(d[:, mask], axis=-1).mean())


def _pitch(c: Clip, lower: str, upper: str) -> float:
    """Mean forward tilt (degrees) of the segment lower->upper from vertical; positive leans forward."""
    seg = c.joint(upper) - c.joint(lower)
    fwd = np.einsum("ti,ti->t", seg, c.forward())
    return float(np.degrees(np.arctan2(fwd, seg[:, 1])).mean())


def _steps(c: Clip) -> tuple[float, float]:
    """(steps per second, metres per step) from peaks of the horizontal distance between the ankles."""
    gap = c.joint("l_ankle") - c.joint("r_ankle")
    sep = np.linalg.norm(gap[:, [0, 2]], axis=1)
    duration = len(sep) / c.fps
    travel = np.linalg.norm(np.diff(c.joint("pelvis")[:, [0, 2]], axis=0), axis=1).sum()
    height = np.ptp(c.x[0, c.mask, 1]) or 1.0
    peaks, _ = find_peaks(sep, prominence=0.05 * height, distance=max(int(0.2 * c.fps), 1))
    rate = len(peaks) / duration
    return rate, (travel / len(peaks) if len(peaks) else 0.0)


def _symmetry(c: Clip) -> float:
    vals = []
    for part in ("wrist", "elbow", "knee", "ankle"):
        if c.has("l_" + part, "r_" + part):
            sl = np.linalg.norm(c.v[:, c.idx("l_" + part)], axis=1).mean()
            sr = np.linalg.norm(c.v[:, c.idx("r_" + part)], axis=1).mean()
            vals.append(1 - abs(sl - sr) / max(sl + sr, 1e-9))
    return float(np.mean(vals))


def _arm_swing(c: Clip) -> float:
    fwd = c.forward()
    out = []
    for s in "lr":
        rel = c.joint(f"{s}_wrist") - c.joint("pelvis")
        out.append(np.std(np.einsum("ti,ti->t", rel, fwd)))
    return float(np.mean(out))


def _bounce(c: Clip) -> float:
    y = c.joint("pelvis")[:, 1]
    t = np.arange(len(y))
    trend = np.polyval(np.polyfit(t, y, 1), t) if len(y) > 2 else y.mean()
    return float(np.std(y - trend))


def _volume(c: Clip) -> float:
    p = c.x[:, c.mask]
    return float(np.prod(p.max(axis=1) - p.min(axis=1), axis=-1).mean())


DESCRIPTORS: list[tuple[Descriptor, Callable[[Clip], float | None]]] = [
    (Descriptor("speed", "m/s", (), "mean speed of the body's joints"),
     lambda c: float(_speeds(c).mean())),
    (Descriptor("speed_variability", "ratio", (), "how much the joint speed varies over time (std/mean)"),
     lambda c: float(_speeds(c).std() / max(_speeds(c).mean(), 1e-6))),
    (Descriptor("travel_speed", "m/s", ("pelvis",), "horizontal speed of the pelvis through space"),
     lambda c: float(np.linalg.norm(c.v[:, c.idx("pelvis")][:, [0, 2]], axis=1).mean())),
    (Descriptor("acceleration", "m/s^2", (), "mean magnitude of joint acceleration"),
     lambda c: _mean_norm(c.a, c.mask)),
    (Descriptor("jerk", "m/s^3", (), "mean magnitude of joint jerk (abruptness)"),
     lambda c: _mean_norm(c.j, c.mask)),
    (Descriptor("expansiveness", "m^3", (), "mean volume of the box around the body"),
     _volume),
    (Descriptor("hand_spread", "m", ("l_wrist", "r_wrist"), "mean distance between the hands"),
     lambda c: float(np.linalg.norm(c.joint("l_wrist") - c.joint("r_wrist"), axis=1).mean())),
    (Descriptor("hand_height", "m", ("l_wrist", "r_wrist", "pelvis"), "mean height of the hands above the pelvis"),
     lambda c: float(((c.joint("l_wrist") + c.joint("r_wrist")) / 2 - c.joint("pelvis"))[:, 1].mean())),
    (Descriptor("head_pitch", "deg", ("neck", "head"), "forward tilt of the head (positive: lowered)"),
     lambda c: _pitch(c, "neck", "head")),
    (Descriptor("trunk_lean", "deg", ("pelvis", "neck"), "forward lean of the trunk (positive: forward)"),
     lambda c: _pitch(c, "pelvis", "neck")),
    (Descriptor("step_frequency", "steps/s", ("l_ankle", "r_ankle", "pelvis"), "steps per second"),
     lambda c: _steps(c)[0]),
    (Descriptor("stride_length", "m", ("l_ankle", "r_ankle", "pelvis"), "distance travelled per step"),
     lambda c: _steps(c)[1]),
    (Descriptor("vertical_bounce", "m", ("pelvis",), "up-and-down motion of the pelvis (std)"),
     _bounce),
    (Descriptor("arm_swing", "m", ("l_wrist", "r_wrist", "pelvis"), "forward-backward swing of the hands (std)"),
     _arm_swing),
    (Descriptor("symmetry", "ratio", (), "left-right balance of limb speeds (1: symmetric)"),
     lambda c: _symmetry(c) if any(c.has("l_" + p, "r_" + p) for p in ("wrist", "elbow", "knee", "ankle"))
     else None),
    (Descriptor("stillness", "fraction", (), "share of time the body is nearly still (< 0.15 m/s)"),
     lambda c: float((_speeds(c) < 0.15).mean())),
]
NAMES = [d.name for d, _ in DESCRIPTORS]
DESCRIPTOR_BY_NAME = {d.name: d for d, _ in DESCRIPTORS}

# The gait descriptors describe walking (or running): of a clip that does not walk they measure nothing of
# interest (a standing wave has stride 0.0 m), so they are neither claimed of it nor part of a gait baseline.
GAIT = ("travel_speed", "step_frequency", "stride_length", "vertical_bounce")
# A clip walks when its pelvis travels at >= 0.3 m/s with >= 0.8 steps/s. On Bandai's emotion clips the walks,
# runs and dashes measure >= 0.39 m/s and >= 1.0 steps/s, the bows, waves and guiding gestures <= 0.14 m/s
# and 0 steps/s (kicks and punches, 0.3-0.45 m/s at 0.6-0.75 steps/s, step about without walking); the slowest
# human walking is about 0.4 m/s at about 1 step/s, so the bounds sit below it.
WALK_MIN_SPEED = 0.3
WALK_MIN_STEP_RATE = 0.8


def walks(values: np.ndarray) -> np.ndarray:
    """Whether clips walk, from their own measurement: values (..., D) descriptors in NAMES order (NaN where
    missing) -> (...) bool, travel_speed >= WALK_MIN_SPEED m/s and step_frequency >= WALK_MIN_STEP_RATE
    steps/s (False where either is missing)."""
    v = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore"):
        return (v[..., NAMES.index("travel_speed")] >= WALK_MIN_SPEED) & \
            (v[..., NAMES.index("step_frequency")] >= WALK_MIN_STEP_RATE)


def applicable(values: np.ndarray) -> np.ndarray:
    """Which descriptors apply to the movement: values (..., D) in NAMES order -> (..., D) bool; every
    descriptor but the GAIT ones always, those only where the clip walks (`walks`)."""
    v = np.asarray(values, np.float64)
    gait = np.isin(NAMES, GAIT)
    return ~gait | walks(v)[..., None]


def describe(x: np.ndarray, mask: np.ndarray, fps: float) -> dict[str, dict]:
    """Descriptors of one clip or window: x (T, K, 3) canonical positions in metres, mask (K,), fps.

    Returns {name: {"value": float or None, "unit": str, "missing": reason or None}}.
    """
    c = Clip(np.asarray(x, np.float64), np.asarray(mask, bool), float(fps))
    out = {}
    for d, fn in DESCRIPTORS:
        absent = [n for n in d.needs if not c.has(n)]
        value, why = None, None
        if absent:
            why = f"the skeleton has no {', '.join(absent)}"
        elif x.shape[0] < 3:
            why = "too few frames"
        else:
            value = fn(c)
            if value is None:
                why = "too few frames or joints to measure"
            elif not np.isfinite(value):
                value, why = None, "not measurable on this clip"
        out[d.name] = {"value": value, "unit": d.unit, "missing": why}
    return out


def descriptor_vector(x: np.ndarray, mask: np.ndarray, fps: float) -> np.ndarray:
    """The descriptors as a float vector in NAMES order, NaN where missing."""
    d = describe(x, mask, fps)
    return np.array([np.nan if d[n]["value"] is None else d[n]["value"] for n in NAMES])


def clip_descriptors(clips: list) -> np.ndarray:
    """(M, D) descriptors of whole unified clips (eai.skeleton.unify.UnifiedMotion), in metres, NAMES order,
    NaN where missing."""
    return np.stack([descriptor_vector(u.metres(), u.mask, u.fps) for u in clips])


# --- descriptors along a clip (the viewer's timelines) ---------------------------------------------------
SERIES_WINDOW_S = 1.0
# descriptors of a gait cycle need about two steps in view to be measured at all (symmetry: both sides)
SERIES_WINDOW_S_BY_NAME = {"step_frequency": 2.0, "stride_length": 2.0, "arm_swing": 2.0, "vertical_bounce": 2.0,
                           "symmetry": 2.0}


def descriptor_series(x: np.ndarray, mask: np.ndarray, fps: float, name: str, window_s: float | None = None,
                      step_s: float = 0.1) -> tuple[np.ndarray, np.ndarray, float]:
    """One descriptor measured along a clip, by the same definition as `describe`, on sliding windows.

    x (T, K, 3) canonical positions in metres, mask (K,), fps. Windows of `window_s` seconds (default 1 s, 2 s
    for the gait descriptors of SERIES_WINDOW_S_BY_NAME; the whole clip when it is shorter) start every
    `step_s` seconds. Returns (starts (N,) seconds, values (N,) in the descriptor's unit, NaN where a window
    cannot be measured, the window length in seconds). A descriptor that needs an absent joint gives an
    all-NaN series.
    """
    fn = dict((d.name, f) for d, f in DESCRIPTORS)[name]
    d = DESCRIPTOR_BY_NAME[name]
    x = np.asarray(x, np.float64)
    mask = np.asarray(mask, bool)
    T = x.shape[0]
    w = min(T, max(3, int(round((window_s or SERIES_WINDOW_S_BY_NAME.get(name, SERIES_WINDOW_S)) * fps))))
    step = max(1, int(round(step_s * fps)))
    starts = np.arange(0, max(T - w, 0) + 1, step)
    values = np.full(len(starts), np.nan)
    probe = Clip(x[:min(T, 3)], mask, fps)
    if T >= 3 and all(probe.has(n) for n in d.needs):
        for i, s in enumerate(starts):
            v = fn(Clip(x[s:s + w], mask, fps))
            values[i] = np.nan if v is None or not np.isfinite(v) else v
    return starts / fps, values, w / fps


def extreme_span(starts: np.ndarray, values: np.ndarray, window_s: float, direction: int) -> tuple[float, float] | None:
    """(start, end) seconds of the window where a series is most extreme in `direction` (+1 highest, -1
    lowest), or None when nothing was measured or the direction is 0."""
    v = direction * np.asarray(values, np.float64)
    if direction == 0 or not np.isfinite(v).any():
        return None
    i = int(np.nanargmax(v))
    return float(starts[i]), float(starts[i] + window_s)
