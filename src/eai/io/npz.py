"""NPZ motion files: `positions` (T, J, 3) metres, `joints` (names, str or bytes), `fps`; optional
`parents`, `label`, `layout` (a registered layout's name, as eai writes it: the joints are read as that layout's,
so a clip with some of its joints, a Kinect CSV of a Bandai clip, reads back). Frames where every joint is exactly (0, 0, 0) are missing data (`eai.io.gaps`)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from eai.errors import FormatError
from eai.io.files import atomic_path, read_bytes
from eai.io.gaps import repair_untracked, zero_samples
from eai.motion import Motion


def read_npz(path: str | Path) -> Motion:
    """Read an NPZ motion (never unpickles: object arrays are refused)."""
    path = str(path)
    import io

    raw = read_bytes(path)
    try:
        z = np.load(io.BytesIO(raw), allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise FormatError("not an NPZ archive (a single .npy array?)", path)
        keys = set(z.files)
        missing = {"positions", "joints", "fps"} - keys
        if missing:
            raise FormatError(f"NPZ lacks {', '.join(sorted(missing))}; it needs positions (T, J, 3) metres, "
                              "joints (J names) and fps", path)
        pos = np.asarray(z["positions"], dtype=np.float64)
        joints = [_text(j) for j in z["joints"].reshape(-1)]
        fps = float(np.asarray(z["fps"]).reshape(-1)[0])
        parents = [int(p) for p in z["parents"].reshape(-1)] if "parents" in keys else None
        label = _text(np.asarray(z["label"]).reshape(-1)[0]) if "label" in keys else None
        layout_name = _text(np.asarray(z["layout"]).reshape(-1)[0]) if "layout" in keys else ""
    except FormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, IndexError, TypeError,
            UnicodeDecodeError) as e:
        raise FormatError(f"not a readable NPZ motion file ({type(e).__name__}: {str(e)[:80]})", path) from None
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise FormatError(f"positions must be (T, J, 3), found {pos.shape}", path)
    if pos.shape[0] == 0:
        raise FormatError("the clip has zero frames", path)
    if pos.shape[1] != len(joints):
        raise FormatError(f"positions have {pos.shape[1]} joints but {len(joints)} names are given", path)
    if not np.isfinite(pos).all():
        t = int(np.argwhere(~np.isfinite(pos))[0][0])
        raise FormatError(f"positions hold NaN/inf (first at frame {t}); repair or drop those frames", path)
    if not (np.isfinite(fps) and fps > 0):
        raise FormatError(f"fps must be a positive number, found {fps}", path)
    from eai.skeleton.registry import registry

    known = registry().layouts.get(layout_name)
    if known is not None and not any(j in known.joints for j in joints):
        known = None  # a layout name that does not fit the joints: told from the names, as without one
    if parents is None:
        if known is not None:
            layout, index = known, [joints.index(j) if j in joints else -1 for j in known.joints]
        else:
            layout, index = registry().detect(joints, path)
        parents = layout.parents_of(index, len(joints))
    elif len(parents) != len(joints) or any(p < -1 or p >= len(joints) for p in parents):
        raise FormatError("parents must give one index in -1..J-1 per joint", path)
    m = Motion(positions=pos.astype(np.float32), joints=joints, parents=parents, fps=fps, label=label,
               source=path, layout=known.name if known is not None else "", meta={"format": "npz"})
    return repair_untracked(m, zero_samples(m.positions, per_joint=False))


def _text(x) -> str:
    """A name as text: h5py/SLEAP exports store names as bytes (dtype S), which numpy keeps as bytes."""
    return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)


def write_npz(motion: Motion, path: str | Path) -> None:
    """Write an NPZ motion atomically (plain arrays only, readable with allow_pickle=False)."""
    arrays = dict(positions=motion.positions.astype(np.float32), joints=np.array(motion.joints, dtype=str),
                  parents=np.array(motion.parents, dtype=np.int32), fps=np.float32(motion.fps),
                  layout=np.array(motion.layout or ""))
    if motion.label is not None:
        arrays["label"] = np.array(motion.label)
    with atomic_path(Path(path).with_suffix(".npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
