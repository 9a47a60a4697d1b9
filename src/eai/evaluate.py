"""`eai evaluate RUN --data DIR`: window and clip accuracy, macro-F1, per-class recall, confusion matrix."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from eai.calibration import Calibration, scale_proba
from eai.data.datasets import load_clips, open_dataset
from eai.data.joint import dataset_for_clip, label_mask
from eai.data.windows import STRIDE, window_set
from eai.encoder.model import predict_dataset_proba
from eai.errors import EaiError
from eai.metrics import metrics
from eai.report import plot_confusion, plot_reliability, write_json
from eai.run import Run, load_run


def select_clips(run: Run, data: str, task: str | None, all_clips: bool, progress: bool, dataset: str | None = None):
    """The clips of `data` to evaluate `run` on: its held-out clips on a dataset it was trained on (unless
    all_clips), every clip of another; and which of the run's datasets they are read as (the same path, else
    `dataset`, else the one with their skeleton). A dataset the run was trained on is known by its path, or,
    moved or copied (a run trained on another machine), by its name and its holding every held-out clip.
    Returns (clips, scope, the dataset on disk, the run's dataset they are read as)."""
    source = open_dataset(data, task or run.manifest.task)
    clips = load_clips(source, progress=progress)
    groups = {c.group for c in clips}
    same = ([d for d in run.datasets if d.path == str(Path(data).resolve())]
            or [d for d in run.datasets if d.is_moved_copy(source.name, groups)])
    read_as = same[0] if same else dataset_for_clip(run.datasets, Counter(c.layout for c in clips).most_common(1)[0][0],
                                                    dataset)
    unknown = sorted(set(source.labels) - set(read_as.labels))
    if unknown:
        raise EaiError(f"the dataset has labels the run never learned for {read_as.name}: {', '.join(unknown)} "
                       f"(its labels: {', '.join(read_as.labels)})", data)
    scope = "all clips"
    if same and not all_clips:
        held = set(read_as.held_out_groups)
        if not held:
            raise EaiError("the run was trained on every clip of this dataset (--holdout 0): evaluating on "
                           "it measures memory, not recognition; pass --all to do it anyway", data)
        clips = [c for c in clips if c.group in held]
        scope = "held-out clips"
    return clips, scope, source, read_as


def evaluate_run(run_dir: str, data: str, task: str | None = None, all_clips: bool = False,
                 out: str | None = None, progress: bool = True, dataset: str | None = None) -> dict:
    """Evaluate a run on a dataset, over that dataset's labels. On a dataset it was trained on, only its
    held-out clips count (unless all_clips). Writes evaluation.json and confusion.png into `out` (default
    RUN/eval-<name>)."""
    run = load_run(run_dir)
    clips, scope, source, read_as = select_clips(run, data, task, all_clips, progress, dataset)
    d = run.datasets.index(read_as)
    labels = read_as.labels
    ws = window_set(clips, labels, run.manifest.train.window, STRIDE, bool(run.encoder.cfg.n_descriptors))
    cal = run.manifest.calibration or Calibration()  # the encoder's temperature (eai.calibration)
    m = metrics(ws.y, scale_proba(predict_dataset_proba(run.encoder, ws, label_mask(run.datasets, run.labels), d),
                                  cal.encoder), ws.clip, labels)
    result = {"run": str(run.path), "dataset": source.name, "read_as": read_as.name, "scope": scope,
              "clips": len(clips), "windows": len(ws.y), "labels": labels, "words": read_as.words, **m}
    if run.manifest.llm_done:
        from eai.interpret import Interpreter

        it = Interpreter.of(run)
        scores, rows = it.assess(clips, read_as, progress)
        result["llm"] = {**scores, "examples": [{k: r[k] for k in ("label", "emotion", "explanation")}
                                                for r in rows]}
    dest = Path(out) if out else run.path / f"eval-{source.name}"
    write_json(result, dest / "evaluation.json")
    plot_confusion(m["confusion"], labels, dest / "confusion.png", f"{source.name} ({scope})")
    result["written"] = [str(dest / "evaluation.json"), str(dest / "confusion.png")]
    if "llm" in result:
        rec = result["llm"]["recognition"]
        plot_reliability({k: rec[k] for k in ("llm", "encoder")}, dest / "reliability.png",
                         f"{source.name} ({scope}): before and after temperature scaling")
        result["written"].append(str(dest / "reliability.png"))
    return result
