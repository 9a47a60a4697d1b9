"""`eai train --stage all`: encoder -> emotion description -> emotion recognition, into one run folder.

The encoder stage is reused when the folder holds a finished one; each LLM stage resumes from its checkpoint.
The LLM reads cached encoder features of the training clips (and their mirror images); each dataset's
neutral reference (its descriptors' baseline, for grounded explanations) is fitted on its training clips
only. A finished run is scored on its held-out clips: the LLM by label likelihood beside the encoder's head.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eai.data.joint import RunDataset, open_datasets
from eai.data.windows import STRIDE, window_set
from eai.encoder.model import encoder_features
from eai.errors import EaiError
from eai.features import clip_descriptors
from eai.llm import evidence as ev
from eai.llm.backbone import hidden_size
from eai.llm.builder import LLMConfig, LoraSettings, build_llm, load_llm, save_llm
from eai.llm.model import EmotionLLM
from eai.llm.prompts import recognition_prompt
from eai.llm.tokenizer import SkeletonTokenizerConfig
from eai.report import credit, plot_confusion, plot_llm_curves
from eai.run import MANIFEST, LLMTraining, Manifest, Run, RunConfig, load_run
from eai.schedules import STAGES, default_llm_schedule, llm_stages
from eai.train.card import write_model_card
from eai.train.checkpoint import JsonlLog
from eai.train.encoder_run import train_encoder_run
from eai.train.stages import (
    FeatureSet,
    Sampler,
    feature_set,
    peak_memory_mb,
    train_stage,
)


def train_run(cfg: RunConfig, progress: bool = True) -> Path:
    """Train run `cfg` into its folder: the encoder stage (`train_encoder_run`; reused when finished), then,
    for stage 'all', the LLM stages; resumable at every step. Several datasets train one model: each dataset's
    examples carry its tag and its own label words, and datasets are drawn by `cfg.mix`. Returns the folder."""
    run_dir = Path(cfg.out)
    resuming = (run_dir / MANIFEST).is_file()
    if resuming and (cfg.stage == "encoder" or Manifest.load(run_dir).stage == "all"):
        raise EaiError("this folder already holds a finished run; choose a new --out", run_dir)
    task = Manifest.load(run_dir).task if resuming else cfg.task  # resuming: the datasets as the run read them
    datasets = open_datasets(cfg.data, task, progress)  # read once, for the encoder stage too
    if not resuming:
        train_encoder_run(cfg, datasets, progress)
    if cfg.stage == "encoder":
        return run_dir
    run = load_run(run_dir)
    m = run.manifest
    if len(datasets) != len(m.datasets) or not all(
            d.path == r.path or r.is_moved_copy(d.name, {u.group for u in d.clips})
            for d, r in zip(datasets, m.datasets)):  # a run resumed on another machine
        raise EaiError("this folder holds a run on other datasets; choose a new --out", run_dir)
    fsets, held = [], []
    for d, r in zip(datasets, m.datasets):  # the encoder stage's held-out clips stay held out
        out_groups = set(r.held_out_groups)
        train_clips = [u for u in d.clips if u.group not in out_groups]
        ws = window_set(train_clips, m.labels, m.train.window, m.train.train_stride, descriptors=True,
                        progress=progress)
        cdesc = clip_descriptors(train_clips)
        ref = ev.Reference.fit(cdesc, [c.label for c in train_clips])
        fsets.append(feature_set(run.encoder, ws, cdesc, ref, mirror=True, progress=progress))
        held.append([u for u in d.clips if u.group in out_groups])
        r.reference = ref.to_dict()
    if m.llm is None:
        schedule = cfg.llm_schedule or default_llm_schedule(cfg.schedule)
        m.llm = LLMConfig(cfg.backbone, cfg.seed, LoraSettings(), SkeletonTokenizerConfig(
            feature_dim=run.encoder.out_channels, hidden=hidden_size(cfg.backbone),
            n_descriptors=len(ev.NAMES) if cfg.kinematic_token else 0), schedule,
            llm_stages(schedule, {"description": cfg.description_steps, "recognition": cfg.recognition_steps}))
        m.llm_training = LLMTraining()
    llm = (load_llm(run_dir, m.llm, trainable=True) if m.llm_training.done  # resuming after a finished stage
           else build_llm(m.llm))
    sampler = Sampler(FeatureSet.concat(fsets), m.labels, m.datasets, llm.skeleton_tokenizer.cfg.n_tokens,
                      m.llm.seed, m.config.mix)
    log = JsonlLog(run_dir / "log.jsonl")
    t = m.llm_training
    probe = held_out_probe(run, m.datasets, held) if any(held) else None
    for stage in STAGES:
        if stage in t.done:
            continue
        stage_cfg = m.llm.stages[stage]
        hist = train_stage(llm, sampler, stage, stage_cfg, run_dir / f"llm-{stage}.pt", progress, log, probe)
        save_llm(run_dir, llm)
        t.done.append(stage)
        t.history += [h for h in hist if h["step"] % 5 == 0 or h["step"] == stage_cfg.steps]
        t.seconds[stage] = hist[-1]["seconds"] if hist else 0.0  # resumed parts summed
        t.peak_memory_mb = round(peak_memory_mb(), 1)
        m.save(run_dir)
        (run_dir / f"llm-{stage}.pt").unlink(missing_ok=True)
    if any(held) and not m.held_out_llm:
        from eai.interpret import Interpreter

        interp = Interpreter(Run(run.path, m, run.encoder), llm.eval())
        m.held_out_llm = {r.name: interp.recognition_metrics(h, r, progress) for r, h in zip(m.datasets, held) if h}
    m.stage = "all"
    m.save(run_dir)
    plot_run_figures(run_dir, m, datasets)
    write_model_card(run_dir, m, {d.name: d.source.attribution if d.source is not None else "" for d in datasets})
    return run_dir


PROBE_WINDOWS = 64  # held-out windows per dataset scored at each LLM checkpoint (evenly spread over its clips)


def held_out_probe(run: Run, datasets: list[RunDataset], held: list[list]):
    """`probe(llm)`: the LLM's recognition accuracy (label likelihood, no mirroring) on up to PROBE_WINDOWS
    held-out windows of each dataset, each over its own labels: the held-out curve of llm-curves.png, measured at
    the LLM stages' checkpoints. The run's final figure (every held-out window, mirror-averaged) is
    `held_out_llm`."""
    sets = []
    for r, clips in zip(datasets, held):
        if not clips:
            continue
        ws = window_set(clips, r.labels, run.manifest.train.window, STRIDE, descriptors=True)
        keep = np.unique(np.linspace(0, len(ws.y) - 1, min(PROBE_WINDOWS, len(ws.y))).round().astype(int))
        z = ev.Reference.from_dict(r.reference).z(ws.model_desc[keep]).astype(np.float32)
        sets.append((r, torch.from_numpy(encoder_features(run.encoder, ws.raw[keep], ws.mask[keep])),
                     torch.from_numpy(ws.mask[keep]), torch.from_numpy(z), torch.from_numpy(ws.real_fraction[keep]),
                     ws.y[keep]))

    def probe(llm: EmotionLLM, batch: int = 16) -> float:
        right = []
        for r, feats, mask, z, frac, y in sets:
            prompt = recognition_prompt(llm.skeleton_tokenizer.cfg.n_tokens, r.tag, r.words)
            p = np.concatenate([llm.label_proba(feats[b:b + batch], mask[b:b + batch], [prompt] * len(feats[b:b + batch]),
                                                r.words, z[b:b + batch], frac[b:b + batch])
                                for b in range(0, len(y), batch)])
            right.append(p.argmax(1) == y)
        return float(np.concatenate(right).mean())

    return probe


def plot_run_figures(run_dir: Path, m: Manifest, datasets: list[RunDataset]) -> None:
    """llm-curves.png (loss and held-out accuracy at the checkpoints beside chance and the final figure), and per
    dataset the confusion of the LLM and of the encoder's head on the same held-out windows
    (confusion-llm[-NAME].png, confusion-encoder[-NAME].png), in the dataset's words, titled with the dataset and
    its attribution."""
    attribution = {d.name: d.source.attribution if d.source is not None else "" for d in datasets}
    h = m.held_out_llm
    n = {k: v["windows"] for k, v in h.items()}
    final = sum(h[k]["llm"]["window_accuracy"] * w for k, w in n.items()) / sum(n.values()) if n else None
    chance = float(np.mean([1 / len(d.labels) for d in m.datasets if d.name in h])) if h else None
    plot_llm_curves(m.llm_training.history, STAGES, run_dir / "llm-curves.png",
                    f"LLM stages on {m.name} ({m.llm.schedule} schedule); held-out: up to {PROBE_WINDOWS} windows per "
                    "dataset at checkpoints, every window (mirror-averaged) at the end", credit(attribution.values()),
                    chance, final)
    for d in m.datasets:
        if d.name not in h:
            continue
        suffix = "" if len(m.datasets) == 1 else f"-{d.name}"
        for model, what in (("llm", "LLM, label likelihood"), ("encoder", "encoder head")):
            x = h[d.name][model]
            plot_confusion(x["confusion"], d.words, run_dir / f"confusion-{model}{suffix}.png",
                           f"{d.name}, {h[d.name]['clips']} held-out clips: {what}\nwindow accuracy "
                           f"{x['window_accuracy']:.2f} (chance {1 / len(d.labels):.2f}), macro-F1 {x['macro_f1']:.2f}",
                           attribution[d.name])
