"""Latency of `eai explain` with the model already loaded, on this machine's CPU.

In one run (medians of repeats): read + unify of one clip; the label-scoring path alone (encoder features of
every window, one batched label-likelihood pass); explain end to end (scoring + a greedy explanation of up
to --tokens tokens); per-token decoding time against two references measured in the same run: transformers'
own `generate` on the same LM and prompt length, and the floor set by streaming the LM's weights once per
token at the memory bandwidth torch measures here. Also reports the run's peak training memory. Repeating one
clip is the best case of the decoding drafts (the lead the model wrote last time is drafted again), so the
median over up to --others other clips of 8-12 s from the same folder, each explained once, comes beside it.
    python bench/bench_explain.py --model runs/demo [--file CLIP] [--repeats 7] [--others 20] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from timing import median_time  # bench/timing.py


def bandwidth(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Memory read bandwidth: summing a buffer larger than any cache. (Written first: an untouched torch.empty
    maps every page to the one zero page, which reads from cache at several times the real bandwidth.)"""
    a = torch.ones(n_bytes // 4)
    return n_bytes / median_time(lambda: a.sum(), repeats)


def default_clip() -> Path:
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "bandai-namco-1" / "data"
    paths = sorted(data.glob("*.bvh"))[:60] if data.is_dir() else []
    if not paths:
        sys.exit("no clip given and ../shared/data/bandai-namco-1 not found: pass --file")
    from eai.benchmarks.llm import clip_nearest
    from eai.io import read_motion
    from eai.skeleton.unify import unify

    clips = [unify(read_motion(p)) for p in paths]
    nearest = clip_nearest(clips, 10.0)
    return next(p for p, c in zip(paths, clips) if c is nearest)  # by identity: clips compare arrays


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--file")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--others", type=int, default=20, help="other clips of 8-12 s, each explained once")
    ap.add_argument("--json")
    args = ap.parse_args()
    from eai.interpret import Interpreter
    from eai.io import read_motion
    from eai.llm.evidence import label_text
    from eai.skeleton.unify import unify

    path = Path(args.file) if args.file else default_clip()
    it = Interpreter.load(args.model)
    read_s = median_time(lambda: unify(read_motion(path)), args.repeats)
    u = unify(read_motion(path))
    score_s = median_time(lambda: it.recognise([u]), args.repeats)
    row = it.explain([u], args.tokens)[0]
    explain_s = median_time(lambda: it.explain([u], args.tokens), args.repeats)
    others = []
    for p in sorted(path.parent.glob(f"*{path.suffix}")):
        if len(others) >= args.others:
            break
        v = unify(read_motion(p)) if p != path else None
        if v is not None and 8.0 <= v.n_frames / v.fps <= 12.0:
            others.append(v)
    others_s = [median_time(lambda: it.explain([v], args.tokens), 1, warmup=0) for v in others]
    n_new = len(it.llm._ids(row["explanation"])) - len(it.llm._ids(label_text(row["emotion"])))
    # reference: transformers' generate on the same LM (transformers' Llama with the adapter merged; eai explains
    # on eai.llm.llama's decoder over the same weights) and prompt length
    from eai.llm.backbone import load_backbone
    from eai.llm.builder import ADAPTER, merge_adapter

    lm, tok = load_backbone(it.run.manifest.llm.backbone)
    lm = merge_adapter(lm, Path(args.model) / ADAPTER)
    prompt = torch.randint(100, 1000, (1, 100))
    ref_tokens = max(n_new, 1)

    def hf_generate():
        lm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=ref_tokens,
                    min_new_tokens=ref_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    with torch.no_grad():
        hf_s = median_time(hf_generate, max(3, args.repeats // 2))
        prefill_s = median_time(lambda: lm(input_ids=prompt), max(3, args.repeats // 2))
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    bw = bandwidth()
    decode_ms = 1000 * max(explain_s - score_s, 0) / max(n_new, 1)
    result = {
        "clip": str(path), "clip_seconds": round(u.n_frames / u.fps, 2),
        "threads": torch.get_num_threads(),
        "read_unify_s": read_s, "label_scoring_s": score_s, "explain_s": explain_s,
        "explanation_tokens": n_new, "explanation": row["explanation"],
        "explain_s_other_clips_median": float(np.median(others_s)) if others_s else None,
        "other_clips": len(others_s),
        "decode_ms_per_token_eai": decode_ms,
        "decode_ms_per_token_hf_generate": 1000 * (hf_s - prefill_s) / ref_tokens,
        "decode_ms_per_token_bandwidth_floor": 1000 * weight_bytes / bw,
        "memory_bandwidth_GBps": bw / 1e9, "lm_weight_MB": weight_bytes / 2**20,
        "training_peak_memory_MB": it.run.manifest.llm_training.peak_memory_mb,
    }
    for k, v in result.items():
        print(f"{k:36s} {v:.4g}" if isinstance(v, float) else f"{k:36s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
