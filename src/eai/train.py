"""`eai train --stage encoder`: one run folder from a dataset, resumable, with a held-out evaluation."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from safetensors.torch import load_file

from eai.data import Dataset, load_clips
from eai.encoder.model import EncoderConfig
from eai.encoder.train import (SCHEDULES, TrainConfig, WindowSet, predict_dataset_proba, train_encoder,
                               window_set)
from eai.errors import EaiError
from eai.joint import joint_labels, label_mask, local_index, mix_weights, open_parts
from eai.protocol import Windows, folds, metrics
from eai.run import ENCODER_WEIGHTS, MANIFEST, plot_curves, save_weights, versions, write_manifest
from eai.skeleton.registry import canonical
from eai.skeleton.unify import UnifiedMotion

PRETRAIN_WEIGHTS = "pretrain.safetensors"


def schedule(name: str, epochs: int | None = None, **overrides) -> TrainConfig:
    """A named schedule; with `epochs`, warm-up and milestones scale with it (the schedule keeps its shape)."""
    if name not in SCHEDULES:
        raise EaiError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    cfg = dataclasses.replace(SCHEDULES[name], **{k: v for k, v in overrides.items() if v is not None})
    if epochs:
        r = epochs / cfg.epochs
        cfg = dataclasses.replace(cfg, epochs=epochs, warmup=max(1, round(cfg.warmup * r)),
                                  milestones=[round(m * r) for m in cfg.milestones])
    return cfg


def pretrain_windows(datasets: list[Dataset], cfg, progress: bool) -> tuple[WindowSet, list[str]] | None:
    """Windows of the datasets' auxiliary clips (e.g. Bandai's character styles), labelled by their own
    labels, for pre-training; None if none has any."""
    aux = [u for ds in datasets if ds.auxiliary for u in load_clips(ds, progress=progress, refs=ds.auxiliary)]
    if not aux:
        return None
    labels = sorted({c.label for c in aux})
    return window_set(aux, labels, cfg.window, cfg.train_stride, cfg.descriptors), labels


def pretrain(ws: WindowSet, n_labels: int, cfg, enc: EncoderConfig, out: Path | None, progress: bool) -> dict:
    """Encoder weights pre-trained on auxiliary labels; cached in the run folder when `out` is given."""
    if out is not None and (out / PRETRAIN_WEIGHTS).is_file():
        return load_file(str(out / PRETRAIN_WEIGHTS))
    model, _ = train_encoder(ws, n_labels, cfg, enc, checkpoint=None if out is None else out / "pretrain.pt",
                             progress=progress)
    state = model.state_dict()
    if out is not None:
        save_weights(model, out / PRETRAIN_WEIGHTS)
        (out / "pretrain.pt").unlink(missing_ok=True)
    return state


def holdout_split(clips: list[UnifiedMotion], fraction: float, seed: int, fold: int = 0) -> tuple[list[int], list[int]]:
    """Clip indices (train, held out): fold `fold` of the benchmark protocol's round(1 / fraction) grouped,
    stratified folds of seed `seed` (the same split `eai bench recognition` tests that fold on)."""
    if fraction <= 0:
        return list(range(len(clips))), []
    w = Windows.from_clips(clips)
    k = max(2, int(round(1 / fraction)))
    if not 0 <= fold < k:
        raise EaiError(f"fold {fold} does not exist: holding out {fraction:.0%} makes folds 0 to {k - 1}")
    try:
        train, test = folds(w, k, seed)[fold]
    except ValueError as e:
        raise EaiError(f"cannot hold out {fraction:.0%} of the clips by group and label ({e}); "
                       "use --holdout 0") from None
    return sorted(set(w.clip[train].tolist())), sorted(set(w.clip[test].tolist()))


def train_encoder_run(data: str | list[str], out: str, task: str | None = None, schedule_name: str = "paper",
                      holdout: float = 0.2, seed: int = 0, use_pretrain: bool = True, progress: bool = True,
                      epochs: int | None = None, mix: str = "equal", parts: list | None = None,
                      fold: int = 0) -> Path:
    """Train the encoder on one dataset, or on several at once (`data` a list: each keeps its own labels,
    drawn by `mix`), into run folder `out` (resuming if it holds a checkpoint). The held-out clips are fold
    `fold` of the protocol's folds (`holdout_split`). `parts`: the datasets already read (eai.joint.open_parts
    of `data`), so a caller that needs them too reads them once."""
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    cfg = schedule(schedule_name, epochs, seed=seed)
    enc = EncoderConfig()
    parts = parts or open_parts([data] if isinstance(data, str) else list(data), task, progress)
    labels = joint_labels(parts)
    splits = [holdout_split(p.clips, holdout, seed, fold) for p in parts]
    joint = len(parts) > 1
    _check_resume(run, cfg, labels, parts, {"holdout": holdout, "fold": fold})
    started = time.time()
    init = None
    pre_info = None
    if use_pretrain:
        got = pretrain_windows([p.dataset for p in parts], cfg, progress)
        if got is not None:
            ws_pre, pre_labels = got
            init = pretrain(ws_pre, len(pre_labels), cfg, enc, run, progress)
            pre_info = {"labels": pre_labels, "windows": len(ws_pre.y)}
    ws = WindowSet.concat([window_set([p.clips[i] for i in tr], labels, cfg.window, cfg.train_stride, cfg.descriptors)
                           for p, (tr, _) in zip(parts, splits)], ds=list(range(len(parts))))
    allowed = label_mask(parts, labels)
    log_path = run / "log.jsonl"

    def log(rec: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    model, history = train_encoder(ws, len(labels), cfg, enc, checkpoint=run / "checkpoint.pt",
                                   progress=progress, init=init, log=log, allowed=allowed if joint else None,
                                   sample_p=mix_weights(ws.ds, len(parts), mix) if joint else None)
    held_metrics = {}
    for d, (p, (_, held_idx)) in enumerate(zip(parts, splits)):
        if held_idx:
            held = window_set([p.clips[i] for i in held_idx], labels, cfg.window, cfg.eval_stride, cfg.descriptors)
            proba = predict_dataset_proba(model, held, allowed, d)
            m = metrics(local_index(labels, p.labels)[held.y], proba, held.clip, p.labels)
            held_metrics[p.name] = {k: m[k] for k in ("window_accuracy", "clip_accuracy", "macro_f1",
                                                      "per_class_recall")}
    save_weights(model, run / ENCODER_WEIGHTS)
    datasets = [{**p.describe(), "kind": p.dataset.kind, "train_clips": len(tr),
                 "held_out_groups": [p.clips[i].group for i in held]} for p, (tr, held) in zip(parts, splits)]
    first = parts[0]
    manifest = {
        "kind": "eai-run", "stage": "encoder", "labels": labels, "task": first.dataset.task,
        "encoder": model.cfg.to_dict(), "train": cfg.to_dict(), "schedule": schedule_name,
        "layout": "canonical", "canonical_joints": list(canonical().names),
        "data": {"path": first.path if not joint else None, "paths": [p.path for p in parts],
                 "name": "+".join(p.name for p in parts), "kind": first.dataset.kind if not joint else "joint",
                 "clips": sum(len(p.clips) for p in parts),
                 "train_clips": sum(len(tr) for tr, _ in splits), "train_windows": len(ws.y),
                 "held_out_groups": [g for d in datasets for g in d["held_out_groups"]]},
        "datasets": datasets, "mix": mix if joint else None,
        "pretrain": pre_info, "seed": seed, "fold": fold, "versions": versions(),
        "held_out_metrics": (held_metrics.get(first.name) if not joint else held_metrics) or None,
        "train_seconds": round(time.time() - started, 1),
    }
    write_manifest(run, manifest)
    plot_curves(history, run / "curves.png", f"encoder on {manifest['data']['name']} ({schedule_name} schedule)")
    (run / "checkpoint.pt").unlink(missing_ok=True)  # the run is complete; the weights are the record
    return run


def _check_resume(run: Path, cfg, labels: list[str], parts: list, split: dict) -> None:
    """Refuse to resume a checkpoint made with another configuration, label set, dataset or held-out split. A
    dataset is known by its name and its clips, not its path, so a checkpoint resumes on a moved or copied
    dataset (a run carried to another machine); stamps written before this, with the paths, still match."""
    import hashlib

    stamp = run / "run-config.json"
    ids = [{"name": p.name, "clips": hashlib.sha256("\n".join(sorted(c.group for c in p.clips)).encode()).hexdigest()}
           for p in parts]
    want = {"train": cfg.to_dict(), "labels": labels, "data": ids, "split": split}
    if stamp.exists():
        have = json.loads(stamp.read_text())
        paths = [p.path for p in parts] if len(parts) > 1 else parts[0].path
        if have not in (want, {**want, "data": paths}) and (run / "checkpoint.pt").exists():
            raise EaiError("this folder holds a checkpoint of another configuration or dataset; choose a new "
                           "--out, or delete the folder to start over", run)
    if (run / MANIFEST).exists() and not (run / "checkpoint.pt").exists():
        raise EaiError("this folder already holds a finished run; choose a new --out", run)
    from eai.io.files import atomic_write_text

    atomic_write_text(stamp, json.dumps(want, indent=2))


