"""Out-of-fold encoder posteriors of a run's training windows (cross-fitting, as in stacking: Wolpert 1992).

The run's encoder has seen every training window, so its posterior there is overconfident: a temperature
fitted on it would be too low. Here `k` encoders, each trained with the run's own schedule on the other
folds' clips (grouped by clip, stratified by label), give every training window a posterior from a model
that never saw its clip, as a new clip's would be. Both temperatures are fitted on them (eai.calibration):
the encoder's on these posteriors, the LLM's with them as its posterior token. They are cached in the run
folder (`CROSSFIT`) so a resumed run does not redo them.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eai.data.splits import folds
from eai.data.windows import WindowSet
from eai.encoder.model import EncoderConfig, predict_proba
from eai.schedules import TrainConfig
from eai.train.encoder import train_encoder

CROSSFIT = "crossfit.safetensors"


def _key(ws: WindowSet, k: int, seed: int) -> str:
    """What the cached posteriors were computed on: the windows' labels, clips, groups and the folds."""
    h = hashlib.sha256()
    for a in (ws.y, ws.clip, ws.dataset_idx, np.asarray([k, seed])):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("|".join(map(str, ws.group)).encode())
    return h.hexdigest()


def folds_used(ws: WindowSet, k: int) -> int:
    """How many folds `out_of_fold_posterior` cross-fits `ws` with when asked for `k`: fewer when a label has
    fewer clips than `k`. ValueError when one has a single clip."""
    per_class = min(np.unique(ws.group[ws.y == c]).size for c in np.unique(ws.y))
    if min(k, per_class) < 2:
        raise ValueError(f"a label has only {per_class} training clip: no encoder can be trained without it")
    return min(k, per_class)


def out_of_fold_posterior(ws: WindowSet, n_classes: int, cfg: TrainConfig, enc: EncoderConfig,
                          allowed: np.ndarray | None, init: dict | Callable[[], dict | None] | None, k: int = 3,
                          seed: int = 0,
                          cache: Path | None = None, progress: bool = True) -> np.ndarray:
    """(N, n_classes) float32 posterior of every window of `ws` (mirror-averaged; 0 outside its dataset's
    labels where `allowed` (n_datasets, n_classes) is given) from an encoder trained on the other `k - 1`
    folds of its clips, from `init` (the run's pre-trained weights, or a function giving them, called only when
    encoders are trained) with schedule `cfg`. Cached in `cache`
    (a safetensors file) and reused while the windows are the same. Fewer folds when a label has fewer clips
    than `k`; ValueError when one has a single clip."""
    from safetensors.numpy import load_file, save_file

    from eai.io.files import atomic_path

    key = _key(ws, k, seed)  # the folds asked for: the same windows give the same folds
    if cache is not None and cache.is_file():
        got = load_file(str(cache))
        if bytes(got["key"]).decode() == key:
            return got["posterior"]
    k = folds_used(ws, k)
    if callable(init):
        init = init()
    out = np.zeros((len(ws.y), n_classes), np.float32)
    joint = allowed is not None and len(allowed) > 1
    for i, (tr, te) in enumerate(tqdm(folds(ws.y, ws.group, k, seed), desc="cross-fitted encoders",
                                      disable=not progress, leave=False)):
        model, _ = train_encoder(ws.take(tr), n_classes, cfg, enc, progress=False, init=init,
                                 allowed=allowed if joint else None)
        out[te] = predict_proba(model, ws.take(te), allowed=allowed)
    if cache is not None:
        with atomic_path(cache) as tmp:
            save_file({"posterior": out, "key": np.frombuffer(key.encode(), np.uint8)}, str(tmp))
    return out
