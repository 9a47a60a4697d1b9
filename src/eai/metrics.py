"""Metrics of the benchmark protocol: window and clip accuracy, macro-F1, per-class recall, confusion, and
expected calibration error; means over folds x seeds."""
from __future__ import annotations

import numpy as np

HEADLINE = ("window_accuracy", "clip_accuracy", "macro_f1")


def metrics(y: np.ndarray, proba: np.ndarray, clip: np.ndarray, labels: list[str], present_only: bool = False
            ) -> dict:
    """Window accuracy, clip accuracy (mean window probabilities per clip), macro-F1, recall, confusion (over
    every label, rows true). y (N,) label indices, proba (N, len(labels)), clip (N,) clip ids. With
    `present_only`, macro-F1 and per-class recall cover only the labels some window of y has (a label the data
    lacks has no recall to measure, and its F1 of 0 would only pull the mean down)."""
    from sklearn.metrics import confusion_matrix, f1_score, recall_score  # here: `eai explain` never needs it

    pred = proba.argmax(1)
    clips = np.unique(clip)
    clip_true = np.array([y[clip == c][0] for c in clips])
    clip_pred = np.array([proba[clip == c].mean(0).argmax() for c in clips])
    idx = sorted(set(np.asarray(y).tolist())) if present_only else list(range(len(labels)))
    return {
        "window_accuracy": float((pred == y).mean()),
        "clip_accuracy": float((clip_pred == clip_true).mean()),
        "macro_f1": float(f1_score(y, pred, labels=idx, average="macro", zero_division=0)),
        "per_class_recall": dict(zip([labels[i] for i in idx], map(float, recall_score(
            y, pred, labels=idx, average=None, zero_division=0)))),
        "confusion": confusion_matrix(y, pred, labels=list(range(len(labels)))).tolist(),
    }


def summarise(runs: list[dict], labels: list[str]) -> dict:
    """Mean and std over folds x seeds; recall averaged, confusion matrices summed."""
    out = {k: float(np.mean([r[k] for r in runs])) for k in HEADLINE}
    out["std"] = {k: float(np.std([r[k] for r in runs])) for k in HEADLINE}
    out["per_class_recall"] = {c: float(np.mean([r["per_class_recall"][c] for r in runs])) for c in labels}
    out["confusion"] = np.sum([r["confusion"] for r in runs], axis=0).tolist()
    return out


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): over `bins` equal-width bins of the top probability of proba (N, C), the
    share-weighted gap between accuracy and mean confidence; y (N,) true indices. 0 is calibrated."""
    conf, pred = proba.max(1), proba.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            e += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return float(e)


def pooled_ece(diagrams: list[dict[str, list]], bins: int = 10) -> float:
    """The ECE of several sets of windows taken as one, from their reliability diagrams (`reliability`, same
    `bins`): each bin's windows, confidence and accuracy summed over the sets, then the share-weighted gap. Equal
    to `expected_calibration_error(..., bins)` of the pooled windows (up to the rounding of the diagrams)."""
    n, conf, hit = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for d in diagrams:
        for c, a, k in zip(d["confidence"], d["accuracy"], d["count"]):
            b = min(int(c * bins), bins - 1)  # a bin's mean confidence lies in the bin
            n[b] += k
            conf[b] += c * k
            hit[b] += a * k
    seen = n > 0
    return float(np.sum(np.abs(hit[seen] - conf[seen])) / n.sum()) if n.sum() else float("nan")


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, list]:
    """A reliability diagram's data (Guo et al. 2017): over `bins` equal-width bins of the top probability of
    proba (N, C), each bin's mean confidence, accuracy and window count (empty bins left out)."""
    conf, hit = proba.max(1), proba.argmax(1) == y
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out["confidence"].append(round(float(conf[sel].mean()), 4))
            out["accuracy"].append(round(float(hit[sel].mean()), 4))
            out["count"].append(int(sel.sum()))
    return out


def pick(m: dict, keys=HEADLINE + ("per_class_recall",)) -> dict:
    """The named entries of a metrics dict (what run manifests and benchmark JSON keep of each evaluation)."""
    return {k: m[k] for k in keys}
