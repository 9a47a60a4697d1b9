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


def _bin_totals(diagrams: list[dict[str, list]], bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Each bin's windows, summed confidence and summed hits over reliability diagrams, and each diagram's bin
    indices (its `bin` entry; diagrams kept before it: the bin its mean confidence lies in)."""
    n, conf, hit = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    slots = []
    for d in diagrams:
        b = d.get("bin") or [min(int(c * bins), bins - 1) for c in d["confidence"]]
        k = np.asarray(d["count"], float)
        np.add.at(n, b, k)
        np.add.at(conf, b, np.asarray(d["confidence"]) * k)
        np.add.at(hit, b, np.asarray(d["accuracy"]) * k)
        slots.append(b)
    return n, conf, hit, slots


def pooled_ece(diagrams: list[dict[str, list]], bins: int = 10) -> float:
    """The ECE of several sets of windows taken as one, from their reliability diagrams (`reliability`, same
    `bins`): each bin's windows, confidence and accuracy summed over the sets, then the share-weighted gap. Equal
    to `expected_calibration_error(..., bins)` of the pooled windows (up to the rounding of the diagrams)."""
    n, conf, hit, _ = _bin_totals(diagrams, bins)
    return float(np.sum(np.abs(hit - conf)) / n.sum()) if n.sum() else float("nan")


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = 10, clip: np.ndarray | None = None,
                draws: int = 0, seed: int = 0) -> dict[str, list]:
    """A reliability diagram's data (Guo et al. 2017): over `bins` equal-width bins of the top probability of
    proba (N, C), each bin's index, mean confidence, accuracy and window count (empty bins left out). With
    `draws` (and windows), also `consistency`: {scheme: (draws, bins) hit counts} of a model calibrated by
    construction (`consistency_hits`; `clip` (N,) groups the windows for its "clips" scheme), for
    `ece_consistency`."""
    conf, hit = proba.max(1), proba.argmax(1) == y
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out: dict[str, list] = {"bin": [], "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out["bin"].append(b)
            out["confidence"].append(round(float(conf[sel].mean()), 4))
            out["accuracy"].append(round(float(hit[sel].mean()), 4))
            out["count"].append(int(sel.sum()))
    if draws and len(y):
        out["consistency"] = consistency_hits(conf, idx, out["bin"], draws,
                                              np.arange(len(y)) if clip is None else clip, seed)
    return out


CONSISTENCY_DRAWS = 200  # consistency draws a held-out reliability diagram keeps
CONSISTENCY = ("windows", "clips")  # how consistency_hits draws: each window alone, each clip's windows together


def consistency_hits(conf: np.ndarray, idx: np.ndarray, seen: list[int], draws: int, clip: np.ndarray,
                     seed: int = 0) -> dict:
    """Consistency resampling (Bröcker & Smith, "Increasing the reliability of reliability diagrams", Weather
    and Forecasting 2007): whether each window's answer is right, drawn `draws` times from the model's own
    confidence conf (N,) (its top probability), so as a model calibrated by construction would be, counted per
    bin (idx (N,) each window's bin; `seen` the bins kept, in order). Two ways (CONSISTENCY): "windows", each
    window drawn on its own (the paper's); "clips", one uniform u per clip (N,) for all its windows, each right
    when u < its confidence: a clip's windows are right or wrong together as far as their confidences allow (the
    strongest dependence those confidences admit; overlapping windows of one clip, which share its label, lie
    between the two). {scheme: (draws, len(seen)) int lists}."""
    rng = np.random.default_rng(seed)
    _, group = np.unique(clip, return_inverse=True)
    onehot = (idx[:, None] == np.asarray(seen)[None, :]).astype(np.int64)  # (N, bins kept)
    out = {}
    for scheme in CONSISTENCY:
        u = rng.random((draws, len(conf))) if scheme == "windows" else rng.random((draws, group.max() + 1))[:, group]
        out[scheme] = ((u < conf).astype(np.int64) @ onehot).tolist()
    return out


def ece_consistency(diagrams: list[dict[str, list]], bins: int = 10) -> dict | None:
    """Whether a measured ECE is more than chance: the ECE of several reliability diagrams taken as one
    (`pooled_ece`, same `bins`) beside the ECEs their consistency draws give (`reliability` with `draws`; as
    many in each). {"ece", scheme: {"median", "p90", "p_value"}}; p_value = (1 + draws at least as far off as
    measured) / (1 + draws), small when the model is off beyond chance. None when a diagram has no draws or
    there are no windows; ValueError when the diagrams hold different numbers of draws."""
    if not diagrams or any("consistency" not in d for d in diagrams):
        return None
    n, conf, hit, slots = _bin_totals(diagrams, bins)
    if not n.sum():
        return None
    observed = float(np.abs(hit - conf).sum() / n.sum())  # pooled_ece, from the totals already summed
    out: dict = {"ece": observed}
    for scheme in CONSISTENCY:
        counts = {len(d["consistency"][scheme]) for d in diagrams}
        if len(counts) != 1:
            raise ValueError(f"reliability diagrams with different numbers of consistency draws: {sorted(counts)}")
        hits = np.zeros((counts.pop(), bins))
        for d, b in zip(diagrams, slots):
            np.add.at(hits.T, b, np.asarray(d["consistency"][scheme], float).reshape(len(hits), len(b)).T)
        e = np.abs(hits - conf).sum(1) / n.sum()
        out[scheme] = {"median": float(np.median(e)), "p90": float(np.quantile(e, 0.9)),
                       "p_value": float((1 + np.sum(e >= observed - 1e-9)) / (1 + len(e)))}
    return out


def pick(m: dict, keys=HEADLINE + ("per_class_recall",)) -> dict:
    """The named entries of a metrics dict (what run manifests and benchmark JSON keep of each evaluation)."""
    return {k: m[k] for k in keys}


def consistency_range(c: dict | None) -> str:
    """'ECE vs a-b': the 10-bin ECE measured and the median ECE a calibrated model reads on the same windows
    (ece_consistency's), each window drawn alone to each clip's windows drawn together; 'n/a' without draws
    (figures kept before they were)."""
    return "n/a" if not c else f"{c['ece']:.3f} vs {c['windows']['median']:.3f}-{c['clips']['median']:.3f}"
