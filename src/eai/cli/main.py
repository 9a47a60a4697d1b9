"""The `eai` command line: the parser and the entry point. Errors a user can cause print one line,
`eai: error: ...`, and exit with code 2."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

# torch's OpenMP threads sleep when idle instead of spinning (set before torch loads; OMP_WAIT_POLICY=ACTIVE in the
# environment restores spinning): beside another busy process on two cores, spinning threads made a cold
# explain 13-39 s instead of 6 s, and an LLM training step 140 s instead of 3.6 s (bench/RESULTS.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from eai.cli.commands import (
    cmd_convert,
    cmd_data,
    cmd_derive,
    cmd_features,
    cmd_info,
    cmd_pose,
    cmd_synth,
)
from eai.cli.run_commands import (
    cmd_baseline,
    cmd_bench,
    cmd_evaluate,
    cmd_explain,
    cmd_pretrain,
    cmd_serve,
    cmd_train,
)
from eai.errors import EaiError, EaiWarning



class UsageError(EaiError):
    """A command line argparse refuses (unknown subcommand, missing option): one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are eai's one line, not a usage block (`eai COMMAND --help` shows it)."""

    def error(self, message: str):
        hint = "eai --help" if self.prog == "eai" else f"{self.prog} --help"
        raise UsageError(f"{message} (see '{hint}')")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("eai")
    except PackageNotFoundError:  # run from a source tree without installing
        ver = "0.1.0 (source tree)"
    p = Parser(prog="eai", description="Emotion-Action Interpreter: read 3D body movement, "
                                "recognise the emotion and explain it.")
    p.add_argument("--version", action="version", version=f"eai {ver}")
    p.add_argument("--layout-file", metavar="FILE", action="append", default=[],
                   help="register skeleton layouts from a YAML/JSON file (repeatable; or EAI_LAYOUTS=FILE)")
    p.add_argument("--units", default="auto", help="BVH length unit: auto (told from the body's size; default), "
                   "m, cm, mm, in, or a number of metres per file unit (CMU conversions: 0.05644)")
    p.add_argument("--up", default="auto", help="the file's up axis: auto (told from the body: head above feet; "
                   "default), y, -y, z, -z, x or -x; the clip is turned to y up")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow reading PYSKL .pkl files (unpickling runs code from the file)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    _file_command(sub, "info", "layout, joints, frames, fps, duration, missing canonical joints", cmd_info)

    s = sub.add_parser("convert", help="convert between BVH, Kinect CSV and NPZ (output format by extension)")
    s.add_argument("input")
    s.add_argument("out")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("pose", help="a video of one person to a skeleton file (MediaPipe Pose; the extra 'video')")
    s.add_argument("video", help="a video file (.mp4, .mov, .avi, .mkv, .webm, .m4v), one person, whole body in view")
    s.add_argument("--out", required=True, help="clip.npz (33 MediaPipe joints), clip.bvh (positions only) or "
                   "clip.csv (Kinect v2 CSV: re-expressed on the kinect25 joints)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_pose)

    _file_command(sub, "features", "kinematic descriptors of a clip, with units", cmd_features)

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
    _init_arg(s)
    s.add_argument("--backbone", default="smollm2-135m-instruct",
                   help="LLM: the bundled smollm2-135m-instruct (default), a local folder or a hub id")
    s.add_argument("--llm-schedule", help="paper, gpu, cpu or smoke (default: --schedule's name, else paper)")
    s.add_argument("--description-steps", type=int, help="override the description stage's steps")
    s.add_argument("--recognition-steps", type=int, help="override the recognition stage's steps")
    s.add_argument("--kinematic-token", action="store_true",
                   help="add a token of the window's descriptor z-scores to the skeleton tokens")
    s.add_argument("--no-posterior-token", action="store_true",
                   help="leave out the token of the encoder's class posterior (the LLM then reads the motion "
                        "tokens alone; on the cpu schedules it stays near chance)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("pretrain", help="pretrain the skeleton encoder on many clips (with or without labels) into a "
                       "folder; 'eai train --init FOLDER' starts from it (resumes from its checkpoint)")
    s.add_argument("--data", required=True, action="append",
                   help="dataset folder or CSV manifest (give it again for several); clips are cached as windows")
    s.add_argument("--out", required=True, help="folder for pretrained.safetensors, pretrained.json, log.jsonl, "
                   "pretrain-curves.png and the checkpoint")
    s.add_argument("--objective", default="mix", help="labels (the clips' style and content), masked (masked "
                   "motion modelling) or mix (both; default)")
    s.add_argument("--schedule", help="cpu, gpu or smoke (default: gpu with CUDA, else cpu)")
    s.add_argument("--epochs", type=int, help="override the schedule's epochs")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("explain", help="emotion, probabilities and a checked explanation of motion files")
    s.add_argument("files", nargs="+")
    s.add_argument("--model", required=True, help="run folder trained with --stage all")
    s.add_argument("--json", action="store_true", help="print a JSON list with the evidence of each claim")
    s.add_argument("--max-tokens", type=int, default=40, help="longest explanation, in tokens")
    s.add_argument("--dataset", help="a run trained on several datasets: which one's labels to answer in "
                   "(default: the one with the clip's skeleton)")
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
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("evaluate", help="accuracy, macro-F1, recall and confusion matrices of a run's encoder and LLM "
                       "on a dataset, and every file's predictions")
    s.add_argument("run")
    s.add_argument("--data", required=True)
    s.add_argument("--task")
    s.add_argument("--all", action="store_true", help="on the training dataset, use every clip, not the held-out")
    s.add_argument("--dataset", help="a run trained on several datasets: read the clips as this one's "
                   "(default: the same path, else the one with the clips' skeleton)")
    s.add_argument("--out", help="folder for evaluation.json, predictions.csv, confusion-encoder.png and "
                   "confusion-llm.png (default RUN/eval-<dataset>)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("bench", help="benchmarks: 'recognition' runs the protocol for encoder and baseline; "
                       "'explain' scores a run's LLM (recognition, explanations, latency); 'llm' trains the whole "
                       "method per fold and scores the LLM beside the encoder; 'joint' trains on each --data alone "
                       "and on all together, same folds")
    s.add_argument("what", choices=["recognition", "explain", "llm", "joint"])
    s.add_argument("--model", help="explain: the run folder")
    _protocol_args(s)
    s.add_argument("--schedule", help="encoder schedule (default: gpu with CUDA, else cpu)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--no-pretrain", action="store_true", help="recognition, llm: skip pre-training on the "
                   "dataset's auxiliary clips (Bandai's character styles)")
    _init_arg(s, "recognition, llm: ")
    s.add_argument("--controls", action="store_true", help="recognition: also train a plain ST-GCN (joints + "
                   "velocities, PYSKL's recipe) on the same folds: models.stgcn")
    s.add_argument("--compare-init", action="store_true", help="recognition: also train the encoder from scratch "
                   "(no initialisation, no auxiliary pre-training) on the same folds: models.encoder_scratch")
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


def _init_arg(s: argparse.ArgumentParser, where: str = "") -> None:
    s.add_argument("--init", default="pretrained", help=f"{where}the encoder's initial weights: pretrained (the "
                   "shipped ones, the default; from scratch when none are shipped), none, or a folder 'eai pretrain' "
                   "wrote; the pre-training on a dataset's auxiliary clips starts from them")


def _file_command(sub, name: str, help: str, fn) -> None:
    """A subcommand of one motion file with --json."""
    s = sub.add_parser(name, help=help)
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=fn)


def _protocol_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True, action="append",
                   help="dataset folder or CSV manifest ('bench joint': give it once per dataset)")
    s.add_argument("--task", help="Bandai only: emotion (default), style or content")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seeds", type=int, default=1)
    s.add_argument("--json", metavar="OUT", help="write the results as JSON")
    s.add_argument("--plot", metavar="PNG", help="write confusion-matrix plots (one per model)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Readers' warnings (what they repaired) as one line each, `eai: warning: ...`. Other warnings (libraries'
    deprecations and the like, nothing a user can act on) only with EAI_DEBUG=1, so that an error is one line."""
    if issubclass(category, EaiWarning):
        print(f"eai: warning: {message}", file=sys.stderr)
    elif os.environ.get("EAI_DEBUG"):
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


last_command: str | None = None  # the subcommand main() last ran (eai.cli.main decides how the process ends)


def main(argv: list[str] | None = None) -> int:
    global last_command
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"eai: error: {e.format()}", file=sys.stderr)
        return 2
    last_command = args.command
    try:
        from eai.skeleton.registry import registry

        for f in args.layout_file:
            registry().register_file(f)
        with warnings.catch_warnings():
            warnings.simplefilter("always", EaiWarning)
            warnings.showwarning = _show_warning
            args.fn(args)
            sys.stdout.flush()
    except BrokenPipeError:  # the reader of our output went away (`eai info F | head -1`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
