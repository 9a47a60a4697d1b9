"""Windows: the unit every model reads. One cutter, one container (`WindowSet`), the protocol's size and stride.

The benchmark protocol (DESIGN.md) cuts unified clips into `WINDOW` = 60-frame windows (2 s at 30 fps) with
stride `STRIDE` = 30; training crops overlap more (the encoder schedules' `train_stride`). Each window is
re-centred on its own first-frame pelvis (x, z); for the encoder it is also turned to face +z at its first
frame (`face=True`); the descriptor baseline reads it as cut (`face=False`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from eai.features import descriptor_vector
from eai.skeleton.registry import canonical
from eai.skeleton.unify import UnifiedMotion, across_body, rotate_y

WINDOW, STRIDE = 60, 30


def windows(x: np.ndarray, size: int = WINDOW, stride: int = STRIDE) -> tuple[np.ndarray, np.ndarray]:
    """Cut (T, K, 3) into (N, size, K, 3) windows, each re-centred on its own first-frame pelvis (x, z).

    A clip shorter than `size` gives one window padded by repeating its last frame; a tail of at least half
    a stride gets a last window ending at the clip's end. Returns the windows and the count of real frames
    in each (N,).
    """
    T = x.shape[0]
    if T < size:
        pad = np.concatenate([x, np.repeat(x[-1:], size - T, axis=0)])
        valid = np.array([T])
        w = pad[None]
    else:
        starts = np.arange(0, T - size + 1, stride)
        if starts[-1] + size < T and T - size - starts[-1] >= stride // 2:
            starts = np.append(starts, T - size)  # keep the tail when a good part of a stride is left
        w = x[starts[:, None] + np.arange(size)]
        valid = np.full(len(starts), size)
    pelvis = canonical().index("pelvis")
    origin = w[:, :1, pelvis : pelvis + 1].copy()
    origin[..., 1] = 0.0
    return (w - origin).astype(np.float32), valid


def face_windows(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Turn each window (N, T, K, 3) about the vertical so the body faces +z at its first frame; mask (N, K).
    A window whose hips and shoulders are all absent is left as it is."""
    across = across_body(w[:, 0], mask, np.float32)
    yaw = np.arctan2(-across[:, 2], across[:, 0])  # forward = across x up = (-a_z, 0, a_x)
    yaw = np.where(np.hypot(across[:, 0], across[:, 2]) > 1e-6, yaw, 0.0)
    return rotate_y(w, -yaw).astype(np.float32)


@dataclass
class WindowSet:
    """Windows of clips, ready for a model.

    raw (N, T, K, 3) float32 body heights (faced or as cut, per `window_set`); mask (N, K) bool; desc (N, D)
    float32 descriptors in physical units (eai.features.NAMES order, NaN where missing); y (N,) label index
    (-1: a label outside `labels`); clip (N,) index of the window's clip; group (N,) the clip's split group
    (no group has windows on both sides of a split); dataset_idx (N,) which dataset of a joint run it is
    from; frames (N,) its real frames (a clip shorter than a window is padded with its last frame).
    """

    raw: np.ndarray
    mask: np.ndarray
    desc: np.ndarray
    y: np.ndarray
    clip: np.ndarray
    group: np.ndarray
    dataset_idx: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @property
    def real_fraction(self) -> np.ndarray:
        """(N,) float32: the real share of each window's frames."""
        return (self.frames / self.raw.shape[1]).astype(np.float32)

    @property
    def model_desc(self) -> np.ndarray:
        """(N, D) float32 descriptors as the encoder reads them: a missing one is 0."""
        return np.nan_to_num(self.desc).astype(np.float32)

    def _take(self, keep: np.ndarray, **replace) -> "WindowSet":
        fields = {k: getattr(self, k)[keep] for k in self.__dataclass_fields__}
        return WindowSet(**{**fields, **replace})

    def take(self, index: np.ndarray) -> "WindowSet":
        """The windows at `index` (integer indices or a boolean mask)."""
        return self._take(np.asarray(index))

    def subset(self, clips) -> "WindowSet":
        """The windows of the given clip indices."""
        return self._take(np.isin(self.clip, np.asarray(list(clips))))

    def of_dataset(self, d: int) -> "WindowSet":
        """The same windows, all read as dataset d's (a run trained on several datasets)."""
        return self._take(slice(None), dataset_idx=np.full(len(self.y), d))

    @staticmethod
    def concat(sets: list["WindowSet"], dataset_idx: list[int] | None = None) -> "WindowSet":
        """One set of several; clip indices are renumbered to stay distinct, and `dataset_idx` (one per set)
        replaces their dataset indices when given."""
        offs = np.cumsum([0] + [int(w.clip.max()) + 1 if len(w.clip) else 0 for w in sets[:-1]])
        out = {k: np.concatenate([getattr(w, k) for w in sets]) for k in WindowSet.__dataclass_fields__}
        out["clip"] = np.concatenate([w.clip + o for w, o in zip(sets, offs)])
        if dataset_idx is not None:
            out["dataset_idx"] = np.concatenate([np.full(len(w.y), d) for w, d in zip(sets, dataset_idx)])
        return WindowSet(**out)


def window_set(clips: list[UnifiedMotion], labels: list[str], size: int = WINDOW, stride: int = STRIDE,
               descriptors: bool = True, face: bool = True, progress: bool = False) -> WindowSet:
    """Cut every clip into windows (`windows`), face them (`face_windows`) unless `face` is False, and measure
    each window's descriptors (eai.features, in metres) unless `descriptors` is False (then D = 0)."""
    raws, masks, descs, ys, owner, frames, groups = [], [], [], [], [], [], []
    for i, u in enumerate(tqdm(clips, desc="windows", disable=not progress, leave=False)):
        w, valid = windows(u.positions, size, stride)
        frames.append(valid)
        mk = np.repeat(u.mask[None], len(w), 0)
        if face:
            w = face_windows(w, mk)
        raws.append(w)
        masks.append(mk)
        if descriptors:
            descs.append(np.stack([descriptor_vector(x * u.height, u.mask, u.fps) for x in w]))
        ys.append(np.full(len(w), labels.index(u.label) if u.label in labels else -1))
        owner.append(np.full(len(w), i))
        groups.append(np.full(len(w), u.group or u.source, dtype=object))
    raw, mask = np.concatenate(raws), np.concatenate(masks)
    desc = (np.concatenate(descs).astype(np.float32) if descriptors
            else np.zeros((len(raw), 0), np.float32))
    return WindowSet(raw, mask, desc, np.concatenate(ys), np.concatenate(owner),
                     np.concatenate(groups).astype(str), np.zeros(len(raw), np.int64), np.concatenate(frames))
