"""`eai evaluate RUN --data DIR`: window and clip accuracy, macro-F1, per-class recall, confusion matrix."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from eai.data import load_clips, open_dataset
from eai.encoder.train import predict_dataset_proba, window_set
from eai.errors import EaiError
from eai.protocol import metrics
from eai.report import plot_confusion, write_json
from eai.run import load_run


def run_datasets(run) -> list[SimpleNamespace]:
    """The datasets a run was trained on: name, path, labels, layout, held-out groups (older runs: one)."""
    m = run.manifest
    if "datasets" in m:
        return [SimpleNamespace(**d) for d in m["datasets"]]
    d = m["data"]
    return [SimpleNamespace(name=d["name"], path=d["path"], labels=run.labels, layout="",
                            held_out_groups=d["held_out_groups"])]


def moved_copy(info, name: str, groups: set[str]) -> bool:
    """Whether a dataset named `name` with clip groups `groups`, found at another path than the run recorded,
    is a moved or copied run dataset `info` (run_datasets): the same name, holding every held-out clip."""
    return info.name == name and bool(info.held_out_groups) and set(info.held_out_groups) <= groups


def select_clips(run, data: str, task: str | None, all_clips: bool, progress: bool, dataset: str | None = None):
    """The clips of `data` to evaluate `run` on: its held-out clips on a dataset it was trained on (unless
    all_clips), every clip of another; and which of the run's datasets they are read as (the same path, else
    `dataset`, else the one with their skeleton). A dataset the run was trained on is known by its path, or,
    moved or copied (a run trained on another machine), by its name and its holding every held-out clip.
    Returns (clips, scope, dataset, name of the run's dataset)."""
    from collections import Counter

    from eai.joint import part_for

    ds = open_dataset(data, task or run.manifest.get("task"))
    clips = load_clips(ds, progress=progress)
    parts = run_datasets(run)
    groups = {c.group for c in clips}
    same = ([p for p in parts if p.path == str(Path(data).resolve())]
            or [p for p in parts if moved_copy(p, ds.name, groups)])
    part = same[0] if same else part_for(parts, Counter(c.layout for c in clips).most_common(1)[0][0], dataset)
    unknown = sorted(set(ds.labels) - set(part.labels))
    if unknown:
        raise EaiError(f"the dataset has labels the run never learned for {part.name}: {', '.join(unknown)} "
                       f"(its labels: {', '.join(part.labels)})", data)
    scope = "all clips"
    if same and not all_clips:
        held = set(part.held_out_groups)
        if not held:
            raise EaiError("the run was trained on every clip of this dataset (--holdout 0): evaluating on "
                           "it measures memory, not recognition; pass --all to do it anyway", data)
        clips = [c for c in clips if c.group in held]
        scope = "held-out clips"
    return clips, scope, ds, part.name


def evaluate_run(run_dir: str, data: str, task: str | None = None, all_clips: bool = False,
                 out: str | None = None, progress: bool = True, dataset: str | None = None) -> dict:
    """Evaluate a run on a dataset, over that dataset's labels. On a dataset it was trained on, only its
    held-out clips count (unless all_clips). Writes evaluation.json and confusion.png into `out` (default
    RUN/eval-<name>)."""
    from eai.joint import label_mask

    run = load_run(run_dir)
    clips, scope, ds, name = select_clips(run, data, task, all_clips, progress, dataset)
    parts = run_datasets(run)
    d = [p.name for p in parts].index(name)
    labels = parts[d].labels
    tcfg = run.manifest["train"]
    ws = window_set(clips, labels, tcfg["window"], tcfg["eval_stride"], bool(run.encoder.cfg.n_descriptors))
    m = metrics(ws.y, predict_dataset_proba(run.encoder, ws, label_mask(parts, run.labels), d), ws.clip, labels)
    result = {"run": str(run.path), "dataset": ds.name, "read_as": name, "scope": scope, "clips": len(clips),
              "windows": len(ws.y), "labels": labels, "words": getattr(parts[d], "words", labels), **m}
    if run.manifest.get("llm", {}).get("done"):
        from eai.llm.pipeline import Interpreter

        it = Interpreter.of(run)
        scores, rows = it.assess(clips, it.dataset(name), progress)
        result["llm"] = {**scores, "examples": [{k: r[k] for k in ("label", "emotion", "explanation")}
                                                for r in rows]}
    dest = Path(out) if out else run.path / f"eval-{ds.name}"
    write_json(result, dest / "evaluation.json")
    plot_confusion(m["confusion"], labels, dest / "confusion.png", f"{ds.name} ({scope})")
    result["written"] = [str(dest / "evaluation.json"), str(dest / "confusion.png")]
    return result
