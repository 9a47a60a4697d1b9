"""A plain ST-GCN (Yan et al., AAAI 2018, as PYSKL builds it): the control that `eai bench recognition --controls`
trains beside the encoder.

Nothing of the encoder's additions: one input of joint positions and their velocities (6 channels), BatchNorm
over each joint's channels, ST-GCN blocks (spatial graph convolution on the canonical skeleton's spatial
partitions with a learned importance per edge, then a 9-frame temporal convolution, a residual), global average
pooling and a linear classifier. No descriptor expert, no presence mask inside the network (absent joints are
zero at the input), no dataset prior, no mirror at test time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from eai.encoder.model import GraphConv, partitioned_adjacency
from eai.encoder.streams import make_streams

if TYPE_CHECKING:
    from eai.data.windows import WindowSet

STREAMS = ("joints", "motion")  # positions and frame-to-frame velocities, as input channels


@dataclass
class STGCNConfig:
    """Six blocks of `base_channels` x (1, 1, 2, 2, 4, 4), time halved where the width doubles (PYSKL's ST-GCN
    has ten, 64 to 256 channels)."""

    n_classes: int = 7
    base_channels: int = 64
    widths: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4, 4])
    strides: list[int] = field(default_factory=lambda: [1, 1, 2, 1, 2, 1])
    temporal_kernel: int = 9
    frame_step: int = 1  # input frames taken every this many

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    """ST-GCN block: graph convolution over (A * M) (the encoder's GraphConv with ST-GCN's edge importance),
    BatchNorm, ReLU, temporal convolution, BatchNorm, plus the residual, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, A: torch.Tensor, residual: bool):
        super().__init__()
        self.gcn = GraphConv(c_in, c_out, A, edges="importance")
        self.bn = nn.BatchNorm2d(c_out)
        self.tcn = nn.Sequential(nn.Conv2d(c_out, c_out, (kernel, 1), (stride, 1), ((kernel - 1) // 2, 0)),
                                 nn.BatchNorm2d(c_out))
        if not residual:
            self.res = None
        elif c_in == c_out and stride == 1:
            self.res = nn.Identity()
        else:
            self.res = nn.Sequential(nn.Conv2d(c_in, c_out, 1, (stride, 1)), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T, K)
        y = self.tcn(torch.relu(self.bn(self.gcn(x))))
        return torch.relu(y if self.res is None else y + self.res(x))


class STGCN(nn.Module):
    """Input (N, 6, T, K): joints and velocities on the canonical joints -> logits (N, n_classes)."""

    def __init__(self, cfg: STGCNConfig):
        super().__init__()
        self.cfg = cfg
        A = torch.from_numpy(partitioned_adjacency())
        K, c_in = A.shape[-1], 3 * len(STREAMS)
        self.data_bn = nn.BatchNorm1d(c_in * K)
        blocks, c_prev = [], c_in
        for i, (w, s) in enumerate(zip(cfg.widths, cfg.strides)):
            c = cfg.base_channels * w
            blocks.append(_Block(c_prev, c, s, cfg.temporal_kernel, A, residual=i > 0))
            c_prev = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_prev, cfg.n_classes)
        self.to(memory_format=torch.channels_last)  # as the encoder: about 1.5x faster convolutions on CPUs

    def prepare(self, raw: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """Faced windows (N, T, K, 3) and mask (N, K) -> input (N, 6, T', K) on the model's device."""
        x = make_streams(raw[:, :: self.cfg.frame_step], mask, STREAMS)
        return torch.from_numpy(x).to(self.head.weight.device).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, T, K = x.shape
        x = self.data_bn(x.permute(0, 1, 3, 2).reshape(N, C * K, T)).view(N, C, K, T).permute(0, 1, 3, 2)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.blocks(x).mean((2, 3)))


@torch.no_grad()
def predict_stgcn(model: STGCN, ws: "WindowSet", batch: int = 256) -> np.ndarray:
    """Class probabilities (N, C) of every window of `ws`."""
    model.eval()
    out = [torch.softmax(model(model.prepare(ws.raw[b:b + batch], ws.mask[b:b + batch])).float(), 1).cpu().numpy()
           for b in range(0, len(ws.y), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.cfg.n_classes), np.float32)
