"""Kinect v2 skeleton text/CSV (camera space, metres, y up), as the public recorders write it.

One row per frame; values separated by commas, semicolons (then decimal commas are allowed), tabs or
spaces; trailing separators and CRLF line ends are ignored. Columns, one of:
- no header: 75 numbers, x y z of the 25 joints in Kinect JointType order (SpineBase, SpineMid, Neck, Head,
  ShoulderLeft, ElbowLeft, WristLeft, HandLeft, ShoulderRight, ElbowRight, WristRight, HandRight, HipLeft,
  KneeLeft, AnkleLeft, FootLeft, HipRight, KneeRight, AnkleRight, FootRight, SpineShoulder, HandTipLeft,
  ThumbLeft, HandTipRight, ThumbRight), or 76 with a leading timestamp;
- a header row naming the columns, in any order: a time column (`time`, `timestamp`), `<Joint>_x`,
  `<Joint>.X`, `<Joint>X` (`headX`; case and separators ignored) and optionally a tracking state per joint
  (`<Joint>State`, `<Joint>_TrackingState`: 2/Tracked, 1/Inferred, 0/NotTracked);
- two header rows: joint names over their columns (`SpineBase;;;SpineMid;;;...`), then `X;Y;Z;...`.
Joints a header leaves out are absent (masked downstream, never invented). A joint at exactly (0, 0, 0)
(no body seen) or not Tracked is missing data: see `eai.io.gaps`. A timestamp's unit (seconds, ms, us or
Kinect's 100 ns ticks) is told from its spacing; without one the rate is 30 fps (Kinect v2's).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from eai.errors import FormatError
from eai.io.files import decode_text, is_number, read_bytes
from eai.io.gaps import repair_untracked, zero_samples
from eai.motion import Motion
from eai.skeleton.registry import normalise_name, registry

TIME_NAMES = {"time", "timestamp", "times", "t", "timems", "timestampms", "relativetime", "systemtime"}
STATE_SUFFIXES = ("trackingstate", "tracking", "tracked", "state", "status")
STATE_WORDS = {"tracked": 2.0, "inferred": 1.0, "nottracked": 0.0}
TRACKED = 2.0
# seconds per timestamp unit, and the frame rates recorders run at: the unit that gives a common rate wins
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "100 ns ticks": 1e-7}
COMMON_FPS = (10, 12, 15, 20, 24, 25, 30, 48, 50, 60, 90, 100, 120, 200, 240, 250, 480, 500)


def kinect_joints() -> tuple[list[str], list[int]]:
    layout = registry().get("kinect25")
    return list(layout.joints), list(layout.parents)


def _parents(joints: list[str]) -> list[int]:
    """Parents within the joints present (one whose parent is absent hangs on the nearest present one)."""
    layout = registry().get("kinect25")
    return layout.parents_of([joints.index(j) if j in joints else -1 for j in layout.joints], len(joints))


def _separator(lines: list[str]) -> str | None:
    """The field separator of the file (None: runs of spaces), from its first lines."""
    head = "\n".join(lines[:3])
    for sep in (";", "\t", ","):
        if sep in head:
            return sep
    return None


def _cells(line: str, sep: str | None) -> list[str]:
    cells = [c.strip() for c in (line.split(sep) if sep else line.split())]
    while cells and cells[-1] == "":  # trailing separators
        cells.pop()
    return cells


def _row(parts: list[str], used: list[int], states: set[int], decimal_comma: bool) -> list[float]:
    """The used columns of one row as numbers (tracking-state words too); ValueError names nothing."""
    out = [0.0] * (used[-1] + 1)
    for c in used:
        cell = parts[c].replace(",", ".") if decimal_comma else parts[c]
        if c in states and not is_number(cell):
            out[c] = STATE_WORDS[normalise_name(cell)] if normalise_name(cell) in STATE_WORDS else float(cell)
        else:
            out[c] = float(cell)
    return out


def _is_header(cells: list[str], decimal_comma: bool) -> bool:
    numeric = sum(is_number(c.replace(",", ".") if decimal_comma else c) for c in cells if c)
    return numeric < max(1, sum(1 for c in cells if c)) / 2


def _column_names(headers: list[list[str]], width: int) -> list[str]:
    """One normalised name per column; two header rows combine as joint name (carried over blanks) + axis."""
    if len(headers) == 1:
        return [normalise_name(c) for c in headers[0]] + [""] * (width - len(headers[0]))
    top, axis = headers
    names, last = [], ""
    for i in range(max(width, len(axis))):
        cell = top[i] if i < len(top) else ""
        last = cell or last
        names.append(normalise_name(last + (axis[i] if i < len(axis) else "")))
    return names


def _header_columns(names: list[str], path: str, line: int):
    """(joints, their (x, y, z) columns, their state columns or None, time column or None) from a header."""
    joints, _ = kinect_joints()
    keys = {normalise_name(j): j for j in joints}
    xyz: dict[str, dict[str, int]] = {}
    state: dict[str, int] = {}
    time_col = None
    for i, n in enumerate(names):
        if n in TIME_NAMES and time_col is None:
            time_col = i
            continue
        suffix = next((s for s in STATE_SUFFIXES if n.endswith(s) and n[: -len(s)] in keys), None)
        if suffix:
            state[keys[n[: -len(suffix)]]] = i
        elif n[-1:] in ("x", "y", "z") and n[:-1] in keys:
            xyz.setdefault(keys[n[:-1]], {})[n[-1]] = i
    found = [j for j in joints if len(xyz.get(j, {})) == 3]
    if not found:
        raise FormatError("the header names no Kinect v2 joint columns; a Kinect CSV header names "
                          "<Joint>_x,<Joint>_y,<Joint>_z (or headX, ...) for the 25 Kinect v2 joints", path, line)
    half = [j for j in xyz if j not in found]
    if half:
        raise FormatError(f"the header gives only some of x, y, z for {', '.join(half[:3])}", path, line)
    cols = [[xyz[j][a] for a in "xyz"] for j in found]
    states = [state[j] for j in found] if all(j in state for j in found) else None
    return found, cols, states, time_col


def time_unit(t: np.ndarray) -> tuple[float, str]:
    """Seconds per unit of a timestamp column (T,) and the unit's name, told from its median spacing."""
    step = float(np.median(np.diff(t)))
    best = None
    for name, sec in TIME_UNITS.items():
        fps = 1.0 / (step * sec)
        if 5 <= fps <= 500:
            miss = min(abs(math.log(fps / c)) for c in COMMON_FPS)
            if best is None or miss < best[0]:
                best = (miss, sec, name)
    if best is None:
        raise FormatError(f"the time column steps by {step:g} per frame: not seconds, ms, us or 100 ns ticks "
                          "of any usual frame rate")
    return best[1], best[2]


def read_kinect_csv(path: str | Path, fps: float | None = None) -> Motion:
    """Read a Kinect v2 skeleton CSV/text file into a `Motion` (the joints present, metres, y up)."""
    path = str(path)
    text = decode_text(read_bytes(path), path, "a Kinect skeleton CSV")
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise FormatError("the file has no rows", path)
    sep = _separator([ln for _, ln in lines])
    rows = [(no, _cells(ln, sep)) for no, ln in lines]
    decimal_comma = sep != "," and any(re.search(r"\d,\d", ln) for _, ln in lines[:5])
    n_head = 0
    while n_head < min(2, len(rows)) and _is_header(rows[n_head][1], decimal_comma):
        n_head += 1
    headers, rows = [r for _, r in rows[:n_head]], rows[n_head:]
    if not rows:
        raise FormatError("the file has a header but no frames", path)
    width = len(rows[0][1])
    states = None
    if headers:
        joints, cols, states, time_col = _header_columns(_column_names(headers, width), path, lines[0][0])
    else:
        if width not in (75, 76):
            raise FormatError(f"a row has {width} values; a Kinect v2 frame has 75 (x y z of 25 joints), "
                              "or 76 with a leading timestamp", path, rows[0][0])
        joints = kinect_joints()[0]
        base = width - 75
        cols = [[base + 3 * j + a for a in range(3)] for j in range(25)]
        time_col = 0 if base else None
    used = sorted({c for cc in cols for c in cc} | set(states or ()) | ({time_col} - {None}))
    need, state_cols = used[-1] + 1, set(states or ())
    data = np.zeros((len(rows), need))
    for r, (line, parts) in enumerate(rows):
        if len(parts) < need or (len(parts) != width and not headers):
            expected = f"the header's columns need {need}" if headers else f"expected {width}"
            raise FormatError(f"row has {len(parts)} values, {expected}", path, line)
        try:
            data[r] = _row(parts, used, state_cols, decimal_comma)
        except ValueError:
            bad = next((parts[c] for c in used if not is_number(parts[c].replace(",", "."))
                        and normalise_name(parts[c]) not in STATE_WORDS), parts[used[0]])
            raise FormatError(f"value {bad!r} is not a number", path, line) from None
        if not np.isfinite(data[r]).all():
            raise FormatError("value is not finite (NaN/inf); repair or drop this frame", path, line)
    positions = data[:, np.asarray(cols)]  # (T, J, 3)
    m = Motion(positions=positions.astype(np.float32), joints=joints, parents=_parents(joints), fps=30.0,
               layout="kinect25", source=path, meta={"format": "kinect-csv"})
    if len(joints) < 25:
        m.note(f"{len(joints)} of the 25 Kinect v2 joints in the file; the others are absent")
    m.fps = fps or _rate(m, data, time_col, path)
    missing = zero_samples(positions, per_joint=True)
    if states is not None:
        missing |= data[:, states] < TRACKED
    return repair_untracked(m, missing)


def _rate(m: Motion, data: np.ndarray, time_col: int | None, path: str) -> float:
    if time_col is None or len(data) < 2:
        return 30.0
    t = data[:, time_col]
    if np.any(np.diff(t) <= 0):
        raise FormatError("timestamps must increase from row to row", path)
    if np.all(np.diff(t) == 1):
        m.note("the leading column counts frames; 30 fps assumed (Kinect v2's rate)")
        return 30.0
    try:
        sec, name = time_unit(t)
    except FormatError as e:
        raise FormatError(e.message, path) from None
    fps = (len(t) - 1) / (float(t[-1] - t[0]) * sec)  # mean rate: robust to rounding and jitter
    m.meta["time_unit"] = name
    m.note(f"timestamps in {name}, told from their spacing: {fps:.3g} fps")
    return fps


def write_kinect_csv(motion: Motion, path: str | Path) -> None:
    """Write a Kinect v2 CSV (a header row: time, then <Joint>_x,_y,_z in JointType order; metres, y up). A motion
    of another layout goes through the canonical joints (eai.skeleton.unify.to_canonical): each Kinect joint takes
    the position of its canonical joint. Kinect joints with no counterpart in the motion (a Bandai BVH has no hand
    tips, thumbs or hands past the wrists) are left out of the header, as a Kinect CSV may (readers take them as
    absent; nothing is invented), and a warning (eai.errors.warn) names them. Atomic."""
    from eai.errors import warn
    from eai.io.files import atomic_path

    joints, _ = kinect_joints()
    if motion.layout == "kinect25" or all(j in motion.joints for j in joints):
        cols = {j: motion.positions[:, motion.joints.index(j)] for j in joints if j in motion.joints}
        said = "the motion has"
    else:
        from eai.skeleton.unify import to_canonical

        P, mask, layout = to_canonical(motion)
        kinect, can = registry().get("kinect25"), registry().canonical
        cols = {j: P[:, can.index(c)] for j, c in zip(kinect.joints, kinect.canonical) if c and mask[can.index(c)]}
        said = f"its {layout.name} skeleton has"
        lost = [j for j, c in zip(layout.joints, layout.canonical) if j in motion.joints and (c is None or c not in kinect.canonical)]
        if lost:
            warn(f"{', '.join(lost)} of the clip have no Kinect v2 joint: not written", path)
    if not cols:
        raise FormatError("the motion has none of the joints a Kinect v2 CSV holds", path)
    left = [j for j in joints if j not in cols]
    if left:
        warn(f"written with the {len(cols)} Kinect v2 joints {said}; {', '.join(left)} left out (absent: no "
             "counterpart in the clip)", path)
    names = [j for j in joints if j in cols]
    t = np.arange(motion.n_frames) / motion.fps
    flat = np.stack([cols[j] for j in names], 1).reshape(motion.n_frames, -1)
    header = "time," + ",".join(f"{j}_{a}" for j in names for a in "xyz")
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.column_stack([t, flat]), delimiter=",", fmt="%.6f", header=header, comments="")
