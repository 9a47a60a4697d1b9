"""Speed of the data layer: read + forward kinematics + unify of every BVH clip of a dataset.

Reports the median of repeated runs and, measured in the same run, the reference: the pure-Python `bvh`
0.3 package just parsing the same files (no FK). Usage:
    python bench/bench_read.py --data ../shared/data/bandai-namco-1 [--repeats 7] [--ref-repeats 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch  # noqa: F401 - imported so the timing reflects a process that has eai's stack loaded

from timing import times  # bench/timing.py


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/bandai-namco-1")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--ref-repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    from eai.io.bvh import read_bvh, read_bvh_many
    from eai.skeleton.unify import unify

    root = Path(args.data)
    paths = sorted((root / "data" if (root / "data").is_dir() else root).glob("*.bvh"))
    if not paths:
        raise SystemExit(f"no .bvh files under {root}")
    frames = sum(m.n_frames for m in read_bvh_many(paths))

    def batched():
        return [unify(m) for m in read_bvh_many(paths)]

    def one_by_one():
        return [unify(read_bvh(p)) for p in paths]

    def reference():
        import bvh

        for p in paths:
            with open(p) as f:
                mocap = bvh.Bvh(f.read())
            _ = [mocap.frame_joint_channels(0, j, mocap.joint_channels(j)) for j in mocap.get_joints_names()[:1]]

    batched()  # warm caches and imports
    ours = times(batched, args.repeats)
    single = times(one_by_one, max(3, args.repeats // 2))
    ref = times(reference, args.ref_repeats)
    res = {
        "clips": len(paths), "frames": frames,
        "eai_batched_s": statistics.median(ours), "eai_one_by_one_s": statistics.median(single),
        "reference_bvh_0_3_parse_s": statistics.median(ref),
        "speedup_vs_reference": statistics.median(ref) / statistics.median(ours),
        "repeats": args.repeats, "ref_repeats": args.ref_repeats, "torch_threads": torch.get_num_threads(),
    }
    print(f"{len(paths)} clips, {frames} frames")
    print(f"eai read+FK+unify, batched   : {res['eai_batched_s']:.3f} s (median of {args.repeats})")
    print(f"eai read+FK+unify, one by one: {res['eai_one_by_one_s']:.3f} s")
    print(f"bvh 0.3 parse only (reference): {res['reference_bvh_0_3_parse_s']:.3f} s "
          f"-> eai is {res['speedup_vs_reference']:.1f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
