"""The data commands of the command line: info, convert, features, data, synth, derive. Each reads its
arguments (argparse's namespace), does one thing and prints a table or JSON."""
from __future__ import annotations

import json
from pathlib import Path

from eai.errors import EaiError


def _motion(args, path: str):
    from eai.io import read_motion

    return read_motion(path, units=args.units, trust_pickle=args.trust_pickle, up=args.up)


def cmd_info(args) -> None:
    from eai.errors import LayoutError
    from eai.io import read_motion_to_show
    from eai.skeleton.registry import normalise_name, registry
    from eai.skeleton.unify import to_canonical

    m = read_motion_to_show(args.file, args.units, args.trust_pickle, args.up)
    can = registry().canonical
    try:
        _, mask, layout = to_canonical(m)
        name, description, problem = layout.name, layout.description, None
        known = set(layout.keys)
    except LayoutError as e:
        mask, name, description, problem, known = [False] * can.n, "unknown", "", e.message, set()
    info = {
        "file": args.file, "layout": name, "layout_description": description,
        "joints": len(m.joints), "frames": m.n_frames, "fps": round(m.fps, 4),
        "duration_s": round(m.duration, 3),
        "canonical_present": [n for n, k in zip(can.names, mask) if k],
        "canonical_missing": [n for n, k in zip(can.names, mask) if not k],
        # the same normalised names detection uses ("mixamorig:Hips" matches Hips)
        "unmatched_joints": [j for j in m.joints if normalise_name(j) not in known],
        "unit_scale": m.meta.get("unit_scale"), "units": m.meta.get("units"), "up": m.meta.get("up"),
        "filled_frames": m.meta.get("filled_frames", 0), "notes": m.meta.get("notes", []),
    }
    if problem:
        info["layout_problem"] = problem
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['file']}\n  layout    {name}" + (f" ({description})" if description else f": {problem}") +
          f"\n  joints    {info['joints']}\n  frames    {info['frames']} at {info['fps']:g} fps "
          f"({info['duration_s']:.2f} s)\n  canonical {len(info['canonical_present'])}/{can.n} present; "
          f"missing: {', '.join(info['canonical_missing']) or 'none'}")
    # what the reader told or repaired: units, up axis, gaps, timestamps
    if info["unit_scale"] is not None:
        print(f"  units     {info['unit_scale']:g} m per file unit: {m.meta.get('units', '')}")
    print(f"  up axis   {info['up'] or 'y'} in the file" + (" (turned to y up)" if info["up"] in
                                                             ("-y", "z", "-z", "x", "-x") else ""))
    print(f"  filled    {info['filled_frames']} untracked frame(s)")
    for note in info["notes"]:
        print(f"  note      {note}")


def cmd_convert(args) -> None:
    from eai.io import write_motion

    if Path(args.out).resolve() == Path(args.input).resolve():
        raise EaiError("output would overwrite the input; choose another path", args.out)
    m = _motion(args, args.input)
    write_motion(m, args.out)  # a Kinect CSV of another skeleton goes through the canonical joints
    print(f"wrote {args.out} ({m.n_frames} frames at {m.fps:g} fps)")


def cmd_pose(args) -> None:
    from eai.io import write_motion
    from eai.io.video import read_video

    m = read_video(args.video, progress=False if args.quiet else None)
    write_motion(m, args.out)  # a Kinect v2 CSV: re-expressed on the kinect25 joints (eai.io.kinect)
    print(f"wrote {args.out} ({m.n_frames} frames at {m.fps:g} fps; pose extraction "
          f"{m.meta['pose_fps']:.1f} frames/s)")
    for note in m.meta.get("notes", []):
        print(f"  note  {note}")


def cmd_features(args) -> None:
    from eai.features import DESCRIPTOR_BY_NAME, describe
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

    from eai.data.datasets import load_clips, open_dataset
    from eai.data.windows import STRIDE, WINDOW, windows
    from eai.report import table

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
           "problems": ds.problems, "repairs": ds.repairs}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{ds.name} ({ds.kind}, task {ds.task}): {len(clips)} clips, {out['windows']} windows "
          f"of {WINDOW} frames (stride {STRIDE})")
    print(table([[k, v["word"], v["clips"], v["windows"]] for k, v in out["labels"].items()],
                ["label", "its word", "clips", "windows"]))
    print("layouts: " + ", ".join(f"{k} ({v})" for k, v in layouts.items()))
    print(f"problems: {len(ds.problems)}" + "".join(f"\n  {p}" for p in ds.problems))
    print(f"repaired or guessed by the readers: {len(ds.repairs)}" + "".join(f"\n  {r}" for r in ds.repairs))


def cmd_synth(args) -> None:
    from eai.data.synth import STYLES, write_dataset

    emotions = args.emotions.split(",") if args.emotions else list(STYLES)
    bad = [e for e in emotions if e not in STYLES]
    if bad:
        raise EaiError(f"no generator for {', '.join(bad)}; choose from {', '.join(STYLES)}")
    paths = write_dataset(args.out, args.layouts.split(","), args.clips_per_label, args.seconds, emotions,
                          args.seed)
    print(f"wrote {len(paths)} clips to {args.out} (generated data: for tests and demos, never for reported figures)")


def cmd_derive(args) -> None:
    from eai.data.derive import DEFAULT_RENAME, derive, parse_rename

    rename = parse_rename(args.rename) if args.rename else DEFAULT_RENAME
    rec = derive(args.data, args.out, args.layout, args.fps, rename, args.fraction, args.seed, args.task,
                 not args.quiet)
    d, r = rec["derived"], rec["rest"]
    print(f"wrote {Path(args.out) / d['name']} ({len(d['clips'])} clips, {d['layout']} at {d['fps']:g} fps, "
          f"labels {', '.join(sorted(set(d['vocabulary'].values())))})")
    print(f"wrote {Path(args.out) / r['name'] / 'manifest.csv'} ({len(r['clips'])} clips, the original files)")
    print(f"wrote {Path(args.out) / 'split.json'}")


