"""What a user names on the command line, checked before any model loads: motion files, folders of them and
glob patterns (expanded to the motion files they hold), and run folders (their manifest.json read as plain
JSON). Nothing here imports torch, so a mistyped path is said at once."""
from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

from eai.errors import EaiError, FormatError
from eai.motion import Motion

MANIFEST = "manifest.json"
# manifest.json's layout (eai.run.Manifest); 1 (no "format" field): eai before 2026-11-30; 2: before the
# datasets recorded their clips' layouts and frame rates (2026-12-01); 3: before config.init (the encoder's initial
# weights, eai pretrain); 4: before llm.posterior (the posterior token fused with a descriptor forest, 2026-12-01);
# older ones are not read
FORMAT = 5
_GLOB = re.compile(r"[*?\[]")
_DOC_STEMS = {"readme", "license", "licence", "source", "notice", "changelog", "copying"}


def motion_files(inputs: list[str]) -> list[Path]:
    """The motion files named by `inputs` (files, folders: every motion file inside, recursively, sorted;
    glob patterns), each checked to exist, be readable and have a motion extension (videos too: eai.io.video);
    duplicates once. FormatError (one line) on the first input that names no readable motion file."""
    from eai.io import READ_SUFFIXES, VIDEO_SUFFIXES

    suffixes = READ_SUFFIXES + VIDEO_SUFFIXES

    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists() and _GLOB.search(raw):
            hits = sorted(glob.glob(raw, recursive=True))
            if not hits:
                raise FormatError("no file matches this pattern", raw)
            found = [Path(h) for h in hits if Path(h).is_file() and Path(h).suffix.lower() in suffixes]
            for h in hits:
                if Path(h).is_dir():
                    found += _folder(Path(h), suffixes)
            if not found:
                raise FormatError(f"no motion file ({', '.join(suffixes)}) matches this pattern", raw)
            out += found
        elif p.is_dir():
            found = _folder(p, suffixes)
            if not found:
                raise FormatError(f"no motion file ({', '.join(suffixes)}) in this folder", p)
            out += found
        else:
            out.append(_check_file(p, suffixes))
    return list(dict.fromkeys(out))


def _check_file(p: Path, suffixes: tuple[str, ...]) -> Path:
    if not p.exists():
        raise FormatError("no such file", p)
    if not p.is_file():
        raise FormatError("not a regular file", p)
    if not os.access(p, os.R_OK):
        raise FormatError("cannot read this file (permission denied)", p)
    if p.suffix.lower() not in suffixes:
        raise FormatError(f"unknown motion format {p.suffix or '(no extension)'}; eai reads {', '.join(suffixes)}", p)
    if p.stat().st_size == 0:
        raise FormatError("the file is empty", p)
    return p


def _folder(d: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Motion files under a folder: hidden files, documents (README.txt ...) and text files that are no table
    of numbers (a dataset's label lists) are left out."""
    out = []
    for f in sorted(d.rglob("*")):
        if (not f.is_file() or f.suffix.lower() not in suffixes or any(x.startswith(".") for x in f.parts[len(d.parts):])
                or f.stem.lower() in _DOC_STEMS):
            continue
        if f.suffix.lower() in (".txt", ".csv") and not _looks_like_table(f):
            continue
        out.append(_check_file(f, suffixes))
    return out


def _looks_like_table(f: Path) -> bool:
    """A Kinect text file's first line has many columns (75 numbers, or their names); a label list has few."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(4096).decode("utf-8", "replace")
    except OSError:
        return False
    line = next((x for x in head.splitlines() if x.strip()), "")
    return len([x for x in re.split(r"[,;\t ]+", line.strip()) if x]) >= 6


def read_clip(path: str | Path, **read_options) -> tuple[Motion, object]:
    """A motion file as read (eai.io.read_motion with `read_options`: units, up, trust_pickle) and unified
    (eai.skeleton.unify.UnifiedMotion, with the source frame rate in `source_fps`); EaiError when it is too
    short to read (fewer than 2 frames). What `eai explain` and `eai serve` read."""
    from eai.io import read_motion
    from eai.skeleton.unify import unify

    m = read_motion(path, **read_options)
    u = unify(m)
    if u.n_frames < 2:
        raise EaiError("too short to read (fewer than 2 frames)", path)
    return m, u


def read_manifest_json(run_dir: str | Path, fmt: int) -> dict:
    """A run folder's manifest.json as plain JSON, refused in one line when the folder or its manifest is
    missing, unreadable or of another format than `fmt` (eai.run.FORMAT)."""
    d = Path(run_dir)
    if not d.exists():
        raise EaiError("no such run folder; train one with 'eai train' (make demo writes runs/demo)", d)
    if not d.is_dir():
        raise EaiError("this is a file, not a run folder (a folder 'eai train' wrote)", d)
    if not (d / MANIFEST).is_file():
        raise EaiError(f"not an eai run folder (no {MANIFEST}); train one with 'eai train'", d)
    try:
        raw = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise EaiError(f"cannot read {MANIFEST} ({e})", d) from None
    found = raw.get("format", 1) if isinstance(raw, dict) else None
    if found != fmt:
        raise EaiError(f"this run folder is of manifest format {found}, written by another eai; this eai reads "
                       f"format {fmt}: train the run again", d)
    return raw
