"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): one scalar T > 0
divides a model's log-probabilities before the softmax; it keeps every answer (the argmax) and is fitted by
minimising the negative log-likelihood on examples the model did not train on.

A run fits two, never on its held-out clips: the encoder's on out-of-fold posteriors of its training windows
(encoders cross-fitted on the other training clips, `eai.train.llm_run`), the LLM's on training windows whose
posterior token is out-of-fold too. `Calibration` is saved in the run's manifest and applied by `explain`,
`evaluate` and `bench llm`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

LOG_T = (-3.0, 3.0)  # T searched in [e^-3, e^3]


def scale(logp: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """softmax(logp / T) of log-probabilities or logits (N, C), T a scalar or (N, 1): (N, C) float64 probabilities."""
    x = np.asarray(logp, np.float64) / temperature
    x = x - x.max(1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(1, keepdims=True)


def scale_proba(proba: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Probabilities (N, C) recalibrated by T (their logs divided by T, renormalised; T a scalar or (N, 1), one
    per row); zeros stay zero."""
    p = np.asarray(proba, np.float64)
    with np.errstate(divide="ignore"):
        return scale(np.where(p > 0, np.log(p), -np.inf), temperature)


def log_posterior(proba: np.ndarray) -> np.ndarray:
    """Log-probabilities (N, C) float64 of posteriors `proba` (N, C), as the encoder's temperature is fitted on
    them: a probability under 1e-12 counts as 1e-12, an exact zero (a label outside the window's dataset) stays
    -inf."""
    p = np.asarray(proba, np.float64)
    return np.log(np.clip(p, 1e-12, None)) + np.where(p > 0, 0, -np.inf)


def fit_temperature(logp: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the mean NLL of softmax(logp / T) for true indices y (N,); logp (N, C) logits or
    log-probabilities (-inf allowed for impossible classes). Raises ValueError on no examples."""
    from scipy.optimize import minimize_scalar

    logp, y = np.asarray(logp, np.float64), np.asarray(y)
    if not len(y):
        raise ValueError("temperature scaling needs at least one example")
    logp = np.where(np.isfinite(logp), logp, -1e9)

    def nll(log_t: float) -> float:
        x = logp / np.exp(log_t)
        x = x - x.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(x).sum(1)) - x[np.arange(len(y)), y]))

    return float(np.exp(minimize_scalar(nll, bounds=LOG_T, method="bounded").x))


@dataclass
class Calibration:
    """A run's temperatures (1.0: as trained) and what they were fitted on: `encoder` and `llm`, `windows`
    per model, `ece_fit` {model: [before, after]} on those windows (ECE, eai.metrics)."""

    encoder: float = 1.0
    llm: float = 1.0
    fitted_on: str = ""
    windows: dict[str, int] = field(default_factory=dict)
    ece_fit: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def temper_to_entropy(proba: np.ndarray, target: np.ndarray, floor: float = 1e-6, iters: int = 40) -> np.ndarray:
    """Each row of `proba` (N, C) softened by its own temperature T >= 1 (scale_proba) until its Shannon entropy
    reaches `target`'s row (N, C) (a row already as flat stays as it is, but for the floor below; T is sought in
    [1, e^LOG_T[1]] by bisection, the entropy rising with T). A class either row gives a chance is first floored at
    `floor` (a forest's exact zeros would stay zero at any T); classes both rule out stay out. The argmax never
    changes: this gives a confident in-sample posterior the confidence a posterior of the same window from a model
    that never saw it has. (N, C) float64."""
    from scipy.stats import entropy  # here: reading a clip need not import scipy.stats

    target = np.asarray(target, np.float64)
    p = np.asarray(proba, np.float64)
    p = np.where((p > 0) | (target > 0), np.maximum(p, floor), 0.0)
    want = entropy(target, axis=1)
    lo, hi = np.zeros(len(p)), np.full(len(p), LOG_T[1])
    for _ in range(iters):
        mid = (lo + hi) / 2
        flatter = entropy(scale_proba(p, np.exp(mid)[:, None]), axis=1) < want
        lo, hi = np.where(flatter, mid, lo), np.where(flatter, hi, mid)
    return scale_proba(p, np.exp(lo)[:, None])
