"""Datasets on disk: label folders, CSV manifests, the Bandai layout; label normalisation; loading clips."""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from eai.errors import DatasetError, EaiError
from eai.io import READ_SUFFIXES, read_motion
from eai.io.bvh import read_bvh_many
from eai.skeleton.unify import UnifiedMotion, unify

# Spellings of one emotion across datasets -> the name eai uses.
SYNONYMS = {
    "anger": "angry", "mad": "angry", "rage": "angry",
    "joy": "happy", "happiness": "happy", "joyful": "happy", "glad": "happy",
    "sadness": "sad", "sorrow": "sad", "unhappy": "sad",
    "fear": "fearful", "afraid": "fearful", "scared": "fearful",
    "disgust": "disgusted", "surprise": "surprised",
    "normal": "neutral", "none": "neutral",
    "pride": "proud", "shame": "ashamed",
    "notconfident": "not-confident", "unconfident": "not-confident", "insecure": "not-confident",
    "tiredness": "tired", "exhausted": "tired", "fatigue": "tired", "fatigued": "tired",
    "relief": "relieved", "calm": "relaxed",
}
BANDAI_EMOTIONS = ("normal", "happy", "sad", "angry", "proud", "not-confident", "tired")
# CC BY-NC 4.0 asks for this wherever the data or results derived from it are shown (figures too)
BANDAI_ATTRIBUTION = ("Bandai-Namco-Research-Motiondataset, Kobayashi et al., arXiv 2306.08861; "
                      "CC BY-NC 4.0, non-commercial use only")
# a dataset of another source names its own: the first line of one of these files at its root
ATTRIBUTION_FILES = ("ATTRIBUTION", "ATTRIBUTION.txt", "ATTRIBUTION.md")


def normalise_label(label: str) -> str:
    """Case and separators folded, synonyms unified: 'Anger' and 'angry' -> 'angry', 'Joy' -> 'happy'."""
    key = re.sub(r"[\s_]+", "-", str(label).strip().lower())
    return SYNONYMS.get(key.replace("-", ""), SYNONYMS.get(key, key))


@dataclass
class ClipRef:
    path: Path
    label: str
    group: str


@dataclass
class Dataset:
    """Clips with labels and groups (windows of one group never straddle a train/test split)."""

    name: str
    root: Path
    kind: str
    task: str
    clips: list[ClipRef]
    problems: list[str] = field(default_factory=list)
    # what the readers repaired or guessed in clips that were read (up axis, gaps, timestamps), per clip
    repairs: list[str] = field(default_factory=list)
    # labelled clips outside the task (Bandai's character styles for the emotion task): they may serve
    # pre-training, and are never test clips of the task
    auxiliary: list[ClipRef] = field(default_factory=list)
    # the dataset's own word for each unified label ('angry' -> 'anger' in a set that says 'anger')
    vocab: dict[str, str] = field(default_factory=dict)
    # what its licence asks to be shown with it and with results drawn from it ("" when nothing is known):
    # BANDAI_ATTRIBUTION for the Bandai layout, else the first line of an ATTRIBUTION file at its root
    attribution: str = ""

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.clips})

    def word(self, label: str) -> str:
        """The dataset's own word for a unified label."""
        return self.vocab.get(label, label)


def _bandai(root: Path, task: str | None) -> Dataset:
    cfg = root / "cfg"
    styles = cfg.joinpath("style_label.txt").read_text().split()
    contents = cfg.joinpath("content_label.txt").read_text().split() if cfg.joinpath("content_label.txt").exists() else []
    prefix = lambda s: s.split("_", 1)[1] if s.startswith("dataset-") and "_" in s else s  # noqa: E731
    styles = [prefix(s) for s in styles]
    contents = [prefix(s) for s in contents]
    task = task or "emotion"
    if task not in ("emotion", "style", "content"):
        raise DatasetError(f"unknown task {task!r} for a Bandai dataset; use emotion, style or content", root)
    clips, aux, problems = [], [], []
    data = root / "data" if (root / "data").is_dir() else root
    for bvh in sorted(data.glob("*.bvh")):
        meta = bvh.with_suffix(".json")
        try:
            info = json.loads(meta.read_text())
            style, content = styles[int(info["style"])], contents[int(info["content"])] if contents else ""
        except (OSError, ValueError, KeyError, IndexError) as e:
            problems.append(f"{meta}: no usable label file ({type(e).__name__})")
            continue
        if task == "emotion" and style not in BANDAI_EMOTIONS:
            aux.append(ClipRef(bvh, normalise_label(style), bvh.stem))
            continue
        label = {"emotion": style, "style": style, "content": content}[task]
        clips.append(ClipRef(bvh, normalise_label(label), bvh.stem))
    return Dataset(root.name, root, "bandai", task, clips, problems, auxiliary=aux,
                   vocab=_vocab(styles if task != "content" else contents), attribution=BANDAI_ATTRIBUTION)


def _folders(root: Path) -> Dataset:
    clips = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(sub.rglob("*")):
            if f.is_file() and f.suffix.lower() in READ_SUFFIXES:
                clips.append(ClipRef(f, normalise_label(sub.name), str(f.relative_to(root).with_suffix(""))))
    return Dataset(root.name, root, "folders", "emotion", clips, vocab=_vocab(sub.name for sub in root.iterdir()
                                                                              if sub.is_dir()))


def _manifest(path: Path) -> Dataset:
    clips, problems, words = [], [], []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    for n, row in enumerate(rows, 2 if rows else 1):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            raise DatasetError("each manifest row is path,label[,group]", path, n)
        p = Path(row[0].strip())
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            problems.append(f"{path}:{n}: {p} not found")
            continue
        group = row[2].strip() if len(row) > 2 and row[2].strip() else str(p.with_suffix(""))
        clips.append(ClipRef(p, normalise_label(row[1]), group))
        words.append(row[1])
    name = path.parent.name if path.name == "manifest.csv" else path.stem
    return Dataset(name, path.parent, "manifest", "emotion", clips, problems, vocab=_vocab(words))


def _vocab(words) -> dict[str, str]:
    """Unified label -> the dataset's own spelling (the first one met, lower case)."""
    out: dict[str, str] = {}
    for w in words:
        out.setdefault(normalise_label(w), str(w).strip().lower())
    return out


def open_dataset(path: str | Path, task: str | None = None) -> Dataset:
    """A dataset from a folder of label folders, a CSV manifest, or the Bandai layout (auto-detected)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError("no such dataset folder or manifest", p)
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DatasetError("a dataset is a folder or a CSV manifest (path,label[,group])", p)
        ds = _manifest(p)
    elif (p / "cfg" / "style_label.txt").is_file():
        ds = _bandai(p, task)
    elif (p / "manifest.csv").is_file():
        ds = _manifest(p / "manifest.csv")
    else:
        ds = _folders(p)
    if task and ds.kind != "bandai" and task != "emotion":
        raise DatasetError(f"task {task!r} exists only for the Bandai layout; this dataset has its folder labels", p)
    if not ds.attribution:
        ds.attribution = read_attribution(ds.root)
    if not ds.clips:
        raise DatasetError("no labelled clips found: expected DIR/<label>/<clip>, a CSV manifest "
                           "path,label[,group], or the Bandai layout (cfg/style_label.txt)", p)
    return ds


def read_attribution(root: Path) -> str:
    """The first non-empty line of the ATTRIBUTION file at a dataset's root ("" without one)."""
    for name in ATTRIBUTION_FILES:
        f = Path(root) / name
        if f.is_file():
            try:
                lines = f.read_text(errors="replace").splitlines()
            except OSError:
                return ""
            return next((ln.strip().lstrip("#").strip() for ln in lines if ln.strip()), "")
    return ""


def load_clips(ds: Dataset, fps: float = 30.0, progress: bool = True, refs: list[ClipRef] | None = None
               ) -> list[UnifiedMotion]:
    """Read and unify every clip (or the given refs); one that cannot be read is skipped and noted in
    ds.problems."""
    out: list[UnifiedMotion] = []
    refs = ds.clips if refs is None else refs
    bvh = [c for c in refs if c.path.suffix.lower() == ".bvh"]
    other = [c for c in refs if c.path.suffix.lower() != ".bvh"]
    bar = tqdm(total=len(refs), desc=f"reading {ds.name}", unit="clip", disable=not progress, leave=False)
    for start in range(0, len(bvh), 64):  # batched: one parse and one FK pass per batch
        batch = bvh[start:start + 64]
        for ref, m in zip(batch, read_bvh_many([c.path for c in batch])):
            _add(out, ds, ref, m, fps)
            bar.update()
    for ref in other:
        try:
            m = read_motion(ref.path)
        except EaiError as e:
            m = e
        _add(out, ds, ref, m, fps)
        bar.update()
    bar.close()
    if not out:
        raise DatasetError("no clip of the dataset could be read: " + "; ".join(ds.problems[:3]), ds.root)
    return out


def _add(out: list, ds: Dataset, ref: ClipRef, m, fps: float) -> None:
    if isinstance(m, EaiError):
        ds.problems.append(m.format())
        return
    try:
        u = unify(m, fps=fps)
    except EaiError as e:
        ds.problems.append(e.format())
        return
    u.label, u.source, u.group = ref.label, str(ref.path), ref.group
    ds.repairs.extend(f"{ref.path}: {n}" for n in m.meta.get("notes", []))
    out.append(u)
