"""Scale of the data layer: read + unify + window a whole dataset into the window cache (eai.data.cache), for
Bandai dataset-1 and the 12x larger dataset-2, each in its own process (so each peak memory is its own).

Reports, per dataset: clips, frames, windows, seconds of a cold cache build (median of repeats, each into a
fresh folder), seconds per 1,000 frames, the warm open (a cache hit), peak resident memory and its growth over
the process after imports; then the larger set's cost per frame over the smaller's (asked: within 1.2x) and
whether every peak stays under 2 GB. Usage:
    python bench/bench_scale.py [--data1 DIR] [--data2 DIR] [--repeats 3] [--stride 30] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA1 = HERE.parents[1] / "shared" / "data" / "bandai-namco-1"
DATA2 = Path("/work/bandai2/dataset/Bandai-Namco-Research-Motiondataset-2")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(data: str, repeats: int, stride: int) -> dict:
    """Measure one dataset in this process."""
    import torch  # noqa: F401 - eai's stack loaded, as in a real run

    from eai.data.cache import open_for_cache, window_cache

    ds = open_for_cache(data)
    base = rss_mb()
    cold, c = [], None
    with tempfile.TemporaryDirectory(prefix="eai-bench-scale-") as tmp:
        for r in range(repeats):
            t = time.perf_counter()
            c = window_cache(ds, stride=stride, progress=False, root=Path(tmp) / str(r))
            cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        warm = window_cache(ds, stride=stride, progress=False, root=Path(tmp) / "0")
        warm_s = time.perf_counter() - t
        assert warm.hit
        disk = sum(f.stat().st_size for f in c.path.iterdir())
    s = statistics.median(cold)
    return {"data": str(data), "clips": len(c.clips), "frames": c.total_frames, "windows": len(c),
            "cold_s": cold, "cold_s_median": s, "s_per_1000_frames": 1000 * s / c.total_frames,
            "warm_open_s": warm_s, "cache_mb": disk / 2**20, "rss_after_imports_mb": base,
            "peak_rss_mb": rss_mb(), "growth_mb": rss_mb() - base, "repeats": repeats, "stride": stride}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data1", default=str(DATA1))
    ap.add_argument("--data2", default=str(DATA2))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stride", type=int, default=30)
    ap.add_argument("--json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this dataset, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.repeats, args.stride)))
        return
    rows = []
    for d in (args.data1, args.data2):
        out = subprocess.run([sys.executable, __file__, "--one", d, "--repeats", str(args.repeats),
                              "--stride", str(args.stride)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{d}: {out.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small, large = sorted(rows, key=lambda r: r["frames"])
    ratio = large["s_per_1000_frames"] / small["s_per_1000_frames"]
    res = {"datasets": rows, "per_frame_ratio_large_over_small": ratio, "within_1_2x": ratio <= 1.2,
           "peak_under_2gb": all(r["peak_rss_mb"] < 2048 for r in rows)}
    head = ["data", "clips", "frames", "windows", "cold s (median)", "s / 1k frames", "warm open s", "cache MB",
            "peak RSS MB", "growth MB"]
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([Path(r["data"]).name, str(r["clips"]), str(r["frames"]), str(r["windows"]),
                          f"{r['cold_s_median']:.2f}", f"{r['s_per_1000_frames']:.4f}", f"{r['warm_open_s']:.3f}",
                          f"{r['cache_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['growth_mb']:.0f}"]))
    print(f"cost per frame, larger / smaller: {ratio:.2f} ({'within' if ratio <= 1.2 else 'NOT within'} 1.2x); "
          f"peak memory under 2 GB: {res['peak_under_2gb']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
