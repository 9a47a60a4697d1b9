"""Shared by the bench scripts: wall times of repeated calls, and their median."""
from __future__ import annotations

import statistics
import time


def times(fn, repeats: int, warmup: int = 0) -> list[float]:
    """Seconds of each of `repeats` calls of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """The median of `times`."""
    return statistics.median(times(fn, repeats, warmup))
