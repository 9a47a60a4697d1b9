"""Several datasets as one "skeleton language" (the paper's unified skeleton tokens).

Every clip is already on the canonical skeleton with a joint-presence mask, at one frame rate and cut into
windows of one length; what differs between datasets is kept here: each keeps its own labels (unified by
name, so 'anger' and 'angry' are one class) and its own words for them, a tag naming the dataset and its
skeleton for the prompt, and a sampling share so that a small set is not drowned by a large one.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from eai.data.datasets import Dataset, load_clips, open_dataset
from eai.errors import EaiError
from eai.skeleton.unify import UnifiedMotion

MIXES = ("equal", "sqrt", "size")


@dataclass
class RunDataset:
    """One dataset of a run: what the run's manifest records of it and what its prompts say.

    name (unique within the run), path (resolved), kind (bandai, folders, manifest), layout (its clips' most
    common source skeleton), labels (unified names, sorted; a subset of the run's), words (the dataset's own
    word for each), tag (what the prompt says of the dataset and its skeleton), n_clips, n_train_clips,
    held_out_groups (clip groups kept out of training), reference (its neutral baseline and the mean of each
    label's clips, eai.llm.evidence.Reference.to_dict; set by the LLM stage), layouts and fps (every source
    skeleton layout and frame rate among its clips: a clip outside them is said to be new to the run). `clips`
    and `source` (the unified clips and the
    dataset on disk) are there only while it is read, and are not saved.
    """

    name: str
    path: str
    kind: str
    layout: str
    labels: list[str]
    words: list[str]
    tag: str
    n_clips: int = 0
    n_train_clips: int = 0
    held_out_groups: list[str] = field(default_factory=list)
    reference: dict | None = None
    layouts: list[str] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    clips: list[UnifiedMotion] = field(default_factory=list, repr=False, compare=False, metadata={"saved": False})
    source: Dataset | None = field(default=None, repr=False, compare=False, metadata={"saved": False})

    def word(self, label: str) -> str:
        """The dataset's own word for a unified label."""
        return self.words[self.labels.index(label)]

    def unseen(self, layout: str, fps: float) -> list[str]:
        """What of a clip (its source layout and frame rate) none of this dataset's clips had: notices, one line
        each, empty when both were seen (frame rates within 1 %)."""
        out = []
        if layout not in (self.layouts or [self.layout]):
            out.append(f"its skeleton ({layout}) is not one this run was trained on "
                       f"({', '.join(self.layouts or [self.layout])}): the answer may not hold")
        if self.fps and fps > 0 and not any(abs(fps - f) <= 0.01 * f for f in self.fps):
            out.append(f"its frame rate ({fps:g} fps) is not one this run was trained on "
                       f"({', '.join(f'{f:g}' for f in self.fps)} fps; every clip is resampled to 30 fps)")
        return out

    @staticmethod
    def from_dict(d: dict) -> "RunDataset":
        """A dataset record as manifest.json saves it (every saved field, no other: KeyError, TypeError)."""
        return RunDataset(**{f.name: d[f.name] for f in fields(RunDataset) if f.metadata.get("saved", True)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}

    def is_moved_copy(self, name: str, groups: set[str]) -> bool:
        """Whether a dataset named `name` with clip groups `groups`, found at another path than this record,
        is this dataset moved or copied (a run trained on another machine): the same name, holding every
        held-out clip."""
        return self.name == name and bool(self.held_out_groups) and set(self.held_out_groups) <= groups


def open_datasets(paths: list[str], task: str | None = None, progress: bool = True) -> list[RunDataset]:
    """Open and read every dataset (its clips unified); names made unique; the same dataset twice is refused."""
    resolved = [str(Path(p).resolve()) for p in paths]
    dup = [p for p, n in Counter(resolved).items() if n > 1]
    if dup:
        raise EaiError("the same dataset is given twice", dup[0])
    out, seen = [], Counter()
    for p, path in zip(paths, resolved):
        ds = open_dataset(p, task)
        clips = load_clips(ds, progress=progress)
        seen[ds.name] += 1
        name = ds.name if seen[ds.name] == 1 else f"{ds.name}-{seen[ds.name]}"
        layout = Counter(c.layout for c in clips).most_common(1)[0][0]
        labels = sorted({c.label for c in clips})
        out.append(RunDataset(name, path, ds.kind, layout, labels, [ds.word(l) for l in labels],
                              f"{name}; {layout} skeleton", len(clips), clips=clips, source=ds,
                              layouts=sorted({c.layout for c in clips}),
                              fps=sorted({round(c.source_fps, 3) for c in clips if c.source_fps > 0})))
    return out


def joint_labels(datasets: list[RunDataset]) -> list[str]:
    """The union of the datasets' unified labels."""
    return sorted({l for d in datasets for l in d.labels})


def label_mask(datasets: list[RunDataset], labels: list[str]) -> np.ndarray:
    """(n_datasets, n_labels) bool: which labels of the joint set each dataset has."""
    return np.array([[l in d.labels for l in labels] for d in datasets], bool)


def local_index(labels: list[str], own_labels: list[str]) -> np.ndarray:
    """For each label of the joint set, its index among a dataset's labels (-1 where it has none): maps joint
    label indices y to the dataset's own, as local_index(...)[y]."""
    return np.array([own_labels.index(l) if l in own_labels else -1 for l in labels])


def mix_weights(dataset_idx: np.ndarray, n_datasets: int, mix: str = "equal") -> np.ndarray:
    """Per-window sampling probabilities giving dataset d a share of each epoch proportional to 1 (equal),
    sqrt(n_d) (sqrt) or n_d (size: plain shuffling)."""
    if mix not in MIXES:
        raise EaiError(f"unknown --mix {mix!r}; choose from {', '.join(MIXES)}")
    n = np.bincount(dataset_idx, minlength=n_datasets).astype(float)
    share = {"equal": (n > 0).astype(float), "sqrt": np.sqrt(n), "size": n}[mix]
    share = share / share.sum()
    p = share[dataset_idx] / np.maximum(n[dataset_idx], 1)
    return p / p.sum()


def dataset_for_clip(datasets: list[RunDataset], layout: str, name: str | None = None) -> RunDataset:
    """The dataset of a run a clip is read as: the one named, else the only one, else the only one with the
    clip's layout; EaiError naming --dataset when that cannot be told."""
    names = ", ".join(d.name for d in datasets)
    if name is not None:
        hit = [d for d in datasets if d.name == name]
        if not hit:
            raise EaiError(f"the run has no dataset {name!r}; it has {names}")
        return hit[0]
    if len(datasets) == 1:
        return datasets[0]
    hit = [d for d in datasets if d.layout == layout]
    if len(hit) == 1:
        return hit[0]
    which = "none of them has that skeleton" if not hit else "it could be " + " or ".join(d.name for d in hit)
    raise EaiError(f"the run was trained on several datasets ({names}) and a {layout} clip could belong to "
                   f"more than one ({which}); say which with --dataset NAME")
