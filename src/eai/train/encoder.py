"""The encoder's training loop: the skeleton encoder trained as an emotion classifier (EAI-LLM's pre-training
stage), on faced windows with augmentation, a class-balanced loss, several datasets at once, and checkpoints
it resumes from bit-identically.

It runs under Hugging Face Accelerate: one process on a CPU or a GPU as it stands, several with `accelerate
launch` (DDP: gradients averaged across processes). Every process draws the same epoch order from the shared
seed, and each global batch of `cfg.batch` windows is dealt out among the processes in turn (`shard_batches`),
so the batch, the steps per epoch and so the schedule mean the same on any number of processes, and no window
of an epoch's draw goes to two processes. The main process alone writes checkpoints and the log."""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eai.data.windows import WindowSet
from eai.encoder.model import EncoderConfig, SkeletonEncoder
from eai.encoder.streams import augment
from eai.schedules import TrainConfig
from eai.errors import EaiError
from eai.train.checkpoint import load_checkpoint, save_checkpoint
from eai.weights import BACKBONE


def _lr_lambda(cfg: TrainConfig):
    def f(epoch: int) -> float:
        if epoch < cfg.warmup:
            return (epoch + 1) / cfg.warmup
        return 0.1 ** sum(epoch >= m for m in cfg.milestones)

    return f


def shard_batches(order: np.ndarray, batch: int, rank: int = 0, world: int = 1):
    """The batches of one epoch's draw `order` (window indices) that process `rank` of `world` trains on: global
    batches of `batch` windows (a ragged last one under a quarter of a batch dropped), window i of each to process
    i mod world. With `batch` a multiple of `world`, a process's shard is order[rank::world]; one process gets
    `order` itself, in batches, as before Accelerate."""
    for b in range(0, len(order) - batch // 4, batch):
        idx = order[b:b + batch]
        if len(idx) >= world:  # every process steps together (DDP), none on an empty batch
            yield idx[rank::world]


def launched() -> tuple[int, int]:
    """(this process's rank, the number of processes) as `accelerate launch` or torchrun set them; (0, 1) in a
    process started on its own. Read from the environment, so asking starts nothing."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def accelerator():
    """This process's Accelerator: the GPU where there is one (bf16 autocast), else the CPU (float32); several
    processes under `accelerate launch`. The encoder loop and the LLM stages (eai.train.stages) both ask here:
    accelerate keeps one state per process and refuses an Accelerator of other settings after the first."""
    from accelerate import Accelerator  # here, not at import: the command line's cold start stays short

    cuda = torch.cuda.is_available()
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor, weight: torch.Tensor,
                         smoothing: float) -> torch.Tensor:
    """Cross-entropy over each row's allowed labels only (a dataset's own vocabulary within the joint label
    set), label smoothing spread over those labels, class weights as in nn.CrossEntropyLoss (weighted mean)."""
    logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), 1)
    nll = -logp.gather(1, y[:, None])[:, 0]
    smooth = -logp.masked_fill(~allowed, 0.0).sum(1) / allowed.sum(1)
    w = weight[y]
    return (w * ((1 - smoothing) * nll + smoothing * smooth)).sum() / w.sum()


def load_init(model: SkeletonEncoder, init: dict) -> None:
    """Start `model` from pre-trained weights `init` (a state dict): every tensor of the same name and shape; a head
    of another label set (another shape) is left as initialised. The feature extractor (eai.weights.BACKBONE) must
    match whole: EaiError when any of its tensors is missing from `init` or of another shape."""
    own = model.state_dict()
    fits = {k: v for k, v in init.items() if k in own and own[k].shape == v.shape}
    bad = [k for k in own if k.startswith(BACKBONE) and k not in fits]
    if bad:
        raise EaiError(f"the initial weights do not fit this encoder's feature extractor ({len(bad)} of its tensors "
                       f"missing or of another shape, e.g. {bad[0]}): they were pretrained for another architecture")
    model.load_state_dict(fits, strict=False)


def train_encoder(train: WindowSet, n_classes: int, cfg: TrainConfig, enc_cfg: EncoderConfig | None = None,
                  checkpoint: Path | None = None, progress: bool = True, init: dict | None = None,
                  log=None, allowed: np.ndarray | None = None,
                  sample_p: np.ndarray | None = None,
                  held_out: Callable[[SkeletonEncoder], float] | None = None) -> tuple[SkeletonEncoder, list[dict]]:
    """Train on a WindowSet (labels y >= 0); resume from `checkpoint` if it exists. Returns model, history.

    Several datasets: `allowed` (n_datasets, n_classes) restricts each window's loss to its dataset's labels
    (train.dataset_idx), and `sample_p` (N,) draws each epoch's windows with those probabilities (with replacement),
    so that a small dataset is not drowned by a large one. `held_out(model)`, the accuracy of the model (in eval
    mode) on held-out windows, is recorded as `held_out_accuracy` after every epoch of 25 spread over the schedule
    and after the last; it draws nothing from the training's random streams, so training is the same with it."""
    enc_cfg = copy.deepcopy(enc_cfg or EncoderConfig())
    enc_cfg.n_classes = n_classes
    enc_cfg.n_descriptors = train.desc.shape[1] if cfg.descriptors else 0
    enc_cfg.n_datasets = 1 if allowed is None else len(allowed)
    acc = accelerator()
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the epochs' draws: the same in every process
    dev = acc.device
    model = SkeletonEncoder(enc_cfg)
    if init is not None:
        load_init(model, init)
    model.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))  # per epoch, so not handed to Accelerate
    # class-balanced loss, on the class frequencies the sampler actually draws
    counts = np.bincount(train.y, weights=sample_p, minlength=n_classes).astype(np.float32)
    present = counts > 0
    weight = torch.tensor(np.where(present, counts.sum() / np.maximum(counts, 1e-12) / present.sum(), 0.0),
                          dtype=torch.float32, device=dev)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    allowed_t = None if allowed is None or allowed.all() else torch.from_numpy(np.asarray(allowed, bool)).to(dev)
    history: list[dict] = []
    start = 0
    # every process resumes from the main one's checkpoint (on CPUs accelerate's device is "cpu:0", which
    # torch.load cannot map to)
    state = load_checkpoint(checkpoint, rng, map_location="cpu" if dev.type == "cpu" else dev)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"] + 1, state["history"]
    ddp, opt = acc.prepare(model, opt)  # one process: the model itself; several: DDP, weights synced from rank 0
    n = len(train.y)
    descriptors = train.model_desc
    bar = tqdm(range(start, cfg.epochs), desc="encoder", unit="epoch", disable=not (progress and main),
               leave=False, initial=start, total=cfg.epochs)
    for epoch in bar:
        ddp.train()
        t0, tot, correct, seen = time.perf_counter(), 0.0, 0, 0
        drawn = max(min(n, cfg.batch), round(n * cfg.epoch_fraction))
        order = rng.permutation(n)[:drawn] if sample_p is None else rng.choice(n, drawn, p=sample_p)
        # one process augments with the shared generator (as before Accelerate); several, each with its own,
        # seeded by (seed, rank, epoch) so that a resumed run is the same without every process's state saved
        aug = rng if world == 1 else np.random.default_rng([cfg.seed, rank, epoch])
        if world > 1:
            torch.manual_seed(int(aug.integers(2**62)))  # dropout: the same reasoning
        for idx in shard_batches(order, cfg.batch, rank, world):
            raw, mask = augment(train.raw[idx], train.mask[idx], aug, cfg.yaw_deg, cfg.scale, cfg.mirror_p,
                                cfg.drop_p, cfg.speed)
            x, m = model.prepare(raw, mask)
            d = torch.from_numpy(descriptors[idx]).to(dev)
            y = torch.from_numpy(train.y[idx]).to(dev)
            dataset_idx = torch.from_numpy(train.dataset_idx[idx]).to(dev)
            with acc.autocast():  # bf16 on a GPU; on the CPU nothing
                _, logits, heads = ddp(x, m, d, dataset_idx)
                # each expert learns as a classifier on its own (the descriptor one too, not only as a helper)
                if allowed_t is None:
                    loss = sum(loss_fn(h.float(), y) for h in heads)
                else:
                    rows = allowed_t[dataset_idx]
                    loss = sum(masked_cross_entropy(h.float(), y, rows, weight, cfg.label_smoothing) for h in heads)
                    logits = logits.float().masked_fill(~rows, float("-inf"))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            tot += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        sched.step()
        if world > 1:  # the epoch's figures over every process's shard
            tot, correct, seen = acc.reduce(torch.tensor([tot, correct, seen], dtype=torch.float64, device=dev),
                                            "sum").tolist()
            correct, seen = int(correct), int(seen)
        rec = {"epoch": epoch, "windows": seen, "loss": tot / max(seen, 1),
               "train_accuracy": correct / max(seen, 1),
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 3)}
        if main and held_out is not None and ((epoch + 1) % max(1, cfg.epochs // 25) == 0 or epoch + 1 == cfg.epochs):
            rec["held_out_accuracy"] = float(held_out(model))
            ddp.train()
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['train_accuracy']:.2f}")
        if main and log is not None:
            log(rec)
        if main and checkpoint is not None:
            save_checkpoint(checkpoint, rng, model=model.state_dict(), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), epoch=epoch, history=history)
    acc.wait_for_everyone()  # no process returns (and reads or removes a checkpoint) before the last is written
    model = acc.unwrap_model(ddp, keep_fp32_wrapper=False)  # its own forward again: predictions in float32
    recalibrate_batchnorm(model, train)  # every process the same: the same weights, the same windows
    model.eval()
    return model.cpu(), history


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, n: int, run: Callable[[int, int], object], batch: int = 256) -> None:
    """Set `model`'s BatchNorm statistics to their exact averages over `n` windows, run through the model in
    batches by `run(start, stop)` (training mode, dropout off); leaves the model in eval mode.

    The running averages trail weights that moved fast under a high learning rate; on small datasets that
    gap alone can take evaluation accuracy far below training accuracy."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
    model.train()
    for d in (m for m in model.modules() if isinstance(m, nn.Dropout)):
        d.eval()
    for b in range(0, n, batch):
        run(b, b + batch)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def recalibrate_batchnorm(model: SkeletonEncoder, ws: WindowSet, batch: int = 256) -> None:
    """The encoder's BatchNorm statistics over the (unaugmented) training windows `ws` (reestimate_batchnorm)."""
    dev = next(model.parameters()).device
    descriptors = ws.model_desc

    def run(b: int, e: int) -> None:
        x, m = model.prepare(ws.raw[b:e], ws.mask[b:e])
        d = torch.from_numpy(descriptors[b:e]).to(dev) if model.cfg.n_descriptors else None
        model(x, m, d, torch.from_numpy(ws.dataset_idx[b:e]).to(dev))

    reestimate_batchnorm(model, len(ws.y), run, batch)
