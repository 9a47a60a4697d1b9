"""`eai train --stage all`: encoder -> emotion description -> emotion recognition, into one run folder.

The encoder stage is reused when the folder holds a finished one; each LLM stage resumes from its checkpoint.
The LLM reads cached encoder features of the training clips (and their mirror images); each dataset's
reference (its descriptors' neutral baseline and the mean of each label's clips, for grounded explanations that
support their answer: eai.llm.evidence.Reference) is fitted on its training clips only and stored in the
manifest with the dataset. A finished run is scored on its held-out clips: the LLM by label likelihood beside the encoder's head.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from eai.calibration import Calibration, fit_temperature, log_posterior, scale, temper_to_entropy

import torch

from eai.data.joint import RunDataset, label_mask, open_datasets
from eai.data.windows import STRIDE, WindowSet, window_set
from eai.encoder.forest import (FUSED, DescriptorForest, forest_path, fused_posterior, late_fusion,
                               out_of_fold_forest)
from eai.encoder.model import encoder_features, predict_proba
from eai.errors import EaiError
from eai.features import clip_descriptors
from eai.llm import evidence as ev
from eai.llm.backbone import hidden_size
from eai.llm.builder import LLMConfig, LoraSettings, build_llm, load_llm, save_llm
from eai.llm.model import EmotionLLM
from eai.llm.prompts import recognition_templates
from eai.llm.tokenizer import SkeletonTokenizerConfig
from eai.metrics import expected_calibration_error
from eai.report import credit, plot_confusion, plot_llm_curves, plot_reliability
from eai.run import MANIFEST, LLMTraining, Manifest, Run, RunConfig, load_run, pool_held_out
from eai.schedules import STAGES, default_llm_schedule, llm_stages
from eai.train.card import write_model_card
from eai.train.checkpoint import JsonlLog
from eai.train.crossfit import CROSSFIT, out_of_fold_posterior
from eai.train.encoder import launched
from eai.train.encoder_run import initial_weights, train_encoder_run
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
    if cfg.stage != "encoder" and launched()[1] > 1:
        raise EaiError("the LLM stages train in one process: run 'eai train --stage encoder' under accelerate "
                       "launch, then 'eai train --stage all' with the same --out in one process", run_dir)
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
    wsets, held, refs = [], [], []
    for d, r in zip(datasets, m.datasets):  # the encoder stage's held-out clips stay held out
        out_groups = set(r.held_out_groups)
        train_clips = [u for u in d.clips if u.group not in out_groups]
        wsets.append(window_set(train_clips, m.labels, m.train.window, m.train.train_stride, descriptors=True,
                                progress=progress))
        cdesc = clip_descriptors(train_clips)
        refs.append((cdesc, ev.Reference.fit(cdesc, [c.label for c in train_clips])))
        held.append([u for u in d.clips if u.group in out_groups])
        r.reference = refs[-1][1].to_dict()
    # every training window's encoder posterior from encoders that never saw its clip: what the posterior token
    # learns from, and what the encoder's temperature is fitted on
    allowed = label_mask(m.datasets, m.labels)
    every = WindowSet.concat(wsets, dataset_idx=list(range(len(wsets))))
    try:
        oof = out_of_fold_posterior(every, len(m.labels), m.train, m.encoder, allowed,
                                    lambda: initial_weights(run_dir, cfg.init, m.pretrain), seed=cfg.seed,
                                    cache=run_dir / CROSSFIT, progress=progress)
    except ValueError as e:  # too few clips to cross-fit: the temperatures stay 1, and the manifest says why
        oof, why = None, str(e)
    # the posterior token learns from the run's own experts on the training windows (as at inference): so taught,
    # the LLM reads it as the strong evidence it is; taught on the weaker out-of-fold posteriors it leaned on the
    # motion tokens, which the encoder fits more closely on its training clips than on new ones (demo: held-out
    # LLM 0.44 against 0.70 so taught; bench/RESULTS.md). But in-sample the experts are all but certain (median top
    # probability 0.91 on the demo, 0.43 out of fold): the LLM never saw a hesitant token, and on a new clip's it
    # followed the motion tokens, rarely rightly. So each training token keeps its answer and is given the
    # confidence of the same window's out-of-fold token (eai.calibration.temper_to_entropy).
    #
    # with a forest (LLMConfig.posterior FUSED), each dataset's descriptor forest, fitted on its training windows,
    # is the second expert the token reads (eai.encoder.forest.fused_posterior): on training windows the run's
    # own forest, as at inference, and out of fold forests cross-fitted on the other training clips
    fused = (m.llm.posterior if m.llm is not None else FUSED if cfg.posterior_token else "encoder") == FUSED
    forests = [run_forest(run_dir, i, ws, len(m.labels), cfg.seed) for i, ws in enumerate(wsets)] if fused else None
    oof_token = None if oof is None else [oof[every.dataset_idx == i] for i in range(len(wsets))]
    if fused and oof is not None:
        try:
            oof_token = [late_fusion(p, out_of_fold_forest(ws.desc, ws.y, ws.group, len(m.labels),
                                                           cfg.seed)).astype(np.float32)
                         for p, ws in zip(oof_token, wsets)]
        except ValueError as e:
            oof, oof_token, why = None, None, str(e)
    post = [predict_proba(run.encoder, ws.of_dataset(i), allowed=allowed) for i, ws in enumerate(wsets)]
    if fused:
        post = [fused_posterior(p, f, ws.desc) for p, f, ws in zip(post, forests, wsets)]
    confidence = (m.llm.token_confidence if m.llm is not None
                  else "out-of-fold" if oof_token is not None and cfg.posterior_token else "in-sample")
    if confidence == "out-of-fold":
        if oof_token is None:  # resuming: the run's first part had them
            raise EaiError(f"this run's posterior tokens were set out of fold, but now: {why}", run_dir)
        post = [temper_to_entropy(p, q).astype(np.float32) for p, q in zip(post, oof_token)]
    fsets = [feature_set(run.encoder, ws, cdesc, ref, p, mirror=True, progress=progress)
             for ws, (cdesc, ref), p in zip(wsets, refs, post)]
    if m.llm is None:
        schedule = cfg.llm_schedule or default_llm_schedule(cfg.schedule)
        m.llm = LLMConfig(cfg.backbone, cfg.seed, LoraSettings.of_schedule(schedule), SkeletonTokenizerConfig(
            feature_dim=run.encoder.out_channels, hidden=hidden_size(cfg.backbone),
            n_descriptors=len(ev.NAMES) if cfg.kinematic_token else 0,
            n_labels=len(m.labels) if cfg.posterior_token else 0), schedule,
            llm_stages(schedule, {"description": cfg.description_steps, "recognition": cfg.recognition_steps}),
            FUSED if fused else "encoder", confidence)
        m.llm_training = LLMTraining()
        m.save(run_dir)  # a stage interrupted before its end resumes under the config its checkpoint was made with
    if m.llm_training.done:  # resuming after a finished stage
        llm = load_llm(run_dir, m.llm, trainable=True)
    else:
        llm = build_llm(m.llm)
        if m.llm.tokenizer.n_labels:  # each label's row starts at its word (its first dataset's) in the LM
            llm.skeleton_tokenizer.init_posterior_token(llm.word_embeddings(
                [next(d.word(lab) for d in m.datasets if lab in d.labels) for lab in m.labels]))
    sampler = Sampler(FeatureSet.concat(fsets), m.labels, m.datasets, llm.skeleton_tokenizer.cfg.n_tokens,
                      m.llm.seed, m.config.mix)
    log = JsonlLog(run_dir / "log.jsonl")
    t = m.llm_training
    probe = held_out_probe(run, m.datasets, held, forests) if any(held) else None
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
    from eai.interpret import Interpreter

    interp = Interpreter(Run(run.path, m, run.encoder), llm.eval())
    with llm.frozen_stems(recognition_templates(llm.skeleton_tokenizer.cfg.n_tokens, m.datasets)):
        if m.calibration is None:
            m.calibration = (Calibration(fitted_on=f"not fitted: {why}") if oof is None else fit_calibration(
                interp, fsets, oof_token, oof, every.y, m.llm.seed))
            m.save(run_dir)
        if any(held) and not m.held_out_llm:
            m.held_out_llm = pool_held_out({r.name: interp.recognition_metrics(h, r, progress)
                                            for r, h in zip(m.datasets, held) if h})
    m.stage = "all"
    m.save(run_dir)
    plot_run_figures(run_dir, m, datasets)
    write_model_card(run_dir, m, {d.name: d.source.attribution if d.source is not None else "" for d in datasets})
    return run_dir


PROBE_WINDOWS = 64  # held-out windows per dataset scored at each LLM checkpoint (evenly spread over its clips)


def run_forest(run_dir: Path, i: int, ws: WindowSet, n_labels: int, seed: int) -> DescriptorForest:
    """The run's descriptor forest of its dataset number `i`, fitted on that dataset's training windows `ws`
    (labels as run-label indices) and kept in the run folder (eai.encoder.forest.forest_path); a resumed run
    reads it back."""
    path = forest_path(run_dir, i)
    if path.is_file():
        return DescriptorForest.load(path)
    forest = DescriptorForest(seed).fit(ws.desc, ws.y)
    forest.save(path)
    return forest


def held_out_probe(run: Run, datasets: list[RunDataset], held: list[list],
                   forests: list[DescriptorForest] | None = None):
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
        ws = ws.take(keep).of_dataset(datasets.index(r))
        post = predict_proba(run.encoder, ws, allowed=label_mask(datasets, run.manifest.labels))
        if forests is not None:
            post = fused_posterior(post, forests[datasets.index(r)], ws.desc)
        post = torch.from_numpy(post)
        sets.append((r, torch.from_numpy(encoder_features(run.encoder, ws.raw, ws.mask)),
                     torch.from_numpy(ws.mask), torch.from_numpy(z), torch.from_numpy(ws.real_fraction), post, ws.y))

    def probe(llm: EmotionLLM, batch: int = 16) -> float:
        right = []
        reads = llm.skeleton_tokenizer.cfg.n_labels
        templates = recognition_templates(llm.skeleton_tokenizer.cfg.n_tokens, [r for r, *_ in sets])
        with llm.frozen_stems(templates):
            for (r, feats, mask, z, frac, post, y), (prompt,) in zip(sets, templates):
                p = np.concatenate([llm.label_proba(feats[b:b + batch], mask[b:b + batch],
                                                    [prompt] * len(feats[b:b + batch]), r.words, z[b:b + batch],
                                                    frac[b:b + batch], post[b:b + batch] if reads else None)
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
    h = m.held_out_llm.get("datasets", {})
    final = m.held_out_llm["llm"]["window_accuracy"] if h else None
    chance = float(np.mean([1 / len(d.labels) for d in m.datasets if d.name in h])) if h else None
    plot_llm_curves(m.llm_training.history, STAGES, run_dir / "llm-curves.png",
                    f"LLM stages on {m.name} ({m.llm.schedule} schedule); held-out: up to {PROBE_WINDOWS} windows per "
                    "dataset at checkpoints, every window (mirror-averaged) at the end", credit(attribution.values()),
                    chance, final)
    for d in m.datasets:
        if d.name not in h:
            continue
        suffix = "" if len(m.datasets) == 1 else f"-{d.name}"
        plot_reliability({k: h[d.name][k] for k in ("llm", "encoder")}, run_dir / f"reliability{suffix}.png",
                         f"{d.name}, {h[d.name]['clips']} held-out clips: before and after temperature scaling",
                         attribution[d.name])
        for model, what in (("llm", "LLM, label likelihood"), ("encoder", "encoder head")):
            x = h[d.name][model]
            plot_confusion(x["confusion"], d.words, run_dir / f"confusion-{model}{suffix}.png",
                           f"{d.name}, {h[d.name]['clips']} held-out clips: {what}\nwindow accuracy "
                           f"{x['window_accuracy']:.2f} (chance {1 / len(d.labels):.2f}), macro-F1 {x['macro_f1']:.2f}",
                           attribution[d.name])


def fit_calibration(interp, fsets: list[FeatureSet], oof_by_dataset: list[np.ndarray], oof: np.ndarray,
                    oof_y: np.ndarray, seed: int, n: int = 160) -> Calibration:
    """The run's temperatures (eai.calibration), never from held-out clips: the encoder's on the out-of-fold
    posteriors `oof` (N, n_labels) of all training windows (true run-label indices `oof_y`); the LLM's on up to
    `n` training windows of each dataset (fsets[d] holds its windows, then their mirror images), scored with
    their out-of-fold posteriors `oof_by_dataset[d]` as the posterior token (as a new clip's would read: from an
    encoder that never saw it) and mirror-averaged."""
    from eai.data.joint import local_index

    rng = np.random.default_rng(seed)
    m = interp.run.manifest
    rows, ys = [], []
    width = max(len(d.labels) for d in m.datasets)
    reads = interp.llm.skeleton_tokenizer.cfg.n_labels
    for d, fs, post in zip(m.datasets, fsets, oof_by_dataset):
        k = len(post)
        i = np.sort(rng.choice(k, min(n, k), replace=False))
        p = sum(interp.window_proba(fs.feats[j], fs.mask[j], fs.z[j], fs.real_fraction[j], d,
                                    post[i] if reads else None, calibrated=False)
                for j in (i, i + k)) / 2  # mirror-averaged, as the held-out figures are
        rows.append(np.pad(np.log(np.clip(p, 1e-12, None)), ((0, 0), (0, width - p.shape[1])),
                           constant_values=-np.inf))
        ys.append(local_index(m.labels, d.labels)[fs.y[i]])
    llm_logp, llm_y = np.concatenate(rows), np.concatenate(ys)
    enc_logp = log_posterior(oof)
    cal = Calibration(encoder=fit_temperature(enc_logp, oof_y), llm=fit_temperature(llm_logp, llm_y),
                      fitted_on="training windows: the encoder on out-of-fold posteriors (cross-fitted encoders), "
                                "the LLM with out-of-fold posterior tokens (cross-fitted encoders, fused with "
                                "cross-fitted descriptor forests where the token reads both)",
                      windows={"encoder": int(len(oof_y)), "llm": int(len(llm_y))})
    cal.ece_fit = {name: [round(expected_calibration_error(scale(lp, 1.0), y), 4),
                          round(expected_calibration_error(scale(lp, t), y), 4)]
                   for name, lp, y, t in (("encoder", enc_logp, oof_y, cal.encoder), ("llm", llm_logp, llm_y, cal.llm))}
    return cal
