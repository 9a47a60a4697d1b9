"""`make demo`: everything eai can do so far, end to end, on Bandai when ../shared/data has it, else on
generated data. Writes runs/demo/ (JSON, PNG) and prints tables."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from eai.bench import recognition_table, run_recognition
from eai.data import load_clips, open_dataset
from eai.kinematics import DESCRIPTOR_BY_NAME, describe
from eai.report import plot_confusion, table, write_json

SHOWN = ["speed", "travel_speed", "jerk", "hand_spread", "head_pitch", "trunk_lean", "step_frequency", "arm_swing"]


def descriptor_summary(clips) -> dict[str, dict[str, float]]:
    """Mean of each descriptor per label over clips."""
    per: dict[str, list[dict]] = {}
    for u in clips:
        d = describe(u.metres(), u.mask, u.fps)
        per.setdefault(u.label, []).append({k: v["value"] for k, v in d.items()})
    return {lab: {k: float(np.nanmean([r[k] if r[k] is not None else np.nan for r in rows])) for k in rows[0]}
            for lab, rows in sorted(per.items())}


def plot_descriptors(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eai.io.files import atomic_path

    labels = list(summary)
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.5))
    for ax, name in zip(axes.ravel(), SHOWN):
        ax.bar(range(len(labels)), [summary[l][name] for l in labels], color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{name} ({DESCRIPTOR_BY_NAME[name].unit})", fontsize=9)
    fig.suptitle("kinematic descriptors per label (clip means)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="eai-demo")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--epochs", type=int, default=15, help="encoder epochs (cpu schedule shape)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    bandai = Path(args.data) / "bandai-namco-1"
    if (bandai / "cfg" / "style_label.txt").is_file():
        data = bandai
        print(f"demo on real data: {data} (Bandai-Namco-Research-Motiondataset, Kobayashi et al. 2023, "
              "CC BY-NC 4.0)")
    else:
        from eai.synth import write_dataset

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
    plot_descriptors(summary, out / "descriptors.png")
    result = run_recognition(str(data), None, n_folds=5, n_seeds=1, models=("baseline",))
    print("\n" + recognition_table(result))
    plot_confusion(result["models"]["baseline"]["confusion"], result["labels"], out / "confusion-baseline.png",
                   f"{result['dataset']}: descriptor forest")
    encoder = train_demo_encoder(data, out, args.epochs)
    write_json({"descriptors_per_label": summary, "recognition": result, "encoder": encoder}, out / "demo.json")
    print(f"\nwrote {out}/demo.json, {out}/descriptors.png, {out}/confusion-baseline.png; encoder run in {out} "
          f"(eai evaluate {out} --data {data})")
    return 0


def train_demo_encoder(data: Path, out: Path, epochs: int) -> dict:
    """Train the encoder on a short CPU schedule into `out`, holding out a fifth of the clips; an existing
    finished run there is reused (delete the folder to retrain)."""
    import json

    from eai.train import train_encoder_run

    if (out / "manifest.json").is_file():
        print(f"\nencoder: reusing the finished run in {out}")
    else:
        print(f"\nencoder: training on {data} (cpu schedule, {epochs} epochs, pre-training on auxiliary clips "
              "when the dataset has them; 20 % of clips held out)")
        train_encoder_run(str(data), str(out), schedule_name="cpu", holdout=0.2, epochs=epochs)
    m = json.loads((out / "manifest.json").read_text())
    held = m["held_out_metrics"]
    print(f"encoder on held-out clips: window accuracy {held['window_accuracy']:.3f}, clip accuracy "
          f"{held['clip_accuracy']:.3f}, macro-F1 {held['macro_f1']:.3f} (trained {m['train_seconds']:.0f} s)")
    return {"run": str(out), "held_out": held, "train_seconds": m["train_seconds"]}


if __name__ == "__main__":
    sys.exit(main())
