"""`eai bench joint`: per dataset, the encoder trained on that dataset alone beside one trained on all of them
at once (the paper's unified skeleton tokens), on the same clip-grouped folds of each dataset in one run."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm import tqdm

from eai.data.joint import (
    joint_labels,
    label_mask,
    local_index,
    mix_weights,
    open_datasets,
)
from eai.data.splits import seed_folds
from eai.data.windows import STRIDE, WindowSet, window_set
from eai.encoder.model import EncoderConfig, predict_dataset_proba, predict_proba
from eai.errors import EaiError
from eai.metrics import metrics, summarise
from eai.report import plot_bars, table
from eai.schedules import default_encoder_schedule, encoder_schedule
from eai.train.encoder import train_encoder


def bench_joint(datas: list[str], task: str | None = None, n_folds: int = 5, n_seeds: int = 1,
              schedule_name: str | None = None, epochs: int | None = None, mix: str = "equal",
              progress: bool = True) -> dict:
    """`eai bench joint`: per dataset, the encoder trained on that dataset alone beside one trained on all of
    them at once, on the same clip-grouped folds of each dataset in the same run.

    Fold i of the joint model trains on fold i's training clips of every dataset (each window's loss over its
    own dataset's labels, datasets drawn by `mix`) and is tested on fold i's test clips of each; no test clip
    of any dataset is ever seen in training. Pre-training on auxiliary clips is off for both."""
    if len(datas) < 2:
        raise EaiError("bench joint needs two or more --data")
    datasets = open_datasets(datas, task, progress)
    name = schedule_name or default_encoder_schedule()
    cfg = encoder_schedule(name, epochs)
    labels = joint_labels(datasets)
    allowed = label_mask(datasets, labels)
    local = [local_index(labels, p.labels) for p in datasets]

    def cut(p, stride):
        return window_set(p.clips, labels, cfg.window, stride, cfg.descriptors, progress)

    train_ws = [cut(p, cfg.train_stride) for p in datasets]
    test_ws = [cut(p, STRIDE) for p in datasets]
    splits = {}  # dataset -> seed -> [(training clip indices, test clip indices)] of its own folds
    for d, p in enumerate(datasets):
        w = window_set(p.clips, p.labels, descriptors=False, face=False)
        splits[d] = {s: [(sorted(set(w.clip[a])), sorted(set(w.clip[b]))) for a, b in fs]
                     for s, fs in seed_folds(w.y, w.group, n_folds, n_seeds, p.path).items()}
    runs = {p.name: {"single": [], "joint": []} for p in datasets}
    seconds = {"single": 0.0, "joint": 0.0}
    bar = tqdm(total=n_seeds * n_folds * (len(datasets) + 1), desc="folds", disable=not progress, leave=False)
    for seed in range(n_seeds):
        c = dataclasses.replace(cfg, seed=seed)
        for i in range(n_folds):
            tests = [test_ws[d].subset(splits[d][seed][i][1]) for d in range(len(datasets))]
            truth = [local[d][t.y] for d, t in enumerate(tests)]
            t0 = time.perf_counter()
            for d, p in enumerate(datasets):  # (a) each dataset alone, on its own labels
                tr = train_ws[d].subset(splits[d][seed][i][0])
                tr = dataclasses.replace(tr, y=local[d][tr.y])
                model, _ = train_encoder(tr, len(p.labels), c, EncoderConfig(), progress=progress)
                te = dataclasses.replace(tests[d], y=truth[d])
                runs[p.name]["single"].append(metrics(truth[d], predict_proba(model, te), te.clip, p.labels))
                bar.update()
            seconds["single"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            joint = WindowSet.concat([train_ws[d].subset(splits[d][seed][i][0]) for d in range(len(datasets))],
                                     dataset_idx=list(range(len(datasets))))
            model, _ = train_encoder(joint, len(labels), c, EncoderConfig(), progress=progress, allowed=allowed,
                                     sample_p=mix_weights(joint.dataset_idx, len(datasets), mix))
            for d, p in enumerate(datasets):  # (b) the joint model on each dataset's test clips, its labels only
                proba = predict_dataset_proba(model, tests[d], allowed, d)
                runs[p.name]["joint"].append(metrics(truth[d], proba, tests[d].clip, p.labels))
            seconds["joint"] += time.perf_counter() - t0
            bar.update()
    bar.close()
    out = {"datasets": {}, "folds": n_folds, "seeds": n_seeds, "mix": mix, "task": datasets[0].source.task,
           "encoder_setup": {"schedule": name, "epochs": cfg.epochs, "train_stride": cfg.train_stride,
                             "pretrain": False},
           "joint_labels": labels, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for p, tw in zip(datasets, test_ws):
        single, joint = (summarise(runs[p.name][k], p.labels) for k in ("single", "joint"))
        gain = [j["window_accuracy"] - s["window_accuracy"] for s, j in zip(runs[p.name]["single"],
                                                                             runs[p.name]["joint"])]
        out["datasets"][p.name] = {
            **p.to_dict(), "windows": int(len(tw.y)),
            "single": single, "joint": joint,
            "gain": {"window_accuracy": float(np.mean(gain)), "std": float(np.std(gain)),
                     "macro_f1": joint["macro_f1"] - single["macro_f1"]}}
    return out


def joint_table(result: dict) -> str:
    """Single-dataset against joint training, per dataset."""
    rows = []
    for name, d in result["datasets"].items():
        s, j = d["single"], d["joint"]
        rows.append([name, d["layout"], d["n_clips"], s["window_accuracy"], s["std"]["window_accuracy"],
                     j["window_accuracy"], j["std"]["window_accuracy"], d["gain"]["window_accuracy"],
                     s["macro_f1"], j["macro_f1"]])
    head = (f"joint training, {result['folds']} folds x {result['seeds']} seeds, datasets drawn {result['mix']}, "
            f"encoder {result['encoder_setup']['schedule']} schedule")
    return head + "\n" + table(rows, ["dataset", "layout", "clips", "single acc", "± std", "joint acc", "± std",
                                      "gain", "single F1", "joint F1"])


def plot_joint(result: dict, path) -> None:
    """Bars of window accuracy (single vs joint, ± std over folds x seeds) per dataset."""
    names = list(result["datasets"])
    series = {kind: ([result["datasets"][n][kind]["window_accuracy"] for n in names],
                     [result["datasets"][n][kind]["std"]["window_accuracy"] for n in names])
              for kind in ("single", "joint")}
    plot_bars(names, series, path, "window accuracy", (0, 1))
