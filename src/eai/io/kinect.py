"""Kinect v2 skeleton text/CSV (25 joints, camera space in metres, as recorded for EGBM).

Accepted form, one row per frame, values separated by commas, semicolons, tabs or spaces:
- 75 numbers: x y z of the 25 joints in Kinect JointType order (SpineBase, SpineMid, Neck, Head,
  ShoulderLeft, ElbowLeft, WristLeft, HandLeft, ShoulderRight, ElbowRight, WristRight, HandRight, HipLeft,
  KneeLeft, AnkleLeft, FootLeft, HipRight, KneeRight, AnkleRight, FootRight, SpineShoulder, HandTipLeft,
  ThumbLeft, HandTipRight, ThumbRight);
- or 76 numbers: a leading timestamp in seconds (the frame rate is then taken from it), then the 75;
- an optional header row naming the columns: `time` (optional) then `<Joint>_x, <Joint>_y, <Joint>_z`
  for the 25 joints, in any order.
Without timestamps the frame rate is 30 fps (Kinect v2's rate) unless given.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from eai.errors import FormatError
from eai.io.files import decode_text, is_number, read_bytes
from eai.motion import Motion
from eai.skeleton.registry import registry

SEP = re.compile(r"[,;\t ]+")


def kinect_joints() -> tuple[list[str], list[int]]:
    layout = registry().get("kinect25")
    return list(layout.joints), list(layout.parents)


def _numbers(parts: list[str], path: str, line: int) -> list[float]:
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not is_number(p))
        raise FormatError(f"value {bad!r} is not a number", path, line) from None
    if not all(np.isfinite(vals)):
        raise FormatError("value is not finite (NaN/inf); repair or drop this frame", path, line)
    return vals


def read_kinect_csv(path: str | Path, fps: float | None = None) -> Motion:
    """Read a Kinect v2 skeleton CSV/text file into a `Motion` (25 joints, metres, y up)."""
    path = str(path)
    text = decode_text(read_bytes(path), path, "a Kinect skeleton CSV")
    joints, parents = kinect_joints()
    rows = [(i + 1, SEP.split(ln.strip())) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not rows:
        raise FormatError("the file has no rows", path)
    order = None  # column index of each joint's x, y, z
    time_col = None
    first_line, header = rows[0]
    if sum(is_number(p) for p in header) < len(header) / 2:  # a header row is mostly words
        cols = {c.strip().lower(): i for i, c in enumerate(header)}
        order = []
        for j in joints:
            try:
                order.append([cols[f"{j.lower()}_{a}"] for a in "xyz"])
            except KeyError:
                raise FormatError(
                    f"header lacks column {j}_x/{j}_y/{j}_z; a Kinect CSV header names time (optional) and "
                    "<Joint>_x,<Joint>_y,<Joint>_z for the 25 Kinect v2 joints", path, first_line) from None
        time_col = cols.get("time")
        rows = rows[1:]
        if not rows:
            raise FormatError("the file has a header but no frames", path)
    width = len(rows[0][1])
    if order is None:
        if width not in (75, 76):
            raise FormatError(f"a row has {width} values; a Kinect v2 frame has 75 (x y z of 25 joints), "
                              "or 76 with a leading timestamp", path, rows[0][0])
        base = width - 75
        order = [[base + 3 * j + a for a in range(3)] for j in range(25)]
        time_col = 0 if base else None
    data = np.empty((len(rows), width))
    for r, (line, parts) in enumerate(rows):
        if len(parts) != width:
            raise FormatError(f"row has {len(parts)} values, expected {width}", path, line)
        data[r] = _numbers(parts, path, line)
    positions = data[:, np.asarray(order)]  # (T, 25, 3)
    if fps is None:
        fps = 30.0
        if time_col is not None and len(data) > 1:
            dt = np.diff(data[:, time_col])
            if np.any(dt <= 0):
                raise FormatError("timestamps must increase from row to row", path)
            fps = (len(dt)) / float(data[-1, time_col] - data[0, time_col])  # mean rate: robust to rounding
    return Motion(positions=positions.astype(np.float32), joints=joints, parents=parents, fps=fps,
                  layout="kinect25", source=path, meta={"format": "kinect-csv"})


def write_kinect_csv(motion: Motion, path: str | Path) -> None:
    """Write a Kinect v2 CSV with a header (time, <Joint>_x/_y/_z); the motion must be in kinect25 layout."""
    from eai.io.files import atomic_path

    joints, _ = kinect_joints()
    try:
        idx = [motion.joints.index(j) for j in joints]
    except ValueError:
        raise FormatError("only a Kinect v2 (kinect25) motion can be written as a Kinect CSV", path) from None
    t = np.arange(motion.n_frames) / motion.fps
    flat = motion.positions[:, idx].reshape(motion.n_frames, -1)
    header = "time," + ",".join(f"{j}_{a}" for j in joints for a in "xyz")
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.column_stack([t, flat]), delimiter=",", fmt="%.6f", header=header, comments="")
