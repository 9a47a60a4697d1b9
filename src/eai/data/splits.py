"""Splits of the benchmark protocol: stratified folds grouped by clip (or actor), so that no window of a test
clip is ever seen in training; the held-out fold of a training run is one of them."""
from __future__ import annotations

import hashlib

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from eai.errors import DatasetError, EaiError


def folds(y: np.ndarray, group: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds of windows with labels y (N,) and groups (N,), grouped so that no group has
    windows on both sides; a list of (train, test) window indices. ValueError when a label has fewer
    groups than folds."""
    n_groups_per_class = min(np.unique(group[y == c]).size for c in np.unique(y))
    if n_groups_per_class < k:
        raise ValueError(f"a label has only {n_groups_per_class} clips, fewer than {k} folds")
    groups, first = np.unique(group, return_index=True)
    group_y = y[first]
    if all(len(np.unique(y[group == g])) == 1 for g in groups):
        # one label per group (a clip): stratify the groups themselves, so every fold has every label
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        out = []
        for _, gtest in cv.split(groups, group_y):
            test = np.isin(group, groups[gtest])
            out.append((np.flatnonzero(~test), np.flatnonzero(test)))
        return out
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(y)), y, group))


def seed_folds(y: np.ndarray, group: np.ndarray, n_folds: int, n_seeds: int, where
               ) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """The protocol's folds for each seed 0..n_seeds-1; a dataset too small for them is one clear error about
    `where` (its path)."""
    try:
        return {seed: folds(y, group, n_folds, seed) for seed in range(n_seeds)}
    except ValueError as e:
        raise DatasetError(f"cannot make {n_folds} clip-grouped folds: {e}; use fewer --folds", where) from None


def holdout_split(clips: list, fraction: float, seed: int, fold: int = 0) -> tuple[list[int], list[int]]:
    """Clip indices (train, held out) of unified clips: fold `fold` of the protocol's round(1 / fraction)
    grouped, stratified folds of seed `seed` (the same split `eai bench recognition` tests that fold on)."""
    from eai.data.windows import window_set

    if fraction <= 0:
        return list(range(len(clips))), []
    labels = sorted({c.label for c in clips})
    w = window_set(clips, labels, descriptors=False, face=False)
    k = max(2, int(round(1 / fraction)))
    if not 0 <= fold < k:
        raise EaiError(f"fold {fold} does not exist: holding out {fraction:.0%} makes folds 0 to {k - 1}")
    try:
        train, test = folds(w.y, w.group, k, seed)[fold]
    except ValueError as e:
        raise EaiError(f"cannot hold out {fraction:.0%} of the clips by group and label ({e}); "
                       "use --holdout 0") from None
    return sorted(set(w.clip[train].tolist())), sorted(set(w.clip[test].tolist()))


def pretrain_holdout(clip_ids: list[str], fraction: float = 0.1) -> np.ndarray:
    """(n,) bool: the clips kept out of encoder pretraining, a fixed share `fraction` chosen by a hash of each
    clip id (no seed, no order: a clip is held out in every run and on every machine), for fine-tuning to be
    judged on clips pretraining never saw."""
    h = [int(hashlib.sha256(f"eai-pretrain-holdout:{c}".encode()).hexdigest()[:8], 16) for c in clip_ids]
    return np.array(h, dtype=np.int64) < fraction * 2**32
