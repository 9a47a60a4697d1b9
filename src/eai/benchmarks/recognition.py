"""`eai bench recognition` and `eai baseline`: cross-validated recognition under the benchmark protocol, every
model on the same clip-grouped folds of the same windows in the same run (DESIGN.md)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm import tqdm

from eai.encoder.forest import DescriptorForest, late_fusion
from eai.data.datasets import Dataset, load_clips, open_dataset
from eai.data.splits import seed_folds
from eai.data.windows import STRIDE, window_set
from eai.encoder.model import EncoderConfig, predict_proba
from eai.encoder.stgcn import predict_stgcn
from eai.metrics import HEADLINE, metrics, summarise
from eai.report import table
from eai.schedules import control_schedule, default_encoder_schedule, encoder_schedule
from eai.train.encoder import train_encoder
from eai.train.encoder_run import pretrain, pretrain_windows
from eai.train.stgcn import control_setup, train_stgcn
from eai.weights import resolve_init

FUSION = "encoder+baseline"  # the late fusion bench recognition adds when it runs both
SCRATCH = "encoder_scratch"  # --compare-init: the encoder from no initialisation, no auxiliary pre-training
CONTROL = "stgcn"  # --controls: a plain ST-GCN (eai.encoder.stgcn)
NETWORKS = ("encoder", SCRATCH, CONTROL)  # the models _EncoderBench trains, on its training crops


def bench_recognition(data: str, task: str | None, n_folds: int = 5, n_seeds: int = 1,
                    models: tuple[str, ...] = ("encoder", "baseline"), progress: bool = True,
                    schedule_name: str | None = None, epochs: int | None = None, use_pretrain: bool = True,
                    controls: bool = False, compare_init: bool = False, init: str = "pretrained") -> dict:
    """Cross-validated recognition: {"dataset", "task", "folds", "seeds", "labels", "models": {name: ...}}.

    Every model sees the same folds of the same windows (the protocol's, as cut, with their descriptors).
    The encoder is pre-trained once per seed on the dataset's auxiliary clips (Bandai's character styles),
    which are never test clips. `compare_init` adds the encoder trained from scratch ("encoder_scratch"),
    `controls` a plain ST-GCN ("stgcn"), both on the encoder's training crops of the same folds."""
    models = tuple(models) + (SCRATCH,) * compare_init + (CONTROL,) * controls
    ds = open_dataset(data, task)
    clips = load_clips(ds, progress=progress)
    labels = sorted({c.label for c in clips})
    w = window_set(clips, labels, descriptors="baseline" in models, face=False, progress=progress)
    enc = _EncoderBench(ds, clips, labels, schedule_name, epochs, use_pretrain and "encoder" in models,
                        progress, init) if set(NETWORKS) & set(models) else None
    splits = seed_folds(w.y, w.group, n_folds, n_seeds, ds.root)
    fuse = {"encoder", "baseline"} <= set(models)
    names = list(models) + [FUSION] * fuse
    runs: dict[str, list[dict]] = {m: [] for m in names}
    seconds = {m: 0.0 for m in names}
    bar = tqdm(total=n_seeds * n_folds * len(models), desc="folds", disable=not progress, leave=False)
    for seed, split in splits.items():
        for fold, (train, test) in enumerate(split):
            probas = {}
            tr, te = sorted(set(w.clip[train])), sorted(set(w.clip[test]))
            for name in models:
                t0 = time.perf_counter()
                if name == "encoder":
                    probas[name] = enc.fit_predict(tr, te, seed, enc.init_state(seed))
                elif name == SCRATCH:
                    probas[name] = enc.fit_predict(tr, te, seed, None)
                elif name == CONTROL:
                    probas[name] = enc.fit_predict_control(tr, te, seed)
                elif name == "baseline":
                    forest = DescriptorForest(seed).fit(w.desc[train], w.y[train])
                    probas[name] = forest.predict_proba(w.desc[test], len(labels))
                else:
                    raise ValueError(f"unknown model {name}")
                seconds[name] += time.perf_counter() - t0
                bar.update()
            if fuse:
                probas[FUSION] = late_fusion(probas["encoder"], probas["baseline"])
            for name, proba in probas.items():
                runs[name].append({"seed": seed, "fold": fold, **metrics(w.y[test], proba, w.clip[test], labels)})
    bar.close()
    if fuse:
        seconds[FUSION] = seconds["encoder"] + seconds["baseline"]
    return {
        "dataset": ds.name, "attribution": ds.attribution, "words": [ds.word(x) for x in labels], "task": ds.task,
        "folds": n_folds, "seeds": n_seeds, "labels": labels,
        "clips": len(clips), "windows": len(w),
        "encoder_setup": enc.describe(controls) if enc else None,
        "models": {m: {**summarise(runs[m], labels), "seconds": round(seconds[m], 2),
                       "runs": [{k: r[k] for k in ("seed", "fold") + HEADLINE} for r in runs[m]]}
                   for m in names},
    }


class _EncoderBench:
    """The encoder (and the networks beside it) under the protocol: windows and descriptors cut once,
    pre-training once per seed. Which initialisation the encoder starts from is an argument of `fit_predict`
    (`init_state(seed)`: the default one), so that one bench trains several."""

    def __init__(self, ds: Dataset, clips, labels, schedule_name, epochs, use_pretrain, progress, init="pretrained"):
        self.name = schedule_name or default_encoder_schedule()
        self.cfg = encoder_schedule(self.name, epochs)
        self.control = control_schedule(self.name, epochs)
        self.labels, self.progress = labels, progress
        self.train_ws = window_set(clips, labels, self.cfg.window, self.cfg.train_stride, self.cfg.descriptors)
        self.test_ws = window_set(clips, labels, self.cfg.window, STRIDE, self.cfg.descriptors)
        # the auxiliary pre-training starts from the --init weights (eai.weights)
        self.init, self.init_info = resolve_init(init)
        self.pre = pretrain_windows([ds], self.cfg, progress) if use_pretrain else None
        self.pre_state: dict[int, dict] = {}

    def init_state(self, seed: int) -> dict | None:
        """The encoder's default initialisation for `seed`: the weights of --init (eai.weights; None: from scratch),
        pre-trained from them on the dataset's auxiliary clips (once per seed) where it has some and pre-training
        is on."""
        if self.pre is not None and seed not in self.pre_state:
            cfg = dataclasses.replace(self.cfg, seed=seed)
            self.pre_state[seed] = pretrain(self.pre[0], len(self.pre[1]), cfg, EncoderConfig(), None, self.progress,
                                            self.init)
        return self.pre_state.get(seed, self.init)

    def fit_predict(self, train_clips, test_clips, seed: int, init_state: dict | None) -> np.ndarray:
        """Probabilities (N, C) of the test clips' windows from an encoder trained on the training clips' crops,
        starting from `init_state` (a state dict; None: from scratch)."""
        model, _ = train_encoder(self.train_ws.subset(train_clips), len(self.labels),
                                 dataclasses.replace(self.cfg, seed=seed), EncoderConfig(), progress=self.progress,
                                 init=init_state)
        return predict_proba(model, self.test_ws.subset(test_clips))

    def fit_predict_control(self, train_clips, test_clips, seed: int) -> np.ndarray:
        """The same of the plain ST-GCN control, on the same crops and test windows."""
        model, _ = train_stgcn(self.train_ws.subset(train_clips), len(self.labels),
                               dataclasses.replace(self.control, seed=seed), self.progress)
        return predict_stgcn(model, self.test_ws.subset(test_clips))

    def describe(self, controls: bool = False) -> dict:
        return {"schedule": self.name, "epochs": self.cfg.epochs, "train_stride": self.cfg.train_stride,
                "pretrain_labels": self.pre[1] if self.pre else None, "init": self.init_info,
                **({"control": control_setup(self.control)} if controls else {})}


def recognition_table(result: dict) -> str:
    """Models side by side, then per-class recall."""
    head = (f"{result['dataset']} / {result['task']}: {result['clips']} clips, {result['windows']} windows, "
            f"{result['folds']} folds x {result['seeds']} seeds")
    ms = result["models"]
    rows = [[name, m["window_accuracy"], m["std"]["window_accuracy"], m["clip_accuracy"], m["macro_f1"],
             m["std"]["macro_f1"]] for name, m in ms.items()]
    t1 = table(rows, ["model", "window acc", "± std", "clip acc", "macro-F1", "± std"])
    rec = [[c] + [m["per_class_recall"][c] for m in ms.values()] for c in result["labels"]]
    t2 = table(rec, ["recall"] + list(ms))
    return f"{head}\n{t1}\n\n{t2}"
