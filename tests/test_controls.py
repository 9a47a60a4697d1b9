"""The plain ST-GCN control and `bench recognition --controls --compare-init`: the same folds, the same windows."""
import dataclasses

import numpy as np
import pytest
import torch

from eai.data.datasets import load_clips, open_dataset
from eai.data.splits import folds
from eai.data.windows import window_set
from eai.encoder.model import GraphConv, partitioned_adjacency
from eai.encoder.stgcn import STGCN, STGCNConfig, predict_stgcn
from eai.schedules import CONTROL_SCHEDULES, control_schedule
from eai.skeleton.registry import canonical
from eai.train.stgcn import train_stgcn


def test_edge_importance_scales_the_skeleton_graph():
    torch.manual_seed(0)
    A = torch.from_numpy(partitioned_adjacency())
    gc = GraphConv(4, 3, A, edges="importance")
    assert not hasattr(gc, "B") and torch.equal(gc.adjacency(), A)  # starts at the skeleton's graph
    with torch.no_grad():
        gc.M.uniform_(0, 2)
    x = torch.randn(2, 4, 5, A.shape[-1])
    y = gc.conv(x).reshape(2, A.shape[0], 3, 5, A.shape[-1])
    torch.testing.assert_close(gc(x), torch.einsum("pqk,npctk->nctq", A * gc.M, y), rtol=1e-5, atol=1e-5)
    assert (gc.adjacency()[A == 0] == 0).all()  # importance weighs the skeleton's edges, adds none


def test_stgcn_reads_joints_and_velocities():
    model = STGCN(STGCNConfig(n_classes=4, base_channels=8, frame_step=2)).eval()
    raw = np.random.default_rng(0).normal(size=(3, 60, canonical().n, 3)).astype(np.float32)
    x = model.prepare(raw, np.ones((3, canonical().n), bool))
    assert x.shape == (3, 6, 30, canonical().n)  # 3 positions + 3 velocities, every second frame
    assert model(x).shape == (3, 4)
    assert {s.epochs for s in (CONTROL_SCHEDULES["gpu"], CONTROL_SCHEDULES["paper"])} == {40}
    assert control_schedule("cpu", epochs=3).epochs == 3


@pytest.mark.slow
def test_stgcn_beats_chance_on_held_out_clips(synth_dir):
    clips = load_clips(open_dataset(synth_dir), progress=False)
    labels = sorted({c.label for c in clips})
    w = window_set(clips, labels, descriptors=False, face=False)
    train, test = folds(w.y, w.group, 3, seed=0)[0]
    tr = window_set([clips[i] for i in sorted(set(w.clip[train]))], labels, 60, 30, False)
    te = window_set([clips[i] for i in sorted(set(w.clip[test]))], labels, 60, 30, False)
    model, hist = train_stgcn(tr, len(labels), dataclasses.replace(CONTROL_SCHEDULES["smoke"], epochs=8),
                              progress=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    acc = (predict_stgcn(model, te).argmax(1) == te.y).mean()
    assert acc > 2.5 / len(labels), acc  # chance is 1/7


@pytest.mark.slow
def test_bench_recognition_trains_controls_on_the_same_folds(synth_dir, capsys):
    from eai.benchmarks.recognition import bench_recognition, recognition_table

    r = bench_recognition(str(synth_dir), None, n_folds=2, progress=False, schedule_name="smoke", epochs=1,
                          controls=True, compare_init=True)
    assert list(r["models"]) == ["encoder", "baseline", "encoder_scratch", "stgcn", "encoder+baseline"]
    runs = {name: [(f["seed"], f["fold"]) for f in m["runs"]] for name, m in r["models"].items()}
    assert all(v == [(0, 0), (0, 1)] for v in runs.values())
    for m in r["models"].values():  # every model scored on the same test windows, each once
        assert sum(map(sum, m["confusion"])) == r["windows"]
    assert r["encoder_setup"]["control"]["schedule"]["epochs"] == 1
    assert r["encoder_setup"]["control"]["network"]["base_channels"] == CONTROL_SCHEDULES["smoke"].base_channels
    text = recognition_table(r)
    assert "stgcn" in text and "encoder_scratch" in text
