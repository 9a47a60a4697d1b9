"""`eai train --stage encoder`: the encoder stage of a run folder, resumable, with a held-out evaluation.

The encoder starts from its `--init` weights (the shipped ones by default), is pre-trained from them on the
datasets' auxiliary clips when they have some (Bandai's character styles, never test clips of the task), then
trained on the training clips of every dataset at once (each window's loss over its own dataset's labels,
datasets drawn by the run's mix), and scored on each dataset's held-out clips: fold `fold` of the protocol's
folds.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from eai.data.datasets import Dataset, load_clips
from eai.data.joint import (
    RunDataset,
    joint_labels,
    label_mask,
    local_index,
    mix_weights,
    open_datasets,
)
from eai.data.splits import holdout_split
from eai.data.windows import STRIDE, WindowSet, window_set
from eai.encoder.model import EncoderConfig, predict_dataset_proba
from eai.errors import EaiError, warn
from eai.io.files import atomic_write_text
from eai.metrics import metrics, pick
from eai.report import credit, plot_curves
from eai.run import (
    ENCODER_WEIGHTS,
    MANIFEST,
    Manifest,
    RunConfig,
    save_weights,
    versions,
)
from eai.schedules import TrainConfig, encoder_schedule
from eai.skeleton.registry import canonical
from eai.train.checkpoint import JsonlLog
from eai.train.encoder import launched, train_encoder
from eai.weights import resolve_init

PRETRAIN_WEIGHTS = "pretrain.safetensors"
PRETRAIN_CHECKPOINT = "pretrain.pt"
CHECKPOINT = "checkpoint.pt"


def pretrain_windows(datasets: list[Dataset], cfg: TrainConfig, progress: bool) -> tuple[WindowSet, list[str]] | None:
    """Windows of the datasets' auxiliary clips (e.g. Bandai's character styles), labelled by their own
    labels, for pre-training; None if none has any."""
    aux = [u for ds in datasets if ds.auxiliary for u in load_clips(ds, progress=progress, refs=ds.auxiliary)]
    if not aux:
        return None
    labels = sorted({c.label for c in aux})
    return window_set(aux, labels, cfg.window, cfg.train_stride, cfg.descriptors), labels


def pretrain(ws: WindowSet, n_labels: int, cfg: TrainConfig, enc: EncoderConfig, out: Path | None,
             progress: bool, init: dict | None = None) -> dict:
    """Encoder weights pre-trained on auxiliary labels, starting from `init` (a state dict, e.g. the shipped
    weights; None: from scratch); cached in the run folder when `out` is given."""
    if out is not None and (out / PRETRAIN_WEIGHTS).is_file():
        return load_file(str(out / PRETRAIN_WEIGHTS))
    model, _ = train_encoder(ws, n_labels, cfg, enc, checkpoint=None if out is None else out / PRETRAIN_CHECKPOINT,
                             progress=progress, init=init)
    state = model.state_dict()
    if out is not None and launched()[0] == 0:  # several processes (accelerate launch): the main one writes
        save_weights(model, out / PRETRAIN_WEIGHTS)
        (out / PRETRAIN_CHECKPOINT).unlink(missing_ok=True)
    return state


def initial_weights(run: Path, init: str, pre_info: dict | None) -> dict | None:
    """The weights the encoder stage of run folder `run` started from (state dict), or None (from scratch), as its
    manifest's `pretrain` (`pre_info`) records: after an auxiliary pre-training, the one kept in the folder
    (pretrain.safetensors); else the pretrained weights of `init` (this invocation's --init: the run's own, or the
    same weights moved), accepted only when their sha256 is the one the run recorded. The cross-fitted encoders of
    the LLM stages start from them too, so that their out-of-fold posteriors are those of the run's encoder on
    clips it never saw. EaiError when the pre-training's file is gone or `init` gives other weights."""
    pre_info = pre_info or {}
    if "labels" in pre_info:  # pre-trained on the datasets' auxiliary clips
        if not (run / PRETRAIN_WEIGHTS).is_file():
            raise EaiError(f"{PRETRAIN_WEIGHTS} is missing: the encoder was pre-trained on auxiliary clips and the "
                           "cross-fitted encoders start from there; train a new run", run)
        return load_file(str(run / PRETRAIN_WEIGHTS))
    if pre_info.get("init", "none") == "none":
        return None
    try:
        state, info = resolve_init(init)
    except EaiError:
        state, info = None, {}
    if state is None or info.get("sha256") != pre_info.get("sha256"):
        raise EaiError(f"the encoder started from the weights in {pre_info.get('source')} (sha256 "
                       f"{str(pre_info.get('sha256'))[:12]}), which --init {init} does not give now; give those "
                       "weights with --init FOLDER to resume", run)
    return state


def train_encoder_run(cfg: RunConfig, datasets: list[RunDataset] | None = None, progress: bool = True) -> Path:
    """Train the encoder of run `cfg` into its folder `cfg.out` (resuming from its checkpoint). `datasets`:
    the run's datasets already read (`open_datasets` of cfg.data), so a caller that needs them too reads them
    once. Returns the run folder."""
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    tcfg = encoder_schedule(cfg.schedule, cfg.epochs, seed=cfg.seed)
    enc = EncoderConfig()
    datasets = datasets or open_datasets(cfg.data, cfg.task, progress)
    labels = joint_labels(datasets)
    splits = [holdout_split(d.clips, cfg.holdout, cfg.seed, cfg.fold) for d in datasets]
    joint = len(datasets) > 1
    init, pre_info = resolve_init(cfg.init)
    _check_resume(run, tcfg, labels, datasets, {"holdout": cfg.holdout, "fold": cfg.fold, "pretrain": cfg.pretrain,
                                                "init": pre_info["init"], "init_sha256": pre_info.get("sha256")})
    started = time.time()
    if "note" in pre_info:
        warn(pre_info["note"] + " (write weights with 'eai pretrain', use them with --init FOLDER)")
    if cfg.pretrain:  # the datasets' auxiliary clips, from the --init weights (issue 21; bench/RESULTS.md)
        aux = [d for d in datasets if d.source.auxiliary]
        got = pretrain_windows([d.source for d in aux], tcfg, progress)
        if got is not None:
            ws_pre, pre_labels = got
            init = pretrain(ws_pre, len(pre_labels), tcfg, enc, run, progress, init)
            pre_info.update({"labels": pre_labels, "windows": len(ws_pre.y), "auxiliary_data": [d.name for d in aux]})
    ws = WindowSet.concat([window_set([d.clips[i] for i in tr], labels, tcfg.window, tcfg.train_stride,
                                      tcfg.descriptors) for d, (tr, _) in zip(datasets, splits)],
                          dataset_idx=list(range(len(datasets))))
    allowed = label_mask(datasets, labels)
    held_sets = {i: window_set([d.clips[j] for j in held_idx], labels, tcfg.window, STRIDE, tcfg.descriptors)
                 for i, (d, (_, held_idx)) in enumerate(zip(datasets, splits)) if held_idx}

    def held_out_accuracy(model) -> float:  # every dataset's held-out windows, each over its own labels
        right = [predict_dataset_proba(model, ws_h, allowed, i).argmax(1) == local_index(labels, datasets[i].labels)[
            ws_h.y] for i, ws_h in held_sets.items()]
        return float(np.concatenate(right).mean())

    model, history = train_encoder(ws, len(labels), tcfg, enc, checkpoint=run / CHECKPOINT, progress=progress,
                                   init=init, log=JsonlLog(run / "log.jsonl"), allowed=allowed if joint else None,
                                   sample_p=mix_weights(ws.dataset_idx, len(datasets), cfg.mix) if joint else None,
                                   held_out=held_out_accuracy if held_sets else None)
    if launched()[0] != 0:  # several processes (accelerate launch): the main one writes the run
        return run
    held_out = {}
    for i, (d, (train_idx, held_idx)) in enumerate(zip(datasets, splits)):
        d.n_train_clips = len(train_idx)
        d.held_out_groups = [d.clips[j].group for j in held_idx]
        if held_idx:
            held = held_sets[i]
            proba = predict_dataset_proba(model, held, allowed, i)
            held_out[d.name] = pick(metrics(local_index(labels, d.labels)[held.y], proba, held.clip, d.labels))
    save_weights(model, run / ENCODER_WEIGHTS)
    manifest = Manifest(config=cfg, labels=labels, task=datasets[0].source.task, datasets=datasets,
                        encoder=model.cfg, train=tcfg, canonical_joints=list(canonical().names),
                        train_windows=len(ws.y), pretrain=pre_info, held_out=held_out,
                        train_seconds=round(time.time() - started, 1), versions=versions())
    manifest.save(run)
    n_held = {datasets[i].name: len(h.y) for i, h in held_sets.items()}  # the final figure, after BatchNorm recalibration
    final = sum(held_out[k]["window_accuracy"] * n for k, n in n_held.items()) / sum(n_held.values()) if n_held else None
    plot_curves(history, run / "curves.png", f"encoder on {manifest.name} ({cfg.schedule} schedule, "
                f"{sum(n_held.values())} held-out windows)",
                credit(d.source.attribution for d in datasets if d.source is not None), final)
    (run / CHECKPOINT).unlink(missing_ok=True)  # the run is complete; the weights are the record
    return run


def _check_resume(run: Path, cfg: TrainConfig, labels: list[str], datasets: list[RunDataset], split: dict) -> None:
    """Refuse to resume a checkpoint (of the encoder, or of the auxiliary pre-training, done or not) made with
    another configuration, label set, dataset, held-out split or starting weights (known by their sha256). A
    dataset is known by its name and its clips, not its path, so a checkpoint resumes on a moved or copied
    dataset (a run carried to another machine)."""
    stamp = run / "run-config.json"
    ids = [{"name": d.name, "clips": hashlib.sha256("\n".join(sorted(c.group for c in d.clips)).encode()).hexdigest()}
           for d in datasets]
    want = {"train": cfg.to_dict(), "labels": labels, "data": ids, "split": split}
    partial = any((run / f).exists() for f in (CHECKPOINT, PRETRAIN_CHECKPOINT, PRETRAIN_WEIGHTS))
    if stamp.exists() and json.loads(stamp.read_text()) != want and partial:
        raise EaiError("this folder holds a checkpoint of another configuration or dataset; choose a new "
                       "--out, or delete the folder to start over", run)
    if (run / MANIFEST).exists() and not (run / CHECKPOINT).exists():
        raise EaiError("this folder already holds a finished run; choose a new --out", run)
    atomic_write_text(stamp, json.dumps(want, indent=2))
