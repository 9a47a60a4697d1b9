"""Several datasets as one "skeleton language" (the paper's unified skeleton tokens).

Every clip is already on the canonical skeleton with a joint-presence mask, at one frame rate and cut into
windows of one length; what differs between datasets is kept here: each keeps its own labels (unified by
name, so 'anger' and 'angry' are one class) and its own words for them, a tag naming the dataset and its
skeleton for the prompt, and a sampling share so that a small set is not drowned by a large one.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eai.data import Dataset, load_clips, open_dataset
from eai.errors import EaiError
from eai.skeleton.unify import UnifiedMotion

MIXES = ("equal", "sqrt", "size")


@dataclass
class Part:
    """One dataset of a (joint) run."""

    name: str
    path: str
    labels: list[str]  # unified labels, sorted
    vocab: dict[str, str]  # unified label -> the dataset's own word
    layout: str  # the most common source layout of its clips
    clips: list[UnifiedMotion]
    dataset: Dataset | None = None

    @property
    def words(self) -> list[str]:
        return [self.vocab.get(l, l) for l in self.labels]

    @property
    def tag(self) -> str:
        """What the prompt says of the dataset and its skeleton."""
        return f"{self.name}; {self.layout} skeleton"

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "labels": self.labels, "words": self.words,
                "layout": self.layout, "tag": self.tag, "clips": len(self.clips)}


def open_parts(paths: list[str], task: str | None = None, progress: bool = True) -> list[Part]:
    """Open and read every dataset; names made unique; the same dataset twice is refused."""
    resolved = [str(Path(p).resolve()) for p in paths]
    dup = [p for p, n in Counter(resolved).items() if n > 1]
    if dup:
        raise EaiError("the same dataset is given twice", dup[0])
    parts, seen = [], Counter()
    for p in paths:
        ds = open_dataset(p, task)
        clips = load_clips(ds, progress=progress)
        seen[ds.name] += 1
        name = ds.name if seen[ds.name] == 1 else f"{ds.name}-{seen[ds.name]}"
        layout = Counter(c.layout for c in clips).most_common(1)[0][0]
        labels = sorted({c.label for c in clips})
        parts.append(Part(name, str(Path(p).resolve()), labels, {l: ds.word(l) for l in labels}, layout, clips, ds))
    return parts


def joint_labels(parts: list[Part]) -> list[str]:
    """The union of the datasets' unified labels."""
    return sorted({l for p in parts for l in p.labels})


def label_mask(parts: list, labels: list[str]) -> np.ndarray:
    """(n_datasets, n_labels) bool: which labels of the joint set each dataset (anything with .labels) has."""
    return np.array([[l in p.labels for l in labels] for p in parts], bool)


def local_index(labels: list[str], part_labels: list[str]) -> np.ndarray:
    """For each label of the joint set, its index among a dataset's labels (-1 where it has none): maps joint
    label indices y to the dataset's own, as local_index(...)[y]."""
    return np.array([part_labels.index(l) if l in part_labels else -1 for l in labels])


def mix_weights(ds: np.ndarray, n_parts: int, mix: str = "equal") -> np.ndarray:
    """Per-window sampling probabilities giving dataset d a share of each epoch proportional to 1 (equal),
    sqrt(n_d) (sqrt) or n_d (size: plain shuffling)."""
    if mix not in MIXES:
        raise EaiError(f"unknown --mix {mix!r}; choose from {', '.join(MIXES)}")
    n = np.bincount(ds, minlength=n_parts).astype(float)
    share = {"equal": (n > 0).astype(float), "sqrt": np.sqrt(n), "size": n}[mix]
    share = share / share.sum()
    p = share[ds] / np.maximum(n[ds], 1)
    return p / p.sum()


def part_for(parts: list, layout: str, name: str | None = None):
    """The dataset of a joint run (anything with .name and .layout) a clip belongs to: the one named, else the
    only one with the clip's layout."""
    names = ", ".join(p.name for p in parts)
    if name is not None:
        hit = [p for p in parts if p.name == name]
        if not hit:
            raise EaiError(f"the run has no dataset {name!r}; it has {names}")
        return hit[0]
    if len(parts) == 1:
        return parts[0]
    hit = [p for p in parts if p.layout == layout]
    if len(hit) == 1:
        return hit[0]
    which = "none of them has that skeleton" if not hit else "it could be " + " or ".join(p.name for p in hit)
    raise EaiError(f"the run was trained on several datasets ({names}) and a {layout} clip could belong to "
                   f"more than one ({which}); say which with --dataset NAME")
