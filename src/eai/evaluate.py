"""`eai evaluate RUN --data DIR`: both models of a run on a dataset's clips, checkable clip by clip.

Window and clip accuracy, macro-F1 and per-class recall over the labels the clips have (a label the data lacks
is listed, not scored), confusion matrices; per file, the true label and each model's answer with its
probabilities (the mean over the clip's windows); with the LLM stages, explanation scores and every explanation
beside its file. Everything in the dataset's own words ("normal" where the dataset says normal)."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from eai.calibration import Calibration, scale_proba
from eai.data.datasets import load_clips, open_dataset
from eai.data.joint import dataset_for_clip, label_mask
from eai.data.windows import STRIDE, window_set
from eai.encoder.model import predict_dataset_proba
from eai.errors import EaiError
from eai.io.files import atomic_write_text
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


def in_words(m: dict, labels: list[str], words: list[str]) -> dict:
    """A metrics dict with its per-class recall keyed by the dataset's words instead of unified labels."""
    w = dict(zip(labels, words))
    return {**m, "per_class_recall": {w[k]: v for k, v in m["per_class_recall"].items()}}


def evaluate_run(run_dir: str, data: str, task: str | None = None, all_clips: bool = False,
                 out: str | None = None, progress: bool = True, dataset: str | None = None) -> dict:
    """Evaluate a run on a dataset, over that dataset's labels. On a dataset it was trained on, only its
    held-out clips count (unless all_clips). Writes into `out` (default RUN/eval-<name>): evaluation.json (the
    returned dict, README "eai evaluate"), predictions.csv (one row per file and model), confusion-encoder.png
    and, with the LLM stages, confusion-llm.png. Macro-F1 and recall cover the labels present in the clips."""
    run = load_run(run_dir)
    clips, scope, source, read_as = select_clips(run, data, task, all_clips, progress, dataset)
    d = run.datasets.index(read_as)
    labels = read_as.labels  # in the evaluated data's own words where it has a word for the label
    words = [source.word(x) if x in source.vocab else read_as.word(x) for x in labels]
    ws = window_set(clips, labels, run.manifest.train.window, STRIDE, bool(run.encoder.cfg.n_descriptors))
    cal = run.manifest.calibration or Calibration()  # the encoder's temperature (eai.calibration)
    pe = scale_proba(predict_dataset_proba(run.encoder, ws, label_mask(run.datasets, run.labels), d), cal.encoder)
    m = in_words(metrics(ws.y, pe, ws.clip, labels, present_only=True), labels, words)
    present = [w for l, w in zip(labels, words) if l in {c.label for c in clips}]
    absent = [w for w in words if w not in present]
    note = (f"macro-F1 and per-class recall over the {len(present)} labels present in the data"
            + (f"; {', '.join(absent)} (no clip) not scored" if absent else ""))
    result = {"run": str(run.path), "dataset": source.name, "read_as": read_as.name, "scope": scope,
              "clips": len(clips), "windows": len(ws.y), "labels": labels, "words": words,
              "labels_present": present, "labels_absent": absent, "scored_over": note, **m}
    probas = {"encoder": (ws, pe)}
    rows = []
    if run.manifest.llm_done:
        from eai.interpret import Interpreter

        it = Interpreter.of(run)
        got = it.recognition_proba(clips, read_as)
        scores, rows = it.assess(clips, read_as, progress, present_only=True, probas=got)
        rec = scores["recognition"]
        for k in ("llm", "encoder"):
            rec[k] = in_words(rec[k], labels, words)
        probas["llm"] = (got[0], got[1]["llm"])
        result["llm"] = {**scores, "examples": [
            {"file": c.source, "true": r["label"], "predicted": r["emotion"], "explanation": r["explanation"],
             "label_consistent": r["label_consistent"]} for c, r in zip(clips, rows)]}
    result["predictions"] = per_file(clips, probas, labels, words)
    dest = Path(out) if out else run.path / f"eval-{source.name}"
    written = [dest / "evaluation.json", dest / "predictions.csv"]
    attribution = source.attribution
    for name, what, confusion, x in [("encoder", "encoder head", m["confusion"], m)] + (
            [("llm", "LLM, label likelihood", result["llm"]["recognition"]["llm"]["confusion"],
              result["llm"]["recognition"]["llm"])] if "llm" in result else []):
        png = dest / f"confusion-{name}.png"
        plot_confusion(confusion, words, png, f"{source.name} read as {read_as.name} ({scope}, {len(clips)} clips): "
                       f"{what}\nwindow accuracy {x['window_accuracy']:.2f}, macro-F1 {x['macro_f1']:.2f} over "
                       f"{len(present)} labels present", attribution)
        written.append(png)
    if "llm" in result:
        rec = result["llm"]["recognition"]
        plot_reliability({k: rec[k] for k in ("llm", "encoder")}, dest / "reliability.png",
                         f"{source.name} ({scope}): before and after temperature scaling", attribution)
        written.append(dest / "reliability.png")
    result["written"] = [str(p) for p in written]
    write_json(result, dest / "evaluation.json")
    atomic_write_text(dest / "predictions.csv", predictions_csv(result["predictions"], words))
    return result


def per_file(clips: list, probas: dict, labels: list[str], words: list[str]) -> list[dict]:
    """Per clip: its file, true label, and for each model (`probas`: name -> (windows, (N, labels) window
    probabilities)) the answer and the probabilities, the mean over the clip's windows, in the dataset's words."""
    rows = [{"file": c.source, "true": words[labels.index(c.label)]} for c in clips]
    for name, (ws, p) in probas.items():
        for i, row in enumerate(rows):
            q = p[ws.clip == i].mean(0)
            row[name] = {"predicted": words[int(np.argmax(q))],
                         "probabilities": {w: round(float(v), 4) for w, v in zip(words, q)}}
    return rows


def predictions_csv(rows: list[dict], words: list[str]) -> str:
    """predictions.csv: file, true, model, predicted, correct (1/0), then one probability column per word."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "true", "model", "predicted", "correct"] + words)
    for r in rows:
        for model in ("encoder", "llm"):
            if model in r:
                x = r[model]
                w.writerow([r["file"], r["true"], model, x["predicted"], int(x["predicted"] == r["true"])]
                           + [f"{x['probabilities'][k]:.4f}" for k in words])
    return buf.getvalue()
