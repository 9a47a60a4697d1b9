"""PYSKL / mmaction2 skeleton annotation pickles (`keypoint` M x T x V x C arrays).

Unpickling runs code stored in the file, so these are read only when the user passes --trust-pickle.
V=25 is read as Kinect v2 (NTU RGB+D order), V=17 as COCO-17; C must be 3 (x, y, z). The first person
(M index 0) is taken. An annotation with no person, or a label outside `label_names`, is refused with one
line naming it; joints at exactly (0, 0, 0) (no body seen) are missing data (`eai.io.gaps`).
"""
from __future__ import annotations

import pickle
import pickletools
from pathlib import Path

import numpy as np

from eai.errors import FormatError
from eai.io.files import read_bytes
from eai.io.gaps import repair_untracked, zero_samples
from eai.motion import Motion
from eai.skeleton.registry import registry

LAYOUT_BY_JOINTS = {25: "kinect25", 17: "coco17"}


def read_pyskl(path: str | Path, trust: bool = False, fps: float = 30.0) -> list[Motion]:
    """All clips of a PYSKL annotation pickle as Motions (label kept as the class name or index)."""
    path = str(path)
    if not trust:
        raise FormatError("reading a pickle runs code stored in it; pass --trust-pickle if you trust "
                          "this file's source", path)
    raw = read_bytes(path)
    _check_opcodes(raw, path)
    try:
        data = pickle.loads(raw)  # noqa: S301 - the user vouched for this file with --trust-pickle
    except Exception as e:
        raise FormatError(f"not a readable pickle ({type(e).__name__})", path) from None
    annotations = data.get("annotations") if isinstance(data, dict) else data
    names = data.get("label_names") if isinstance(data, dict) else None
    if not isinstance(annotations, list) or not annotations:
        raise FormatError("expected a PYSKL annotation pickle: {'annotations': [{'keypoint': ...}, ...]}", path)
    return [_clip(ann, n, names, path, fps) for n, ann in enumerate(annotations)]


MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _check_opcodes(raw: bytes, path: str) -> None:
    """Walk the pickle's opcodes without running them: a corrupt file is refused before the unpickler can
    hang on it (a memo index of 10^9 in a damaged file makes it allocate gigabytes for half a minute)."""
    n = 0
    try:
        for op, arg, pos in pickletools.genops(raw):
            n += 1
            if op.name in MEMO_OPS and int(arg) > n:
                raise FormatError(f"not a readable pickle (memo index {arg} at byte {pos} of a damaged file)", path)
    except ValueError as e:
        raise FormatError(f"not a readable pickle ({str(e)[:80]})", path) from None


def _clip(ann, n: int, names, path: str, fps: float) -> Motion:
    """Annotation n as a Motion; a one-line error naming it when it cannot be one."""
    name = f"annotation {n}" + (f" ({ann['frame_dir']})" if isinstance(ann, dict) and "frame_dir" in ann else "")
    if not isinstance(ann, dict) or "keypoint" not in ann:
        raise FormatError(f"{name} has no 'keypoint' array", path)
    try:
        kp = np.asarray(ann["keypoint"], dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"{name}: keypoint is not an array of numbers", path) from None
    if kp.ndim != 4 or kp.shape[-1] != 3:
        raise FormatError(f"{name}: keypoint must be M x T x V x 3 (3D), found {kp.shape}", path)
    if kp.shape[0] == 0:
        raise FormatError(f"{name}: no person (keypoint has 0 persons, shape {kp.shape}); drop the annotation",
                          path)
    if kp.shape[2] not in LAYOUT_BY_JOINTS:
        raise FormatError(f"{name}: {kp.shape[2]} joints; eai reads 25 (Kinect/NTU) or 17 (COCO)", path)
    if kp.shape[1] == 0 or not np.isfinite(kp[0]).all():
        raise FormatError(f"{name}: no frames, or NaN/inf in the first person's keypoints", path)
    layout = registry().get(LAYOUT_BY_JOINTS[kp.shape[2]])
    label = ann.get("label")
    if label is not None and names is not None:
        try:
            i = int(np.asarray(label).reshape(-1)[0])
            if not 0 <= i < len(names):
                raise IndexError
            label = names[i]
        except (IndexError, TypeError, ValueError, KeyError):
            raise FormatError(f"{name}: label {ann['label']!r} is not an index into label_names "
                              f"({len(names)} names)", path) from None
    m = Motion(positions=kp[0].astype(np.float32), joints=list(layout.joints), parents=list(layout.parents),
               fps=fps, layout=layout.name, label=None if label is None else str(label),
               source=f"{path}#{ann.get('frame_dir', n)}", meta={"format": "pyskl"})
    # NTU/PYSKL write (0, 0, 0) where no body was seen (camera space: a joint is never at the camera)
    return repair_untracked(m, zero_samples(m.positions, per_joint=True))
