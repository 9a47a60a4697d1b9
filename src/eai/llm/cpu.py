"""Inference on a CPU: a linear layer that keeps both cores busy when only a few rows go through it (decoding)."""
from __future__ import annotations

import torch


class FewRowsLinear(torch.nn.Linear):
    """nn.Linear for CPU inference, with the same parameters, that computes the product of few rows (decoding,
    a short prompt) as weight @ x.T: MKL runs x @ weight.T for one to a few dozen rows as a single-threaded,
    bandwidth-starved GEMV/small GEMM, while the transposed product threads over the output rows (one row is
    paired with a copy of itself so as not to fall back to GEMV). 1.4-2.6x faster for 1-32 rows on two cores
    (bench/RESULTS.md); the same values up to float rounding."""

    ROWS = 32

    @staticmethod
    def of(m: torch.nn.Linear) -> "FewRowsLinear":
        new = FewRowsLinear.__new__(FewRowsLinear)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = m.in_features, m.out_features
        new.weight, new.bias = m.weight, m.bias  # shared: tied embeddings stay tied
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > self.ROWS or x.is_cuda:
            return super().forward(x)
        flat = x.reshape(rows, self.in_features)
        y = torch.mm(self.weight, (flat if rows > 1 else torch.cat([flat, flat])).t())[:, :rows].t()
        if self.bias is not None:
            y = y + self.bias
        return y.contiguous().view(*x.shape[:-1], self.out_features)


def few_rows_linears(lm: torch.nn.Module) -> torch.nn.Module:
    """`lm` with every plain nn.Linear (any subclass computing nn.Linear's forward) swapped for a FewRowsLinear sharing its parameters (inference only)."""
    for name, m in list(lm.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, torch.nn.Linear) and type(child).forward is torch.nn.Linear.forward:
                setattr(m, child_name, FewRowsLinear.of(child))
    return lm
