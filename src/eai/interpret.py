"""The Interpreter: a trained run reading clips, recognition by label likelihood and grounded explanations.

A clip is cut into the protocol's windows; the encoder's features of each go through the skeleton tokenizer
into the LLM, which scores every label word of the clip's dataset as the answer (the clip's probabilities
are the mean over its windows); the explanation is then decoded after the recognised label, in the grammar
of grounded descriptions, and each movement claim it makes is checked against the clip's descriptors (does it
hold, does the descriptor apply to the movement) and against the answer (does it point the way the answer's
emotion differs from neutral in the run's training data: eai.llm.evidence).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from eai.calibration import Calibration, scale_proba
from eai.data.joint import RunDataset, dataset_for_clip, label_mask
from eai.data.windows import STRIDE, WindowSet, window_set
from eai.encoder.forest import FUSED, DescriptorForest, forest_path, fused_posterior
from eai.encoder.model import encoder_features, predict_dataset_proba
from eai.errors import EaiError
from eai.features import DESCRIPTOR_BY_NAME, clip_descriptors
from eai.llm import evidence as ev
from eai.llm.builder import load_merged_llm
from eai.llm.cpu import few_rows_linears
from eai.llm.decode import ExplanationDecoder
from eai.llm.model import EmotionLLM
from eai.llm.prompts import description_prompt, description_templates, recognition_prompt, recognition_templates
from eai.llm.scores import explanation_scores
from eai.metrics import (CONSISTENCY_DRAWS, HEADLINE, ece_consistency, expected_calibration_error, metrics, pick,
                         reliability)
from eai.run import Run, load_run
from eai.skeleton.unify import UnifiedMotion

UNKNOWN_SUPPORT = ("the run stores no class means (trained before they were): claims are checked against the clip, "
                   "not against the emotion; retrain to judge support")
DRAFT_ROWS = 8  # explanations decoded with claim drafts up to this many clips at once on the CPU
CLOSE = 0.1  # two leading labels whose probabilities differ by less than this are both named
# An answer is flagged low-confidence when its probability is under twice chance (2/K among K labels: 0.29 of 7)
# or within CLOSE of the runner-up (a close call, whose explanation names both). The probabilities are
# temperature-scaled on training windows (eai.calibration), but calibration on a few hundred clips is coarse
# (bench/RESULTS.md), so the flag says "barely above a guess, or a tie", not a confidence level.
LOW_CONFIDENCE_X_CHANCE, LOW_CONFIDENCE_MARGIN = 2.0, CLOSE


def runner_up_sentence(row: dict) -> str:
    """The sentence an explanation ends with when its runner-up is within `CLOSE` of its answer (an
    explain row with 'emotion', 'probabilities', 'runner_up'): ' Proud is almost as likely (0.31 against 0.35).'"""
    p = row["probabilities"]
    return (f" {ev.label_text(row['runner_up'])} is almost as likely ({p[row['runner_up']]:.2f} against "
            f"{p[row['emotion']]:.2f}).")


@dataclass
class Interpreter:
    """A trained run, ready to read clips. A run trained on several datasets answers each clip as its
    dataset's: that dataset's tag, labels and words, measured against that dataset's neutral clips."""

    run: Run
    llm: EmotionLLM
    decoder: ExplanationDecoder = field(init=False)

    def __post_init__(self):
        self.decoder = ExplanationDecoder(self.llm)
        self._forests: dict[int, DescriptorForest] = {}  # the run's descriptor forests, read when first needed

    @staticmethod
    def load(run_dir: str | Path) -> "Interpreter":
        return Interpreter.of(load_run(run_dir))

    @staticmethod
    def of(run: Run) -> "Interpreter":
        """The interpreter of a loaded run (its LLM stages must be trained): the exact float32 model, on CUDA
        when present. (int8 weights were tried and removed: they changed answers and were not faster end to
        end, bench/RESULTS.md, bench/bench_int8.py.)"""
        m = run.manifest
        if not m.llm_done:
            raise EaiError("this run has no trained LLM stages; train with 'eai train --stage all'", run.path)
        llm = load_merged_llm(run.path, m.llm)  # inference: LoRA folded into the weights, one matmul per layer
        if torch.cuda.is_available():  # inputs follow the models (EmotionLLM.device, the encoder's head)
            llm.cuda()
            run.encoder.cuda()
        else:
            llm.lm = few_rows_linears(llm.lm)
        return Interpreter.ready(run, llm)

    @staticmethod
    def ready(run: Run, llm: EmotionLLM, store: bool = True) -> "Interpreter":
        """The interpreter of a run with its LLM as given (loaded for inference, frozen): the prompt beginnings
        every clip of a dataset shares are registered, so their key/value cache is computed once and kept; with
        `store`, kept between processes too (eai.llm.stems, under $EAI_CACHE/stems)."""
        if store:
            from eai.llm.stems import StemStore, stem_cache_root, weights_fingerprint

            llm.stem_store = StemStore(stem_cache_root(), weights_fingerprint(llm.lm),
                                      getattr(llm.lm, "cache_of", None))
        n = llm.skeleton_tokenizer.cfg.n_tokens
        for t in recognition_templates(n, run.manifest.datasets) + description_templates(n, run.manifest.datasets):
            llm.add_stem(t)
        return Interpreter(run, llm)

    @property
    def labels(self) -> list[str]:
        return self.run.labels

    @property
    def datasets(self) -> list[RunDataset]:
        return self.run.manifest.datasets

    @cached_property
    def _references(self) -> dict[str, ev.Reference]:
        return {d.name: ev.Reference.from_dict(d.reference) for d in self.datasets}

    def reference(self, dataset: RunDataset) -> ev.Reference:
        """The neutral baseline of one of the run's datasets (fitted on its training clips)."""
        return self._references[dataset.name]

    def dataset(self, name: str | None = None, layout: str = "") -> RunDataset:
        """The run's dataset named, else the only one with the clip's layout (eai.data.joint.dataset_for_clip)."""
        return dataset_for_clip(self.datasets, layout, name)

    @property
    def calibration(self) -> Calibration:
        """The run's temperatures (eai.calibration; 1.0 each for a run that has none)."""
        return self.run.manifest.calibration or Calibration()

    def window_proba(self, feats: np.ndarray, mask: np.ndarray, z: np.ndarray, real_fraction: np.ndarray,
                     dataset: RunDataset, posterior: np.ndarray | None = None, batch: int = 32,
                     calibrated: bool = True) -> np.ndarray:
        """(N, len(dataset.labels)) probabilities of the dataset's labels, by their likelihood as answers
        (scaled by the run's LLM temperature when `calibrated`): feats (N, C', T', K), mask (N, K), z (N, D)
        descriptor z-scores, real_fraction (N,), posterior (N, n_labels) the encoder's (`posterior`; runs
        with a posterior token) (EmotionLLM)."""
        temperature = self.calibration.llm if calibrated else 1.0
        prompt = recognition_prompt(self.llm.skeleton_tokenizer.cfg.n_tokens, dataset.tag, dataset.words)
        t = lambda a, b: None if a is None else torch.from_numpy(np.ascontiguousarray(a[b:b + batch]))  # noqa: E731
        out = []
        for b in range(0, len(feats), batch):
            f = torch.from_numpy(feats[b:b + batch])
            out.append(self.llm.label_proba(f, t(mask, b), [prompt] * len(f), dataset.words,
                                            t(z.astype(np.float32), b), t(real_fraction, b), t(posterior, b),
                                            temperature))
        return np.concatenate(out) if out else np.zeros((0, len(dataset.labels)))

    def posterior(self, ws: WindowSet, dataset: RunDataset) -> np.ndarray | None:
        """(N, n_labels) float32 what a posterior token reads of each window, over the run's labels (0 outside the
        dataset's): the encoder head's posterior, fused with the run's descriptor forest's where the run's LLM
        reads both (LLMConfig.posterior); None for a run without a posterior token."""
        if not self.llm.skeleton_tokenizer.cfg.n_labels:
            return None
        out = np.zeros((len(ws.y), len(self.labels)), np.float32)
        i = self.datasets.index(dataset)
        out[:, label_mask(self.datasets, self.labels)[i]] = self.encoder_proba(ws, dataset, calibrated=False)
        if self.run.manifest.llm.posterior == FUSED:  # the run's descriptor forest beside (eai.encoder.forest)
            if i not in self._forests:
                self._forests[i] = DescriptorForest.load(forest_path(self.run.path, i))
            out = fused_posterior(out, self._forests[i], ws.desc)
        return out

    def windows(self, clips: list[UnifiedMotion], dataset: RunDataset) -> WindowSet:
        """The protocol's windows of clips, labelled in the dataset's labels, with descriptors (for z-scores)."""
        return window_set(clips, dataset.labels, self.run.manifest.train.window, STRIDE, descriptors=True)

    def encoder_proba(self, ws, dataset: RunDataset, calibrated: bool = True) -> np.ndarray:
        """The encoder head's probabilities over the dataset's labels only (scaled by the run's encoder
        temperature when `calibrated`)."""
        p = predict_dataset_proba(self.run.encoder, ws, label_mask(self.datasets, self.labels),
                                  self.datasets.index(dataset))
        return scale_proba(p, self.calibration.encoder) if calibrated else p

    def recognition_proba(self, clips: list[UnifiedMotion], dataset: RunDataset) -> tuple[WindowSet, dict, dict]:
        """The windows of labelled clips and both models' window probabilities over the dataset's labels,
        temperature-scaled, then as they come: {"llm": (N, labels) by label likelihood, mirror-averaged;
        "encoder": (N, labels) its own head}."""
        from eai.skeleton.unify import mirror

        ws = self.windows(clips, dataset)
        z = self.reference(dataset).z(ws.model_desc)  # descriptors and the posterior do not change under mirroring
        post = self.posterior(ws, dataset)
        p = 0  # the LLM's probabilities, mirror-averaged
        for raw, mask in [(ws.raw, ws.mask), mirror(ws.raw, ws.mask)]:
            p = p + self.window_proba(encoder_features(self.run.encoder, raw, mask), mask, z, ws.real_fraction,
                                      dataset, post, calibrated=False) / 2
        cal = self.calibration
        raw_p = {"llm": p, "encoder": self.encoder_proba(ws, dataset, calibrated=False)}
        return ws, {"llm": scale_proba(p, cal.llm), "encoder": scale_proba(raw_p["encoder"], cal.encoder)}, raw_p

    def recognition_metrics(self, clips: list[UnifiedMotion], dataset: RunDataset, progress: bool = False,
                            present_only: bool = False, probas: tuple | None = None) -> dict:
        """LLM (label likelihood, mirror-averaged) beside the encoder's own head on the same windows (metrics, with
        `present_only` over the labels the clips have; `probas`: recognition_proba's, when already computed), each
        with its ECE after and before temperature scaling, both reliability diagrams' bins (the calibrated one with
        consistency draws) and `ece_consistency`: the 10-bin ECE beside what a calibrated model would read on
        these windows (eai.metrics.ece_consistency)."""
        ws, got, raw = probas or self.recognition_proba(clips, dataset)
        cal = self.calibration
        cfg = self.run.manifest.config  # each run's own draws: folds pooled by bench llm draw independently
        seed = int(np.random.SeedSequence([cfg.seed, cfg.fold, zlib.crc32(dataset.name.encode())]).generate_state(1)[0])
        out = {}
        for name, pr in got.items():
            m = metrics(ws.y, pr, ws.clip, dataset.labels, present_only)
            out[name] = pick(m, HEADLINE + ("per_class_recall", "confusion"))
            out[name]["ece"] = expected_calibration_error(pr, ws.y)
            out[name]["ece_uncalibrated"] = expected_calibration_error(raw[name], ws.y)
            out[name]["temperature"] = getattr(cal, name)
            out[name]["reliability"] = {"uncalibrated": reliability(raw[name], ws.y),
                                        "calibrated": reliability(pr, ws.y, clip=ws.clip, draws=CONSISTENCY_DRAWS,
                                                                  seed=seed)}
            out[name]["ece_consistency"] = ece_consistency([out[name]["reliability"]["calibrated"]])
        out["windows"], out["clips"] = int(len(ws.y)), len(clips)
        return out

    def _by_dataset(self, clips: list[UnifiedMotion], name: str | None) -> list[tuple[RunDataset, list[int]]]:
        """The clips' indices grouped by the run's dataset each is read as (`dataset`)."""
        groups: dict[str, tuple[RunDataset, list[int]]] = {}
        for i, u in enumerate(clips):
            d = self.dataset(name, u.layout)
            groups.setdefault(d.name, (d, []))[1].append(i)
        return list(groups.values())

    def _clip_proba(self, clips: list[UnifiedMotion], dataset: RunDataset):
        """Windows, their encoder features, the encoder's posterior of each window (None without a posterior
        token), and each clip's label probabilities (mean over its windows)."""
        ws = self.windows(clips, dataset)
        feats = encoder_features(self.run.encoder, ws.raw, ws.mask)
        post = self.posterior(ws, dataset)
        pw = self.window_proba(feats, ws.mask, self.reference(dataset).z(ws.model_desc), ws.real_fraction, dataset,
                               post)
        return ws, feats, post, [pw[ws.clip == i].mean(0) for i in range(len(clips))]

    def recognise(self, clips: list[UnifiedMotion], dataset: str | None = None) -> list[dict]:
        """Per clip: emotion and probabilities by label likelihood (in its dataset's words), no explanation."""
        rows: list[dict] = [{} for _ in clips]
        for v, idx in self._by_dataset(clips, dataset):
            _, _, _, probs = self._clip_proba([clips[i] for i in idx], v)
            for i, p in zip(idx, probs):
                rows[i] = {"emotion": v.words[int(p.argmax())], "dataset": v.name,
                           "probabilities": {w: float(q) for w, q in zip(v.words, p)}}
        return rows

    def explain(self, clips: list[UnifiedMotion], max_new_tokens: int = 40, dataset: str | None = None) -> list[dict]:
        """Per clip: emotion, probabilities (mean over its windows), explanation and the checked evidence (each
        claim: holds, applies, supports the emotion; eai.llm.evidence.Claim.to_dict), in the words of the clip's
        dataset (the run's dataset named `dataset`, or found by the clip's layout). A run without class means
        (trained before they were stored) adds `support_unknown` to every row and leaves `supports` None."""
        rows: list[dict] = [{} for _ in clips]
        for v, idx in self._by_dataset(clips, dataset):
            for i, r in zip(idx, self._explain([clips[i] for i in idx], v, max_new_tokens)):
                rows[i] = {**r, **self.self_knowledge(r["probabilities"], v, clips[i])}
        return rows

    def self_knowledge(self, probabilities: dict[str, float], dataset: RunDataset, clip: UnifiedMotion) -> dict:
        """What the run knows about an answer: `confidence` (top probability), `margin` (over the runner-up),
        `low_confidence` (LOW_CONFIDENCE_*), `held_out` (the LLM's accuracy on the run's held-out clips of that
        dataset beside chance, 1/labels; None when the run measured none) and `notices` (one line each: a low
        confidence, a run near chance, a skeleton layout or frame rate none of the training clips had)."""
        p = sorted(probabilities.values(), reverse=True)
        chance = 1.0 / len(p)
        top, margin = p[0], p[0] - (p[1] if len(p) > 1 else 0.0)
        low = top < LOW_CONFIDENCE_X_CHANCE * chance or margin < LOW_CONFIDENCE_MARGIN
        notices = []
        if low:
            notices.append(f"low confidence: {top:.2f} for the answer (chance {chance:.2f}), {margin:.2f} above the "
                           "next label")
        of = self.run.manifest.held_out_llm_of(dataset.name) or {}
        h = of.get("llm")
        held = None if h is None else {
            "window_accuracy": round(h["window_accuracy"], 4), "clip_accuracy": round(h["clip_accuracy"], 4),
            "macro_f1": round(h["macro_f1"], 4), "chance": round(chance, 4), "clips": of.get("clips")}
        if held is None:
            notices.append("this run measured no held-out accuracy for its LLM: how often it is right is unknown")
        elif held["clip_accuracy"] < 2 * chance:
            notices.append(f"this run's LLM is near chance on its held-out clips (clip accuracy "
                           f"{held['clip_accuracy']:.2f}, chance {chance:.2f}): do not rely on the answer")
        notices += dataset.unseen(clip.layout, clip.source_fps)
        return {"confidence": round(top, 4), "margin": round(margin, 4), "low_confidence": bool(low),
                "held_out": held, "notices": notices}

    def _explain(self, clips: list[UnifiedMotion], dataset: RunDataset, max_new_tokens: int,
                 grounded: bool = True) -> list[dict]:
        """Explanation rows (see `explain`). With `grounded`, each row's decoding is held to the claims its clip
        grounds (eai.llm.evidence.sayable: verified on the clip and supporting the answer); without, to the
        lexicon's grammar only: the LM's own choice of claims, which `assess` scores beside."""
        ref, n = self.reference(dataset), self.llm.skeleton_tokenizer.cfg.n_tokens
        ws, feats, post, probs = self._clip_proba(clips, dataset)
        desc = clip_descriptors(clips)
        rows, prompts, starts, cf, cm, cfrac, zs = [], [], [], [], [], [], []
        grounds, said = [], []
        for i, (d, p) in enumerate(zip(desc, probs)):
            sel = ws.clip == i
            word = dataset.words[int(p.argmax())]
            z = ref.z(d)
            zs.append((z, d))
            # the evidence stated is what is true of the clip, applies to its movement and supports the answer
            grounds.append(ref.grounds(dataset.labels[int(p.argmax())], d))
            said.append(ev.claim_phrases(z, grounds=grounds[-1]))
            prompts.append(description_prompt(n, dataset.tag, word, ev.evidence_line(z, said[-1])))
            starts.append(ev.label_text(word))
            cf.append(feats[sel].mean(0))
            cm.append(ws.mask[sel][0])
            cfrac.append(ws.real_fraction[sel].max())
            second = int(np.argsort(-p)[1]) if len(p) > 1 else None
            close = second is not None and p.max() - p[second] < CLOSE
            rows.append({"emotion": word, "dataset": dataset.name,
                         "probabilities": {w: round(float(q), 4) for w, q in zip(dataset.words, p)},
                         "runner_up": dataset.words[second] if close else None})
        zc = torch.from_numpy(np.stack([z for z, _ in zs]).astype(np.float32))
        # the evidence line's claims, in its order, drafted (EmotionLLM.generate) where a decoding pass costs
        # about the same for one token as for twenty: a few rows on the CPU, any batch on a GPU
        drafts = ([[p for p, _ in c] for c in said]
                  if len(clips) <= DRAFT_ROWS or self.llm.device.type == "cuda" else None)
        texts = self.decoder.generate(torch.from_numpy(np.stack(cf)), torch.from_numpy(np.stack(cm)), prompts, starts,
                                      max_new_tokens, z=zc, real_fraction=torch.tensor(cfrac, dtype=torch.float32),
                                      drafts=drafts, allow=[ev.sayable(z, g) for (z, _), g in zip(zs, grounds)]
                                      if grounded else None,
                                      posterior=None if post is None else torch.from_numpy(
                                          np.stack([post[ws.clip == i].mean(0) for i in range(len(clips))])))
        for r, t, (z, d), g in zip(rows, texts, zs, grounds):
            r["explanation"] = t + (runner_up_sentence(r) if r["runner_up"] else "")
            r["evidence"] = []
            for c in ev.check(t, z, g):
                e = c.to_dict()
                if c.kind == "movement":
                    k = ev.NAMES.index(c.descriptor)
                    e.update(value=None if not np.isfinite(d[k]) else round(float(d[k]), 4),
                             neutral=round(float(ref.mean[k]), 4), unit=DESCRIPTOR_BY_NAME[c.descriptor].unit)
                r["evidence"].append(e)
            r["label_consistent"] = ev.names_label(t, r["emotion"], dataset.words)
            r["reference"] = ev.description(r["emotion"], z, grounds=g)
            if g.toward is None:
                r["support_unknown"] = UNKNOWN_SUPPORT
        return rows

    def assess(self, clips: list[UnifiedMotion], dataset: RunDataset, progress: bool = False,
               present_only: bool = False, probas: tuple | None = None) -> tuple[dict, list[dict]]:
        """What `eai evaluate` and `eai bench explain` report of the LLM on labelled clips of one dataset:
        recognition beside the encoder (recognition_metrics), explanation scores, and the explanation rows (each
        with its clip's true label, in the dataset's words)."""
        rows = self.explanations(clips, dataset)
        return {"recognition": self.recognition_metrics(clips, dataset, progress, present_only, probas),
                "explanations": explanation_scores(rows),
                "explanations_unconstrained": explanation_scores(self.explanations(clips, dataset, grounded=False),
                                                                 similarity=False)}, rows

    def explanations(self, clips: list[UnifiedMotion], dataset: RunDataset, grounded: bool = True) -> list[dict]:
        """Explanation rows of labelled clips, each with its clip's true label in the dataset's words; `grounded`
        as in `_explain`."""
        rows = self._explain(clips, dataset, 40, grounded)
        for r, u in zip(rows, clips):
            r["label"] = dataset.word(u.label)
        return rows
