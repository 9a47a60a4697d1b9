"""The skeleton encoder: a spatio-temporal graph network over the canonical joint graph.

ST-GCN's spatial partitioning (root, centripetal, centrifugal) plus a learnable residual adjacency per
block (as in 2s-AGCN), temporal convolutions with residuals, and the joint presence mask honoured at
every block, so any layout runs through one network. Three input streams (joints, bones, motion) are
embedded separately and fused by summation. forward() gives features (N, C', T', K) for the tokenizer
and logits. With kinematic descriptors, two experts give the logits: a head over the graph features and a
small network over the window's descriptors, each trained as a classifier on its own, their log-probabilities
averaged (a product of experts: a class survives only where both allow it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from eai.skeleton.registry import canonical

if TYPE_CHECKING:
    from eai.data.windows import WindowSet


@dataclass
class EncoderConfig:
    channels: list[int] = field(default_factory=lambda: [48, 48, 96, 96, 192, 192])
    strides: list[int] = field(default_factory=lambda: [1, 1, 2, 1, 2, 1])
    temporal_kernel: int = 9
    dropout: float = 0.4
    n_classes: int = 7
    n_descriptors: int = 0  # kinematic descriptors fused into the head (0: none)
    streams: list[str] = field(default_factory=lambda: ["joints", "bones", "motion"])
    frame_step: int = 2  # input frames taken every this many (60 frames at 30 fps -> 30 at 15 fps)
    n_datasets: int = 1  # trained on several datasets: each has its own learned label prior (its tag)

    def to_dict(self) -> dict:
        return asdict(self)


def partitioned_adjacency() -> np.ndarray:
    """(3, K, K) normalised adjacency of the canonical skeleton: self, towards the root, away from it."""
    can = canonical()
    K = can.n
    depth = np.zeros(K, int)
    for k, p in enumerate(can.parents):
        depth[k] = 0 if p < 0 else depth[p] + 1
    A = np.zeros((3, K, K), np.float32)
    A[0] = np.eye(K)
    for k, p in enumerate(can.parents):
        if p < 0:
            continue
        A[1, k, p] = 1.0  # k gathers from its parent (closer to the root)
        A[2, p, k] = 1.0  # the parent gathers from its child
    deg = A.sum(axis=(0, 2))  # per receiving joint, over all partitions
    return A / np.maximum(deg, 1)[None, :, None]


class GraphConv(nn.Module):
    """Spatial graph convolution: per partition a 1x1 conv, aggregated over (A + learned B) (2s-AGCN's adaptive
    adjacency), or with edges="importance" over (A * learned M) (ST-GCN's edge importance, the plain control's)."""

    def __init__(self, c_in: int, c_out: int, A: torch.Tensor, edges: str = "adaptive"):
        super().__init__()
        self.register_buffer("A", A.clone(), persistent=False)  # the skeleton graph: rebuilt, not saved
        if edges == "adaptive":
            self.B = nn.Parameter(torch.zeros_like(A))  # adaptive adjacency, starts at the skeleton's
        elif edges == "importance":
            self.M = nn.Parameter(torch.ones_like(A))  # a weight per edge, starts at the skeleton's
        else:
            raise ValueError(f"unknown edges {edges!r}")
        self.conv = nn.Conv2d(c_in, c_out * A.shape[0], 1)
        self.parts = A.shape[0]

    def adjacency(self) -> torch.Tensor:
        """(P, K, K): the skeleton's partitions with what was learned of them."""
        return self.A + self.B if hasattr(self, "B") else self.A * self.M

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, C, T, K), channels-last
        N, _, T, K = x.shape
        y = self.conv(x)  # channels-last: laid out as (N, T, K, P*C), channel p*C + c
        C = y.shape[1] // self.parts
        # out[n,c,t,q] = sum_p sum_k A[p,q,k] y[n,p*C+c,t,k]: per frame, (K, K*P) @ (K*P, C) on views of y,
        # so no copy of the activations is made and the result is channels-last as it stands
        adj = self.adjacency().permute(1, 2, 0).reshape(K, K * self.parts)  # adj[q, k*P + p] = A[p, q, k]
        out = torch.matmul(adj, y.permute(0, 2, 3, 1).reshape(N * T, K * self.parts, C))  # (N*T, K, C)
        return out.view(N, T, K, C).permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, dropout: float, A: torch.Tensor):
        super().__init__()
        self.gcn = GraphConv(c_in, c_out, A)
        self.bn1 = nn.BatchNorm2d(c_out)
        pad = (kernel - 1) // 2
        self.tcn = nn.Sequential(nn.Conv2d(c_out, c_out, (kernel, 1), (stride, 1), (pad, 0)), nn.BatchNorm2d(c_out),
                                 nn.Dropout(dropout))
        if c_in == c_out and stride == 1:
            self.res = nn.Identity()
        else:
            self.res = nn.Sequential(nn.Conv2d(c_in, c_out, 1, (stride, 1)), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.gcn(x)))
        y = self.act(self.tcn(y) + self.res(x))
        return y * mask  # absent joints carry nothing forward


class SkeletonEncoder(nn.Module):
    """(N, S*3, T, K) streams + mask (N, K) [+ descriptors (N, D)] -> features (N, C', T', K), logits."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        A = torch.from_numpy(partitioned_adjacency())
        K = A.shape[-1]
        c0 = cfg.channels[0]
        self.embed = nn.ModuleList([nn.BatchNorm1d(3 * K) for _ in cfg.streams])  # per joint and axis
        self.stem = nn.ModuleList([nn.Conv2d(3, c0, 1) for _ in cfg.streams])
        blocks, c_prev = [], c0
        for c, s in zip(cfg.channels, cfg.strides):
            blocks.append(Block(c_prev, c, s, cfg.temporal_kernel, cfg.dropout, A))
            c_prev = c
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_prev
        self.experts = bool(cfg.n_descriptors)
        if self.experts:  # the descriptor expert (the module's docstring)
            self.desc = nn.Sequential(nn.BatchNorm1d(cfg.n_descriptors), nn.Linear(cfg.n_descriptors, 64), nn.ReLU())
            self.desc_head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(64, cfg.n_classes))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(c_prev, cfg.n_classes)
        if cfg.n_datasets > 1:
            self.dataset_bias = nn.Parameter(torch.zeros(cfg.n_datasets, cfg.n_classes))
        # channels-last convolutions run about 1.5x faster on CPUs (oneDNN) for these (9, 1) kernels
        self.to(memory_format=torch.channels_last)

    def prepare(self, raw: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Faced windows (N, T, K, 3) and mask (N, K) -> input streams (N, 3S, T', K) and mask tensors."""
        from eai.encoder.streams import make_streams

        dev = self.head.weight.device
        x = torch.from_numpy(make_streams(raw[:, :: self.cfg.frame_step], mask, self.cfg.streams))
        return x.to(dev).contiguous(memory_format=torch.channels_last), torch.from_numpy(mask).to(dev)

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (N, 3*S, T, K), mask (N, K) -> (N, C', T', K)."""
        N, _, T, K = x.shape
        m = mask[:, None, None, :].to(x.dtype)
        h = 0
        for i, (bn, stem) in enumerate(zip(self.embed, self.stem)):
            s = x[:, 3 * i: 3 * i + 3]  # (N, 3, T, K): normalise per joint and axis, then embed
            s = bn(s.permute(0, 1, 3, 2).reshape(N, 3 * K, T)).view(N, 3, K, T).permute(0, 1, 3, 2)
            h = h + stem(s * m)
        h = h * m
        for b in self.blocks:
            h = b(h, m)
        return h

    def pooled(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over time and present joints: (N, C')."""
        m = mask[:, None, None, :].to(feats.dtype)
        return (feats * m).sum((2, 3)) / (m.sum((2, 3)) * feats.shape[2]).clamp_min(1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, descriptors: torch.Tensor | None = None,
                dataset_idx: torch.Tensor | None = None):
        """x (N, 3S, T, K) streams, mask (N, K), descriptors (N, D) (encoders with n_descriptors), dataset_idx
        (N,) the dataset of each window (encoders of several datasets: adds its label prior to every head)
        -> (features (N, C', T', K), logits (N, n_classes), each expert's own logits: a list, for their
        training losses)."""
        feats = self.features(x, mask)
        z = self.pooled(feats, mask)
        heads = [self.head(self.drop(z))]
        if self.experts:
            heads.append(self.desc_head(self.desc(descriptors)))
        if self.cfg.n_datasets > 1:
            if dataset_idx is None:
                raise ValueError("this encoder was trained on several datasets: say which each window is from")
            heads = [h + self.dataset_bias[dataset_idx] for h in heads]
        # the experts' log-probabilities averaged: softmax of this is their renormalised geometric mean
        logits = heads[0] if len(heads) == 1 else sum(torch.log_softmax(h.float(), 1) for h in heads) / len(heads)
        return feats, logits, heads


def device() -> torch.device:
    """Where models train and run: CUDA when present, else the CPU (float32)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def encoder_features(encoder: SkeletonEncoder, raw: np.ndarray, mask: np.ndarray, batch: int = 256) -> np.ndarray:
    """Features (N, C', T', K) float32 of faced windows raw (N, T, K, 3) with masks (N, K): the skeleton
    tokenizer's input."""
    encoder.eval()
    out = []
    for b in range(0, len(raw), batch):
        x, m = encoder.prepare(raw[b:b + batch], mask[b:b + batch])
        out.append(encoder.features(x, m).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def predict_proba(model: SkeletonEncoder, ws: "WindowSet", batch: int = 256, mirror_tta: bool = True,
                  allowed: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities (N, C) of every window; with mirror_tta, averaged with the left-right mirrored
    window (emotion does not depend on which side is which). With `allowed` (n_datasets, C), each window's
    probabilities cover only its dataset's labels (ws.dataset_idx)."""
    from eai.skeleton.unify import mirror

    model.eval()
    dev = next(model.parameters()).device
    descriptors = ws.model_desc
    out = []
    for b in range(0, len(ws.y), batch):
        views = [(ws.raw[b:b + batch], ws.mask[b:b + batch])]
        if mirror_tta:
            views.append(mirror(*views[0]))
        d = torch.from_numpy(descriptors[b:b + batch]).to(dev)
        dataset_idx = torch.from_numpy(ws.dataset_idx[b:b + batch]).to(dev)
        p = 0
        for raw, mask in views:
            x, m = model.prepare(raw, mask)
            _, logits, _ = model(x, m, d if model.cfg.n_descriptors else None, dataset_idx)
            logits = logits.float()
            if allowed is not None:
                rows = torch.from_numpy(np.asarray(allowed, bool)[ws.dataset_idx[b:b + batch]]).to(dev)
                logits = logits.masked_fill(~rows, float("-inf"))
            p = p + torch.softmax(logits, 1).cpu().numpy()
        out.append(p / len(views))
    return np.concatenate(out)


def predict_dataset_proba(model: SkeletonEncoder, ws: "WindowSet", allowed: np.ndarray, d: int) -> np.ndarray:
    """Probabilities over dataset d's labels only (the columns allowed[d]) of windows all from dataset d, for
    an encoder trained on the datasets of `allowed` (n_datasets, n_classes)."""
    allowed = np.asarray(allowed, bool)
    return predict_proba(model, ws.of_dataset(d), allowed=allowed)[:, allowed[d]]
