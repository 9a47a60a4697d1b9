"""Datasets on disk, label normalisation, the protocol's folds, and the baseline on held-out clips."""
from collections import Counter

import numpy as np
import pytest

from eai.encoder.forest import DescriptorForest
from eai.data.datasets import load_clips, normalise_label, open_dataset
from eai.data.splits import folds
from eai.data.windows import window_set
from eai.errors import DatasetError
from eai.metrics import metrics


def protocol_windows(clips):
    """The protocol's windows as cut (the baseline's view), with descriptors."""
    return window_set(clips, sorted({c.label for c in clips}), face=False)


@pytest.mark.parametrize("raw,want", [("Anger", "angry"), ("angry", "angry"), ("JOY", "happy"),
                                      ("happy", "happy"), ("Sadness", "sad"), ("normal", "neutral"),
                                      ("Not Confident", "not-confident"), ("not_confident", "not-confident")])
def test_labels_normalised(raw, want):
    assert normalise_label(raw) == want


def test_label_folders(synth_dir):
    ds = open_dataset(synth_dir)
    assert ds.kind == "folders" and len(ds.labels) == 7 and all(n == 6 for n in Counter(c.label for c in ds.clips).values())
    clips = load_clips(ds, progress=False)
    assert len(clips) == 42 and not ds.problems
    assert {c.layout for c in clips} == {"bandai22", "kinect25", "gait16"}


def test_manifest_with_groups_and_problems(synth_dir, tmp_path):
    files = sorted(synth_dir.rglob("*.npz"))[:4]
    lines = ["path,label,group"] + [f"{f},{'Joy' if i % 2 else 'sadness'},actor{i // 2}" for i, f in enumerate(files)]
    lines.append("missing.bvh,anger,x")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    ds = open_dataset(tmp_path / "m.csv")
    assert ds.labels == ["happy", "sad"] and len(ds.clips) == 4 and len(ds.problems) == 1
    assert [c.group for c in ds.clips] == ["actor0", "actor0", "actor1", "actor1"]


def test_bad_clip_is_reported_not_fatal(synth_dir, tmp_path):
    import shutil

    d = tmp_path / "ds"
    shutil.copytree(synth_dir, d)
    (d / "sad" / "broken.bvh").write_text("HIERARCHY\nROOT x\n{\n")
    ds = open_dataset(d)
    clips = load_clips(ds, progress=False)
    assert len(clips) == 42 and len(ds.problems) == 1 and "broken.bvh" in ds.problems[0]


def test_empty_or_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no labelled clips"):
        open_dataset(tmp_path)


def test_folds_are_grouped_and_stratified(synth_dir):
    w = protocol_windows(load_clips(open_dataset(synth_dir), progress=False))
    seen = np.zeros(len(w), int)
    for train, test in folds(w.y, w.group, 3, seed=0):
        assert not set(w.group[train]) & set(w.group[test])
        assert set(w.y[test]) == set(range(7))
        seen[test] += 1
    assert (seen == 1).all()  # every window is tested exactly once


def test_baseline_beats_chance_on_held_out_clips(synth_dir):
    clips = load_clips(open_dataset(synth_dir), progress=False)
    w, labels = protocol_windows(clips), sorted({c.label for c in clips})
    accs = []
    for train, test in folds(w.y, w.group, 3, seed=0):
        p = DescriptorForest(0, trees=100).fit(w.desc[train], w.y[train]).predict_proba(w.desc[test], len(labels))
        accs.append(metrics(w.y[test], p, w.clip[test], labels)["window_accuracy"])
    assert np.mean(accs) > 3 / len(labels)  # chance is 1/7


def test_bandai_layout(bandai):
    ds = open_dataset(bandai)
    assert ds.kind == "bandai" and len(ds.clips) == 86 and Counter(c.label for c in ds.clips)["neutral"] == 20
    # the 8 character styles (11 clips each) serve pre-training of the emotion task, never as its clips
    assert len(ds.auxiliary) == 88 and not {c.label for c in ds.auxiliary} & set(ds.labels) and not ds.repairs
    assert len(open_dataset(bandai, "style").labels) == 15
    with pytest.raises(DatasetError, match="unknown task"):
        open_dataset(bandai, "colour")
