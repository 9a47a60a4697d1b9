"""The descriptor forest: a random forest over a window's kinematic descriptors (eai.features), the benchmark's
interpretable baseline and the second expert of the LLM's posterior token (`fused_posterior`), stored in a run
as safetensors (arrays only: loading runs no code from the file)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np


class DescriptorForest:
    """Random forest over window descriptors (N, D) in physical units, NaN where missing; class-balanced,
    deterministic for a seed. Descriptors no training window has are dropped; other missing values read 0.

    scikit-learn fits it; once fitted, its trees are held as flat arrays (`Trees`) and predicted in numpy with
    scikit-learn's `predict_proba` arithmetic (inputs as float32, each tree's leaf fractions renormalised,
    summed in tree order, divided by the number of trees; equal to within 1e-15), so that a run stores them as
    safetensors and reading a clip imports neither scikit-learn nor a pickle."""

    def __init__(self, seed: int = 0, trees: int = 300):
        self.seed, self.n_trees = seed, trees
        self.trees: Trees | None = None

    def fit(self, F: np.ndarray, y: np.ndarray) -> "DescriptorForest":
        from sklearn.ensemble import RandomForestClassifier

        columns = ~np.isnan(F).all(axis=0)
        model = RandomForestClassifier(n_estimators=self.n_trees, class_weight="balanced", min_samples_leaf=2,
                                       random_state=self.seed, n_jobs=2)
        model.fit(np.nan_to_num(F[:, columns], nan=0.0), y)
        self.trees = Trees.of(model, columns)
        return self

    def predict_proba(self, F: np.ndarray, n_classes: int) -> np.ndarray:
        """(N, n_classes) probabilities; a class the forest never saw gets 0."""
        t = self.trees
        X = np.nan_to_num(np.asarray(F)[:, t.columns], nan=0.0).astype(np.float32).astype(np.float64)
        rows = np.arange(len(X))
        acc = np.zeros((len(X), t.value.shape[1]))
        for k in range(len(t.offsets) - 1):
            node = np.full(len(X), t.offsets[k])
            inner = t.left[node] >= 0
            while inner.any():
                go_left = X[rows, t.feature[node]] <= t.threshold[node]
                nxt = t.offsets[k] + np.where(go_left, t.left[node], t.right[node])
                node = np.where(inner, nxt, node)
                inner = t.left[node] >= 0
            v = t.value[node]
            s = v.sum(1, keepdims=True)
            acc += v / np.where(s == 0, 1.0, s)
        acc /= len(t.offsets) - 1
        out = np.zeros((len(X), n_classes))
        out[:, t.classes] = acc
        return out

    def save(self, path: Path) -> None:
        """The fitted forest as one safetensors file (written atomically)."""
        from safetensors.numpy import save_file

        from eai.io.files import atomic_path

        with atomic_path(Path(path)) as tmp:
            save_file(self.trees.arrays(), str(tmp))

    @staticmethod
    def load(path: Path) -> "DescriptorForest":
        """A forest `save` wrote; EaiError for a file that is not one."""
        from safetensors.numpy import load_file

        from eai.errors import EaiError

        try:
            trees = Trees(**load_file(str(path)))
            trees.check()
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file, whatever the reader raised
            raise EaiError(f"not a descriptor forest eai wrote ({type(e).__name__}: {e}); train the run again",
                           path) from None
        out = DescriptorForest(trees=len(trees.offsets) - 1)
        out.trees = trees
        return out


@dataclass
class Trees:
    """A fitted forest's trees as flat arrays, node i of tree k at offsets[k] + i: left, right (M,) int64 child
    indices within the tree (-1 at a leaf), feature (M,) int64, threshold (M,) float64 (go left when the
    float32 input <= it), value (M, C) float64 scikit-learn's leaf values; offsets (n_trees + 1,) int64;
    classes (C,) int64 the label indices the forest saw; columns (D,) uint8 the descriptors it reads."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    offsets: np.ndarray
    classes: np.ndarray
    columns: np.ndarray

    def __post_init__(self):
        self.columns = np.asarray(self.columns).astype(bool)

    @staticmethod
    def of(model, columns: np.ndarray) -> "Trees":
        """The trees of a fitted RandomForestClassifier reading descriptors `columns` (D,) bool."""
        ts = [e.tree_ for e in model.estimators_]
        cat = lambda f: np.concatenate([f(t) for t in ts])  # noqa: E731
        return Trees(cat(lambda t: t.children_left).astype(np.int64), cat(lambda t: t.children_right).astype(np.int64),
                     cat(lambda t: t.feature).astype(np.int64), cat(lambda t: t.threshold).astype(np.float64),
                     cat(lambda t: t.value[:, 0, :]).astype(np.float64),
                     np.cumsum([0] + [t.node_count for t in ts]).astype(np.int64),
                     np.asarray(model.classes_, np.int64), np.asarray(columns, bool))

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: (getattr(self, f.name).astype(np.uint8) if f.name == "columns" else getattr(self, f.name))
                for f in fields(self)}

    def check(self) -> None:
        """ValueError unless the arrays make trees: matching lengths, children and features in range."""
        m, n = len(self.left), int(self.offsets[-1]) if len(self.offsets) else -1
        sizes = np.diff(self.offsets)
        if not (len(self.offsets) > 1 and n == m and len(self.right) == len(self.feature) == len(self.threshold)
                == len(self.value) == m and (sizes > 0).all() and self.value.shape[1] == len(self.classes)):
            raise ValueError("arrays of mismatched lengths")
        size = np.repeat(sizes, sizes)
        inner = self.left >= 0
        if not ((self.left[inner] < size[inner]).all() and (self.right[inner] >= 0).all()
                and (self.right[inner] < size[inner]).all() and (self.feature[inner] >= 0).all()
                and (self.feature[inner] < int(self.columns.sum())).all()):
            raise ValueError("a node points outside its tree")


def out_of_fold_forest(F: np.ndarray, y: np.ndarray, group: np.ndarray, n_classes: int, seed: int = 0,
                       k: int = 5, trees: int = 300) -> np.ndarray:
    """(N, n_classes) the forest posterior of every window of descriptors F (N, D) from a forest that never saw
    its clip (`group`), k folds grouped by clip (fewer when a label has fewer clips): what a new clip's forest
    posterior looks like, for training windows. ValueError when a label has a single clip."""
    from eai.data.splits import folds

    per_class = min(np.unique(group[y == c]).size for c in np.unique(y))
    k = min(k, per_class)
    if k < 2:
        raise ValueError(f"a label has only {per_class} training clip: no forest can be cross-fitted without it")
    out = np.zeros((len(y), n_classes))
    for tr, te in folds(y, group, k, seed):
        out[te] = DescriptorForest(seed, trees).fit(F[tr], y[tr]).predict_proba(F[te], n_classes)
    return out


FUSED = "encoder+forest"  # eai.llm.builder.LLMConfig.posterior of a posterior token read through the forest too
FOREST_FILE = "descriptor-forest-{}.safetensors"  # a run's forest of its dataset number {} (eai.run.Manifest.datasets)


def forest_path(run_dir: Path, dataset: int) -> Path:
    """Where a run keeps the descriptor forest of its dataset number `dataset`."""
    return Path(run_dir) / FOREST_FILE.format(dataset)


def fused_posterior(encoder: np.ndarray, forest: DescriptorForest, desc: np.ndarray) -> np.ndarray:
    """(N, C) float32: the encoder head's posterior `encoder` (N, C) fused (late_fusion) with the forest's on the
    same windows' descriptors `desc` (N, D) in physical units: the two experts the posterior token carries,
    the skeleton's learned features and its measured kinematics (on Bandai, 5 folds, the fusion reads 0.756
    window accuracy against 0.695 for the encoder alone; bench/RESULTS.md)."""
    return late_fusion(np.asarray(encoder, np.float64), forest.predict_proba(desc, encoder.shape[1])).astype(
        np.float32)


def late_fusion(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Two models' class probabilities (N, C) fused without training: their geometric mean, renormalised
    (a class either model rules out stays out); a row where the two rule out every class gets their mean."""
    out, g = (p + q) / 2, np.sqrt(p * q)
    s = g.sum(1)
    out[s > 0] = g[s > 0] / s[s > 0, None]
    return out
