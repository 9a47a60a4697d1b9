"""The benchmark protocol: 60-frame windows, stride 30, clip-grouped stratified folds, seeds; metrics."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, recall_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from eai.data import clip_windows
from eai.skeleton.unify import UnifiedMotion

WINDOW, STRIDE = 60, 30


@dataclass
class Windows:
    """Every window of a dataset: X (N, W, K, 3) body heights, mask (N, K), y (N,), clip (N,), group (N,)."""

    X: np.ndarray
    mask: np.ndarray
    y: np.ndarray
    clip: np.ndarray
    group: np.ndarray
    labels: list[str]
    heights: np.ndarray  # (N,) metres per unit of each window's clip
    fps: float

    @classmethod
    def from_clips(cls, clips: list[UnifiedMotion], labels: list[str] | None = None,
                   size: int = WINDOW, stride: int = STRIDE) -> "Windows":
        labels = labels or sorted({c.label for c in clips})
        X, mask, clip = clip_windows(clips, size, stride)
        y = np.array([labels.index(clips[i].label) for i in clip])
        groups = np.array([clips[i].group or clips[i].source for i in clip])
        heights = np.array([clips[i].height for i in clip], np.float32)
        return cls(X, mask, y, clip, groups, labels, heights, clips[0].fps)

    def __len__(self) -> int:
        return len(self.y)


def folds(w: Windows, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds grouped so no clip (group) has windows on both sides; (train, test) indices."""
    n_groups_per_class = min(np.unique(w.group[w.y == c]).size for c in np.unique(w.y))
    if n_groups_per_class < k:
        raise ValueError(f"a label has only {n_groups_per_class} clips, fewer than {k} folds")
    groups, first = np.unique(w.group, return_index=True)
    group_y = w.y[first]
    if all(len(np.unique(w.y[w.group == g])) == 1 for g in groups):
        # one label per group (a clip): stratify the groups themselves, so every fold has every label
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        out = []
        for gtrain, gtest in cv.split(groups, group_y):
            test = np.isin(w.group, groups[gtest])
            out.append((np.flatnonzero(~test), np.flatnonzero(test)))
        return out
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(w)), w.y, w.group))


def metrics(y: np.ndarray, proba: np.ndarray, clip: np.ndarray, labels: list[str]) -> dict:
    """Window accuracy, clip accuracy (mean window probabilities per clip), macro-F1, recall, confusion."""
    pred = proba.argmax(1)
    clips = np.unique(clip)
    clip_true = np.array([y[clip == c][0] for c in clips])
    clip_pred = np.array([proba[clip == c].mean(0).argmax() for c in clips])
    idx = list(range(len(labels)))
    return {
        "window_accuracy": float((pred == y).mean()),
        "clip_accuracy": float((clip_pred == clip_true).mean()),
        "macro_f1": float(f1_score(y, pred, labels=idx, average="macro", zero_division=0)),
        "per_class_recall": dict(zip(labels, map(float, recall_score(y, pred, labels=idx, average=None,
                                                                      zero_division=0)))),
        "confusion": confusion_matrix(y, pred, labels=idx).tolist(),
    }


def summarise(runs: list[dict], labels: list[str]) -> dict:
    """Mean and std over folds x seeds; recall averaged, confusion matrices summed."""
    keys = ("window_accuracy", "clip_accuracy", "macro_f1")
    out = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    out["std"] = {k: float(np.std([r[k] for r in runs])) for k in keys}
    out["per_class_recall"] = {c: float(np.mean([r["per_class_recall"][c] for r in runs])) for c in labels}
    out["confusion"] = np.sum([r["confusion"] for r in runs], axis=0).tolist()
    return out
