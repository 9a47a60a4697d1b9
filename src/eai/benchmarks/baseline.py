"""The descriptor baseline: interpretable movement descriptors per window (eai.features) + a random forest.
It runs beside every model in the benchmark protocol, on the same folds."""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier


class DescriptorForest:
    """Random forest over window descriptors (N, D) in physical units, NaN where missing; class-balanced,
    deterministic for a seed. Descriptors no training window has are dropped; other missing values read 0."""

    def __init__(self, seed: int = 0, trees: int = 300):
        self.model = RandomForestClassifier(n_estimators=trees, class_weight="balanced", min_samples_leaf=2,
                                            random_state=seed, n_jobs=2)

    def fit(self, F: np.ndarray, y: np.ndarray) -> "DescriptorForest":
        self.columns = ~np.isnan(F).all(axis=0)
        self.model.fit(np.nan_to_num(F[:, self.columns], nan=0.0), y)
        return self

    def predict_proba(self, F: np.ndarray, n_classes: int) -> np.ndarray:
        """(N, n_classes) probabilities; a class the forest never saw gets 0."""
        p = self.model.predict_proba(np.nan_to_num(F[:, self.columns], nan=0.0))
        out = np.zeros((len(F), n_classes))
        out[:, self.model.classes_] = p
        return out
