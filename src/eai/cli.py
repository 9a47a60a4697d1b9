"""The `eai` command line. Errors a user can cause print one line, `eai: error: ...`, and exit with code 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from eai.errors import EaiError


INT8_HELP = ("run the LM's linear layers as int8 dynamic quantization on the CPU: about twice as fast, "
             "slightly different numbers")


def _motion(args, path: str):
    from eai.io import read_motion

    return read_motion(path, units=args.units, trust_pickle=args.trust_pickle)


def cmd_info(args) -> None:
    from eai.skeleton.registry import registry
    from eai.skeleton.unify import to_canonical

    m = _motion(args, args.file)
    _, mask, layout = to_canonical(m)
    can = registry().canonical
    info = {
        "file": args.file, "layout": layout.name, "layout_description": layout.description,
        "joints": len(m.joints), "frames": m.n_frames, "fps": round(m.fps, 4),
        "duration_s": round(m.duration, 3),
        "canonical_present": [n for n, k in zip(can.names, mask) if k],
        "canonical_missing": [n for n, k in zip(can.names, mask) if not k],
        "unmatched_joints": [j for j in m.joints if j not in layout.joints and
                             j not in layout.aliases],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['file']}\n  layout    {layout.name} ({layout.description})\n"
          f"  joints    {info['joints']}\n  frames    {info['frames']} at {info['fps']:g} fps "
          f"({info['duration_s']:.2f} s)\n  canonical {len(info['canonical_present'])}/{can.n} present; "
          f"missing: {', '.join(info['canonical_missing']) or 'none'}")


def cmd_convert(args) -> None:
    from eai.io import write_motion

    if Path(args.out).resolve() == Path(args.input).resolve():
        raise EaiError("output would overwrite the input; choose another path", args.out)
    m = _motion(args, args.input)
    write_motion(m, args.out)
    print(f"wrote {args.out} ({m.n_frames} frames, {len(m.joints)} joints)")


def cmd_features(args) -> None:
    from eai.kinematics import DESCRIPTOR_BY_NAME, describe
    from eai.report import table
    from eai.skeleton.unify import unify

    u = unify(_motion(args, args.file))
    d = describe(u.metres(), u.mask, u.fps)
    if args.json:
        print(json.dumps({"file": args.file, "layout": u.layout, "descriptors": d}, indent=2))
        return
    rows = [[n, v["value"], v["unit"], v["missing"] or DESCRIPTOR_BY_NAME[n].meaning] for n, v in d.items()]
    print(table(rows, ["descriptor", "value", "unit", "meaning / why missing"]))


def cmd_data(args) -> None:
    from collections import Counter

    from eai.data import load_clips, open_dataset
    from eai.protocol import STRIDE, WINDOW
    from eai.report import table
    from eai.skeleton.unify import windows

    ds = open_dataset(args.dir, args.task)
    clips = load_clips(ds, progress=not args.json)
    n_clips, n_win, layouts = Counter(), Counter(), Counter()
    for u in clips:
        n_clips[u.label] += 1
        n_win[u.label] += len(windows(u.positions, WINDOW, STRIDE)[0])
        layouts[u.layout] += 1
    out = {"dataset": ds.name, "kind": ds.kind, "task": ds.task,
           "labels": {k: {"word": ds.word(k), "clips": n_clips[k], "windows": n_win[k]} for k in sorted(n_clips)},
           "layouts": dict(layouts), "clips": len(clips), "windows": sum(n_win.values()),
           "problems": ds.problems}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{ds.name} ({ds.kind}, task {ds.task}): {len(clips)} clips, {out['windows']} windows "
          f"of {WINDOW} frames (stride {STRIDE})")
    print(table([[k, v["word"], v["clips"], v["windows"]] for k, v in out["labels"].items()],
                ["label", "its word", "clips", "windows"]))
    print("layouts: " + ", ".join(f"{k} ({v})" for k, v in layouts.items()))
    print(f"problems: {len(ds.problems)}" + "".join(f"\n  {p}" for p in ds.problems))


def cmd_train(args) -> None:
    from eai.train import train_encoder_run

    if args.stage not in ("encoder", "all"):
        raise EaiError(f"unknown stage {args.stage!r}: 'encoder', or 'all' (encoder, description, recognition)")
    data = args.data[0] if len(args.data) == 1 else args.data
    if args.stage == "all":
        from eai.llm.pipeline import train_all_run
        from eai.llm.train import SCHEDULES

        llm_schedule = args.llm_schedule or (args.schedule if args.schedule in SCHEDULES else "paper")
        run = train_all_run(data, args.out, args.task, args.schedule, llm_schedule, args.backbone,
                            args.holdout, args.seed, not args.no_pretrain, not args.quiet, args.epochs,
                            {"description": args.description_steps, "recognition": args.recognition_steps},
                            args.kinematic_token, args.mix)
    else:
        run = train_encoder_run(data, args.out, args.task, args.schedule, args.holdout, args.seed,
                                not args.no_pretrain, not args.quiet, args.epochs, args.mix)
    m = json.loads((run / "manifest.json").read_text())
    print(f"wrote run {run} ({m['data']['train_windows']} training windows, {m['train_seconds']:.0f} s encoder)")
    held = m["held_out_metrics"] or {}
    per = held if "window_accuracy" not in held else {m["data"]["name"]: held}
    llm = m.get("held_out_llm") or {}
    llm = llm if "llm" not in llm else {m["data"]["name"]: llm}
    for name, h in per.items():
        print(f"held-out clips of {name}, encoder: window accuracy {h['window_accuracy']:.3f}, clip accuracy "
              f"{h['clip_accuracy']:.3f}, macro-F1 {h['macro_f1']:.3f}")
        if name in llm:
            x = llm[name]["llm"]
            print(f"held-out clips of {name}, LLM (label likelihood): window accuracy {x['window_accuracy']:.3f}, "
                  f"clip accuracy {x['clip_accuracy']:.3f}, macro-F1 {x['macro_f1']:.3f}, ECE {x['ece']:.3f}")


def cmd_explain(args) -> None:
    from eai.llm.pipeline import Interpreter
    from eai.skeleton.unify import unify

    it = Interpreter.load(args.model, args.int8)
    motions = [_motion(args, f) for f in args.files]
    clips = [unify(m) for m in motions]
    rows = []
    for f, u in zip(args.files, clips):
        if u.n_frames < 2:
            raise EaiError("too short to read (fewer than 2 frames)", f)
    for f, r in zip(args.files, it.explain(clips, args.max_tokens, args.dataset)):
        r = {"file": f, **r}
        rows.append(r)
        if not args.json:
            probs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
            print(f"{f}\n  dataset      {r['dataset']}\n  emotion      {r['emotion']}  ({probs})\n"
                  f"  explanation  {r['explanation']}")
            for e in r["evidence"]:
                mark = "ok " if e["verified"] else "NOT"
                val = "" if e.get("value") is None else f": {e['value']:g} {e['unit']} vs neutral {e['neutral']:g}"
                print(f"  [{mark}] {e['phrase']} ({e['descriptor'] or 'overall'} z {e['z']}{val})")
    if args.json:
        print(json.dumps(rows, indent=2))
    if args.html:  # the viewer page (eai.viewer)
        from eai.viewer.page import write_page

        size = write_page(args.html, rows, motions, clips)
        print(f"wrote {args.html} ({size / 2**20:.1f} MB)", file=sys.stderr if args.json else sys.stdout)


def cmd_serve(args) -> None:
    from eai.viewer.serve import serve

    serve(args.model, args.host, args.port, args.token or os.environ.get("EAI_TOKEN") or None, args.max_upload_mb,
          args.timeout, args.int8, args.max_tokens, args.units)


def cmd_evaluate(args) -> None:
    from eai.evaluate import evaluate_run
    from eai.report import table

    r = evaluate_run(args.run, args.data, args.task, args.all, args.out, not args.quiet, args.dataset)
    print(f"{r['dataset']} read as {r['read_as']} ({r['scope']}: {r['clips']} clips, {r['windows']} windows)")
    print(table([[r["window_accuracy"], r["clip_accuracy"], r["macro_f1"]]], ["window acc", "clip acc", "macro-F1"]))
    words = dict(zip(r["labels"], r["words"]))
    print(table([[words[c], v] for c, v in r["per_class_recall"].items()], ["label", "recall"]))
    if "llm" in r:
        rec, ex = r["llm"]["recognition"]["llm"], r["llm"]["explanations"]
        print("LLM (label likelihood, mirror-averaged):")
        print(table([[rec["window_accuracy"], rec["clip_accuracy"], rec["macro_f1"], rec["ece"]]],
                    ["window acc", "clip acc", "macro-F1", "ECE"]))
        print(table([[ex["label_consistency"], ex["faithfulness"], ex["bleu4"], ex["rouge_l"],
                      ex.get("minilm_similarity")]],
                    ["label consistency", "faithfulness", "BLEU-4", "ROUGE-L", "MiniLM sim."]))
    print("wrote " + ", ".join(r["written"]))


def _one(data: list[str], what: str) -> str:
    if len(data) != 1:
        raise EaiError(f"{what} takes one --data; 'eai bench joint' takes several")
    return data[0]


def cmd_bench(args) -> None:
    from eai.bench import (joint_table, llm_table, plot_joint, recognition_table, run_explain, run_joint, run_llm,
                           run_recognition)

    if args.what == "joint":
        result = run_joint(args.data, args.task, args.folds, args.seeds, args.schedule, args.epochs, args.mix,
                           not args.quiet)
        print(joint_table(result))
        _write_results(args, result, plot_joint)
        return
    args.data = _one(args.data, f"bench {args.what}")
    if args.what == "llm":
        if not args.out:
            raise EaiError("bench llm needs --out FOLDER for the run of each fold")
        result = run_llm(args.data, args.out, args.task, args.folds, args.seeds, args.schedule, args.llm_schedule,
                         args.epochs, {"description": args.description_steps, "recognition": args.recognition_steps},
                         args.backbone, not args.no_pretrain, not args.quiet)
        print(llm_table(result))
        _write_results(args, result)
        return
    if args.what == "explain":
        if not args.model:
            raise EaiError("bench explain needs --model RUN")
        result = run_explain(args.model, args.data, args.task, progress=not args.quiet, int8=args.int8)
        rec, ex, lat = result["recognition"], result["explanations"], result["latency"]
        from eai.report import table

        print(f"{result['dataset']} ({result['scope']}: {result['clips']} clips, {rec['windows']} windows)")
        print(table([[k, rec[k]["window_accuracy"], rec[k]["clip_accuracy"], rec[k]["macro_f1"], rec[k]["ece"]]
                     for k in ("llm", "encoder")], ["model", "window acc", "clip acc", "macro-F1", "ECE"]))
        print(table([[ex["label_consistency"], ex["faithfulness"], ex["claims_per_explanation"], ex["bleu4"],
                      ex["rouge_l"], ex.get("minilm_similarity")]],
                    ["label consistency", "faithfulness", "claims/expl.", "BLEU-4", "ROUGE-L", "MiniLM sim."]))
        print(f"latency ({lat['clip_seconds']} s clip, model loaded, median of {lat['repeats']}): explain "
              f"{lat['explain_s_median']:.3f} s, label scoring alone {lat['label_scoring_s_median']:.3f} s")
        if args.json:
            from eai.report import write_json

            write_json(result, Path(args.json))
        return
    result = run_recognition(args.data, args.task, args.folds, args.seeds, progress=not args.quiet,
                             schedule_name=args.schedule, epochs=args.epochs, use_pretrain=not args.no_pretrain)
    print(recognition_table(result))
    _write_results(args, result)


def cmd_baseline(args) -> None:
    from eai.bench import recognition_table, run_recognition

    args.data = _one(args.data, "baseline")
    result = run_recognition(args.data, args.task, args.folds, args.seeds, models=("baseline",),
                             progress=not args.quiet)
    print(recognition_table(result))
    _write_results(args, result)


def _write_results(args, result: dict, plot=None) -> None:
    """--json OUT and --plot PNG: `plot(result, PNG)` when given, else a confusion matrix per model."""
    from eai.report import plot_confusion, write_json

    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot and plot is not None:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    elif args.plot:
        for name, m in result["models"].items():
            png = Path(args.plot).with_name(f"{Path(args.plot).stem}-{name}.png")
            plot_confusion(m["confusion"], result["labels"], png, f"{result['dataset']} {name}")
            print(f"wrote {png}")


def cmd_synth(args) -> None:
    from eai.synth import STYLES, write_dataset

    emotions = args.emotions.split(",") if args.emotions else list(STYLES)
    bad = [e for e in emotions if e not in STYLES]
    if bad:
        raise EaiError(f"no generator for {', '.join(bad)}; choose from {', '.join(STYLES)}")
    paths = write_dataset(args.out, args.layouts.split(","), args.clips_per_label, args.seconds, emotions,
                          args.seed)
    print(f"wrote {len(paths)} clips to {args.out} (generated data: for tests and demos, never for reported figures)")


def cmd_derive(args) -> None:
    from eai.derive import DEFAULT_RENAME, derive, parse_rename

    rename = parse_rename(args.rename) if args.rename else DEFAULT_RENAME
    rec = derive(args.data, args.out, args.layout, args.fps, rename, args.fraction, args.seed, args.task,
                 not args.quiet)
    d, r = rec["derived"], rec["rest"]
    print(f"wrote {Path(args.out) / d['name']} ({len(d['clips'])} clips, {d['layout']} at {d['fps']:g} fps, "
          f"labels {', '.join(sorted(set(d['vocabulary'].values())))})")
    print(f"wrote {Path(args.out) / r['name'] / 'manifest.csv'} ({len(r['clips'])} clips, the original files)")
    print(f"wrote {Path(args.out) / 'split.json'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eai", description="Emotion-Action Interpreter: read 3D body movement, "
                                "recognise the emotion and explain it.")
    p.add_argument("--layout-file", metavar="FILE", action="append", default=[],
                   help="register skeleton layouts from a YAML/JSON file (repeatable; or EAI_LAYOUTS=FILE)")
    p.add_argument("--units", default="auto", help="BVH length unit: auto, m, cm, mm, in (default auto)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow reading PYSKL .pkl files (unpickling runs code from the file)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="layout, joints, frames, fps, duration, missing canonical joints")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("convert", help="convert between BVH, Kinect CSV and NPZ (output format by extension)")
    s.add_argument("input")
    s.add_argument("out")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("features", help="kinematic descriptors of a clip, with units")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_features)

    s = sub.add_parser("data", help="clips and windows per label, layouts and problems of a dataset")
    s.add_argument("dir")
    s.add_argument("--task", help="Bandai only: emotion (default), style or content")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("baseline", help="descriptor + random forest baseline under the benchmark protocol")
    _protocol_args(s)
    s.set_defaults(fn=cmd_baseline)

    s = sub.add_parser("train", help="train a model into a run folder (resumes from its checkpoint)")
    s.add_argument("--stage", default="encoder", help="encoder, or all (encoder, then the LLM's description and "
                   "recognition stages)")
    s.add_argument("--data", required=True, action="append",
                   help="dataset folder or CSV manifest; give it again to train on several datasets at once")
    s.add_argument("--mix", default="equal", help="several datasets: each one's share of an epoch, equal "
                   "(default), sqrt (of its size) or size")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--task", help="Bandai only: emotion (default), style or content")
    s.add_argument("--schedule", default="paper", help="paper (default: 200 epochs), gpu, cpu or smoke")
    s.add_argument("--epochs", type=int, help="override the schedule's epochs (milestones scale with it)")
    s.add_argument("--holdout", type=float, default=0.2, help="fraction of clips held out for evaluation")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-pretrain", action="store_true", help="skip pre-training on auxiliary clips")
    s.add_argument("--backbone", default="smollm2-135m-instruct",
                   help="LLM: the bundled smollm2-135m-instruct (default), a local folder or a hub id")
    s.add_argument("--llm-schedule", help="paper, gpu, cpu or smoke (default: --schedule's name, else paper)")
    s.add_argument("--description-steps", type=int, help="override the description stage's steps")
    s.add_argument("--recognition-steps", type=int, help="override the recognition stage's steps")
    s.add_argument("--kinematic-token", action="store_true",
                   help="add a token of the window's descriptor z-scores to the skeleton tokens")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("explain", help="emotion, probabilities and a checked explanation of motion files")
    s.add_argument("files", nargs="+")
    s.add_argument("--model", required=True, help="run folder trained with --stage all")
    s.add_argument("--json", action="store_true", help="print a JSON list with the evidence of each claim")
    s.add_argument("--max-tokens", type=int, default=40, help="longest explanation, in tokens")
    s.add_argument("--dataset", help="a run trained on several datasets: which one's labels to answer in "
                   "(default: the one with the clip's skeleton)")
    s.add_argument("--int8", action="store_true", help=INT8_HELP)
    s.add_argument("--html", metavar="OUT", help="also write a self-contained page: the moving skeleton, the "
                   "probabilities and each claim's evidence (several files: one tab each)")
    s.set_defaults(fn=cmd_explain)

    s = sub.add_parser("serve", help="a local web app: drop a motion file, see the skeleton, the emotion and "
                       "the evidence; JSON API at /api/explain, docs at /docs")
    s.add_argument("--model", required=True, help="run folder trained with --stage all")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; another needs --token)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", help="every request must carry it (default: EAI_TOKEN)")
    s.add_argument("--max-upload-mb", type=float, default=50, help="larger uploads get 413 (default 50)")
    s.add_argument("--timeout", type=float, default=120, help="seconds a request may take (default 120)")
    s.add_argument("--max-tokens", type=int, default=40, help="longest explanation, in tokens")
    s.add_argument("--int8", action="store_true", help=INT8_HELP)
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("evaluate", help="accuracy, macro-F1, recall and confusion matrix of a run on a dataset")
    s.add_argument("run")
    s.add_argument("--data", required=True)
    s.add_argument("--task")
    s.add_argument("--all", action="store_true", help="on the training dataset, use every clip, not the held-out")
    s.add_argument("--dataset", help="a run trained on several datasets: read the clips as this one's "
                   "(default: the same path, else the one with the clips' skeleton)")
    s.add_argument("--out", help="folder for evaluation.json and confusion.png (default RUN/eval-<dataset>)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("bench", help="benchmarks: 'recognition' runs the protocol for encoder and baseline; "
                       "'explain' scores a run's LLM (recognition, explanations, latency); 'llm' trains the whole "
                       "method per fold and scores the LLM beside the encoder; 'joint' trains on each --data alone "
                       "and on all together, same folds")
    s.add_argument("what", choices=["recognition", "explain", "llm", "joint"])
    s.add_argument("--model", help="explain: the run folder")
    s.add_argument("--int8", action="store_true", help="explain: " + INT8_HELP)
    _protocol_args(s)
    s.add_argument("--schedule", help="encoder schedule (default: gpu with CUDA, else cpu)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--no-pretrain", action="store_true")
    s.add_argument("--out", help="llm: folder for the run of each fold (OUT/seed-S-fold-I); run again to resume")
    s.add_argument("--llm-schedule", help="llm: paper, gpu, cpu or smoke (default: --schedule's)")
    s.add_argument("--description-steps", type=int, help="llm: override the description stage's steps")
    s.add_argument("--recognition-steps", type=int, help="llm: override the recognition stage's steps")
    s.add_argument("--backbone", help="llm: the LM (default: the bundled SmolLM2-135M-Instruct)")
    s.add_argument("--mix", default="equal", help="joint: each dataset's share of an epoch: equal (default), "
                   "sqrt (of its size) or size")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("synth", help="write a generated emotional-motion dataset (tests and offline demos)")
    s.add_argument("out")
    s.add_argument("--layouts", default="bandai22,kinect25,gait16",
                   help="comma-separated layouts to cycle through")
    s.add_argument("--emotions", help="comma-separated emotions (default: all the generator knows)")
    s.add_argument("--clips-per-label", type=int, default=6)
    s.add_argument("--seconds", type=float, default=6.0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("derive", help="split a dataset into two disjoint sets: one re-expressed in another skeleton, "
                       "frame rate and label vocabulary, the rest kept as a manifest of the original files")
    s.add_argument("data", help="dataset folder or CSV manifest")
    s.add_argument("--out", required=True, help="folder for the two sets and split.json")
    s.add_argument("--layout", default="gait16", help="layout of the derived set (default gait16)")
    s.add_argument("--fps", type=float, default=25.0, help="frame rate of the derived set (default 25)")
    s.add_argument("--rename", help="label=word pairs: which labels the derived set takes and its words for them "
                   "(default angry=anger,happy=joy,sad=sadness,neutral=neutral)")
    s.add_argument("--fraction", type=float, default=0.5, help="share of those labels' clips derived (default 0.5)")
    s.add_argument("--task", help="Bandai only: emotion (default), style or content")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_derive)
    return p


def _protocol_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True, action="append",
                   help="dataset folder or CSV manifest ('bench joint': give it once per dataset)")
    s.add_argument("--task", help="Bandai only: emotion (default), style or content")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seeds", type=int, default=1)
    s.add_argument("--json", metavar="OUT", help="write the results as JSON")
    s.add_argument("--plot", metavar="PNG", help="write confusion-matrix plots (one per model)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from eai.skeleton.registry import registry

        for f in args.layout_file:
            registry().register_file(f)
        args.fn(args)
    except EaiError as e:
        print(f"eai: error: {e.format()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eai: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("eai: error: out of memory; try a smaller file or dataset", file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours: one line, the traceback only on request
        if os.environ.get("EAI_DEBUG"):
            raise
        print(f"eai: internal error: {type(e).__name__}: {e} (set EAI_DEBUG=1 for the traceback; please "
              "report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
