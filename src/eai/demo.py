"""`make demo`: everything eai can do so far, end to end, on Bandai when ../shared/data has it, else on
generated data. Writes runs/demo/ (JSON, PNG) and prints tables."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from eai.benchmarks.recognition import recognition_table, bench_recognition
from eai.data.datasets import load_clips, open_dataset
from eai.features import DESCRIPTOR_BY_NAME, describe
from eai.metrics import consistency_range
from eai.report import plot_confusion, plot_grid_bars, table, write_json

SHOWN = ["speed", "travel_speed", "jerk", "hand_spread", "head_pitch", "trunk_lean", "step_frequency", "arm_swing"]


def descriptor_summary(clips) -> dict[str, dict[str, float]]:
    """Mean of each descriptor per label over clips."""
    per: dict[str, list[dict]] = {}
    for u in clips:
        d = describe(u.metres(), u.mask, u.fps)
        per.setdefault(u.label, []).append({k: v["value"] for k, v in d.items()})
    return {lab: {k: float(np.nanmean([r[k] if r[k] is not None else np.nan for r in rows])) for k in rows[0]}
            for lab, rows in sorted(per.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="eai-demo")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=8, help="encoder epochs (cpu schedule shape)")
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    args = ap.parse_args(argv)
    out = Path(args.out)
    bandai = Path(args.data) / "bandai-namco-1"
    if (bandai / "cfg" / "style_label.txt").is_file():
        data = bandai
        print(f"demo on real data: {data} (Bandai-Namco-Research-Motiondataset, Kobayashi et al. 2023, "
              "CC BY-NC 4.0)")
    else:
        from eai.data.synth import write_dataset

        data = out / "generated-data"
        if not data.is_dir():
            write_dataset(data, ["bandai22", "kinect25", "gait16"], clips_per_label=8)
        print(f"{bandai} not found: demo on generated data in {data} (not a real-data figure)")
    ds = open_dataset(data)
    clips = load_clips(ds)
    print(f"\n{len(clips)} clips read and unified; problems: {len(ds.problems)}")
    summary = descriptor_summary(clips)
    print(table([[lab] + [s[k] for k in SHOWN] for lab, s in summary.items()], ["label"] + SHOWN))
    out.mkdir(parents=True, exist_ok=True)
    plot_grid_bars({f"{n} ({DESCRIPTOR_BY_NAME[n].unit})": {ds.word(lab): summary[lab][n] for lab in summary}
                    for n in SHOWN}, out / "descriptors.png", f"{ds.name}: kinematic descriptors per label (clip means)",
                   attribution=ds.attribution)
    result = bench_recognition(str(data), None, n_folds=5, n_seeds=1, models=("baseline",))
    print("\n" + recognition_table(result))
    plot_confusion(result["models"]["baseline"]["confusion"], [ds.word(x) for x in result["labels"]],
                   out / "confusion-baseline.png", f"{result['dataset']}: descriptor forest, 5 folds", ds.attribution)
    trained = train_demo_run(data, out, args.epochs, args.backbone)
    explained = explain_held_out(out, data, 3)
    write_json({"descriptors_per_label": summary, "recognition": result, "run": trained, "explained": explained},
               out / "demo.json")
    print(f"\nwrote {out}/demo.json, {out}/descriptors.png, {out}/confusion-baseline.png; the run is in {out}:\n"
          f"  eai explain FILE --model {out}\n  eai evaluate {out} --data {data}\n"
          f"  eai bench explain --model {out} --data {data}")
    return 0


def train_demo_run(data: Path, out: Path, epochs: int, backbone: str) -> dict:
    """Encoder and LLM stages on the CPU schedules into `out`, a fifth of the clips held out; a finished run
    there is reused (delete the folder to retrain), an interrupted one resumes."""
    import time

    from eai.run import MANIFEST, Manifest, RunConfig
    from eai.train.llm_run import train_run

    from eai.errors import EaiError

    try:
        m = Manifest.load(out) if (out / MANIFEST).is_file() else None
    except EaiError as e:  # a run of another eai (an older manifest format): the user's folder is left as it is
        print(f"eai: error: {e}; delete {out} to train the demo run again", file=sys.stderr)
        raise SystemExit(2) from None
    if m is not None and m.stage == "all":
        print(f"\nreusing the finished run in {out}")
    else:
        print(f"\ntraining on {data}: encoder (cpu schedule, {epochs} epochs, pre-trained on auxiliary clips when "
              f"the dataset has them), then the LLM ({backbone}, LoRA) on the cpu schedule; 20 % of clips held out")
        t0 = time.time()
        train_run(RunConfig(data=[str(data)], out=str(out), stage="all", schedule="cpu", epochs=epochs,
                            llm_schedule="cpu", backbone=backbone, holdout=0.2, seed=0))
        print(f"trained in {time.time() - t0:.0f} s")
        m = Manifest.load(out)
    h = m.held_out_llm_of(m.datasets[0].name)
    rows = [[name, h[name]["window_accuracy"], h[name]["clip_accuracy"], h[name]["macro_f1"], h[name]["ece"],
             h[name]["ece_uncalibrated"], consistency_range(h[name].get("ece_consistency"))]
            for name in ("encoder", "llm")]
    print(f"held-out clips ({h['clips']} clips, {h['windows']} windows; ECE after temperature scaling fitted on "
          f"training windows, and before):")
    print(table(rows, ["model", "window acc", "clip acc", "macro-F1", "ECE", "ECE uncalibrated",
                       "10-bin ECE vs calibrated"]))
    scratch = scratch_encoder(data, out, epochs, m)
    worse = [what for k, what in (("window_accuracy", "window accuracy"), ("macro_f1", "macro-F1"))
             if h["llm"][k] < h["encoder"][k]]
    if worse:
        print(f"the LLM reads these clips worse than the encoder's own head by {' and '.join(worse)} (see README, "
              "'Posterior token'); train with --schedule gpu --llm-schedule gpu for the method's figures")
    return {"run": str(out), "held_out": h, "encoder_init": m.pretrain, "encoder_before_pretraining": scratch,
            "encoder_seconds": m.train_seconds,
            "llm_seconds": m.llm_training.seconds, "peak_memory_mb": m.llm_training.peak_memory_mb}


def scratch_encoder(data: Path, out: Path, epochs: int, m) -> dict | None:
    """Where the run's encoder started from the pretrained weights (and, on Bandai, its auxiliary pre-training from
    them): the same encoder stage from scratch (no pretrained weights, no auxiliary pre-training: the demo's encoder
    before them) on the same held-out clips, in
    `out`/encoder-from-scratch, and both figures printed. None when the run did not start from them."""
    from eai.run import MANIFEST, Manifest, RunConfig
    from eai.train.encoder_run import train_encoder_run

    if (m.pretrain or {}).get("init", "none") == "none":
        return None
    folder = out / "encoder-from-scratch"
    if not (folder / MANIFEST).is_file():
        print("\nthe same encoder stage from scratch (no pretrained weights), same held-out clips:")
        train_encoder_run(RunConfig(data=[str(data)], out=str(folder), stage="encoder", schedule="cpu", epochs=epochs,
                                    holdout=0.2, seed=0, init="none", pretrain=False))
    before = Manifest.load(folder).held_out[m.datasets[0].name]
    after = m.held_out[m.datasets[0].name]
    aux = f", then pre-trained from them on {len(m.pretrain['labels'])} auxiliary labels" if "labels" in m.pretrain else ""
    print(f"encoder on the held-out clips, from scratch and from the pretrained weights ({m.pretrain.get('source', '')}"
          f"{aux}):")
    print(table([[name, r["window_accuracy"], r["clip_accuracy"], r["macro_f1"]] for name, r in
                 (("from scratch", before), ("pretrained", after))],
                ["encoder", "window acc", "clip acc", "macro-F1"]))
    return before


def explain_held_out(out: Path, data: Path, n: int) -> list[dict]:
    """Explain n held-out clips of different labels and print them with their checked evidence."""
    from eai.evaluate import select_clips
    from eai.interpret import Interpreter

    it = Interpreter.load(out)
    clips, _, _, read_as = select_clips(it.run, str(data), None, False, progress=False)
    picked, seen = [], set()
    for u in clips:
        if u.label not in seen:
            picked.append(u)
            seen.add(u.label)
    rows = it.explain(picked[:n], dataset=read_as.name)
    print("\nexplanations of held-out clips:")
    for u, r in zip(picked, rows):
        print(f"- {Path(u.source).name} (true: {read_as.word(u.label)}) -> {r['emotion']} ({r['probabilities'][r['emotion']]:.2f})\n"
              f"  {r['explanation']}")
        for e in r["evidence"]:
            sup = {True: ", supports it", False: ", does not support it", None: ""}[e.get("supports")]
            print(f"    [{'ok' if e['verified'] else 'NOT ok'}] {e['phrase']}: {e['descriptor'] or 'overall'}, "
                  f"z {e['z']}{sup}")
    return [{"clip": u.source, "label": read_as.word(u.label), **r} for u, r in zip(picked, rows)]


if __name__ == "__main__":
    sys.exit(main())
