"""`eai bench llm` (the whole method under the benchmark protocol, one run folder per fold) and `eai bench
explain` (a run's LLM scored on labelled clips: recognition beside the encoder, explanations, latency)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eai.benchmarks.recognition import recognition_table
from eai.data.datasets import load_clips, open_dataset
from eai.data.splits import seed_folds
from eai.data.windows import window_set
from eai.errors import EaiError
from eai.evaluate import select_clips
from eai.interpret import Interpreter
from eai.io.files import atomic_write_text
from eai.llm.builder import ADAPTER, TOKENIZER_WEIGHTS, LoraSettings
from eai.llm.scores import explanation_scores, pooled_scores
from eai.metrics import HEADLINE, consistency_range, ece_consistency, pooled_ece, summarise
from eai.report import table
from eai.run import MANIFEST, Manifest, RunConfig
from eai.schedules import default_llm_schedule
from eai.train.encoder_run import PRETRAIN_WEIGHTS
from eai.train.llm_run import train_run
from eai.weights import resolve_init


def bench_explain(model: str, data: str, task: str | None = None, progress: bool = True, repeats: int = 5) -> dict:
    """`eai bench explain`: on the run's held-out clips (all clips of another dataset) the LLM's recognition
    beside the encoder's, explanation scores, and latency with the model loaded (median of `repeats`)."""
    it = Interpreter.load(model)
    clips, scope, source, read_as = select_clips(it.run, data, task, False, progress)
    scores, rows = it.assess(clips, read_as, progress)
    one = clip_nearest(clips, 10.0)
    t_all, t_score = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        it.explain([one], dataset=read_as.name)
        t_all.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        it.recognise([one], dataset=read_as.name)
        t_score.append(time.perf_counter() - t0)
    return {"model": str(model), "dataset": source.name, "scope": scope, "clips": len(clips),
            "labels": read_as.words, **scores,
            "latency": {"clip_seconds": round(one.n_frames / one.fps, 2), "explain_s_median": float(np.median(t_all)),
                        "label_scoring_s_median": float(np.median(t_score)), "repeats": repeats},
            "examples": [{k: r[k] for k in ("label", "emotion", "explanation")} for r in rows[:10]]}


def clip_nearest(clips: list, seconds: float):
    """The unified clip whose duration is nearest `seconds` (the one latency is measured on)."""
    return min(clips, key=lambda u: abs(u.n_frames / u.fps - seconds))


def _start(pre: dict | None) -> tuple:
    """How a run's encoder started, from its manifest's `pretrain`: (init, sha256, pre-trained on auxiliary clips)."""
    pre = pre or {}
    return pre.get("init", "none"), pre.get("sha256"), "labels" in pre


def bench_llm(cfg: RunConfig, n_folds: int = 5, n_seeds: int = 1, progress: bool = True) -> dict:
    """The whole method under the benchmark protocol: for each fold of each seed, one run folder
    (cfg.out/seed-S-fold-I: `cfg` with that seed and fold, a 1 / n_folds holdout, stage 'all') holding that
    fold out; the LLM (label likelihood) and the encoder's own head scored on the same held-out windows, and
    the held-out clips explained and checked. A finished fold is read back and an interrupted one resumes, so
    the benchmark can be run in parts. The folds are those of `eai bench recognition` (the same seeds and
    clip grouping)."""
    ds = open_dataset(cfg.data[0], cfg.task)
    clips = load_clips(ds, progress=progress)  # read once: each fold's held-out clips are taken from these
    w = window_set(clips, sorted({c.label for c in clips}), descriptors=False, face=False)
    seed_folds(w.y, w.group, n_folds, n_seeds, ds.root)  # a bad --folds fails now, not in fold 0
    root = Path(cfg.out)
    start = resolve_init(cfg.init)[1]  # every fold's encoder starts from these weights
    start = (start["init"], start.get("sha256"), cfg.pretrain and bool(ds.auxiliary))
    schedule = cfg.llm_schedule or default_llm_schedule(cfg.schedule)
    lora = LoraSettings.of_schedule(schedule)  # what every fold's LLM trains with
    per: dict[str, list[dict]] = {"llm": [], "encoder": []}
    folds_out = []
    labels: list[str] = []
    for seed in range(n_seeds):
        for i in range(n_folds):
            run = root / f"seed-{seed}-fold-{i}"
            kept = Manifest.load(run) if (run / MANIFEST).is_file() else None
            done = kept is not None and bool(kept.held_out_llm)
            if done and _start(kept.pretrain) != start:
                raise EaiError("this folder holds folds whose encoder started otherwise (other --init weights, or "
                               "with or without the auxiliary pre-training); choose a new --out", run)
            if kept is not None and kept.llm is not None and (kept.llm.schedule, kept.llm.lora) != (schedule, lora):
                raise EaiError(f"this folder holds folds whose LLM trained otherwise ({kept.llm.schedule} schedule, "
                               f"LoRA dropout {kept.llm.lora.lora_dropout:g}); choose a new --out", run)
            first_pre = root / f"seed-{seed}-fold-0" / PRETRAIN_WEIGHTS
            if not done and i and first_pre.is_file() and not (run / PRETRAIN_WEIGHTS).exists():
                # pre-training depends on the seed and the starting weights only (fold 0's checked): done once
                run.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(first_pre, run / PRETRAIN_WEIGHTS)
            if not done:
                train_run(dataclasses.replace(cfg, out=str(run), stage="all", holdout=1 / n_folds, seed=seed,
                                              fold=i), progress)
            m = Manifest.load(run)
            d = m.datasets[0]  # the run's one dataset
            h = m.held_out_llm_of(d.name)
            labels = d.labels
            ex, free = _held_out_explanations(run, [u for u in clips if u.group in set(d.held_out_groups)])
            for k in per:
                per[k].append(h[k])
            folds_out.append({"seed": seed, "fold": i, "run": str(run), "clips": h["clips"], "windows": h["windows"],
                              **{k: {a: h[k].get(a) for a in HEADLINE + ("ece", "ece_uncalibrated", "temperature")}
                                 for k in per},
                              "explanations": ex, "explanations_unconstrained": free, "llm_seconds": m.llm_training.seconds,
                              "encoder_seconds": m.train_seconds})
            if progress:  # a protocol run across sessions: each fold's figures as soon as it is done
                tqdm.write(f"seed {seed} fold {i}: window accuracy LLM {h['llm']['window_accuracy']:.3f} / encoder "
                           f"{h['encoder']['window_accuracy']:.3f}, macro-F1 {h['llm']['macro_f1']:.3f} / "
                           f"{h['encoder']['macro_f1']:.3f}; faithfulness {ex['faithfulness']}, support rate "
                           f"{ex.get('support_rate')}  ({run})")
    models = {k: {**summarise(v, labels), "ece": float(np.mean([r["ece"] for r in v])),
                  "ece_uncalibrated": float(np.mean([r.get("ece_uncalibrated", r["ece"]) for r in v])),
                  # every fold's held-out windows as one set (10 bins): less bias from few windows per bin
                  "ece_pooled": pooled_ece([r["reliability"]["calibrated"] for r in v]),
                  "ece_pooled_uncalibrated": pooled_ece([r["reliability"]["uncalibrated"] for r in v]),
                  # what a calibrated model would read on the same windows (None: a fold scored before draws were kept)
                  "ece_pooled_consistency": ece_consistency([r["reliability"]["calibrated"] for r in v])}
              for k, v in per.items()}
    return {"dataset": ds.name, "attribution": ds.attribution, "words": [ds.word(x) for x in labels], "task": ds.task,
            "folds": n_folds, "seeds": n_seeds, "labels": labels,
            "clips": sum(f["clips"] for f in folds_out) // n_seeds,
            "windows": sum(f["windows"] for f in folds_out) // n_seeds,
            "schedule": {"encoder": cfg.schedule, "llm": schedule,
                         "lora_dropout": lora.lora_dropout, "epochs": cfg.epochs,
                         "steps": {"description": cfg.description_steps, "recognition": cfg.recognition_steps}},
            "models": models, "explanations": pooled_scores([f["explanations"] for f in folds_out]),
            "explanations_unconstrained": pooled_scores([f["explanations_unconstrained"] for f in folds_out]),
            "llm_at_least_encoder_folds": sum(f["llm"]["window_accuracy"] >= f["encoder"]["window_accuracy"]
                                              for f in folds_out),
            "per_fold": folds_out}


EXPLANATIONS = "held-out-explanations.json"


def _held_out_explanations(run, clips: list) -> tuple[dict, dict]:
    """The scores of a finished fold's explanations of its held-out clips, as served (held to the claims each
    clip grounds) and as the LM chooses in the lexicon's grammar alone (Interpreter.explanations `grounded`).
    The rows and scores are kept in the run folder (EXPLANATIONS, with a digest of the LLM weights that wrote
    them), so a benchmark run again reads them back instead of explaining every clip again; new weights explain
    anew."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((run / ADAPTER).glob("*.safetensors")))
                            + (run / TOKENIZER_WEIGHTS).read_bytes()).hexdigest()
    kept = run / EXPLANATIONS
    if kept.is_file():
        old = json.loads(kept.read_text())
        if (old.get("llm_weights_sha256") == digest and len(old["rows"]) == len(clips)
                and "unconstrained" in old):  # scored before the unconstrained figures were: explained anew
            return old["scores"], old["unconstrained"]
    it = Interpreter.load(run)
    rows = it.explanations(clips, it.datasets[0])  # the run's one dataset
    for r, u in zip(rows, clips):
        r["clip"] = u.source
    scores = explanation_scores(rows)
    free = explanation_scores(it.explanations(clips, it.datasets[0], grounded=False), similarity=False)
    atomic_write_text(kept, json.dumps({"llm_weights_sha256": digest, "scores": scores, "unconstrained": free,
                                        "rows": rows}, indent=1))
    return scores, free


def llm_table(result: dict) -> str:
    """The recognition table of both models, then the explanations pooled over every fold."""
    ex = result["explanations"]
    t = table([[ex["explanations"], ex["label_consistency"], ex["faithfulness"], ex.get("support_rate"), ex["claims"],
                ex["bleu4"], ex["rouge_l"], ex.get("minilm_similarity")]],
              ["explanations", "label consistency", "faithfulness", "support rate", "claims", "BLEU-4", "ROUGE-L",
               "MiniLM sim."])
    n = len(result["per_fold"])
    mo = result["models"]
    return (f"{recognition_table(result)}\n\nECE after temperature scaling (before), mean of the folds: LLM "
            f"{mo['llm']['ece']:.3f} ({mo['llm']['ece_uncalibrated']:.3f}), encoder {mo['encoder']['ece']:.3f} "
            f"({mo['encoder']['ece_uncalibrated']:.3f}); every fold's windows as one set (10 bins): LLM "
            f"{mo['llm']['ece_pooled']:.3f} ({mo['llm']['ece_pooled_uncalibrated']:.3f}), encoder "
            f"{mo['encoder']['ece_pooled']:.3f} ({mo['encoder']['ece_pooled_uncalibrated']:.3f}); "
            f"{consistency_line(mo)}\n"
            f"LLM window accuracy >= the encoder's in "
            f"{result['llm_at_least_encoder_folds']} of {n} folds\nheld-out explanations, all folds:\n{t}\n"
            f"{unconstrained_line(result['explanations_unconstrained'])}")


def consistency_line(models: dict) -> str:
    """What a model calibrated by construction would read on the same pooled windows (ece_pooled_consistency)."""
    parts = []
    for k in ("llm", "encoder"):
        c = models[k].get("ece_pooled_consistency")
        parts.append(f"{k} {consistency_range(c)}" + (f" (p {c['windows']['p_value']:.2f}-{c['clips']['p_value']:.2f})"
                                                      if c else ""))
    return ("10-bin ECE vs what a calibrated model would read, median of consistency draws (windows alone-clips "
            "together; p: share of draws at least as far off): " + ", ".join(parts))


def unconstrained_line(ex: dict) -> str:
    """One line on the LM's own choice of claims: the explanations decoded in the lexicon's grammar without
    being held to the claims each clip grounds (Interpreter.explanations `grounded`)."""
    return (f"the LM's own choice of claims (decoded in the grammar, not held to the clip's grounded claims): "
            f"faithfulness {_fmt(ex['faithfulness'])}, support rate {_fmt(ex.get('support_rate'))} "
            f"({ex['claims']} claims)")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


