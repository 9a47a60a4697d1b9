"""Speed of the skeleton encoder on this machine's CPU.

Measures, in one run (medians of repeats): batched inference windows/s of the default encoder, its FLOP/s
(FLOPs counted by torch's FlopCounterMode) as a fraction of the fp32 matrix-multiply peak measured with
torch.mm, and the wall time of one epoch of the CPU training schedule on a given dataset size.
    python bench/bench_encoder.py [--batch 256] [--repeats 7] [--train-windows 415] [--json OUT]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from timing import median_time  # bench/timing.py


def matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_time(lambda: torch.mm(a, b), repeats, warmup=2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--train-windows", type=int, default=415, help="windows per epoch (a Bandai fold: ~415)")
    ap.add_argument("--json")
    args = ap.parse_args()

    from eai.encoder import EncoderConfig, SkeletonEncoder
    from eai.data.windows import WindowSet
    from eai.schedules import ENCODER_SCHEDULES
    from eai.train.encoder import train_encoder
    from eai.features import NAMES
    from eai.skeleton.registry import canonical

    K = canonical().n
    rng = np.random.default_rng(0)
    cfg = EncoderConfig(n_classes=7, n_descriptors=len(NAMES))
    model = SkeletonEncoder(cfg).eval()
    raw = rng.normal(size=(args.batch, 60, K, 3)).astype(np.float32)
    mask = np.ones((args.batch, K), bool)
    desc = torch.randn(args.batch, len(NAMES))
    x, m = model.prepare(raw, mask)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, m, desc)
    flops = fc.get_total_flops()

    def infer():
        with torch.no_grad():
            model(*model.prepare(raw, mask), desc)

    t_inf = median_time(infer, args.repeats)
    peak = matmul_peak(repeats=args.repeats)
    # one epoch of the CPU schedule on random windows of a fold's size (augmentation, stream making and
    # BatchNorm recalibration included)
    n = args.train_windows
    ws = WindowSet(raw=rng.normal(size=(n, 60, K, 3)).astype(np.float32) * 0.2, mask=np.ones((n, K), bool),
                   desc=rng.normal(size=(n, len(NAMES))).astype(np.float32), y=rng.integers(0, 7, n),
                   clip=np.arange(n), group=np.arange(n).astype(str), dataset_idx=np.zeros(n, np.int64),
                   frames=np.full(n, 60))
    sched = ENCODER_SCHEDULES["cpu"]
    one = {"epochs": 1, "warmup": 1, "milestones": []}
    t0 = time.perf_counter()
    train_encoder(ws, 7, dataclasses.replace(sched, **one), EncoderConfig(), progress=False)
    t_epoch = time.perf_counter() - t0
    res = {
        "threads": torch.get_num_threads(), "batch": args.batch,
        "inference_windows_per_s": args.batch / t_inf, "inference_ms_per_batch": t_inf * 1e3,
        "gflop_per_window": flops / args.batch / 1e9, "achieved_gflops": flops / t_inf / 1e9,
        "matmul_peak_gflops": peak / 1e9, "fraction_of_peak": flops / t_inf / peak,
        "cpu_schedule_epoch_s": t_epoch, "cpu_schedule_epochs": sched.epochs,
        "cpu_schedule_fold_estimate_s": t_epoch * sched.epochs,
    }
    print(f"encoder inference: {res['inference_windows_per_s']:.0f} windows/s (batch {args.batch}, "
          f"{res['gflop_per_window']:.3f} GFLOP/window, {res['achieved_gflops']:.1f} GFLOP/s)")
    print(f"fp32 matmul peak (torch.mm 2048^2): {res['matmul_peak_gflops']:.1f} GFLOP/s -> "
          f"{100 * res['fraction_of_peak']:.0f} % of peak")
    print(f"CPU schedule: {t_epoch:.1f} s per epoch of {n} windows -> ~{res['cpu_schedule_fold_estimate_s'] / 60:.1f} "
          f"min for its {sched.epochs} epochs")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
