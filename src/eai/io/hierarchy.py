"""BVH HIERARCHY section: joint names, parents, OFFSETs (file units) and channel lists.

Shared by the reader (`eai.io.bvh`) and forward kinematics (`eai.io.fk`), so neither imports the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eai.errors import FormatError

CHANNEL_NAMES = {f"{a}{k}": (a, k) for a in "XYZ" for k in ("position", "rotation")}


@dataclass
class Hierarchy:
    names: list[str]
    parents: list[int]
    offsets: np.ndarray  # (J, 3) file units
    channels: list[list[str]]  # per joint, e.g. ["Xposition", ..., "Zrotation"]

    @property
    def n_channels(self) -> int:
        return sum(len(c) for c in self.channels)


def _tokens(lines: list[str]):
    for no, line in enumerate(lines, 1):
        for tok in line.replace("{", " { ").replace("}", " } ").split():
            yield tok, no


def parse_hierarchy(lines: list[str], path: str) -> tuple[Hierarchy, int]:
    """Parse the HIERARCHY section; return it and the 0-based index of the MOTION line."""
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[list[str]] = []
    stack: list[int | None] = []  # joint index per open brace (None for an End Site)
    pending: int | None | str = "start"  # joint awaiting its "{", None for End Site
    toks = _tokens(lines)
    last_line = 1

    def need(n: int, what: str, line: int) -> list[str]:
        out = []
        for _ in range(n):
            t = next(toks, None)
            if t is None:
                raise FormatError(f"the file ends inside the hierarchy, while reading {what}", path, line)
            out.append(t[0])
        return out

    def number(tok: str, line: int, what: str) -> float:
        try:
            v = float(tok)
        except ValueError:
            raise FormatError(f"{what} value {tok!r} is not a number", path, line) from None
        if not math.isfinite(v):
            raise FormatError(f"{what} value {tok!r} is not finite", path, line)
        return v

    first = next(toks, None)
    if first is None or first[0].upper() != "HIERARCHY":
        raise FormatError("not a BVH file: it must start with HIERARCHY", path, first[1] if first else 1)
    seen_root = False
    for tok, line in toks:
        last_line = line
        key = tok.upper()
        if key == "MOTION":
            if stack:
                raise FormatError("MOTION starts before the hierarchy's braces are closed", path, line)
            if not names:
                raise FormatError("the hierarchy has no joints", path, line)
            return Hierarchy(names, parents, np.asarray(offsets, np.float64), channels), line - 1
        if key in ("ROOT", "JOINT"):
            if key == "ROOT":
                if seen_root:
                    raise FormatError("several ROOTs: eai reads one skeleton per BVH file; "
                                      "split the file into one file per skeleton", path, line)
                if stack:
                    raise FormatError("ROOT inside another joint", path, line)
                seen_root = True
            elif not stack or stack[-1] is None:
                raise FormatError("JOINT outside a joint's braces", path, line)
            # exporters write names with spaces (3ds Max: "JOINT Bip01 L Thigh"): the rest of the line
            words = lines[line - 1].replace("}", " } ").split("{", 1)[0].split()
            at = max((i for i, w in enumerate(words) if w.upper() == key), default=len(words) - 1)
            names.append(" ".join(need(max(len(words) - at - 1, 1), "a joint name", line)))
            parents.append(stack[-1] if stack else -1)
            offsets.append([0.0, 0.0, 0.0])
            channels.append([])
            pending = len(names) - 1
        elif key == "END":
            site = need(1, "End Site", line)[0]
            if site.upper() != "SITE":
                raise FormatError(f"expected 'End Site', found 'End {site}'", path, line)
            if not stack or stack[-1] is None:
                raise FormatError("End Site outside a joint", path, line)
            pending = None
        elif tok == "{":
            if pending == "start":
                raise FormatError("'{' without a ROOT, JOINT or End Site before it", path, line)
            stack.append(pending)  # type: ignore[arg-type]
            pending = "start"
        elif tok == "}":
            if not stack:
                raise FormatError("unbalanced '}'", path, line)
            stack.pop()
        elif key == "OFFSET":
            vals = [number(t, line, "OFFSET") for t in need(3, "OFFSET", line)]
            if not stack:
                raise FormatError("OFFSET outside a joint", path, line)
            if stack[-1] is not None:
                offsets[stack[-1]] = vals
        elif key == "CHANNELS":
            if not stack or stack[-1] is None:
                raise FormatError("CHANNELS outside a joint", path, line)
            (count,) = need(1, "the channel count", line)
            if not count.isdigit():
                raise FormatError(f"channel count {count!r} is not a whole number", path, line)
            # the declared count must equal the names that follow on this line
            rest = lines[line - 1].split()
            declared = int(count)
            listed = rest[rest.index(count) + 1:] if count in rest else []
            if len(listed) != declared:
                raise FormatError(f"CHANNELS says {declared} but lists {len(listed)} channel names; "
                                  "fix the count or the names", path, line)
            chans = need(declared, "channel names", line)
            for c in chans:
                if c not in CHANNEL_NAMES:
                    raise FormatError(f"unknown channel {c!r}; expected one of "
                                      f"{', '.join(sorted(CHANNEL_NAMES))}", path, line)
            channels[stack[-1]] = chans
        else:
            raise FormatError(f"unexpected word {tok!r} in the hierarchy", path, line)
    raise FormatError("no MOTION section after the hierarchy (is the file truncated?)", path, last_line)
