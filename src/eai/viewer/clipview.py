"""What the viewer shows of one explained clip, as plain JSON-ready data.

`clip_view(row, motion, unified)` joins an `eai explain` row with the clip it explains: the unified skeleton
to animate (canonical joints, parents, presence mask, positions in millimetres), a timeline of every claimed
descriptor (eai.features.descriptor_series) with the span where it shows most, and the file's facts.
"""
from __future__ import annotations

import math

import numpy as np

from eai.features import DESCRIPTOR_BY_NAME, descriptor_series, extreme_span
from eai.motion import Motion
from eai.skeleton.registry import normalise_name, registry
from eai.skeleton.unify import UnifiedMotion

MAX_FRAMES = 3600  # frames drawn per clip (2 min at 30 fps); longer clips are shown at a lower frame rate
DIRECTION = {"higher": 1, "lower": -1, "neutral": 0}


def _side(name: str) -> str:
    return {"l_": "left", "r_": "right"}.get(name[:2], "centre")


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def timeline(u: UnifiedMotion, descriptor: str, direction: str) -> dict:
    """The descriptor along the clip: window starts (s), values (unit), window length (s), and the span
    (start, end) in seconds where it is most extreme in the claimed direction (None if not measurable)."""
    starts, values, w = descriptor_series(u.metres(), u.mask, u.fps, descriptor)
    span = extreme_span(starts, values, w, DIRECTION[direction])
    return {"descriptor": descriptor, "unit": DESCRIPTOR_BY_NAME[descriptor].unit, "window_s": round(w, 3),
            "times": [round(float(t), 3) for t in starts], "values": [_round(v) for v in values],
            "span": None if span is None else [round(span[0], 3), round(min(span[1], u.n_frames / u.fps), 3)]}


def facts(motion: Motion, u: UnifiedMotion) -> dict:
    """The file as read: format, layout, joints, frames, fps, duration, canonical joints missing, source joints
    eai does not use, the repairs its reader reported (`motion.meta["notes"]`) and what unifying did."""
    reg = registry()
    layout = reg.get(u.layout)
    can = reg.canonical
    did = []
    scale = motion.meta.get("unit_scale")
    if scale is not None and abs(scale - 1.0) > 1e-9:
        did.append(f"lengths scaled by {scale:g} to metres")
    if abs(motion.fps - u.fps) > 1e-3:
        did.append(f"resampled from {motion.fps:g} to {u.fps:g} fps")
    did.append("centred on the first frame's pelvis and turned to face +z")
    missing = [n for n, k in zip(can.names, u.mask) if not k]
    if missing:
        did.append(f"{len(missing)} canonical joints absent: masked, not drawn")
    return {"format": motion.meta.get("format", ""), "layout": layout.name, "layout_description": layout.description,
            "joints": len(motion.joints), "frames": motion.n_frames, "fps": round(motion.fps, 4),
            "duration_s": round(motion.duration, 3), "body_height_m": round(u.height, 3),
            "canonical_missing": missing,
            "unused_joints": [j for j in motion.joints if normalise_name(j) not in set(layout.keys)],
            "repairs": list(motion.meta.get("notes", [])), "unification": did}


def clip_view(row: dict, motion: Motion, u: UnifiedMotion, name: str | None = None) -> dict:
    """Everything the page draws for one clip.

    row: an `Interpreter.explain` row (emotion, probabilities, explanation, evidence). motion: the clip as
    read; u: its unified form (what was explained). Positions are u.metres() as integer millimetres,
    flattened (T, K, 3) -> T*K*3, at `fps` (the unified rate, divided when the clip is over MAX_FRAMES).
    """
    can = registry().canonical
    step = max(1, math.ceil(u.n_frames / MAX_FRAMES))
    x = np.rint(u.metres()[::step] * 1000).astype(np.int32)
    series = [timeline(u, e["descriptor"], e["direction"]) if e.get("descriptor") else None
              for e in row.get("evidence", [])]
    return {"name": name or row.get("file") or motion.source, "row": row,
            "skeleton": {"joints": list(can.names), "parents": list(can.parents),
                         "present": [bool(k) for k in u.mask], "side": [_side(n) for n in can.names]},
            "fps": u.fps / step, "frames": int(x.shape[0]), "duration_s": round(u.n_frames / u.fps, 3),
            "positions_mm": x.reshape(-1).tolist(), "series": series, "facts": facts(motion, u)}
