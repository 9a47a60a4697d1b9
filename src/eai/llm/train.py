"""LLM stages on cached encoder features: emotion description, then emotion recognition (as in the paper),
with LoRA on the LM's linear layers and the MGST projectors trained, on Hugging Face Accelerate so the same
code runs on a CPU, one GPU or several (`accelerate launch`). Checkpoints are written atomically every
20 steps and a killed stage resumes from its last one."""
from __future__ import annotations

import dataclasses
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eai.encoder.train import WindowSet
from eai.io.files import atomic_path
from eai.llm import evidence as ev
from eai.llm.model import EmotionLLM, description_prompt, recognition_prompt


@dataclass
class StageConfig:
    steps: int
    batch: int
    lr: float  # LoRA
    projector_lr: float
    warmup: int
    mix: float = 0.0  # share of description samples kept in the recognition stage (against forgetting)
    contrastive: float = 0.1  # weight of the semantic token's contrastive loss (description stage)


# the paper's step counts and learning rate; the cpu schedule is what 2 cores afford in a few minutes
SCHEDULES = {
    "paper": {"description": StageConfig(10_000, 16, 1e-5, 1e-5, 500),
              "recognition": StageConfig(800_000, 64, 1e-5, 1e-5, 2_000, mix=0.1)},
    "gpu": {"description": StageConfig(2_000, 16, 2e-4, 1e-3, 100),
            "recognition": StageConfig(4_000, 32, 2e-4, 1e-3, 200, mix=0.2)},
    "cpu": {"description": StageConfig(30, 4, 5e-4, 2e-3, 3),
            "recognition": StageConfig(45, 8, 5e-4, 2e-3, 4, mix=0.25)},
    "smoke": {"description": StageConfig(4, 2, 1e-3, 1e-3, 1),
              "recognition": StageConfig(4, 2, 1e-3, 1e-3, 1, mix=0.5)},
}
STAGES = ("description", "recognition")
LORA = {"r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}


@dataclass
class FeatureSet:
    """Cached encoder features of windows and of whole clips, with labels and descriptor z-scores."""

    feats: np.ndarray  # (N, C, T', K) float32
    mask: np.ndarray  # (N, K) bool
    y: np.ndarray  # (N,)
    z: np.ndarray  # (N, D)
    clip: np.ndarray  # (N,)
    clip_feats: np.ndarray  # (M, C, T', K): mean over a clip's windows
    clip_mask: np.ndarray
    clip_y: np.ndarray
    clip_z: np.ndarray  # (M, D) z-scores of the whole clip's descriptors
    ds: np.ndarray | None = None  # (N,) dataset index of each window (several datasets)
    clip_ds: np.ndarray | None = None  # (M,)
    frac: np.ndarray | None = None  # (N,) real share of each window's frames (a short clip is padded)
    clip_frac: np.ndarray | None = None  # (M,)

    def __post_init__(self):
        if self.frac is None:
            self.frac = np.ones(len(self.y), np.float32)
        if self.clip_frac is None:
            self.clip_frac = np.ones(len(self.clip_y), np.float32)
        if self.ds is None:
            self.ds = np.zeros(len(self.y), np.int64)
        if self.clip_ds is None:
            self.clip_ds = np.zeros(len(self.clip_y), np.int64)

    @staticmethod
    def concat(sets: list["FeatureSet"]) -> "FeatureSet":
        """The feature sets of several datasets as one, dataset d's windows tagged ds = d."""
        offs = np.cumsum([0] + [int(f.clip.max()) + 1 for f in sets[:-1]])
        cat = lambda get: np.concatenate([get(f) for f in sets])  # noqa: E731
        return FeatureSet(cat(lambda f: f.feats), cat(lambda f: f.mask), cat(lambda f: f.y), cat(lambda f: f.z),
                          np.concatenate([f.clip + o for f, o in zip(sets, offs)]),
                          cat(lambda f: f.clip_feats), cat(lambda f: f.clip_mask), cat(lambda f: f.clip_y),
                          cat(lambda f: f.clip_z), np.concatenate([np.full(len(f.y), d) for d, f in enumerate(sets)]),
                          np.concatenate([np.full(len(f.clip_y), d) for d, f in enumerate(sets)]),
                          cat(lambda f: f.frac), cat(lambda f: f.clip_frac))


@torch.no_grad()
def encoder_features(encoder, raw: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
    encoder.eval()
    out = []
    for b in range(0, len(raw), batch):
        x, m = encoder.prepare(raw[b:b + batch], mask[b:b + batch])
        out.append(encoder.features(x, m).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def feature_set(encoder, ws: WindowSet, clip_desc: np.ndarray, ref: ev.Reference, mirror: bool = False,
                progress: bool = False) -> FeatureSet:
    """Features of every window (and, with `mirror`, of its left-right mirror too, for training), clip means,
    and z-scores of window and clip descriptors against the neutral reference."""
    from eai.skeleton.unify import mirror as mirror_fn

    views = [(ws.raw, ws.mask)] + ([mirror_fn(ws.raw, ws.mask)] if mirror else [])
    feats = np.concatenate([encoder_features(encoder, r, m) for r, m in
                            tqdm(views, desc="encoder features", disable=not progress, leave=False)])
    rep = len(views)
    mask, y, clip, frac = (np.concatenate([a] * rep) for a in (ws.mask, ws.y, ws.clip, ws.frac))
    z = np.concatenate([ref.z(ws.desc)] * rep)
    ids = np.unique(ws.clip)
    cf = np.stack([feats[clip == c].mean(0) for c in ids])
    cm = np.stack([mask[clip == c][0] for c in ids])
    cy = np.array([y[clip == c][0] for c in ids])
    cfrac = np.array([frac[clip == c].max() for c in ids], np.float32)
    return FeatureSet(feats, mask, y, z, clip, cf, cm, cy, ref.z(clip_desc[ids]), frac=frac, clip_frac=cfrac)


def _lr(step: int, cfg: StageConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


@dataclass
class Voice:
    """What the LM is told of one dataset and how its answers read: the tag for the prompt, its labels
    (unified names, a subset of the run's) and its own words for them."""

    tag: str
    labels: list[str]
    words: list[str]
    name: str = ""
    layout: str = ""
    reference: dict | None = None  # the dataset's neutral baseline (evidence.Reference.to_dict)

    def word(self, label: str) -> str:
        return self.words[self.labels.index(label)]

    @classmethod
    def from_dict(cls, d: dict) -> "Voice":
        return cls(d["tag"], d["labels"], d["words"], d.get("name", ""), d.get("layout", ""), d.get("reference"))


class Sampler:
    """Batches of recognition and description examples from a FeatureSet: class-balanced within each
    dataset, datasets drawn by `mix` (eai.joint.mix_weights); every example speaks its dataset's voice."""

    def __init__(self, fs: FeatureSet, labels: list[str], voices: list[Voice], n_tokens: int, seed: int,
                 mix: str = "equal"):
        from eai.joint import mix_weights

        self.fs, self.labels, self.voices, self.n = fs, labels, voices, n_tokens
        self.rng = np.random.default_rng(seed)
        key = fs.ds * len(labels) + fs.y  # (dataset, label) cells
        counts = np.bincount(key, minlength=len(voices) * len(labels)).astype(float)
        per_ds = np.array([len(v.labels) for v in voices], float)
        share = mix_weights(fs.ds, len(voices), mix) * np.bincount(fs.ds, minlength=len(voices))[fs.ds]
        w = share / (per_ds[fs.ds] * counts[key])
        self.p = w / w.sum()

    def _word(self, d: int, y: int) -> str:
        return self.voices[d].word(self.labels[y])

    def recognition(self, k: int):
        i = self.rng.choice(len(self.fs.y), k, p=self.p)
        prompts = [recognition_prompt(self.n, self.voices[d].tag, self.voices[d].words) for d in self.fs.ds[i]]
        return (self.fs.feats[i], self.fs.mask[i], self.fs.z[i], self.fs.frac[i], prompts,
                [self._word(d, y) for d, y in zip(self.fs.ds[i], self.fs.y[i])])

    def description(self, k: int):
        """Half windows (window descriptors), half whole clips (clip-mean features, clip descriptors)."""
        fs = self.fs
        n_clip = int(self.rng.binomial(k, 0.5))
        i = self.rng.choice(len(fs.y), k - n_clip, p=self.p)
        j = self.rng.choice(len(fs.clip_y), n_clip)
        feats = np.concatenate([fs.feats[i], fs.clip_feats[j]])
        mask = np.concatenate([fs.mask[i], fs.clip_mask[j]])
        ys = np.concatenate([fs.y[i], fs.clip_y[j]])
        ds = np.concatenate([fs.ds[i], fs.clip_ds[j]])
        zs = np.concatenate([fs.z[i], fs.clip_z[j]])
        frac = np.concatenate([fs.frac[i], fs.clip_frac[j]])
        words = [self._word(d, y) for d, y in zip(ds, ys)]
        phrases = [ev.claim_phrases(z, self.rng) for z in zs]  # varied wordings, the same in prompt and answer
        prompts = [description_prompt(self.n, self.voices[d].tag, w, ev.evidence_line(z, p))
                   for d, w, z, p in zip(ds, words, zs, phrases)]
        answers = [ev.description(w, z, self.rng, p) for w, z, p in zip(words, zs, phrases)]
        return feats, mask, zs, frac, prompts, answers


def add_lora(lm, lora: dict | None = None):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(lm, LoraConfig(**(lora or LORA), bias="none"))


def trainable_state(llm: EmotionLLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in llm.named_parameters() if v.requires_grad}


def train_stage(llm: EmotionLLM, sampler: Sampler, stage: str, cfg: StageConfig, checkpoint: Path | None = None,
                progress: bool = True, log=None) -> list[dict]:
    """One stage; returns its loss history. Resumes from `checkpoint` when it exists."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available(),
                      mixed_precision="bf16" if torch.cuda.is_available() else "no")
    lora = [p for n, p in llm.named_parameters() if p.requires_grad and not n.startswith("mgst.")]
    proj = [p for p in llm.mgst.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": lora, "lr": cfg.lr}, {"params": proj, "lr": cfg.projector_lr}],
                            weight_decay=0.0)
    base_lr = [cfg.lr, cfg.projector_lr]
    start, history, t0 = 0, [], time.time()
    if checkpoint is not None and checkpoint.is_file():
        st = torch.load(checkpoint, weights_only=False)
        llm.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["opt"])
        sampler.rng.bit_generator.state = st["rng"]
        if "torch_rng" in st:  # dropout draws continue as if never interrupted
            torch.set_rng_state(st["torch_rng"])
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
        n_desc = cfg.batch if stage == "description" else int(sampler.rng.binomial(cfg.batch, cfg.mix))
        parts = []
        if cfg.batch - n_desc:
            parts.append(("recognition", sampler.recognition(cfg.batch - n_desc)))
        if n_desc:
            parts.append(("description", sampler.description(n_desc)))
        # recognition and description examples go through separately: each keeps its shared prompt prefix
        loss = total = 0
        for kind, (f, m, z, fr, prompts, answers) in parts:
            feats, mask = torch.from_numpy(f).to(acc.device), torch.from_numpy(m).to(acc.device)
            z = torch.from_numpy(z.astype(np.float32)).to(acc.device)
            fr = torch.from_numpy(fr).to(acc.device)
            with acc.autocast():
                l, sem = core.loss(feats, mask, prompts, answers, z, fr)
                w = len(prompts) / cfg.batch
                loss, total = loss + w * l, total + w * l
                if text_embed is not None and kind == "description" and len(answers) > 1:
                    t = torch.from_numpy(text_embed(answers)).to(sem.device, sem.dtype)
                    total = total + w * cfg.contrastive * core.mgst.contrastive_loss(sem, t)
        acc.backward(total)
        acc.clip_grad_norm_(lora + proj, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rec = {"stage": stage, "step": step + 1, "loss": float(loss.detach()), "total": float(total.detach()),
               "seconds": round(time.time() - t0, 2)}
        history.append(rec)
        if log:
            log(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
        last = step + 1 == cfg.steps
        if checkpoint is not None and acc.is_main_process and ((step + 1) % 20 == 0 or last):
            with atomic_path(checkpoint) as tmp:
                torch.save({"model": trainable_state(core), "opt": opt.state_dict(), "step": step + 1,
                            "rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                            "history": history}, tmp)
    core.eval()
    return history


def peak_memory_mb() -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_configs(name: str, steps: dict | None = None) -> dict[str, StageConfig]:
    from eai.errors import EaiError

    if name not in SCHEDULES:
        raise EaiError(f"unknown LLM schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    out = dict(SCHEDULES[name])
    for st, n in (steps or {}).items():
        if n:
            out[st] = dataclasses.replace(out[st], steps=n, warmup=min(out[st].warmup, max(1, n // 10)))
    return out


def configs_json(cfgs: dict[str, StageConfig]) -> dict:
    return {k: dataclasses.asdict(v) for k, v in cfgs.items()}
