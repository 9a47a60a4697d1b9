"""`eai derive`: a second real dataset made honestly from one, for joint training across skeletons.

A share of the clips of some labels is re-expressed in another skeleton layout and frame rate (the 16-joint
gait layout at 25 fps by default) and renamed into another label vocabulary (anger/joy/sadness/neutral); every
other clip stays as it is, listed in a CSV manifest that points at the original files (nothing is copied).
Clips are assigned by group, so no clip (and no group) is ever on both sides; `split.json` records which went
where and how the derived set was made.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eai.data.datasets import ATTRIBUTION_FILES, ClipRef, load_clips, normalise_label, open_dataset
from eai.data.synth import express
from eai.errors import EaiError
from eai.io.files import atomic_write_text
from eai.io.npz import write_npz
from eai.skeleton.registry import registry

# unified label -> the derived set's word (another vocabulary than Bandai's)
DEFAULT_RENAME = {"angry": "anger", "happy": "joy", "sad": "sadness", "neutral": "neutral"}


def parse_rename(text: str) -> dict[str, str]:
    """'angry=anger,happy=joy' -> {'angry': 'anger', 'happy': 'joy'} (left side unified, right kept)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" not in item:
            raise EaiError(f"--rename takes label=word pairs separated by commas, got {item!r}")
        a, b = (x.strip() for x in item.split("=", 1))
        if not a or not b:
            raise EaiError(f"--rename takes label=word pairs separated by commas, got {item!r}")
        out[normalise_label(a)] = b.lower()
    return out


def split_groups(refs: list[ClipRef], labels: set[str], fraction: float, seed: int) -> tuple[list[ClipRef], list[ClipRef]]:
    """(derived, rest): for each label in `labels`, about `fraction` of its groups (all their clips) go to the
    derived side; clips of other labels all stay."""
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for label in sorted(labels):
        groups = sorted({r.group for r in refs if r.label == label})
        k = int(round(fraction * len(groups)))
        chosen.update(rng.permutation(groups)[:k].tolist())
    derived = [r for r in refs if r.group in chosen and r.label in labels]
    rest = [r for r in refs if r.group not in chosen]
    return derived, rest


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "clip"


def derive(data: str, out: str, layout: str = "gait16", fps: float = 25.0, rename: dict[str, str] | None = None,
           fraction: float = 0.5, seed: int = 0, task: str | None = None, progress: bool = True) -> dict:
    """Write OUT/<name>-<layout>/ (label folders of NPZ clips) and OUT/<name>-rest/manifest.csv; returns the
    split record (also written to OUT/split.json)."""
    rename = dict(rename or DEFAULT_RENAME)
    if not 0 < fraction <= 1:
        raise EaiError(f"--fraction must be in (0, 1], got {fraction}")
    if not fps > 0:
        raise EaiError(f"--fps must be positive, got {fps}")
    lay = registry().get(layout)
    ds = open_dataset(data, task)
    missing = sorted(set(rename) - set(ds.labels))
    if missing:
        raise EaiError(f"--rename names labels the dataset lacks: {', '.join(missing)} "
                       f"(its labels: {', '.join(ds.labels)})", data)
    root = Path(out)
    names = {"derived": f"{ds.name}-{lay.name}", "rest": f"{ds.name}-rest"}
    for n in names.values():
        if (root / n).exists():
            raise EaiError(f"{root / n} exists already; choose another --out or delete it", root / n)
    root.mkdir(parents=True, exist_ok=True)
    derived, rest = split_groups(ds.clips, set(rename), fraction, seed)
    assert not {r.group for r in derived} & {r.group for r in rest}

    # the derived set: written into a hidden folder, renamed into place once complete
    tmp = root / f".{names['derived']}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    clips = load_clips(ds, fps=fps, progress=progress, refs=derived)
    written = []
    for u in tqdm(clips, desc=f"writing {lay.name}", disable=not progress, leave=False):
        word = rename[u.label]
        m = express(u.metres(), lay, fps, label=word)
        path = tmp / word / f"{_safe(u.group)}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(m, path)
        written.append({"group": u.group, "source": u.source, "label": word,
                        "file": str(path.relative_to(tmp))})
    record = {
        "source": str(Path(data).resolve()), "dataset": ds.name, "task": ds.task, "seed": seed,
        "fraction": fraction,
        "derived": {"name": names["derived"], "layout": lay.name, "fps": fps, "vocabulary": rename,
                    "clips": written},
        "rest": {"name": names["rest"], "clips": [{"group": r.group, "source": str(r.path.resolve()),
                                                   "label": ds.word(r.label)} for r in rest]},
        "skipped": ds.problems,
    }
    atomic_write_text(tmp / "README.md", _readme(record, lay.description))
    credit = f"derived from {ds.name}: {ds.attribution}\n" if ds.attribution else None
    if credit:  # the source's licence asks for its attribution on adaptations too
        atomic_write_text(tmp / ATTRIBUTION_FILES[0], credit)
    tmp.rename(root / names["derived"])

    rest_dir = root / names["rest"]
    rest_dir.mkdir()
    if credit:
        atomic_write_text(rest_dir / ATTRIBUTION_FILES[0], credit)
    rows = ["path,label,group"] + [f"{_csv(c['source'])},{_csv(c['label'])},{_csv(c['group'])}"
                                   for c in record["rest"]["clips"]]
    atomic_write_text(rest_dir / "manifest.csv", "\n".join(rows) + "\n")
    atomic_write_text(root / "split.json", json.dumps(record, indent=2) + "\n")
    return record


def _csv(v: str) -> str:
    return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n') else v


def _readme(rec: dict, layout_description: str) -> str:
    d = rec["derived"]
    words = ", ".join(f"{k} -> {v}" for k, v in d["vocabulary"].items())
    return (f"# {d['name']}\n\nDerived by `eai derive` from {rec['dataset']} ({rec['source']}), seed {rec['seed']}.\n\n"
            f"- {len(d['clips'])} clips: {rec['fraction']:.0%} of the groups of each of the labels {words} "
            f"(chosen at random per label), never the same clip or group as the companion set "
            f"{rec['rest']['name']} ({len(rec['rest']['clips'])} clips, the original files by path).\n"
            f"- Each clip was read, put on the canonical skeleton, resampled to {d['fps']:g} fps and re-expressed "
            f"in the {d['layout']} layout ({layout_description}); joints the layout lacks are gone.\n"
            f"- Labels are written in this set's own vocabulary: {words}.\n"
            f"- The source's licence applies to this derived data; keep it out of public repositories.\n")
