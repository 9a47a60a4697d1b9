"""The model commands of the command line: train, explain, evaluate, bench, baseline; each renders its result
as tables for people and, with --json, as JSON for machines."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from eai.errors import EaiError
from eai.metrics import consistency_range
from eai.report import table, write_json


def run_config(args):
    """The eai.run.RunConfig of `eai train`'s arguments."""
    from eai.run import RunConfig

    return RunConfig(data=list(args.data), out=args.out, stage=args.stage, task=args.task, schedule=args.schedule,
                     epochs=args.epochs, llm_schedule=args.llm_schedule, description_steps=args.description_steps,
                     recognition_steps=args.recognition_steps, backbone=args.backbone, holdout=args.holdout,
                     seed=args.seed, pretrain=not args.no_pretrain, kinematic_token=args.kinematic_token,
                     posterior_token=not args.no_posterior_token, mix=args.mix, init=args.init)


def cmd_train(args) -> None:
    from eai.run import Manifest
    from eai.weights import resolve_init

    resolve_init(args.init)  # a wrong --init is said before any clip is read
    from eai.train.encoder import launched
    from eai.train.llm_run import train_run

    run = train_run(run_config(args), progress=not args.quiet)
    if launched()[0] != 0:  # one of several processes (accelerate launch): the main one reports
        return
    m = Manifest.load(run)
    print(f"wrote run {run} ({m.train_windows} training windows, {m.train_seconds:.0f} s encoder)")
    for name, h in m.held_out.items():
        print(f"held-out clips of {name}, encoder: window accuracy {h['window_accuracy']:.3f}, clip accuracy "
              f"{h['clip_accuracy']:.3f}, macro-F1 {h['macro_f1']:.3f}")
        if h_llm := m.held_out_llm_of(name):
            x = h_llm["llm"]
            print(f"held-out clips of {name}, LLM (label likelihood): window accuracy {x['window_accuracy']:.3f}, "
                  f"clip accuracy {x['clip_accuracy']:.3f}, macro-F1 {x['macro_f1']:.3f}, ECE {x['ece']:.3f}")


def cmd_pretrain(args) -> None:
    from eai.data.datasets import open_dataset
    from eai.schedules import default_encoder_schedule, pretrain_schedule

    if args.objective not in ("labels", "masked", "mix"):
        raise EaiError(f"unknown objective {args.objective!r}; choose from labels, masked, mix")
    schedule = args.schedule or default_encoder_schedule()
    pretrain_schedule(schedule, args.epochs)  # a bad name is said before any data is read
    for d in args.data:
        open_dataset(d, "style" if (Path(d) / "cfg" / "style_label.txt").is_file() else None)
    from eai.train.pretrain import pretrain_run

    run = pretrain_run(args.data, args.out, args.objective, schedule, args.epochs, progress=not args.quiet)
    info = json.loads((run / "pretrained.json").read_text())
    last = info["final"] or {}
    held = ", ".join(f"{k[9:]} {v:.3f}" for k, v in last.items() if k.startswith("held_out_"))
    print(f"wrote {run / 'pretrained.safetensors'} ({info['objective']}, {info['epochs']} epochs, "
          f"{info['windows_seen']} windows seen, {info['seconds']:.0f} s)" + (f"; held-out clips: {held}" if held else ""))


def cmd_explain(args) -> None:
    """Every input is checked and read (files, folders, globs; the run's manifest; --dataset) before torch and
    the model load, so a mistake is said in about a tenth of a second."""
    from eai.data.joint import RunDataset, dataset_for_clip
    from eai.io.inputs import FORMAT, motion_files, read_clip, read_manifest_json

    files = motion_files(args.files)
    raw = read_manifest_json(args.model, FORMAT)
    if not raw.get("llm") or not raw.get("llm_training") or \
            len(raw["llm_training"].get("done", [])) < len(raw["llm"].get("stages", [None])):
        raise EaiError("this run has no trained LLM stages; train with 'eai train --stage all'", args.model)
    datasets = [RunDataset.from_dict(d) for d in raw["datasets"]]
    read = [read_clip(f, units=args.units, up=args.up, trust_pickle=args.trust_pickle) for f in files]
    motions, clips = [m for m, _ in read], [u for _, u in read]
    for f, u in zip(files, clips):
        try:
            dataset_for_clip(datasets, u.layout, args.dataset)
        except EaiError as e:
            raise EaiError(e.message, f) from None
    from eai.interpret import Interpreter  # torch, transformers, peft: only now

    it = Interpreter.load(args.model)
    rows = []
    for f, r in zip(files, it.explain(clips, args.max_tokens, args.dataset)):
        r = {"file": str(f), **r}
        rows.append(r)
        if not args.json:
            print(explain_text(r))
    unknown = {r["support_unknown"] for r in rows if "support_unknown" in r}
    if unknown:
        print(f"eai: note: {unknown.pop()}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    if args.html:  # the viewer page (eai.viewer)
        from eai.viewer.page import write_page

        size = write_page(args.html, rows, motions, clips)
        print(f"wrote {args.html} ({size / 2**20:.1f} MB)", file=sys.stderr if args.json else sys.stdout)


def explain_text(r: dict) -> str:
    """One `eai explain` row for people: the answer, what the run knows of itself, the checked claims."""
    probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
    h = r["held_out"]
    held = ("not measured" if h is None else f"clip accuracy {h['clip_accuracy']:.2f}, window accuracy "
            f"{h['window_accuracy']:.2f} on {h['clips']} held-out clips; chance {h['chance']:.2f}")
    lines = [r["file"], f"  dataset      {r['dataset']}",
             f"  emotion      {r['emotion']}  ({probs})" + ("  LOW CONFIDENCE" if r["low_confidence"] else ""),
             f"  this run     {held}", f"  explanation  {r['explanation']}"]
    for e in r["evidence"]:
        mark = "ok " if e["verified"] else "NOT"
        val = "" if e.get("value") is None else f": {e['value']:g} {e['unit']} vs neutral {e['neutral']:g}"
        sup = {True: "; supports it", False: "; does not support it", None: ""}[e.get("supports")]
        if e.get("kind") == "no_support":
            lines.append(f"  [{mark}] {e['phrase']}")
        else:
            lines.append(f"  [{mark}] {e['phrase']} ({e['descriptor'] or 'overall'} z {e['z']}{val}{sup})")
    lines += [f"  notice       {n}" for n in r["notices"]]
    return "\n".join(lines)


def cmd_serve(args) -> None:
    from eai.viewer.serve import serve

    serve(args.model, args.host, args.port, args.token or os.environ.get("EAI_TOKEN") or None, args.max_upload_mb,
          args.timeout, args.max_tokens, {"units": args.units, "up": args.up})


def cmd_evaluate(args) -> None:
    from eai.evaluate import evaluate_run

    r = evaluate_run(args.run, args.data, args.task, args.all, args.out, not args.quiet, args.dataset)
    print(f"{r['dataset']} read as {r['read_as']} ({r['scope']}: {r['clips']} clips, {r['windows']} windows)")
    llm = r["llm"]["recognition"]["llm"] if "llm" in r else None
    rows = [["encoder head", r["window_accuracy"], r["clip_accuracy"], r["macro_f1"]]]
    if llm:
        rows.append(["LLM (label likelihood, mirror-averaged)", llm["window_accuracy"], llm["clip_accuracy"],
                     llm["macro_f1"]])
    print(table(rows, ["model", "window acc", "clip acc", "macro-F1"]))
    print(f"({r['scored_over']})")
    print(table([[w, v] + ([llm["per_class_recall"][w]] if llm else []) for w, v in r["per_class_recall"].items()],
                ["label", "recall, encoder"] + (["recall, LLM"] if llm else [])))
    if llm:
        ex = r["llm"]["explanations"]
        print(table([[llm["ece"], llm["ece_uncalibrated"], consistency_range(llm.get("ece_consistency")),
                      ex["label_consistency"], ex["faithfulness"], ex["support_rate"],
                      ex["bleu4"], ex["rouge_l"], ex.get("minilm_similarity")]],
                    ["LLM ECE", "uncalibrated", "10-bin vs calibrated", "label consistency", "faithfulness",
                     "support rate", "BLEU-4", "ROUGE-L", "MiniLM sim."]))
        _support_note(ex)
        from eai.benchmarks.llm import unconstrained_line

        print(unconstrained_line(r["llm"]["explanations_unconstrained"]))
    print("wrote " + ", ".join(r["written"]))


def _support_note(ex: dict) -> None:
    """Say why the support rate is missing, when the run cannot judge support."""
    if ex["support_rate"] is None and ex["claims"]:
        from eai.interpret import UNKNOWN_SUPPORT

        print(f"support rate unknown: {UNKNOWN_SUPPORT}")
    elif ex.get("explanations_no_support"):
        print(f"{ex['explanations_no_support']} of {ex['explanations']} explanations say that no measured movement "
              "clearly points to their emotion")


def _one(data: list[str], what: str) -> str:
    if len(data) != 1:
        raise EaiError(f"{what} takes one --data; 'eai bench joint' takes several")
    return data[0]


def cmd_bench(args) -> None:
    from eai.benchmarks.recognition import recognition_table, bench_recognition

    if (args.controls or args.compare_init) and args.what != "recognition":
        raise EaiError("--controls and --compare-init are options of 'eai bench recognition'")
    if args.what == "joint":
        from eai.benchmarks.joint import joint_table, plot_joint, bench_joint

        result = bench_joint(args.data, args.task, args.folds, args.seeds, args.schedule, args.epochs, args.mix,
                           not args.quiet)
        print(joint_table(result))
        _write_results(args, result, plot_joint)
        return
    args.data = _one(args.data, f"bench {args.what}")
    if args.what == "llm":
        from eai.benchmarks.llm import llm_table, bench_llm
        from eai.llm.backbone import BUNDLED
        from eai.run import RunConfig
        from eai.schedules import default_encoder_schedule

        if not args.out:
            raise EaiError("bench llm needs --out FOLDER for the run of each fold")
        cfg = RunConfig(data=[args.data], out=args.out, stage="all", task=args.task,
                        schedule=args.schedule or default_encoder_schedule(), epochs=args.epochs,
                        llm_schedule=args.llm_schedule, description_steps=args.description_steps,
                        recognition_steps=args.recognition_steps, backbone=args.backbone or BUNDLED,
                        pretrain=not args.no_pretrain, init=args.init)
        result = bench_llm(cfg, args.folds, args.seeds, not args.quiet)
        print(llm_table(result))
        _write_results(args, result)
        return
    if args.what == "explain":
        from eai.benchmarks.llm import bench_explain, unconstrained_line

        if not args.model:
            raise EaiError("bench explain needs --model RUN")
        result = bench_explain(args.model, args.data, args.task, progress=not args.quiet)
        rec, ex, lat = result["recognition"], result["explanations"], result["latency"]
        print(f"{result['dataset']} ({result['scope']}: {result['clips']} clips, {rec['windows']} windows)")
        print(table([[k, rec[k]["window_accuracy"], rec[k]["clip_accuracy"], rec[k]["macro_f1"], rec[k]["ece"],
                      rec[k]["ece_uncalibrated"], consistency_range(rec[k].get("ece_consistency"))]
                     for k in ("llm", "encoder")],
                    ["model", "window acc", "clip acc", "macro-F1", "ECE", "ECE uncalibrated",
                     "10-bin ECE vs calibrated"]))
        print(table([[ex["label_consistency"], ex["faithfulness"], ex["support_rate"], ex["claims_per_explanation"],
                      ex["bleu4"], ex["rouge_l"], ex.get("minilm_similarity")]],
                    ["label consistency", "faithfulness", "support rate", "claims/expl.", "BLEU-4", "ROUGE-L",
                     "MiniLM sim."]))
        _support_note(ex)
        print(unconstrained_line(result["explanations_unconstrained"]))
        print(f"latency ({lat['clip_seconds']} s clip, model loaded, median of {lat['repeats']}): explain "
              f"{lat['explain_s_median']:.3f} s, label scoring alone {lat['label_scoring_s_median']:.3f} s")
        if args.json:
            write_json(result, Path(args.json))
        return
    result = bench_recognition(args.data, args.task, args.folds, args.seeds, progress=not args.quiet,
                             schedule_name=args.schedule, epochs=args.epochs, use_pretrain=not args.no_pretrain,
                             init=args.init, controls=args.controls, compare_init=args.compare_init)
    print(recognition_table(result))
    _write_results(args, result)


def cmd_baseline(args) -> None:
    from eai.benchmarks.recognition import recognition_table, bench_recognition

    args.data = _one(args.data, "baseline")
    result = bench_recognition(args.data, args.task, args.folds, args.seeds, models=("baseline",),
                             progress=not args.quiet)
    print(recognition_table(result))
    _write_results(args, result)


def _write_results(args, result: dict, plot=None) -> None:
    """--json OUT and --plot PNG: `plot(result, PNG)` when given, else a confusion matrix per model."""
    from eai.report import plot_confusion

    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot and plot is not None:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    elif args.plot:
        for name, m in result["models"].items():
            png = Path(args.plot).with_name(f"{Path(args.plot).stem}-{name}.png")
            plot_confusion(m["confusion"], result.get("words", result["labels"]), png, f"{result['dataset']}: {name}, "
                           f"{result['folds']} folds x {result['seeds']} seeds", result.get("attribution", ""))
            print(f"wrote {png}")


