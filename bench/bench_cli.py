"""The command line as a new user meets it: `eai explain FILE --model RUN` as a fresh process (cold: Python
starts, imports, loads the run, explains one clip, exits), the time to the one-line error of a mistyped path,
and explain with the model already loaded (warm), each the median of --repeats runs; beside them, measured in
the same run, the cold start of `python -c "import torch"` (the floor any torch program pays) and the CPU seconds
(user + system) of the cold runs, which a busy machine inflates less than wall time. The load average before
and after is printed: figures taken above a load of 1.5 on two cores are not this program's.

    python bench/bench_cli.py --model runs/demo [--file CLIP] [--repeats 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}


def fresh(argv: list[str], expect: int = 0) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) and stderr of one fresh process; exits if its code is not
    `expect`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != expect:
        sys.exit(f"{' '.join(argv)} exited {out.returncode}, not {expect}: {out.stderr.strip()[-400:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out.stderr


def medians(argv: list[str], repeats: int, expect: int = 0) -> dict:
    runs = [fresh(argv, expect) for _ in range(repeats)]
    return {"wall_s_median": statistics.median(r[0] for r in runs), "wall_s": [round(r[0], 3) for r in runs],
            "cpu_s_median": statistics.median(r[1] for r in runs), "stderr_last": runs[-1][2].strip()}


def held_out_clip(run: str) -> str:
    """A held-out clip of the run's (first) dataset: a file the model never trained on."""
    m = json.loads((Path(run) / "manifest.json").read_text())
    d = m["datasets"][0]
    from eai.data.datasets import open_dataset

    held = set(d["held_out_groups"])
    ds = open_dataset(d["path"], m["task"])
    return str(next(c.path for c in ds.clips if c.group in held))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--file", help="default: the first held-out clip of the run's dataset")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    sys.path.insert(0, str(SRC))
    import eai.cli.main  # noqa: F401  (the command line's environment: OMP_WAIT_POLICY, before torch loads)

    clip = args.file or held_out_clip(args.model)
    eai = [sys.executable, "-m", "eai.cli"]
    load0 = os.getloadavg()
    fresh(eai + ["explain", clip, "--model", args.model])  # untimed: the file cache warm, as for a user's 2nd run
    result = {
        "clip": clip, "model": args.model, "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load0],
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "reference_import_torch": medians([sys.executable, "-c", "import torch"], args.repeats),
        "cold_explain": medians(eai + ["explain", clip, "--model", args.model], args.repeats),
        "bad_path_error": medians(eai + ["explain", "no-such-clip.bvh", "--model", args.model], args.repeats, 2),
    }
    # warm: the model loaded once, the same clip explained again (what `eai serve` and a Python user see)
    from eai.interpret import Interpreter
    from eai.io.inputs import read_clip

    t = time.perf_counter()
    it = Interpreter.load(args.model)
    load_s = time.perf_counter() - t
    u = read_clip(clip)[1]
    it.explain([u])  # the first call computes the prompt stems' cache
    warm = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        it.explain([u])
        warm.append(time.perf_counter() - t)
    result["load_in_process_s"] = round(load_s, 3)
    result["warm_explain_s_median"] = statistics.median(warm)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    ref = result["reference_import_torch"]["wall_s_median"]
    result["cold_explain_x_import_torch"] = result["cold_explain"]["wall_s_median"] / ref
    assert result["bad_path_error"]["stderr_last"].count("\n") == 0, "the error is not one line"
    for k in ("reference_import_torch", "cold_explain", "bad_path_error"):
        r = result[k]
        print(f"{k:24s} wall {r['wall_s_median']:.3f} s (median of {args.repeats}: {r['wall_s']}), "
              f"CPU {r['cpu_s_median']:.2f} s")
    print(f"{'warm explain':24s} {result['warm_explain_s_median']:.3f} s (model loaded in {load_s:.2f} s)")
    print(f"cold explain = {result['cold_explain_x_import_torch']:.2f} x import torch; load average "
          f"{result['load_before'][0]} before, {result['load_after'][0]} after ({result['cpus']} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
