"""`eai evaluate RUN --data DIR`: window and clip accuracy, macro-F1, per-class recall, confusion matrix."""
from __future__ import annotations

from pathlib import Path

from eai.data import load_clips, open_dataset
from eai.encoder.train import predict_proba, window_set
from eai.errors import EaiError
from eai.protocol import metrics
from eai.report import plot_confusion, write_json
from eai.run import load_run


def select_clips(run, data: str, task: str | None, all_clips: bool, progress: bool):
    """The clips of `data` to evaluate `run` on: its held-out clips on its own dataset (unless all_clips),
    every clip of another. Returns (clips, scope, dataset)."""
    ds = open_dataset(data, task or run.manifest.get("task"))
    unknown = sorted(set(ds.labels) - set(run.labels))
    if unknown:
        raise EaiError(f"the dataset has labels the run never learned: {', '.join(unknown)} "
                       f"(run labels: {', '.join(run.labels)})", data)
    clips = load_clips(ds, progress=progress)
    same = str(Path(data).resolve()) == run.manifest["data"]["path"]
    scope = "all clips"
    if same and not all_clips:
        held = set(run.manifest["data"]["held_out_groups"])
        if not held:
            raise EaiError("the run was trained on every clip of this dataset (--holdout 0): evaluating on "
                           "it measures memory, not recognition; pass --all to do it anyway", data)
        clips = [c for c in clips if c.group in held]
        scope = "held-out clips"
    return clips, scope, ds


def evaluate_run(run_dir: str, data: str, task: str | None = None, all_clips: bool = False,
                 out: str | None = None, progress: bool = True) -> dict:
    """Evaluate a run on a dataset. On the dataset it was trained on, only its held-out clips count
    (unless all_clips). Writes evaluation.json and confusion.png into `out` (default RUN/eval-<name>)."""
    run = load_run(run_dir)
    clips, scope, ds = select_clips(run, data, task, all_clips, progress)
    tcfg = run.manifest["train"]
    ws = window_set(clips, run.labels, tcfg["window"], tcfg["eval_stride"], bool(run.encoder.cfg.n_descriptors))
    m = metrics(ws.y, predict_proba(run.encoder, ws), ws.clip, run.labels)
    result = {"run": str(run.path), "dataset": ds.name, "scope": scope, "clips": len(clips), "windows": len(ws.y),
              "labels": run.labels, **m}
    if run.manifest.get("llm", {}).get("done"):
        from eai.llm.pipeline import Interpreter

        scores, rows = Interpreter.of(run).assess(clips, progress)
        result["llm"] = {**scores, "examples": [{k: r[k] for k in ("label", "emotion", "explanation")}
                                                for r in rows]}
    dest = Path(out) if out else run.path / f"eval-{ds.name}"
    write_json(result, dest / "evaluation.json")
    plot_confusion(m["confusion"], run.labels, dest / "confusion.png", f"{ds.name} ({scope})")
    result["written"] = [str(dest / "evaluation.json"), str(dest / "confusion.png")]
    return result
