"""What the LLM stages cost on this machine's CPU, two settings at a time, measured in the same run.

Training step: with the LoRA dropout of the `paper`/`gpu` schedules (0.05) and with none (the `cpu` schedule's,
eai.schedules.LORA_DROPOUT).

One step as eai.train.stages.train_stage takes it: a batch of description examples (the `cpu` schedule's
description stage: 4), or a recognition batch with its share of description examples (6 + 2), loss, backward and
an AdamW step of the LoRA weights and the tokenizer's projectors. The bundled LM with the LLM config of `--model`
(a finished run: its skeleton tokenizer's sizes); skeleton features are random, prompts and answers are built as
the stages build them (eai.llm.evidence) from random descriptor z-scores, without a dataset's grounds (so with
as many claims as a prompt can carry: the upper end of the real token counts).
Held-out probe (eai.train.llm_run.held_out_probe): 64 windows scored in batches of 16, each batch passing the
recognition prompt's prefix itself, and under EmotionLLM.frozen_stems (the prefix passed once per probe).
The two settings alternate, each timed `--repeats` times after a warm-up; medians and their ratio reported.
    python bench/bench_llm_stages.py --model runs/demo [--repeats 7] [--json OUT]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a finished run (its LLM config)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    from eai.llm import evidence as ev
    from eai.llm.builder import build_llm
    from eai.llm.prompts import description_prompt, recognition_prompt
    from eai.encoder.model import encoder_features
    from eai.run import Manifest, load_run
    from eai.skeleton.registry import canonical
    from eai.train.llm_run import PROBE_WINDOWS

    m = Manifest.load(args.model)
    d = m.datasets[0]
    rng = np.random.default_rng(0)
    models, opts = {}, {}
    for p in (0.05, 0.0):
        torch.manual_seed(0)
        llm = build_llm(dataclasses.replace(m.llm, lora=dataclasses.replace(m.llm.lora, lora_dropout=p))).train()
        models[p] = llm
        opts[p] = torch.optim.AdamW([q for q in llm.parameters() if q.requires_grad], lr=1e-5)
    tc = models[0.0].skeleton_tokenizer.cfg
    run = load_run(args.model)
    k = canonical().n
    shape = encoder_features(run.encoder, np.zeros((1, m.train.window, k, 3), np.float32), np.ones((1, k), bool)).shape

    def examples(kind: str, n: int):
        feats = torch.randn(n, *shape[1:])
        z = rng.normal(0, 1.2, (n, len(ev.NAMES)))
        words = [d.words[i] for i in rng.integers(0, len(d.words), n)]
        if kind == "recognition":
            prompts, answers = [recognition_prompt(tc.n_tokens, d.tag, d.words)] * n, words
        else:
            phrases = [ev.claim_phrases(zi, rng) for zi in z]
            prompts = [description_prompt(tc.n_tokens, d.tag, w, ev.evidence_line(zi, ph))
                       for w, zi, ph in zip(words, z, phrases)]
            answers = [ev.description(w, zi, rng, ph) for w, zi, ph in zip(words, z, phrases)]
        post = torch.softmax(torch.randn(n, tc.n_labels), 1) if tc.n_labels else None
        return (feats, torch.ones(n, k, dtype=torch.bool), prompts, answers,
                torch.from_numpy(z.astype(np.float32)) if tc.n_descriptors else None, torch.ones(n), post)

    batches = {"description stage (4)": [("description", 4)],
               "recognition stage (6 + 2)": [("recognition", 6), ("description", 2)]}

    def step(p: float, data: list[tuple]) -> float:
        t = time.perf_counter()
        loss = sum(models[p].loss(*x)[0] * len(x[2]) for x in data) / sum(len(x[2]) for x in data)
        loss.backward()
        opts[p].step()
        opts[p].zero_grad(set_to_none=True)
        return time.perf_counter() - t

    def probe(frozen: bool, data: tuple, batch: int = 16) -> float:  # held_out_probe's batches
        llm = models[0.0].eval()
        f, mask, prompts, _, z, fr, post = data
        t = time.perf_counter()
        with llm.frozen_stems([prompts[:1]] if frozen else []):
            for b in range(0, len(f), batch):
                s = slice(b, b + batch)
                llm.label_proba(f[s], mask[s], prompts[s], d.words, None if z is None else z[s], fr[s],
                                None if post is None else post[s])
        t = time.perf_counter() - t
        llm.train()
        return t

    # per case: the inputs of one repeat (built before the clock starts, the same for both settings), the settings
    cases = {name: (lambda parts=parts: [examples(kind, n) for kind, n in parts],
                    {"dropout 0.05": lambda x: step(0.05, x), "dropout 0": lambda x: step(0.0, x)})
             for name, parts in batches.items()}
    cases[f"held-out probe ({PROBE_WINDOWS} windows)"] = (
        lambda: examples("recognition", PROBE_WINDOWS),
        {"prefix per batch": lambda x: probe(False, x), "frozen stems": lambda x: probe(True, x)})
    rows, out = [], {"threads": torch.get_num_threads(), "repeats": args.repeats}
    for name, (inputs, pair) in cases.items():
        warm = inputs()
        for fn in pair.values():
            fn(warm)
        got = {setting: [] for setting in pair}
        for r in range(args.repeats):
            x = inputs()
            # alternating, the first setting first on even repeats and second on odd ones: drifts of the
            # machine's speed and what one leaves in the caches fall on both
            for setting in (list(pair) if r % 2 == 0 else list(pair)[::-1]):
                got[setting].append(pair[setting](x))
        (a, ma), (b, mb) = ((setting, statistics.median(v)) for setting, v in got.items())
        out[name] = {a: ma, b: mb, "ratio": mb / ma}
        rows.append(f"{name:28s} {a:>17s} {ma:6.2f}  {b:>13s} {mb:6.2f}  {mb / ma:5.2f}")
    print(f"LLM stages, s (median of {args.repeats}; {torch.get_num_threads()} threads); ratio: second / first")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
