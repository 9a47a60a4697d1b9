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


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = 10, clip: np.ndarray | None = None,
                draws: int = 0, seed: int = 0) -> dict[str, list]:
    """A reliability diagram's data (Guo et al. 2017): over `bins` equal-width bins of the top probability of
    proba (N, C), each bin's mean confidence, accuracy and window count (empty bins left out). With `draws`,
    also `consistency` (eai.metrics.consistency_hits): {scheme: draws x bins hit counts} of labels drawn from
    proba itself, for `ece_consistency`; `clip` (N,) groups the windows for the "clips" scheme."""
    conf, hit = proba.max(1), proba.argmax(1) == y
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out["confidence"].append(round(float(conf[sel].mean()), 4))
            out["accuracy"].append(round(float(hit[sel].mean()), 4))
            out["count"].append(int(sel.sum()))
    if draws:
        out["consistency"] = consistency_hits(proba, bins, draws, np.arange(len(y)) if clip is None else clip, seed)
    return out


CONSISTENCY_DRAWS = 200  # consistency draws a held-out reliability diagram keeps
CONSISTENCY = ("windows", "clips")  # how consistency_hits draws labels: each window alone, each clip's together


def consistency_hits(proba: np.ndarray, bins: int, draws: int, clip: np.ndarray, seed: int = 0) -> dict:
    """Consistency resampling (Bröcker & Smith, "Increasing the reliability of reliability diagrams", Weather
    and Forecasting 2007): `draws` sets of labels drawn from the probabilities proba (N, C) themselves, so from
    a model calibrated by construction, and for each set the hits (label = argmax) in each non-empty bin of
    `reliability`. Two ways (CONSISTENCY): "windows", each window's label drawn on its own (the paper's); and
    "clips", one uniform draw per clip (N,) read through every window's cumulative probabilities, so that a
    clip's overlapping windows fall together, as windows of one clip do (the label is the clip's). The measured
    ECE of a calibrated model on few clips is spread between the two. {scheme: (draws, bins) int lists}."""
    rng = np.random.default_rng(seed)
    p = np.asarray(proba, np.float64)
    conf, pred = p.max(1), p.argmax(1)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    seen = np.unique(idx)
    cum = np.cumsum(p, 1)
    lo, hi = cum[np.arange(len(p)), pred] - conf, cum[np.arange(len(p)), pred]  # argmax's share of [0, 1)
    _, group = np.unique(clip, return_inverse=True)
    out = {}
    for scheme in CONSISTENCY:
        u = rng.random((draws, len(p))) if scheme == "windows" else rng.random((draws, group.max() + 1))[:, group]
        hit = (u >= lo) & (u < hi)
        out[scheme] = [[int(hit[d, idx == b].sum()) for b in seen] for d in range(draws)]
    return out


def ece_consistency(diagrams: list[dict[str, list]], bins: int = 10) -> dict | None:
    """Whether a measured ECE is more than chance: the ECE of several reliability diagrams taken as one
    (`pooled_ece`, same `bins`) beside the ECEs their consistency draws give (`reliability` with `draws`; the
    same draws in each). {"ece", scheme: {"median", "p90", "p_value"}}; p_value is the share of draws of a
    calibrated model at least as far off as measured. None when a diagram has no draws."""
    if not diagrams or any("consistency" not in d for d in diagrams):
        return None
    n, conf = np.zeros(bins), np.zeros(bins)
    slots = []
    for d in diagrams:
        b = [min(int(c * bins), bins - 1) for c in d["confidence"]]
        np.add.at(n, b, d["count"])
        np.add.at(conf, b, np.asarray(d["confidence"]) * np.asarray(d["count"]))
        slots.append(b)
    observed = pooled_ece(diagrams, bins)
    out: dict = {"ece": observed}
    for scheme in CONSISTENCY:
        hits = np.zeros((len(diagrams[0]["consistency"][scheme]), bins))
        for d, b in zip(diagrams, slots):
            hits[:, b] += np.asarray(d["consistency"][scheme], float).reshape(len(hits), len(b))  # b: distinct bins
        e = np.abs(hits - conf).sum(1) / n.sum()
        out[scheme] = {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)),
                       "p_value": float(np.mean(e >= observed - 1e-9))}
    return out


def pick(m: dict, keys=HEADLINE + ("per_class_recall",)) -> dict:
    """The named entries of a metrics dict (what run manifests and benchmark JSON keep of each evaluation)."""
    return {k: m[k] for k in keys}


def consistency_range(c: dict | None) -> str:
    """'a-b': the median ECE a calibrated model would read (ece_consistency's), windows drawn alone to clips drawn
    together; 'n/a' without draws (figures stored before they were kept)."""
    return "n/a" if not c else f"{c['windows']['median']:.3f}-{c['clips']['median']:.3f}"
