"""Does int8 inference earn its place? The LM's linear layers as int8 dynamic quantization (torch.ao, one weight
scale per tensor: what `eai explain --int8` did until 2026-12-01) against the exact float32 model of the same run,
on the run's held-out clips: the label of every window (label likelihood, no mirroring) and its probabilities,
the answers and explanations of whole clips, and the time end to end, a fresh process that loads the run and
explains one clip (median of --repeats), and with the model loaded. The option was to stay only if the labels
agree on >= 98 % of windows, every probability within 0.05, and it is faster end to end.

    python bench/bench_int8.py --model runs/demo [--repeats 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))


def interpreter(run_dir: str, int8: bool):
    """The run's Interpreter, float32 (as eai explain loads it) or with the LM's linear layers int8."""
    import torch

    from eai.interpret import Interpreter

    if not int8:
        return Interpreter.load(run_dir)
    from torch.ao.quantization import quantize_dynamic

    from eai.llm.builder import load_merged_llm
    from eai.run import load_run

    run = load_run(run_dir)
    llm = load_merged_llm(run.path, run.manifest.llm)
    llm.lm = quantize_dynamic(llm.lm, {torch.nn.Linear}, dtype=torch.qint8)
    return Interpreter.ready(run, llm, store=False)  # its fingerprint cannot see int8 weights


def one(run_dir: str, clip: str, int8: bool) -> None:
    """What a cold `eai explain CLIP --model RUN [--int8]` does: read, load, explain one clip."""
    from eai.io.inputs import read_clip

    u = read_clip(clip)[1]
    print(json.dumps(interpreter(run_dir, int8).explain([u])[0]["probabilities"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--one", nargs=2, metavar=("CLIP", "float|int8"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.model, args.one[0], args.one[1] == "int8")
    import numpy as np

    from eai.evaluate import select_clips
    from eai.run import load_run

    run = load_run(args.model)
    clips, _, _, read_as = select_clips(run, run.manifest.datasets[0].path, None, False, progress=False)
    load0 = os.getloadavg()
    its = {k: interpreter(args.model, k == "int8") for k in ("float", "int8")}
    ws = its["float"].windows(clips, read_as)
    from eai.encoder.model import encoder_features

    feats = encoder_features(run.encoder, ws.raw, ws.mask)
    z = its["float"].reference(read_as).z(ws.model_desc)
    p = {k: it.window_proba(feats, ws.mask, z, ws.real_fraction, read_as) for k, it in its.items()}
    same = float((p["float"].argmax(1) == p["int8"].argmax(1)).mean())
    diff = np.abs(p["float"] - p["int8"])
    rows = {k: it.explain(clips) for k, it in its.items()}
    clip_same = float(np.mean([a["emotion"] == b["emotion"] for a, b in zip(rows["float"], rows["int8"])]))
    text_same = float(np.mean([a["explanation"] == b["explanation"] for a, b in zip(rows["float"], rows["int8"])]))
    truth = ws.y
    acc = {k: float((v.argmax(1) == truth).mean()) for k, v in p.items()}
    # end to end: fresh processes, alternating, the first of each untimed
    clip = clips[0].source
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    wall: dict[str, list[float]] = {"float": [], "int8": []}
    for i in range(args.repeats + 1):
        for k in wall:
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--model", args.model, "--one", clip, k], check=True,
                           capture_output=True, env=env)
            if i:
                wall[k].append(time.perf_counter() - t)
    u = clips[0]
    warm = {}
    for k, it in its.items():
        it.explain([u])
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            it.explain([u])
            ts.append(time.perf_counter() - t)
        warm[k] = statistics.median(ts)
    result = {
        "model": args.model, "held_out_clips": len(clips), "windows": int(len(ws.y)),
        "same_label_windows": same, "max_abs_probability_diff": float(diff.max()),
        "windows_within_0.05": float((diff.max(1) <= 0.05).mean()),
        "same_answer_clips": clip_same, "same_explanation_clips": text_same,
        "window_accuracy": acc, "cold_end_to_end_s_median": {k: statistics.median(v) for k, v in wall.items()},
        "cold_end_to_end_s": wall, "warm_explain_s_median": warm, "clip": clip,
        "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    keep = same >= 0.98 and diff.max() <= 0.05 and \
        result["cold_end_to_end_s_median"]["int8"] < result["cold_end_to_end_s_median"]["float"]
    result["int8_earns_its_place"] = bool(keep)
    print(json.dumps({k: v for k, v in result.items() if k != "cold_end_to_end_s"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
