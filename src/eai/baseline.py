"""The kinematic baseline: interpretable descriptors per window + a random forest."""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from tqdm import tqdm

from eai.kinematics import NAMES, descriptor_vector
from eai.protocol import Windows


def window_features(w: Windows, progress: bool = True) -> np.ndarray:
    """(N, D) descriptors of every window in physical units (NaN where the skeleton lacks the joints)."""
    out = np.empty((len(w), len(NAMES)))
    for i in tqdm(range(len(w)), desc="descriptors", unit="win", disable=not progress, leave=False):
        out[i] = descriptor_vector(w.X[i] * w.heights[i], w.mask[i], w.fps)
    return out


class DescriptorForest:
    """Random forest over window descriptors; class-balanced, deterministic for a seed."""

    def __init__(self, seed: int = 0, trees: int = 300):
        self.model = RandomForestClassifier(n_estimators=trees, class_weight="balanced", min_samples_leaf=2,
                                            random_state=seed, n_jobs=2)

    def fit(self, F: np.ndarray, y: np.ndarray) -> "DescriptorForest":
        self.columns = ~np.isnan(F).all(axis=0)  # descriptors no training window has are dropped
        self.model.fit(np.nan_to_num(F[:, self.columns], nan=0.0), y)
        return self

    def predict_proba(self, F: np.ndarray, n_classes: int) -> np.ndarray:
        p = self.model.predict_proba(np.nan_to_num(F[:, self.columns], nan=0.0))
        out = np.zeros((len(F), n_classes))
        out[:, self.model.classes_] = p
        return out
