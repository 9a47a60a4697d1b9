"""The LLM stages on cached encoder features: emotion description, then emotion recognition (as in EAI-LLM),
LoRA on the LM's linear layers and the skeleton tokenizer's projectors trained, on Hugging Face Accelerate so
the same code runs on a CPU, one GPU or several (`accelerate launch`). Checkpoints are written atomically
every 20 steps and a killed stage resumes from its last one, bit-identically."""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from eai.data.joint import RunDataset, mix_weights
from eai.data.windows import WindowSet
from eai.encoder.model import encoder_features
from eai.llm import evidence as ev
from eai.llm.builder import trainable_state
from eai.llm.model import EmotionLLM
from eai.llm.prompts import description_prompt, recognition_prompt
from eai.schedules import StageConfig
from eai.train.checkpoint import load_checkpoint, save_checkpoint
from eai.train.encoder import accelerator


@dataclass
class FeatureSet:
    """Cached encoder features of windows and of whole clips, with labels and descriptor z-scores.

    Per window: feats (N, C', T', K) float32, mask (N, K) bool, y (N,) label index, z (N, D) descriptor
    z-scores against neutral, clip (N,) clip index, dataset_idx (N,), real_fraction (N,) the real share of its
    frames, posterior (N, n_labels) the encoder's class posterior over the run's labels. Per clip (the mean over
    its windows): clip_feats (M, C', T', K), clip_mask, clip_y, clip_z (M, D) z-scores of the whole clip's
    descriptors, clip_dataset_idx, clip_real_fraction, clip_posterior."""

    feats: np.ndarray
    mask: np.ndarray
    y: np.ndarray
    z: np.ndarray
    clip: np.ndarray
    dataset_idx: np.ndarray
    real_fraction: np.ndarray
    clip_feats: np.ndarray
    clip_mask: np.ndarray
    clip_y: np.ndarray
    clip_z: np.ndarray
    clip_dataset_idx: np.ndarray
    clip_real_fraction: np.ndarray
    posterior: np.ndarray
    clip_posterior: np.ndarray

    @staticmethod
    def concat(sets: list["FeatureSet"]) -> "FeatureSet":
        """The feature sets of several datasets as one, dataset d's windows and clips tagged d."""
        out = {f.name: np.concatenate([getattr(s, f.name) for s in sets]) for f in fields(FeatureSet)}
        offs = np.cumsum([0] + [int(s.clip.max()) + 1 for s in sets[:-1]])
        out["clip"] = np.concatenate([s.clip + o for s, o in zip(sets, offs)])
        out["dataset_idx"] = np.concatenate([np.full(len(s.y), d) for d, s in enumerate(sets)])
        out["clip_dataset_idx"] = np.concatenate([np.full(len(s.clip_y), d) for d, s in enumerate(sets)])
        return FeatureSet(**out)


def feature_set(encoder, ws: WindowSet, clip_desc: np.ndarray, ref: ev.Reference, posterior: np.ndarray,
                mirror: bool = False, progress: bool = False) -> FeatureSet:
    """Features of every window (and, with `mirror`, of its left-right mirror too, for training), clip means,
    and z-scores of window and clip descriptors (clip_desc (M, D), one row per clip of `ws`) against the
    neutral reference; `posterior` (N, n_labels) the encoder's posterior of each window of `ws` (a mirror
    image keeps its window's: the encoder's reading is mirror-averaged)."""
    from eai.skeleton.unify import mirror as mirror_fn

    views = [(ws.raw, ws.mask)] + ([mirror_fn(ws.raw, ws.mask)] if mirror else [])
    feats = np.concatenate([encoder_features(encoder, r, m) for r, m in
                            tqdm(views, desc="encoder features", disable=not progress, leave=False)])
    rep = len(views)
    mask, y, clip, frac, post = (np.concatenate([a] * rep) for a in (ws.mask, ws.y, ws.clip, ws.real_fraction,
                                                                      posterior.astype(np.float32)))
    z = np.concatenate([ref.z(ws.model_desc)] * rep)
    ids = np.unique(ws.clip)
    cf = np.stack([feats[clip == c].mean(0) for c in ids])
    cm = np.stack([mask[clip == c][0] for c in ids])
    cy = np.array([y[clip == c][0] for c in ids])
    cfrac = np.array([frac[clip == c].max() for c in ids], np.float32)
    cpost = np.stack([post[clip == c].mean(0) for c in ids])
    return FeatureSet(feats, mask, y, z, clip, np.zeros(len(y), np.int64), frac, cf, cm, cy,
                      ref.z(clip_desc[ids]), np.zeros(len(ids), np.int64), cfrac, post, cpost)


@dataclass
class Batch:
    """Examples of one task: skeleton inputs (as EmotionLLM takes them), prompts and the answers to learn."""

    feats: np.ndarray
    mask: np.ndarray
    z: np.ndarray
    real_fraction: np.ndarray
    posterior: np.ndarray
    prompts: list[str]
    answers: list[str]


class Sampler:
    """Batches of recognition and description examples from a FeatureSet: class-balanced within each
    dataset, datasets drawn by `mix` (eai.data.joint.mix_weights); every example is prompted with its
    dataset's tag and answered in its words."""

    def __init__(self, fs: FeatureSet, labels: list[str], datasets: list[RunDataset], n_tokens: int, seed: int,
                 mix: str = "equal"):
        self.fs, self.labels, self.datasets, self.n = fs, labels, datasets, n_tokens
        self.rng = np.random.default_rng(seed)
        d = fs.dataset_idx
        key = d * len(labels) + fs.y  # (dataset, label) cells
        counts = np.bincount(key, minlength=len(datasets) * len(labels)).astype(float)
        per_dataset = np.array([len(x.labels) for x in datasets], float)
        share = mix_weights(d, len(datasets), mix) * np.bincount(d, minlength=len(datasets))[d]
        w = share / (per_dataset[d] * counts[key])
        self.p = w / w.sum()
        # each dataset's reference, to judge which measured claims support a label (None: not fitted)
        self.refs = [None if x.reference is None else ev.Reference.from_dict(x.reference) for x in datasets]

    def _word(self, d: int, y: int) -> str:
        return self.datasets[d].word(self.labels[y])

    def recognition(self, k: int) -> Batch:
        fs = self.fs
        i = self.rng.choice(len(fs.y), k, p=self.p)
        prompts = [recognition_prompt(self.n, self.datasets[d].tag, self.datasets[d].words) for d in fs.dataset_idx[i]]
        return Batch(fs.feats[i], fs.mask[i], fs.z[i], fs.real_fraction[i], fs.posterior[i], prompts,
                     [self._word(d, y) for d, y in zip(fs.dataset_idx[i], fs.y[i])])

    def description(self, k: int) -> Batch:
        """Half windows (window descriptors), half whole clips (clip-mean features, clip descriptors). Each
        description claims only what is true of its window or clip, applies to its movement and supports its
        label (eai.llm.evidence.claim_phrases with the dataset reference's grounds), else says that nothing
        measured supports it."""
        fs = self.fs
        n_clip = int(self.rng.binomial(k, 0.5))
        i = self.rng.choice(len(fs.y), k - n_clip, p=self.p)
        j = self.rng.choice(len(fs.clip_y), n_clip)
        both = lambda a, b: np.concatenate([a[i], b[j]])  # noqa: E731
        ys, ds, zs = both(fs.y, fs.clip_y), both(fs.dataset_idx, fs.clip_dataset_idx), both(fs.z, fs.clip_z)
        words = [self._word(d, y) for d, y in zip(ds, ys)]
        grounds = [None if self.refs[d] is None else self.refs[d].grounds(self.labels[y], self.refs[d].values(z))
                   for d, y, z in zip(ds, ys, zs)]
        # varied wordings, the same in prompt and answer
        phrases = [ev.claim_phrases(z, self.rng, g) for z, g in zip(zs, grounds)]
        prompts = [description_prompt(self.n, self.datasets[d].tag, w, ev.evidence_line(z, p))
                   for d, w, z, p in zip(ds, words, zs, phrases)]
        answers = [ev.description(w, z, self.rng, p) for w, z, p in zip(words, zs, phrases)]
        return Batch(both(fs.feats, fs.clip_feats), both(fs.mask, fs.clip_mask), zs,
                     both(fs.real_fraction, fs.clip_real_fraction), both(fs.posterior, fs.clip_posterior),
                     prompts, answers)


def _lr(step: int, cfg: StageConfig) -> float:
    """Linear warm-up, then cosine decay to 0: the factor of the base learning rates at `step`."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def train_stage(llm: EmotionLLM, sampler: Sampler, stage: str, cfg: StageConfig, checkpoint: Path | None = None,
                progress: bool = True, log=None, held_out: Callable[[EmotionLLM], float] | None = None) -> list[dict]:
    """One stage ('description' or 'recognition'); returns its loss history. Resumes from `checkpoint` when it
    exists. The recognition stage keeps a share `cfg.mix` of description examples (against forgetting).
    `held_out(llm)`, the accuracy of the model (in eval mode) on held-out windows, is recorded as
    `held_out_accuracy` at every checkpoint step (every 20 and the last); it draws from no random stream."""
    acc = accelerator()  # the encoder loop's settings: one Accelerator state per process
    lora = [p for n, p in llm.named_parameters() if p.requires_grad and not n.startswith("skeleton_tokenizer.")]
    proj = [p for p in llm.skeleton_tokenizer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": lora, "lr": cfg.lr}, {"params": proj, "lr": cfg.projector_lr}],
                            weight_decay=0.0)
    base_lr = [cfg.lr, cfg.projector_lr]
    start, history, t0 = 0, [], time.time()
    st = load_checkpoint(checkpoint, sampler.rng)
    if st is not None:  # dropout draws and sampling continue as if never interrupted
        llm.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["opt"])
        start, history = st["step"], st["history"]
        t0 -= history[-1].get("seconds", 0) if history else 0  # time spent before the interruption counts
    model, opt = acc.prepare(llm, opt)
    core = acc.unwrap_model(model)
    core.train()
    text_embed = None
    if cfg.contrastive > 0:
        from eai.llm.text import embed as text_embed
    bar = tqdm(range(start, cfg.steps), desc=f"LLM {stage}", disable=not progress, initial=start,
               total=cfg.steps)
    for step in bar:
        for g, lr in zip(opt.param_groups, base_lr):
            g["lr"] = lr * _lr(step, cfg)
        n_description = cfg.batch if stage == "description" else int(sampler.rng.binomial(cfg.batch, cfg.mix))
        batches = []
        if cfg.batch - n_description:
            batches.append(("recognition", sampler.recognition(cfg.batch - n_description)))
        if n_description:
            batches.append(("description", sampler.description(n_description)))
        # recognition and description examples go through separately: each keeps its shared prompt prefix
        loss = total = 0
        for kind, b in batches:
            feats, mask = torch.from_numpy(b.feats).to(acc.device), torch.from_numpy(b.mask).to(acc.device)
            z = torch.from_numpy(b.z.astype(np.float32)).to(acc.device)
            fr = torch.from_numpy(b.real_fraction).to(acc.device)
            post = torch.from_numpy(b.posterior).to(acc.device) if core.skeleton_tokenizer.cfg.n_labels else None
            with acc.autocast():
                l, sem = core.loss(feats, mask, b.prompts, b.answers, z, fr, post)
                w = len(b.prompts) / cfg.batch
                loss, total = loss + w * l, total + w * l
                if text_embed is not None and kind == "description" and len(b.answers) > 1:
                    t = torch.from_numpy(text_embed(b.answers)).to(sem.device, sem.dtype)
                    total = total + w * cfg.contrastive * core.skeleton_tokenizer.contrastive_loss(sem, t)
        acc.backward(total)
        acc.clip_grad_norm_(lora + proj, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rec = {"stage": stage, "step": step + 1, "loss": float(loss.detach()), "total": float(total.detach()),
               "seconds": round(time.time() - t0, 2)}
        last = step + 1 == cfg.steps
        if held_out is not None and ((step + 1) % 20 == 0 or last):
            core.eval()
            rec["held_out_accuracy"] = float(held_out(core))
            core.train()
        history.append(rec)
        if log:
            log(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if checkpoint is not None and acc.is_main_process and ((step + 1) % 20 == 0 or last):
            save_checkpoint(checkpoint, sampler.rng, model=trainable_state(core), opt=opt.state_dict(),
                            step=step + 1, history=history)
    core.eval()
    return history


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
