"""Training the encoder as an emotion classifier (pre-training stage of EAI-LLM), with resumable checkpoints."""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eai.encoder.model import EncoderConfig, SkeletonEncoder
from eai.encoder.streams import augment, face_windows
from eai.kinematics import descriptor_vector
from eai.skeleton.unify import UnifiedMotion, windows


@dataclass
class TrainConfig:
    """The paper's recipe by default (SGD Nesterov, lr 0.1, batch 64, 200 epochs, 5 warm-up, /10 at 100,
    150, 175); SCHEDULES['cpu'] is the short schedule for laptops and the demo."""

    epochs: int = 200
    batch: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: int = 5
    milestones: list[int] = field(default_factory=lambda: [100, 150, 175])
    label_smoothing: float = 0.1
    window: int = 60
    train_stride: int = 10  # training crops overlap more than the protocol's evaluation windows
    eval_stride: int = 30
    yaw_deg: float = 45.0
    scale: float = 0.15
    mirror_p: float = 0.5
    drop_p: float = 0.1
    speed: float = 0.1
    descriptors: bool = True
    epoch_fraction: float = 1.0  # each epoch trains on this random share of the crops
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


SCHEDULES = {
    "paper": TrainConfig(),
    # measured on one GPU: the schedule behind the reported Bandai figures
    "gpu": TrainConfig(epochs=60, warmup=3, milestones=[30, 45, 52]),
    # a laptop's two cores: the gpu schedule's epochs, each on a random third of its crops, in batches of 16
    # (four times the steps of batch 64 at the same cost); a third of the gpu schedule's compute
    "cpu": TrainConfig(epochs=60, warmup=3, milestones=[30, 45, 52], epoch_fraction=1 / 3, batch=16, lr=0.05),
    "smoke": TrainConfig(epochs=4, warmup=1, milestones=[3], train_stride=30),
}


def default_schedule() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class WindowSet:
    """Faced windows ready for the encoder: raw (N, T, K, 3) body heights, mask (N, K), descriptors (N, D)
    in physical units, label index y (N,) (-1: unknown), clip index (N,), for windows of several datasets
    the dataset index ds (N,), and the real frames of each window (N,) (a clip shorter than a window is
    padded with its last frame)."""

    raw: np.ndarray
    mask: np.ndarray
    desc: np.ndarray
    y: np.ndarray
    clip: np.ndarray
    ds: np.ndarray | None = None
    frames: np.ndarray | None = None

    def __post_init__(self):
        if self.ds is None:
            self.ds = np.zeros(len(self.y), np.int64)
        if self.frames is None:
            self.frames = np.full(len(self.y), self.raw.shape[1], np.int64)

    @property
    def frac(self) -> np.ndarray:
        """The real share of each window's frames."""
        return (self.frames / self.raw.shape[1]).astype(np.float32)

    def subset(self, clips) -> "WindowSet":
        """The windows of the given clip indices."""
        keep = np.isin(self.clip, np.asarray(list(clips)))
        return WindowSet(self.raw[keep], self.mask[keep], self.desc[keep], self.y[keep], self.clip[keep],
                         self.ds[keep], self.frames[keep])

    @staticmethod
    def concat(sets: list["WindowSet"], ds: list[int] | None = None) -> "WindowSet":
        """One set of several; clip indices are renumbered to stay distinct, and `ds` (one per set) replaces
        their dataset indices when given."""
        offs = np.cumsum([0] + [int(w.clip.max()) + 1 if len(w.clip) else 0 for w in sets[:-1]])
        dss = [w.ds if ds is None else np.full(len(w.y), d) for w, d in zip(sets, ds or [0] * len(sets))]
        return WindowSet(*(np.concatenate(a) for a in (
            [w.raw for w in sets], [w.mask for w in sets], [w.desc for w in sets], [w.y for w in sets],
            [w.clip + o for w, o in zip(sets, offs)], dss, [w.frames for w in sets])))


def window_set(clips: list[UnifiedMotion], labels: list[str], size: int, stride: int,
               descriptors: bool = True, progress: bool = False) -> WindowSet:
    """Cut, face and describe every window of the clips (descriptors in physical units)."""
    raws, masks, descs, ys, owner, frames = [], [], [], [], [], []
    for i, u in enumerate(tqdm(clips, desc="windows", disable=not progress, leave=False)):
        w, valid = windows(u.positions, size, stride)
        frames.append(valid)
        mk = np.repeat(u.mask[None], len(w), 0)
        w = face_windows(w, mk)
        raws.append(w)
        masks.append(mk)
        if descriptors:
            descs.append(np.stack([descriptor_vector(x * u.height, u.mask, u.fps) for x in w]))
        ys.append(np.full(len(w), labels.index(u.label) if u.label in labels else -1))
        owner.append(np.full(len(w), i))
    raw, mask = np.concatenate(raws), np.concatenate(masks)
    desc = np.nan_to_num(np.concatenate(descs)).astype(np.float32) if descriptors else np.zeros((len(raw), 0), np.float32)
    return WindowSet(raw, mask, desc, np.concatenate(ys), np.concatenate(owner), None, np.concatenate(frames))


def _lr_lambda(cfg: TrainConfig):
    def f(epoch: int) -> float:
        if epoch < cfg.warmup:
            return (epoch + 1) / cfg.warmup
        return 0.1 ** sum(epoch >= m for m in cfg.milestones)

    return f


def build_model(enc_cfg: EncoderConfig) -> SkeletonEncoder:
    return SkeletonEncoder(enc_cfg)


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor, weight: torch.Tensor,
                         smoothing: float) -> torch.Tensor:
    """Cross-entropy over each row's allowed labels only (a dataset's own vocabulary within the joint label
    set), label smoothing spread over those labels, class weights as in nn.CrossEntropyLoss (weighted mean)."""
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), 1)
    nll = -logp.gather(1, y[:, None])[:, 0]
    smooth = -logp.masked_fill(~allowed, 0.0).sum(1) / allowed.sum(1)
    w = weight[y]
    return (w * ((1 - smoothing) * nll + smoothing * smooth)).sum() / w.sum()


def train_encoder(train: WindowSet, n_classes: int, cfg: TrainConfig, enc_cfg: EncoderConfig | None = None,
                  checkpoint: Path | None = None, progress: bool = True, init: dict | None = None,
                  log=None, allowed: np.ndarray | None = None,
                  sample_p: np.ndarray | None = None) -> tuple[SkeletonEncoder, list[dict]]:
    """Train on a WindowSet (labels y >= 0); resume from `checkpoint` if it exists. Returns model, history.

    Several datasets: `allowed` (n_datasets, n_classes) restricts each window's loss to its dataset's labels
    (train.ds), and `sample_p` (N,) draws each epoch's windows with those probabilities (with replacement),
    so that a small dataset is not drowned by a large one."""
    enc_cfg = copy.deepcopy(enc_cfg or EncoderConfig())
    enc_cfg.n_classes = n_classes
    enc_cfg.n_descriptors = train.desc.shape[1] if cfg.descriptors else 0
    enc_cfg.n_datasets = 1 if allowed is None else len(allowed)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = device()
    model = build_model(enc_cfg)
    if init is not None:  # pre-trained weights: everything but a head of another size
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in init.items() if k in own and own[k].shape == v.shape}, strict=False)
    model.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    # class-balanced loss, on the class frequencies the sampler actually draws
    counts = np.bincount(train.y, weights=sample_p, minlength=n_classes).astype(np.float32)
    present = counts > 0
    weight = torch.tensor(np.where(present, counts.sum() / np.maximum(counts, 1e-12) / present.sum(), 0.0),
                          dtype=torch.float32, device=dev)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    allowed_t = None if allowed is None or allowed.all() else torch.from_numpy(np.asarray(allowed, bool)).to(dev)
    history: list[dict] = []
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, history = state["epoch"] + 1, state["history"]
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    n = len(train.y)
    bar = tqdm(range(start, cfg.epochs), desc="encoder", unit="epoch", disable=not progress, leave=False,
               initial=start, total=cfg.epochs)
    for epoch in bar:
        model.train()
        t0, tot, correct, seen = time.perf_counter(), 0.0, 0, 0
        drawn = max(min(n, cfg.batch), round(n * cfg.epoch_fraction))
        order = rng.permutation(n)[:drawn] if sample_p is None else rng.choice(n, drawn, p=sample_p)
        for b in range(0, len(order) - cfg.batch // 4, cfg.batch):  # a ragged last batch under 1/4 is dropped
            idx = order[b:b + cfg.batch]
            raw, mask = augment(train.raw[idx], train.mask[idx], rng, cfg.yaw_deg, cfg.scale, cfg.mirror_p,
                                cfg.drop_p, cfg.speed)
            x, m = model.prepare(raw, mask)
            d = torch.from_numpy(train.desc[idx]).to(dev)
            y = torch.from_numpy(train.y[idx]).to(dev)
            ds = torch.from_numpy(train.ds[idx]).to(dev)
            with torch.autocast(**amp):
                _, logits, heads = model(x, m, d, ds, experts=True)
                # each expert learns as a classifier on its own (the descriptor one too, not only as a helper)
                if allowed_t is None:
                    loss = sum(loss_fn(h.float(), y) for h in heads)
                else:
                    rows = allowed_t[ds]
                    loss = sum(masked_cross_entropy(h.float(), y, rows, weight, cfg.label_smoothing) for h in heads)
                    logits = logits.float().masked_fill(~rows, float("-inf"))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        sched.step()
        rec = {"epoch": epoch, "windows": seen, "loss": tot / max(seen, 1),
               "train_accuracy": correct / max(seen, 1),
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['train_accuracy']:.2f}")
        if log is not None:
            log(rec)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, opt, sched, epoch, rng, history)
    recalibrate_batchnorm(model, train)
    model.eval()
    return model.cpu(), history


@torch.no_grad()
def recalibrate_batchnorm(model: SkeletonEncoder, ws: WindowSet, batch: int = 256) -> None:
    """Set BatchNorm statistics to their exact averages over the (unaugmented) training windows.

    The running averages trail weights that moved fast under a high learning rate; on small datasets that
    gap alone can take evaluation accuracy far below training accuracy.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
    model.train()
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for d in drops:
        d.eval()
    dev = next(model.parameters()).device
    for b in range(0, len(ws.y), batch):
        x, m = model.prepare(ws.raw[b:b + batch], ws.mask[b:b + batch])
        d = torch.from_numpy(ws.desc[b:b + batch]).to(dev) if model.cfg.n_descriptors else None
        model(x, m, d, torch.from_numpy(ws.ds[b:b + batch]).to(dev))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _save_checkpoint(path: Path, model, opt, sched, epoch: int, rng, history) -> None:
    from eai.io.files import atomic_path

    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": epoch, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
             "history": history}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@torch.no_grad()
def predict_proba(model: SkeletonEncoder, ws: WindowSet, batch: int = 256, mirror_tta: bool = True,
                  allowed: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities (N, C) of every window; with mirror_tta, averaged with the left-right mirrored
    window (emotion does not depend on which side is which). With `allowed` (n_datasets, C), each window's
    probabilities cover only its dataset's labels (ws.ds)."""
    from eai.skeleton.unify import mirror

    model.eval()
    dev = next(model.parameters()).device
    out = []
    for b in range(0, len(ws.y), batch):
        views = [(ws.raw[b:b + batch], ws.mask[b:b + batch])]
        if mirror_tta:
            views.append(mirror(*views[0]))
        d = torch.from_numpy(ws.desc[b:b + batch]).to(dev)
        ds = torch.from_numpy(ws.ds[b:b + batch]).to(dev)
        p = 0
        for raw, mask in views:
            x, m = model.prepare(raw, mask)
            _, logits = model(x, m, d if model.cfg.n_descriptors else None, ds)
            logits = logits.float()
            if allowed is not None:
                rows = torch.from_numpy(np.asarray(allowed, bool)[ws.ds[b:b + batch]]).to(dev)
                logits = logits.masked_fill(~rows, float("-inf"))
            p = p + torch.softmax(logits, 1).cpu().numpy()
        out.append(p / len(views))
    return np.concatenate(out)


def predict_dataset_proba(model: SkeletonEncoder, ws: WindowSet, allowed: np.ndarray, d: int) -> np.ndarray:
    """Probabilities over dataset d's labels only (the columns allowed[d]) of windows all from dataset d, for
    an encoder trained on the datasets of `allowed` (n_datasets, n_classes)."""
    ws = dataclasses.replace(ws, ds=np.full(len(ws.y), d))
    allowed = np.asarray(allowed, bool)
    return predict_proba(model, ws, allowed=allowed)[:, allowed[d]]

