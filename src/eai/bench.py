"""`eai bench`: the benchmark protocol run end to end, every model on the same folds in the same run."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from tqdm import tqdm

from eai.baseline import DescriptorForest, window_features
from eai.data import load_clips, open_dataset
from eai.encoder.train import WindowSet
from eai.protocol import Windows, folds, metrics, summarise
from eai.report import table

FUSION = "encoder+baseline"  # the late fusion bench recognition adds when it runs both


def run_recognition(data: str, task: str | None, n_folds: int = 5, n_seeds: int = 1,
                    models: tuple[str, ...] = ("encoder", "baseline"), progress: bool = True,
                    schedule_name: str | None = None, epochs: int | None = None, use_pretrain: bool = True) -> dict:
    """Cross-validated recognition: {"dataset", "task", "folds", "seeds", "labels", "models": {name: ...}}.

    Every model sees the same folds of the same windows. The encoder is pre-trained once per seed on the
    dataset's auxiliary clips (Bandai's character styles), which are never test clips."""
    ds = open_dataset(data, task)
    clips = load_clips(ds, progress=progress)
    w = Windows.from_clips(clips)
    enc = _EncoderBench(ds, clips, w.labels, schedule_name, epochs, use_pretrain, progress) if "encoder" in models else None
    splits = seed_folds(w, n_folds, n_seeds, ds.root)
    fuse = {"encoder", "baseline"} <= set(models)
    names = list(models) + [FUSION] * fuse
    runs: dict[str, list[dict]] = {m: [] for m in names}
    seconds = {m: 0.0 for m in names}
    F = window_features(w, progress) if "baseline" in models else None
    bar = tqdm(total=n_seeds * n_folds * len(models), desc="folds", disable=not progress, leave=False)
    for seed, split in splits.items():
        for fold, (train, test) in enumerate(split):
            probas = {}
            for name in models:
                t0 = time.perf_counter()
                if name == "encoder":
                    probas[name] = enc.fit_predict(sorted(set(w.clip[train])), sorted(set(w.clip[test])), seed)
                else:
                    probas[name] = _fit_predict(name, w, F, train, test, seed, progress)
                seconds[name] += time.perf_counter() - t0
                bar.update()
            if fuse:
                probas[FUSION] = late_fusion(probas["encoder"], probas["baseline"])
            for name, proba in probas.items():
                runs[name].append({"seed": seed, "fold": fold, **metrics(w.y[test], proba, w.clip[test], w.labels)})
    bar.close()
    if fuse:
        seconds[FUSION] = seconds["encoder"] + seconds["baseline"]
    return {
        "dataset": ds.name, "task": ds.task, "folds": n_folds, "seeds": n_seeds, "labels": w.labels,
        "clips": len(clips), "windows": len(w),
        "encoder_setup": enc.describe() if enc else None,
        "models": {m: {**summarise(runs[m], w.labels), "seconds": round(seconds[m], 2),
                       "runs": [{k: r[k] for k in ("seed", "fold", "window_accuracy", "clip_accuracy", "macro_f1")}
                                for r in runs[m]]}
                   for m in names},
    }


def late_fusion(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Two models' class probabilities (N, C) fused without training: their geometric mean, renormalised
    (a class either model rules out stays out); a row where the two rule out every class gets their mean."""
    out, g = (p + q) / 2, np.sqrt(p * q)
    s = g.sum(1)
    out[s > 0] = g[s > 0] / s[s > 0, None]
    return out


def seed_folds(w: Windows, n_folds: int, n_seeds: int, where) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """The protocol's folds for each seed; a dataset too small for them is one clear error about `where`."""
    from eai.errors import DatasetError

    try:
        return {seed: folds(w, n_folds, seed) for seed in range(n_seeds)}
    except ValueError as e:
        raise DatasetError(f"cannot make {n_folds} clip-grouped folds: {e}; use fewer --folds", where) from None


class _EncoderBench:
    """The encoder under the protocol: windows and descriptors cut once, pre-training once per seed."""

    def __init__(self, ds, clips, labels, schedule_name, epochs, use_pretrain, progress):
        from eai.encoder.train import default_schedule, window_set
        from eai.train import pretrain_windows, schedule

        self.name = schedule_name or default_schedule()
        self.cfg = schedule(self.name, epochs)
        self.labels, self.progress = labels, progress
        self.train_ws = window_set(clips, labels, self.cfg.window, self.cfg.train_stride, self.cfg.descriptors)
        self.test_ws = window_set(clips, labels, self.cfg.window, self.cfg.eval_stride, self.cfg.descriptors)
        self.pre = pretrain_windows([ds], self.cfg, progress) if use_pretrain else None
        self.pre_state: dict[int, dict] = {}

    def fit_predict(self, train_clips, test_clips, seed: int) -> np.ndarray:
        from eai.encoder.model import EncoderConfig
        from eai.encoder.train import predict_proba, train_encoder
        from eai.train import pretrain

        cfg = dataclasses.replace(self.cfg, seed=seed)
        if self.pre is not None and seed not in self.pre_state:
            self.pre_state[seed] = pretrain(self.pre[0], len(self.pre[1]), cfg, EncoderConfig(), None, self.progress)
        model, _ = train_encoder(self.train_ws.subset(train_clips), len(self.labels), cfg, EncoderConfig(),
                                 progress=self.progress, init=self.pre_state.get(seed))
        return predict_proba(model, self.test_ws.subset(test_clips))

    def describe(self) -> dict:
        return {"schedule": self.name, "epochs": self.cfg.epochs, "train_stride": self.cfg.train_stride,
                "pretrain_labels": self.pre[1] if self.pre else None}


def _fit_predict(name: str, w: Windows, F: np.ndarray | None, train: np.ndarray, test: np.ndarray,
                 seed: int, progress: bool) -> np.ndarray:
    if name == "baseline":
        assert F is not None
        return DescriptorForest(seed).fit(F[train], w.y[train]).predict_proba(F[test], len(w.labels))
    raise ValueError(f"unknown model {name}")


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


def run_explain(model: str, data: str, task: str | None = None, progress: bool = True, repeats: int = 5,
                int8: bool = False) -> dict:
    """`eai bench explain`: on the run's held-out clips (all clips of another dataset) the LLM's recognition
    beside the encoder's, explanation scores, and latency with the model loaded (median of `repeats`); with
    `int8`, all of it with the LM quantized (Interpreter.of)."""
    from eai.llm.pipeline import Interpreter

    it = Interpreter.load(model, int8)
    from eai.evaluate import select_clips

    clips, scope, ds, name = select_clips(it.run, data, task, False, progress)
    voice = it.dataset(name)
    scores, rows = it.assess(clips, voice, progress)
    one = min(clips, key=lambda u: abs(u.n_frames / u.fps - 10.0))  # the clip nearest 10 s
    t_all, t_score = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        it.explain([one], dataset=name)
        t_all.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        it.recognise([one], dataset=name)
        t_score.append(time.perf_counter() - t0)
    return {"model": str(model), "int8": int8, "dataset": ds.name, "scope": scope, "clips": len(clips),
            "labels": voice.words, **scores,
            "latency": {"clip_seconds": round(one.n_frames / one.fps, 2), "explain_s_median": float(np.median(t_all)),
                        "label_scoring_s_median": float(np.median(t_score)), "repeats": repeats},
            "examples": [{k: r[k] for k in ("label", "emotion", "explanation")} for r in rows[:10]]}


def run_llm(data: str, out: str, task: str | None = None, n_folds: int = 5, n_seeds: int = 1,
            schedule_name: str | None = None, llm_schedule: str | None = None, epochs: int | None = None,
            steps: dict | None = None, backbone: str | None = None, use_pretrain: bool = True,
            progress: bool = True) -> dict:
    """The whole method under the benchmark protocol: for each fold of each seed, one `eai train --stage all`
    run folder (OUT/seed-S-fold-I) holding that fold out; the LLM (label likelihood) and the encoder's own
    head scored on the same held-out windows, and the held-out clips explained and checked. A finished fold
    is read back and an interrupted one resumes, so the benchmark can be run in parts. The folds are those of
    `eai bench recognition` (the same seeds and clip grouping)."""
    import json
    import shutil
    from pathlib import Path

    from eai.encoder.train import default_schedule
    from eai.llm.backbone import BUNDLED
    from eai.llm.pipeline import run_voices, train_all_run
    from eai.llm.scores import pooled_scores
    from eai.llm.train import SCHEDULES
    from eai.train import PRETRAIN_WEIGHTS

    sched = schedule_name or default_schedule()
    llm_sched = llm_schedule or (sched if sched in SCHEDULES else "paper")
    ds = open_dataset(data, task)
    clips = load_clips(ds, progress=progress)  # read once: each fold's held-out clips are taken from these
    seed_folds(Windows.from_clips(clips), n_folds, n_seeds, ds.root)  # a bad --folds fails now, not in fold 0
    root = Path(out)
    per: dict[str, list[dict]] = {"llm": [], "encoder": []}
    folds_out = []
    labels: list[str] = []
    for seed in range(n_seeds):
        for i in range(n_folds):
            run = root / f"seed-{seed}-fold-{i}"
            mf = run / "manifest.json"
            done = mf.is_file() and "held_out_llm" in json.loads(mf.read_text())
            first_pre = root / f"seed-{seed}-fold-0" / PRETRAIN_WEIGHTS
            if not done and i and first_pre.is_file() and not (run / PRETRAIN_WEIGHTS).exists():
                run.mkdir(parents=True, exist_ok=True)  # pre-training depends on the seed only: done once
                shutil.copyfile(first_pre, run / PRETRAIN_WEIGHTS)
            if not done:
                train_all_run(data, str(run), task, sched, llm_sched, backbone or BUNDLED, 1 / n_folds, seed,
                              use_pretrain, progress, epochs, steps, fold=i)
            m = json.loads(mf.read_text())
            h = m["held_out_llm"]
            labels = run_voices(m)[0].labels  # the run's one dataset
            ex = _held_out_explanations(run, [u for u in clips if u.group in set(m["data"]["held_out_groups"])])
            for k in per:
                per[k].append(h[k])
            folds_out.append({"seed": seed, "fold": i, "run": str(run), "clips": h["clips"], "windows": h["windows"],
                              **{k: {a: h[k][a] for a in ("window_accuracy", "clip_accuracy", "macro_f1", "ece")}
                                 for k in per},
                              "explanations": ex, "llm_seconds": m["llm"]["train_seconds"],
                              "encoder_seconds": m["train_seconds"]})
            if progress:  # a protocol run across sessions: each fold's figures as soon as it is done
                tqdm.write(f"seed {seed} fold {i}: window accuracy LLM {h['llm']['window_accuracy']:.3f} / encoder "
                           f"{h['encoder']['window_accuracy']:.3f}, macro-F1 {h['llm']['macro_f1']:.3f} / "
                           f"{h['encoder']['macro_f1']:.3f}; faithfulness {ex['faithfulness']}  ({run})")
    models = {k: {**summarise(v, labels), "ece": float(np.mean([r["ece"] for r in v]))} for k, v in per.items()}
    return {"dataset": ds.name, "task": ds.task, "folds": n_folds, "seeds": n_seeds, "labels": labels,
            "clips": sum(f["clips"] for f in folds_out) // n_seeds,
            "windows": sum(f["windows"] for f in folds_out) // n_seeds,
            "schedule": {"encoder": sched, "llm": llm_sched, "epochs": epochs, "steps": steps},
            "models": models, "explanations": pooled_scores([f["explanations"] for f in folds_out]),
            "llm_at_least_encoder_folds": sum(f["llm"]["window_accuracy"] >= f["encoder"]["window_accuracy"]
                                              for f in folds_out),
            "per_fold": folds_out}


EXPLANATIONS = "held-out-explanations.json"


def _held_out_explanations(run, clips: list) -> dict:
    """The scores of a finished fold's explanations of its held-out clips. The rows and scores are kept in the
    run folder (EXPLANATIONS, with a digest of the LLM weights that wrote them), so a benchmark run again reads
    them back instead of explaining every clip again; new weights explain anew."""
    import hashlib
    import json

    from eai.io.files import atomic_write_text
    from eai.llm.pipeline import LLM_WEIGHTS, Interpreter
    from eai.llm.scores import explanation_scores

    digest = hashlib.sha256((run / LLM_WEIGHTS).read_bytes()).hexdigest()
    kept = run / EXPLANATIONS
    if kept.is_file():
        old = json.loads(kept.read_text())
        if old.get("llm_weights_sha256") == digest and len(old["rows"]) == len(clips):
            return old["scores"]
    it = Interpreter.load(run)
    rows = it.explanations(clips, it.voices[0])  # the run's one dataset
    for r, u in zip(rows, clips):
        r["clip"] = u.source
    scores = explanation_scores(rows)
    atomic_write_text(kept, json.dumps({"llm_weights_sha256": digest, "scores": scores, "rows": rows}, indent=1))
    return scores


def llm_table(result: dict) -> str:
    """The recognition table of both models, then the explanations pooled over every fold."""
    ex = result["explanations"]
    t = table([[ex["explanations"], ex["label_consistency"], ex["faithfulness"], ex["claims"], ex["bleu4"],
                ex["rouge_l"], ex.get("minilm_similarity")]],
              ["explanations", "label consistency", "faithfulness", "claims", "BLEU-4", "ROUGE-L", "MiniLM sim."])
    n = len(result["per_fold"])
    return (f"{recognition_table(result)}\n\nLLM ECE {result['models']['llm']['ece']:.3f}, encoder ECE "
            f"{result['models']['encoder']['ece']:.3f}; LLM window accuracy >= the encoder's in "
            f"{result['llm_at_least_encoder_folds']} of {n} folds\nheld-out explanations, all folds:\n{t}")


def run_joint(datas: list[str], task: str | None = None, n_folds: int = 5, n_seeds: int = 1,
              schedule_name: str | None = None, epochs: int | None = None, mix: str = "equal",
              progress: bool = True) -> dict:
    """`eai bench joint`: per dataset, the encoder trained on that dataset alone beside one trained on all of
    them at once, on the same clip-grouped folds of each dataset in the same run.

    Fold i of the joint model trains on fold i's training clips of every dataset (each window's loss over its
    own dataset's labels, datasets drawn by `mix`) and is tested on fold i's test clips of each; no test clip
    of any dataset is ever seen in training. Pre-training on auxiliary clips is off for both."""
    import dataclasses as dc

    from eai.encoder.model import EncoderConfig
    from eai.encoder.train import default_schedule, predict_dataset_proba, predict_proba, train_encoder, window_set
    from eai.errors import EaiError
    from eai.joint import joint_labels, label_mask, local_index, mix_weights, open_parts
    from eai.train import schedule

    if len(datas) < 2:
        raise EaiError("bench joint needs two or more --data")
    parts = open_parts(datas, task, progress)
    name = schedule_name or default_schedule()
    cfg = schedule(name, epochs)
    labels = joint_labels(parts)
    allowed = label_mask(parts, labels)
    local = [local_index(labels, p.labels) for p in parts]

    def cut(p, stride):
        return window_set(p.clips, labels, cfg.window, stride, cfg.descriptors, progress)

    train_ws = [cut(p, cfg.train_stride) for p in parts]
    test_ws = [cut(p, cfg.eval_stride) for p in parts]
    splits = {}  # dataset -> seed -> [(training clip indices, test clip indices)] of its own folds
    for d, p in enumerate(parts):
        w = Windows.from_clips(p.clips)
        splits[d] = {s: [(sorted(set(w.clip[a])), sorted(set(w.clip[b]))) for a, b in fs]
                     for s, fs in seed_folds(w, n_folds, n_seeds, p.path).items()}
    runs = {p.name: {"single": [], "joint": []} for p in parts}
    seconds = {"single": 0.0, "joint": 0.0}
    bar = tqdm(total=n_seeds * n_folds * (len(parts) + 1), desc="folds", disable=not progress, leave=False)
    for seed in range(n_seeds):
        c = dc.replace(cfg, seed=seed)
        for i in range(n_folds):
            tests = [test_ws[d].subset(splits[d][seed][i][1]) for d in range(len(parts))]
            truth = [local[d][t.y] for d, t in enumerate(tests)]
            t0 = time.perf_counter()
            for d, p in enumerate(parts):  # (a) each dataset alone, on its own labels
                tr = train_ws[d].subset(splits[d][seed][i][0])
                tr = dc.replace(tr, y=local[d][tr.y])
                model, _ = train_encoder(tr, len(p.labels), c, EncoderConfig(), progress=progress)
                te = dc.replace(tests[d], y=truth[d])
                runs[p.name]["single"].append(metrics(truth[d], predict_proba(model, te), te.clip, p.labels))
                bar.update()
            seconds["single"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            joint = WindowSet.concat([train_ws[d].subset(splits[d][seed][i][0]) for d in range(len(parts))],
                                     ds=list(range(len(parts))))
            model, _ = train_encoder(joint, len(labels), c, EncoderConfig(), progress=progress, allowed=allowed,
                                     sample_p=mix_weights(joint.ds, len(parts), mix))
            for d, p in enumerate(parts):  # (b) the joint model on each dataset's test clips, its labels only
                proba = predict_dataset_proba(model, tests[d], allowed, d)
                runs[p.name]["joint"].append(metrics(truth[d], proba, tests[d].clip, p.labels))
            seconds["joint"] += time.perf_counter() - t0
            bar.update()
    bar.close()
    out = {"datasets": {}, "folds": n_folds, "seeds": n_seeds, "mix": mix, "task": parts[0].dataset.task,
           "encoder_setup": {"schedule": name, "epochs": cfg.epochs, "train_stride": cfg.train_stride,
                             "pretrain": False},
           "joint_labels": labels, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for p, tw in zip(parts, test_ws):
        single, joint = (summarise(runs[p.name][k], p.labels) for k in ("single", "joint"))
        gain = [j["window_accuracy"] - s["window_accuracy"] for s, j in zip(runs[p.name]["single"],
                                                                             runs[p.name]["joint"])]
        out["datasets"][p.name] = {
            **p.describe(), "windows": int(len(tw.y)),
            "single": single, "joint": joint,
            "gain": {"window_accuracy": float(np.mean(gain)), "std": float(np.std(gain)),
                     "macro_f1": joint["macro_f1"] - single["macro_f1"]}}
    return out


def joint_table(result: dict) -> str:
    """Single-dataset against joint training, per dataset."""
    rows = []
    for name, d in result["datasets"].items():
        s, j = d["single"], d["joint"]
        rows.append([name, d["layout"], d["clips"], s["window_accuracy"], s["std"]["window_accuracy"],
                     j["window_accuracy"], j["std"]["window_accuracy"], d["gain"]["window_accuracy"],
                     s["macro_f1"], j["macro_f1"]])
    head = (f"joint training, {result['folds']} folds x {result['seeds']} seeds, datasets drawn {result['mix']}, "
            f"encoder {result['encoder_setup']['schedule']} schedule")
    return head + "\n" + table(rows, ["dataset", "layout", "clips", "single acc", "± std", "joint acc", "± std",
                                      "gain", "single F1", "joint F1"])


def plot_joint(result: dict, path) -> None:
    """Bars of window accuracy (single vs joint, ± std over folds x seeds) per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eai.report import save_figure

    names = list(result["datasets"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.4))
    for kind, off in (("single", -0.2), ("joint", 0.2)):
        v = [result["datasets"][n][kind]["window_accuracy"] for n in names]
        e = [result["datasets"][n][kind]["std"]["window_accuracy"] for n in names]
        ax.bar(x + off, v, 0.4, yerr=e, capsize=3, label=kind)
    ax.set_xticks(x, names, rotation=15, fontsize=8)
    ax.set_ylabel("window accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    save_figure(fig, path)
