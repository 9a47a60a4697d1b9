"""The plain ST-GCN control's training loop (eai.encoder.stgcn, schedule eai.schedules.ControlConfig): PYSKL's
recipe, nothing of the encoder's own (no augmentation, no class weights, no label smoothing, no warm-up), but
the encoder's BatchNorm recalibration at the end, so that short schedules compare fairly."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eai.data.windows import WindowSet
from eai.encoder.model import device
from eai.encoder.stgcn import STGCN, STGCNConfig
from eai.schedules import ControlConfig
from eai.train.encoder import reestimate_batchnorm


def train_stgcn(train: WindowSet, n_classes: int, cfg: ControlConfig, progress: bool = True) -> tuple[STGCN, list[dict]]:
    """Train the control on faced windows (labels y >= 0). Returns the model (on the CPU, eval mode), history."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = STGCN(STGCNConfig(n_classes=n_classes, base_channels=cfg.base_channels, frame_step=cfg.frame_step))
    model.to(device())
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)
    n = len(train.y)
    drawn = max(min(n, cfg.batch), round(n * cfg.epoch_fraction))
    starts = range(0, drawn - cfg.batch // 4, cfg.batch)  # a ragged last batch under 1/4 is dropped
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * len(starts)))  # per step
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="st-gcn", unit="epoch", disable=not progress, leave=False):
        model.train()
        order = rng.permutation(n)[:drawn]
        tot, correct, seen = 0.0, 0, 0
        for b in starts:
            idx = order[b:b + cfg.batch]
            x = model.prepare(train.raw[idx], train.mask[idx])
            y = torch.from_numpy(train.y[idx]).to(x.device)
            logits = model(x)
            loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        history.append({"epoch": epoch, "windows": seen, "loss": tot / max(seen, 1),
                        "train_accuracy": correct / max(seen, 1)})
    recalibrate_batchnorm(model, train)
    return model.cpu(), history


def recalibrate_batchnorm(model: STGCN, ws: WindowSet, batch: int = 256) -> None:
    """BatchNorm statistics set to their exact averages over the training windows, as the encoder's are
    (eai.train.encoder.reestimate_batchnorm): a schedule of few steps is judged by its weights, not by running
    averages that trail them (with PYSKL's thousands of steps the two agree). Leaves the model in eval mode."""
    reestimate_batchnorm(model, len(ws.y), lambda b, e: model(model.prepare(ws.raw[b:e], ws.mask[b:e])), batch)


def control_setup(cfg: ControlConfig) -> dict:
    """What a report says of the control: its network and its schedule."""
    net = STGCNConfig(base_channels=cfg.base_channels, frame_step=cfg.frame_step)
    return {"network": {k: v for k, v in net.to_dict().items() if k != "n_classes"}, "schedule": cfg.to_dict(),
            "input": "joints + velocities", "optimizer": "SGD momentum 0.9 Nesterov, cosine lr to 0 per step"}

