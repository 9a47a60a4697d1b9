"""The Interpreter: a trained run reading clips, recognition by label likelihood and grounded explanations.

A clip is cut into the protocol's windows; the encoder's features of each go through the skeleton tokenizer
into the LLM, which scores every label word of the clip's dataset as the answer (the clip's probabilities
are the mean over its windows); the explanation is then decoded after the recognised label, in the grammar
of grounded descriptions, and each movement claim it makes is checked against the clip's descriptors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from eai.data.joint import RunDataset, dataset_for_clip, label_mask
from eai.data.windows import STRIDE, WindowSet, window_set
from eai.encoder.model import encoder_features, predict_dataset_proba
from eai.errors import EaiError
from eai.features import DESCRIPTOR_BY_NAME, clip_descriptors
from eai.llm import evidence as ev
from eai.llm.builder import load_merged_llm
from eai.llm.cpu import few_rows_linears
from eai.llm.decode import ExplanationDecoder
from eai.llm.model import EmotionLLM
from eai.llm.prompts import description_prompt, recognition_prompt
from eai.llm.scores import explanation_scores
from eai.metrics import HEADLINE, expected_calibration_error, metrics, pick
from eai.run import Run, load_run
from eai.skeleton.unify import UnifiedMotion

DRAFT_ROWS = 8  # explanations decoded with claim drafts up to this many clips at once on the CPU
# An answer is flagged low-confidence when its probability is under twice chance (2/K among K labels: 0.29 of 7)
# or within 0.10 of the runner-up. The probabilities are label likelihoods, not calibrated (the demo's LLM has an
# ECE of 0.35), so the flag says "barely above a guess, or a tie", not a confidence level.
LOW_CONFIDENCE_X_CHANCE, LOW_CONFIDENCE_MARGIN = 2.0, 0.10


@dataclass
class Interpreter:
    """A trained run, ready to read clips. A run trained on several datasets answers each clip as its
    dataset's: that dataset's tag, labels and words, measured against that dataset's neutral clips."""

    run: Run
    llm: EmotionLLM
    decoder: ExplanationDecoder = field(init=False)

    def __post_init__(self):
        self.decoder = ExplanationDecoder(self.llm)

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

            llm.stem_store = StemStore(stem_cache_root(), weights_fingerprint(llm.lm))
        n = llm.skeleton_tokenizer.cfg.n_tokens
        for d in run.manifest.datasets:
            llm.add_stem([recognition_prompt(n, d.tag, d.words)])
            llm.add_stem([description_prompt(n, d.tag, w, e) for w, e in ((d.words[0], "a"), (d.words[-1], "b"))])
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

    def window_proba(self, feats: np.ndarray, mask: np.ndarray, z: np.ndarray, real_fraction: np.ndarray,
                     dataset: RunDataset, batch: int = 32) -> np.ndarray:
        """(N, len(dataset.labels)) probabilities of the dataset's labels, by their likelihood as answers:
        feats (N, C', T', K), mask (N, K), z (N, D) descriptor z-scores, real_fraction (N,) (EmotionLLM)."""
        prompt = recognition_prompt(self.llm.skeleton_tokenizer.cfg.n_tokens, dataset.tag, dataset.words)
        out = []
        for b in range(0, len(feats), batch):
            f = torch.from_numpy(feats[b:b + batch])
            out.append(self.llm.label_proba(f, torch.from_numpy(mask[b:b + batch]), [prompt] * len(f), dataset.words,
                                            torch.from_numpy(z[b:b + batch].astype(np.float32)),
                                            torch.from_numpy(real_fraction[b:b + batch])))
        return np.concatenate(out) if out else np.zeros((0, len(dataset.labels)))

    def windows(self, clips: list[UnifiedMotion], dataset: RunDataset) -> WindowSet:
        """The protocol's windows of clips, labelled in the dataset's labels, with descriptors (for z-scores)."""
        return window_set(clips, dataset.labels, self.run.manifest.train.window, STRIDE, descriptors=True)

    def encoder_proba(self, ws, dataset: RunDataset) -> np.ndarray:
        """The encoder head's probabilities over the dataset's labels only."""
        return predict_dataset_proba(self.run.encoder, ws, label_mask(self.datasets, self.labels),
                                     self.datasets.index(dataset))

    def recognition_proba(self, clips: list[UnifiedMotion], dataset: RunDataset) -> tuple[WindowSet, dict]:
        """The windows of labelled clips and both models' window probabilities over the dataset's labels:
        {"llm": (N, labels) by label likelihood, mirror-averaged; "encoder": (N, labels) its own head}."""
        from eai.skeleton.unify import mirror

        ws = self.windows(clips, dataset)
        z = self.reference(dataset).z(ws.model_desc)  # descriptors do not change under mirroring
        p = 0
        for raw, mask in [(ws.raw, ws.mask), mirror(ws.raw, ws.mask)]:
            p = p + self.window_proba(encoder_features(self.run.encoder, raw, mask), mask, z, ws.real_fraction, dataset)
        return ws, {"llm": p / 2, "encoder": self.encoder_proba(ws, dataset)}

    def recognition_metrics(self, clips: list[UnifiedMotion], dataset: RunDataset, progress: bool = False,
                            present_only: bool = False, probas: tuple[WindowSet, dict] | None = None) -> dict:
        """LLM (label likelihood, mirror-averaged) beside the encoder's own head on the same windows (metrics, with
        `present_only` over the labels the clips have; `probas`: recognition_proba's, when already computed)."""
        ws, got = probas or self.recognition_proba(clips, dataset)
        out = {}
        for name, pr in got.items():
            m = metrics(ws.y, pr, ws.clip, dataset.labels, present_only)
            out[name] = pick(m, HEADLINE + ("per_class_recall", "confusion"))
            out[name]["ece"] = expected_calibration_error(pr, ws.y)
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
        """Windows, their encoder features, and each clip's label probabilities (mean over its windows)."""
        ws = self.windows(clips, dataset)
        feats = encoder_features(self.run.encoder, ws.raw, ws.mask)
        pw = self.window_proba(feats, ws.mask, self.reference(dataset).z(ws.model_desc), ws.real_fraction, dataset)
        return ws, feats, [pw[ws.clip == i].mean(0) for i in range(len(clips))]

    def recognise(self, clips: list[UnifiedMotion], dataset: str | None = None) -> list[dict]:
        """Per clip: emotion and probabilities by label likelihood (in its dataset's words), no explanation."""
        rows: list[dict] = [{} for _ in clips]
        for v, idx in self._by_dataset(clips, dataset):
            _, _, probs = self._clip_proba([clips[i] for i in idx], v)
            for i, p in zip(idx, probs):
                rows[i] = {"emotion": v.words[int(p.argmax())], "dataset": v.name,
                           "probabilities": {w: float(q) for w, q in zip(v.words, p)}}
        return rows

    def explain(self, clips: list[UnifiedMotion], max_new_tokens: int = 40, dataset: str | None = None) -> list[dict]:
        """Per clip: emotion, probabilities (mean over its windows), explanation and the checked evidence, in
        the words of the clip's dataset (the run's dataset named `dataset`, or found by the clip's layout)."""
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
        h = self.run.manifest.held_out_llm.get(dataset.name, {}).get("llm")
        held = None if h is None else {
            "window_accuracy": round(h["window_accuracy"], 4), "clip_accuracy": round(h["clip_accuracy"], 4),
            "macro_f1": round(h["macro_f1"], 4), "chance": round(chance, 4),
            "clips": self.run.manifest.held_out_llm[dataset.name].get("clips")}
        if held is None:
            notices.append("this run measured no held-out accuracy for its LLM: how often it is right is unknown")
        elif held["clip_accuracy"] < 2 * chance:
            notices.append(f"this run's LLM is near chance on its held-out clips (clip accuracy "
                           f"{held['clip_accuracy']:.2f}, chance {chance:.2f}): do not rely on the answer")
        notices += dataset.unseen(clip.layout, clip.source_fps)
        return {"confidence": round(top, 4), "margin": round(margin, 4), "low_confidence": bool(low),
                "held_out": held, "notices": notices}

    def _explain(self, clips: list[UnifiedMotion], dataset: RunDataset, max_new_tokens: int) -> list[dict]:
        ref, n = self.reference(dataset), self.llm.skeleton_tokenizer.cfg.n_tokens
        ws, feats, probs = self._clip_proba(clips, dataset)
        desc = clip_descriptors(clips)
        rows, prompts, starts, cf, cm, cfrac, zs = [], [], [], [], [], [], []
        for i, (d, p) in enumerate(zip(desc, probs)):
            sel = ws.clip == i
            word = dataset.words[int(p.argmax())]
            z = ref.z(d)
            zs.append((z, d))
            prompts.append(description_prompt(n, dataset.tag, word, ev.evidence_line(z)))
            starts.append(ev.label_text(word))
            cf.append(feats[sel].mean(0))
            cm.append(ws.mask[sel][0])
            cfrac.append(ws.real_fraction[sel].max())
            rows.append({"emotion": word, "dataset": dataset.name,
                         "probabilities": {w: round(float(q), 4) for w, q in zip(dataset.words, p)}})
        zc = torch.from_numpy(np.stack([z for z, _ in zs]).astype(np.float32))
        # the evidence line's claims, in its order, drafted (EmotionLLM.generate) where a decoding pass costs
        # about the same for one token as for twenty: a few rows on the CPU, any batch on a GPU
        drafts = ([[p for p, _ in ev.claim_phrases(z)] for z, _ in zs]
                  if len(clips) <= DRAFT_ROWS or self.llm.device.type == "cuda" else None)
        texts = self.decoder.generate(torch.from_numpy(np.stack(cf)), torch.from_numpy(np.stack(cm)), prompts, starts,
                                      max_new_tokens, z=zc, real_fraction=torch.tensor(cfrac, dtype=torch.float32),
                                      drafts=drafts)
        for r, t, (z, d) in zip(rows, texts, zs):
            r["explanation"] = t
            r["evidence"] = []
            for c in ev.check(t, z):
                e = c.to_dict()
                if c.descriptor != ev.NEUTRAL:
                    k = ev.NAMES.index(c.descriptor)
                    e.update(value=None if not np.isfinite(d[k]) else round(float(d[k]), 4),
                             neutral=round(float(ref.mean[k]), 4), unit=DESCRIPTOR_BY_NAME[c.descriptor].unit)
                r["evidence"].append(e)
            r["label_consistent"] = ev.names_label(t, r["emotion"], dataset.words)
            r["reference"] = ev.description(r["emotion"], z)
        return rows

    def assess(self, clips: list[UnifiedMotion], dataset: RunDataset, progress: bool = False,
               present_only: bool = False, probas: tuple[WindowSet, dict] | None = None) -> tuple[dict, list[dict]]:
        """What `eai evaluate` and `eai bench explain` report of the LLM on labelled clips of one dataset:
        recognition beside the encoder (recognition_metrics), explanation scores, and the explanation rows (each
        with its clip's true label, in the dataset's words)."""
        rows = self.explanations(clips, dataset)
        return {"recognition": self.recognition_metrics(clips, dataset, progress, present_only, probas),
                "explanations": explanation_scores(rows)}, rows

    def explanations(self, clips: list[UnifiedMotion], dataset: RunDataset) -> list[dict]:
        """Explanation rows of labelled clips, each with its clip's true label in the dataset's words."""
        rows = self._explain(clips, dataset, 40)
        for r, u in zip(rows, clips):
            r["label"] = dataset.word(u.label)
        return rows
