"""BVH: frame parsing, forward kinematics vectorised over frames, length unit and up axis, writing.

Any ROOT/JOINT/End Site hierarchy (`eai.io.hierarchy`; joint names may hold spaces) with any rotation
channel order is read; position channels may sit on any joint and replace that joint's OFFSET component.
End Sites are not returned as joints. More frame lines than 'Frames:' declares are read, with a warning.
"""
from __future__ import annotations

import functools
import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eai.errors import FormatError, warn
from eai.io.body import settle_up, unit_scale
from eai.io.files import atomic_path, decode_text, is_number, read_bytes
from eai.io.fk import forward_kinematics
from eai.io.hierarchy import Hierarchy, parse_hierarchy
from eai.motion import Motion

@functools.lru_cache(maxsize=64)
def _frame_schema(n_cols: int, trailing_space: bool):
    import polars as pl

    cols = {f"c{i}": pl.Float64 for i in range(n_cols)}
    if trailing_space:  # "1 2 3 \n" has an empty last field
        cols["_tail"] = pl.String
    return pl.Schema(cols)


def _parse_frames_fast(body: bytes, n_cols: int) -> np.ndarray | None:
    """Frames as (T, C) float64 with polars' multithreaded parser; None if the layout is not plain.

    Any irregularity (missing or extra values, words) makes this return None or NaN, and the careful
    parser then finds and names the bad line.
    """
    first = body.split(b"\n", 1)[0].rstrip(b"\r")
    if not first.strip() or b"  " in first or b"\t" in first or first.startswith(b" "):
        return None
    try:
        import polars as pl
    except ImportError:  # the careful parser reads it, only slower
        return None
    try:
        df = pl.read_csv(body, separator=" ", has_header=False, schema=_frame_schema(n_cols, first.endswith(b" ")),
                         columns=list(range(n_cols)))
    except Exception:
        return None
    return df.to_numpy()


def _parse_frames_careful(lines: list[str], line0: int, n_frames: int, n_cols: int, path: str) -> np.ndarray:
    """Frames line by line, naming the first bad line (`line0`: file line number of lines[0], minus one).

    More frame lines than the header declares are all read (Rokoko writes one extra), with a warning;
    fewer are an error.
    """
    rows = [(i, t) for i, t in ((i, ln.strip()) for i, ln in enumerate(lines)) if t]
    if len(rows) < n_frames:
        raise FormatError(f"the header declares {n_frames} frames but only {len(rows)} are present "
                          "(is the file truncated?)", path, line0 + len(lines))
    out = np.empty((len(rows), n_cols), np.float64)
    for row, (i, text) in enumerate(rows):
        parts = text.split()
        if len(parts) != n_cols:
            raise FormatError(f"frame has {len(parts)} values, the hierarchy declares {n_cols} channels",
                              path, line0 + i + 1)
        try:
            out[row] = np.array(parts, dtype=np.float64)
        except ValueError:
            bad = next(p for p in parts if not is_number(p))
            raise FormatError(f"value {bad!r} is not a number", path, line0 + i + 1) from None
        if not np.isfinite(out[row]).all():
            bad = next(p for p in parts if not math.isfinite(float(p)))
            raise FormatError(f"value {bad!r} is not finite (NaN/inf); repair or drop this frame", path, line0 + i + 1)
    return out


def _motion_header(after: bytes, line0: int, path: str) -> tuple[int, float, int, int]:
    """Parse 'Frames:' and 'Frame Time:' from the bytes after the word MOTION (on file line `line0`).

    Returns frames, frame time, the byte offset of the first frame line and its file line number minus one.
    """
    fields: dict[str, str] = {}
    pos, line = 0, line0 - 1  # `after` starts with the end of the MOTION line itself
    while pos < len(after) and len(fields) < 2:
        end = after.find(b"\n", pos)
        end = len(after) if end < 0 else end
        text = after[pos:end].decode("latin-1").strip()
        pos, line = end + 1, line + 1
        if not text:
            continue
        key, _, value = text.partition(":")
        key = key.strip().lower()
        if key not in ("frames", "frame time"):
            raise FormatError(f"expected 'Frames:' and 'Frame Time:' after MOTION, found {text[:40]!r}", path, line)
        fields[key] = value.strip()
    if len(fields) < 2:
        raise FormatError("MOTION section lacks 'Frames:' or 'Frame Time:' (is the file truncated?)", path, line)
    try:
        n_frames = int(fields["frames"])
        frame_time = float(fields["frame time"])
    except ValueError:
        raise FormatError("'Frames:' must be a whole number and 'Frame Time:' a number of seconds",
                          path, line) from None
    if n_frames <= 0:
        raise FormatError("the clip has zero frames", path, line)
    if not (math.isfinite(frame_time) and frame_time > 0):
        raise FormatError(f"'Frame Time: {fields['frame time']}' must be a positive number of seconds", path, line)
    return n_frames, frame_time, min(pos, len(after)), line


_HIERARCHY_CACHE: dict[str, tuple[Hierarchy, int]] = {}


def _hierarchy_of(header: str, path: str) -> tuple[Hierarchy, int]:
    """Parsed hierarchy, shared by files with the same header text (a dataset's clips usually are)."""
    hit = _HIERARCHY_CACHE.get(header)
    if hit is None:
        hit = parse_hierarchy(header.splitlines(), path)
        if len(_HIERARCHY_CACHE) > 256:
            _HIERARCHY_CACHE.clear()
        _HIERARCHY_CACHE[header] = hit
    return hit


_MOTION = re.compile(rb"^[ \t]*MOTION[ \t]*\r?$", re.M)


@dataclass
class _Parsed:
    """A BVH file up to its frame values: hierarchy, frame count and time, and the raw frame bytes."""

    path: str
    h: Hierarchy
    n_frames: int
    frame_time: float
    body: bytes
    line0: int

    def careful_frames(self) -> np.ndarray:
        lines = decode_text(self.body, self.path, "a BVH file").splitlines() if self.body else []
        return _parse_frames_careful(lines, self.line0, self.n_frames, self.h.n_channels, self.path)


def _prepare(path: str) -> _Parsed:
    data = read_bytes(path)
    found = _MOTION.search(data)
    split = found.end() if found else len(data)
    h, motion_at = _hierarchy_of(decode_text(data[:split], path, "a BVH file"), path)
    if h.n_channels == 0:
        raise FormatError("the hierarchy declares no channels, so there is no motion to read", path)
    n_frames, frame_time, offset, line0 = _motion_header(data[split:], motion_at + 1, path)
    return _Parsed(path, h, n_frames, frame_time, data[split + offset:], line0)


def _finish(p: _Parsed, pos: np.ndarray, units: str | float, up: str) -> Motion:
    scale, guessed = unit_scale(units, pos, p.path)
    m = Motion(positions=(pos * scale).astype(np.float32), joints=list(p.h.names), parents=list(p.h.parents),
               fps=1.0 / p.frame_time, source=p.path, meta={"unit_scale": scale, "format": "bvh"})
    m.meta["units"] = guessed or f"{scale:g} m per file unit, given with --units"
    if len(pos) > p.n_frames:
        extra = f"{len(pos) - p.n_frames} more frame line(s) than the {p.n_frames} 'Frames:' declares; read them all"
        m.note(extra)
        warn(extra, p.path)
    return settle_up(m, up)


def _fast_frames(body: bytes, n_frames: int, n_cols: int) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = _parse_frames_fast(body, n_cols)
    if frames is None or frames.shape[0] != n_frames or not np.isfinite(frames).all():
        return None
    return frames


def read_bvh(path: str | Path, units: str | float = "auto", up: str = "auto") -> Motion:
    """Read a BVH file into a `Motion` (positions (T, J, 3) metres, y up).

    units: metres per file unit, a unit name, or auto (told from the body's size); up: the file's up axis
    (y, z, -y, ...) or auto (told from the body). What was told or repaired is in the motion's notes.
    """
    p = _prepare(str(path))
    frames = _fast_frames(p.body, p.n_frames, p.h.n_channels) if p.n_frames > 64 else None
    if frames is None:
        frames = p.careful_frames()
    return _finish(p, forward_kinematics(p.h, frames), units, up)


def read_bvh_many(paths: list[str | Path], units: str | float = "auto", up: str = "auto"
                  ) -> list[Motion | FormatError]:
    """Read many BVH files, each result a Motion or the FormatError that file raised.

    Files that share a skeleton structure (joint tree and channels; offsets may differ) are parsed in one
    polars call and go through forward kinematics together, which is several times faster than one by one.
    """
    out: list[Motion | FormatError | None] = [None] * len(paths)
    groups: dict[tuple, list[tuple[int, _Parsed]]] = {}
    for i, path in enumerate(paths):
        try:
            p = _prepare(str(path))
        except FormatError as e:
            out[i] = e
            continue
        key = (tuple(p.h.parents), tuple(map(tuple, p.h.channels)))
        groups.setdefault(key, []).append((i, p))
    for members in groups.values():
        parsed = [p for _, p in members]
        bodies = [p.body if p.body.endswith(b"\n") else p.body + b"\n" for p in parsed]
        counts = [p.n_frames for p in parsed]
        n_cols = parsed[0].h.n_channels
        frames = None
        same_shape = len({b.split(b"\n", 1)[0].endswith(b" ") for b in bodies}) == 1
        if same_shape:
            frames = _fast_frames(b"".join(bodies), sum(counts), n_cols)
        if frames is None:  # something is irregular: read each file alone to find and name it
            for i, p in members:
                try:
                    out[i] = read_bvh(p.path, units, up)
                except FormatError as e:
                    out[i] = e
            continue
        offsets = np.concatenate([np.broadcast_to(p.h.offsets, (p.n_frames,) + p.h.offsets.shape) for p in parsed])
        pos = forward_kinematics(parsed[0].h, frames, offsets)
        ends = np.cumsum(counts)
        for (i, p), stop, n in zip(members, ends, counts):
            try:
                out[i] = _finish(p, pos[stop - n:stop], units, up)
            except FormatError as e:
                out[i] = e
    return out  # type: ignore[return-value]


def write_bvh(motion: Motion, path: str | Path) -> None:
    """Write a positions-only BVH (metres): every joint has 3 position channels and no rotation.

    Rotations cannot be recovered from positions alone, so each joint's position channels hold its
    offset from its parent in world axes; any BVH reader that honours position channels replays the
    exact joint positions.
    """
    P = motion.positions.astype(np.float64)
    local = P.copy()
    for j, p in enumerate(motion.parents):
        if p >= 0:
            local[:, j] = P[:, j] - P[:, p]
    children: dict[int, list[int]] = {j: [] for j in range(len(motion.joints))}
    roots = []
    for j, p in enumerate(motion.parents):
        (children[p] if p >= 0 else roots).append(j)
    if len(roots) != 1:
        raise FormatError(f"BVH holds one skeleton tree; this motion has {len(roots)} roots", path)
    out = io.StringIO()
    out.write("HIERARCHY\n")
    order: list[int] = []

    def emit(j: int, depth: int) -> None:
        pad = "  " * depth
        kind = "ROOT" if depth == 0 else "JOINT"
        out.write(f"{pad}{kind} {motion.joints[j]}\n{pad}{{\n")
        o = local[0, j]
        out.write(f"{pad}  OFFSET {o[0]:.6f} {o[1]:.6f} {o[2]:.6f}\n")
        out.write(f"{pad}  CHANNELS 3 Xposition Yposition Zposition\n")
        order.append(j)
        for c in children[j]:
            emit(c, depth + 1)
        if not children[j]:
            out.write(f"{pad}  End Site\n{pad}  {{\n{pad}    OFFSET 0 0 0\n{pad}  }}\n")
        out.write(f"{pad}}}\n")

    emit(roots[0], 0)
    out.write(f"MOTION\nFrames: {motion.n_frames}\nFrame Time: {1.0 / motion.fps:.8f}\n")
    flat = local[:, order].reshape(motion.n_frames, -1)
    np.savetxt(out, flat, fmt="%.7f")
    with atomic_path(path) as tmp:
        tmp.write_text(out.getvalue())
