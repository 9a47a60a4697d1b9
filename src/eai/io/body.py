"""What a reader tells from the body itself: a BVH file's length unit and any clip's up axis.

Both are guesses from the skeleton's geometry (positions (T, J, 3)), so each one is recorded in the
motion's notes, and a body from which they cannot be told is refused with the option that settles it
(`--units`, `--up`).
"""
from __future__ import annotations

import math

import numpy as np

from eai.errors import EaiError, FormatError, LayoutError, UnitError, warn
from eai.motion import Motion

UNIT_SCALE = {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254}
UNITS_HELP = "give it with --units m|cm|mm|in or a number of metres per file unit (CMU: --units 0.05644)"

# proper rotations (no mirroring: left stays left) taking each file axis to +y: new = R @ old
UP_AXES = ("y", "-y", "z", "-z", "x", "-x")
_TURN = {
    "y": np.eye(3),
    "-y": np.diag([1.0, -1.0, -1.0]),  # half a turn about x (MediaPipe world landmarks: y down)
    "z": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # a quarter turn about x (3ds Max, Blender)
    "-z": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "x": np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]),  # a quarter turn about z
    "-x": np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
}
UP_HELP = "give the file's up axis with --up " + "|".join(UP_AXES)
MIN_UP_SHARE = 0.75  # the head-to-feet direction must lie within ~40 degrees of one axis


class UpError(FormatError):
    """A body whose up axis cannot be told (the user gives --up)."""


def parse_units(units: str | float) -> float | None:
    """Metres per file unit from `--units` (m, cm, mm, in or a positive number); None for auto."""
    if isinstance(units, (int, float)) and not isinstance(units, bool):
        value = float(units)
    elif units == "auto":
        return None
    elif units in UNIT_SCALE:
        return UNIT_SCALE[units]
    else:
        try:
            value = float(units)
        except (TypeError, ValueError):
            raise EaiError(f"--units {units!r} is not a unit; use auto, m, cm, mm, in or a number of metres "
                           "per file unit (CMU: 0.05644)") from None
    if not (math.isfinite(value) and value > 0):
        raise EaiError(f"--units {units!r} must be a positive number of metres per file unit")
    return value


def detect_unit_scale(positions: np.ndarray, path: str) -> tuple[float, str]:
    """Metres per file unit from the body's extent in the first frame, and the name of the unit chosen."""
    # a ground-projected root (Bandai's joint_Root) can lie metres from the body: leave the root out
    body = positions[0, 1:] if positions.shape[1] > 3 else positions[0]
    extent = float(np.ptp(body, axis=0).max())
    for lo, hi, name in ((0.3, 3.0, "m"), (30, 300, "cm"), (300, 3000, "mm")):
        if lo <= extent <= hi:
            return UNIT_SCALE[name], name
    raise UnitError(f"cannot tell the length unit from a body {extent:g} file units across "
                    f"(metres would be 0.3-3, cm 30-300, mm 300-3000); {UNITS_HELP}", path)


def unit_scale(units: str | float, positions: np.ndarray, path: str) -> tuple[float, str | None]:
    """Metres per file unit and, when it was told from the body, a line saying so (for meta['units'])."""
    given = parse_units(units)
    if given is not None:
        return given, None
    scale, name = detect_unit_scale(positions, path)
    return scale, f"{name}, told from the body's size (override with --units)"


def _up_vector(m: Motion) -> np.ndarray | None:
    """Median head-to-feet direction (3,) in file axes, or None if the skeleton's head or feet are unknown."""
    from eai.skeleton.registry import registry
    from eai.skeleton.unify import to_canonical

    try:
        x, mask, _ = to_canonical(m)
    except LayoutError:
        return None
    can = registry().canonical

    def first(*names: str) -> np.ndarray | None:
        for group in names:
            idx = [can.index(n) for n in group.split("+")]
            if all(mask[i] for i in idx):
                return x[:, idx].mean(axis=1)
        return None

    top = first("head", "neck", "chest")
    bottom = first("l_ankle+r_ankle", "l_knee+r_knee", "l_hip+r_hip", "pelvis")
    if top is None or bottom is None:
        return None
    return np.median(top - bottom, axis=0)


def detect_up(m: Motion) -> str | None:
    """The file's up axis ('y', '-z', ...) told from the body (head above the feet), or None when the
    skeleton's head or feet are not known. Raises UpError when the body does not point along one axis."""
    d = _up_vector(m)
    if d is None:
        return None
    n = float(np.linalg.norm(d))
    u = d / n if n > 0 else d
    k = int(np.argmax(np.abs(u)))
    if n == 0 or abs(u[k]) < MIN_UP_SHARE:
        raise UpError(f"cannot tell the up axis from the body (its feet-to-head direction is "
                      f"({u[0]:.2f}, {u[1]:.2f}, {u[2]:.2f}), along no one axis); {UP_HELP}", m.source)
    return ("-" if u[k] < 0 else "") + "xyz"[k]


def settle_up(m: Motion, up: str = "auto") -> Motion:
    """Turn the clip in place so y is up: the file's up axis given (`up`), or told from the body.

    Records meta['up'] (the file's up axis) and a note when the clip was turned.
    """
    if up == "auto":
        axis = detect_up(m)
        if axis is None:
            m.meta["up"] = "y"
            m.note("up axis y as in the file, not checked: the skeleton's head or feet are unknown")
            return m
        how = "told from the body (head above feet)"
    elif up in UP_AXES:
        axis, how = up, "given with --up"
    else:
        raise EaiError(f"--up {up!r} is not an axis; use auto or one of {', '.join(UP_AXES)}")
    m.meta["up"] = axis
    if axis != "y":
        m.positions = (m.positions @ _TURN[axis].T.astype(np.float32)).astype(np.float32)
        m.note(f"up axis {axis}, {how}: turned to y up")
        if up == "auto":
            warn(f"the body stands along {axis}; turned to y up (override with --up)", m.source)
    return m
