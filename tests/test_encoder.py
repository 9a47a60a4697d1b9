"""The encoder: graph, mask, training beats chance on held-out clips, exact reload, resume after a kill."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from eai.data.datasets import load_clips, open_dataset
from eai.data.splits import folds
from eai.data.windows import face_windows, window_set
from eai.encoder import EncoderConfig, SkeletonEncoder, predict_proba
from eai.encoder.model import partitioned_adjacency
from eai.encoder.streams import augment, make_streams
from eai.errors import EaiError
from eai.metrics import metrics
from eai.run import FORMAT, MANIFEST, Manifest, RunConfig, load_run, save_weights
from eai.schedules import ENCODER_SCHEDULES
from eai.skeleton.registry import canonical
from eai.train.encoder import train_encoder

TINY = EncoderConfig(channels=[16, 16, 32, 32], strides=[1, 2, 1, 2], dropout=0.1)


@pytest.fixture(scope="module")
def synth_clips(synth_dir):
    return load_clips(open_dataset(synth_dir), progress=False)


def test_adjacency_partitions():
    A = partitioned_adjacency()
    can = canonical()
    assert A.shape == (3, can.n, can.n)
    np.testing.assert_allclose(A.sum(axis=(0, 2)), 1.0, atol=1e-6)  # each joint averages its neighbourhood
    p = can.parents[can.index("l_elbow")]
    assert A[1, can.index("l_elbow"), p] > 0 and A[2, p, can.index("l_elbow")] > 0


@pytest.mark.parametrize("channels_last", [True, False])
def test_graph_conv_is_the_partitioned_sum_over_neighbours(channels_last):
    from eai.encoder.model import GraphConv

    torch.manual_seed(0)
    A = torch.from_numpy(partitioned_adjacency())
    P, K = A.shape[0], A.shape[-1]
    gc = GraphConv(5, 4, A)
    with torch.no_grad():
        gc.B.normal_(0, 0.1)  # a learned adjacency on top of the skeleton's
    x = torch.randn(2, 5, 7, K)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = gc.conv(x).reshape(2, P, 4, 7, K)  # channel p*C + c is partition p's output channel c
    # out[n, c, t, q] = sum over partitions p and joints k of (A + B)[p, q, k] * y[n, p, c, t, k]
    ref = torch.einsum("pqk,npctk->nctq", gc.A + gc.B, y)
    torch.testing.assert_close(gc(x), ref, rtol=1e-5, atol=1e-5)
    # with B and the bias at zero, a signal at the wrist reaches only the wrist, its parent and its children
    with torch.no_grad():
        gc.B.zero_()
        gc.conv.bias.zero_()
    can = canonical()
    wrist = can.index("l_wrist")
    x2 = torch.zeros(1, 5, 1, K)
    x2[..., wrist] = 1.0
    hit = gc(x2).abs().sum((0, 1, 2)) > 0
    near = {wrist, can.parents[wrist]} | {k for k, q in enumerate(can.parents) if q == wrist}
    assert set(np.flatnonzero(hit.numpy())) == near


def test_absent_joints_change_nothing():
    torch.manual_seed(0)
    model = SkeletonEncoder(dataclasses.replace(TINY, n_classes=3)).eval()
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(2, 60, canonical().n, 3)).astype(np.float32)
    mask = np.ones((2, canonical().n), bool)
    absent = canonical().index("l_toe")
    mask[:, absent] = False
    x, m = model.prepare(raw, mask)
    feats, logits, _ = model(x, m)
    assert torch.all(feats[:, :, :, absent] == 0)
    raw2 = raw.copy()
    raw2[:, :, absent] += 5.0
    _, logits2, _ = model(*model.prepare(raw2, mask))
    torch.testing.assert_close(logits, logits2)


def test_streams_and_facing():
    can = canonical()
    w = np.zeros((1, 4, can.n, 3), np.float32)
    w[:, :, can.index("l_hip")] = [0, 0, 0.1]  # left hip at +z: the body faces -x
    w[:, :, can.index("r_hip")] = [0, 0, -0.1]
    w[:, :, can.index("head")] = [0, 1, 0]
    w[:, 1:, can.index("head")] += [0.5, 0, 0]
    mask = np.ones((1, can.n), bool)
    f = face_windows(w, mask)
    np.testing.assert_allclose(f[0, 0, can.index("l_hip")], [0.1, 0, 0], atol=1e-6)
    x = make_streams(f, mask)
    assert x.shape == (1, 9, 4, can.n)
    head = can.index("head")
    np.testing.assert_allclose(x[0, 3:6, 0, head], f[0, 0, head] - f[0, 0, can.parents[head]], atol=1e-6)
    np.testing.assert_allclose(x[0, 6:9, 0, head], f[0, 1, head] - f[0, 0, head], atol=1e-6)
    a, m = augment(f, mask, np.random.default_rng(0), drop_p=0.5)
    assert a.shape == f.shape and m[0, can.index("pelvis")] and m.sum() < mask.sum()


@pytest.mark.slow
def test_short_training_beats_chance_on_held_out_clips(synth_clips):
    labels = sorted({c.label for c in synth_clips})
    w = window_set(synth_clips, labels, descriptors=False, face=False)
    cfg = dataclasses.replace(ENCODER_SCHEDULES["smoke"], epochs=12, warmup=1, milestones=[9], train_stride=15,
                              descriptors=False)
    accs = []
    for train, test in folds(w.y, w.group, 3, seed=0)[:2]:
        tr = window_set([synth_clips[i] for i in sorted(set(w.clip[train]))], labels, 60, cfg.train_stride, False)
        te = window_set([synth_clips[i] for i in sorted(set(w.clip[test]))], labels, 60, 30, False)
        model, hist = train_encoder(tr, len(labels), cfg, EncoderConfig(channels=[32, 32, 64, 64],
                                    strides=[1, 2, 1, 2]), progress=False)
        accs.append(metrics(te.y, predict_proba(model, te), te.clip, labels)["window_accuracy"])
    assert np.mean(accs) > 2.5 / len(labels), accs  # chance is 1/7 = 0.14


def _tiny_train(clips, labels, checkpoint=None, log=None, epochs=3):
    ws = window_set(clips, labels, 60, 30, descriptors=True)
    cfg = dataclasses.replace(ENCODER_SCHEDULES["smoke"], epochs=epochs, warmup=1, milestones=[2], batch=16)
    return ws, train_encoder(ws, len(labels), cfg, TINY, checkpoint=checkpoint, progress=False, log=log)


def _save_run(folder, model, labels):
    save_weights(model, folder / "encoder.safetensors")
    Manifest(config=RunConfig(data=["synth"], out=str(folder)), labels=labels, task="emotion", datasets=[],
             encoder=model.cfg, train=ENCODER_SCHEDULES["smoke"], canonical_joints=list(canonical().names)).save(folder)


def test_saved_run_reloads_to_identical_logits(synth_clips, tmp_path):
    labels = sorted({c.label for c in synth_clips})
    ws, (model, _) = _tiny_train(synth_clips[:14], labels)
    _save_run(tmp_path, model, labels)
    run = load_run(tmp_path)
    x, m = model.prepare(ws.raw, ws.mask)
    d = torch.from_numpy(ws.model_desc)
    with torch.no_grad():
        assert torch.equal(model(x, m, d)[1], run.encoder(x, m, d)[1])
    np.testing.assert_array_equal(predict_proba(model, ws), predict_proba(run.encoder, ws))


def test_a_run_of_another_manifest_format_is_refused_in_one_line(synth_clips, tmp_path):
    labels = sorted({c.label for c in synth_clips})
    _, (model, _) = _tiny_train(synth_clips[:6], labels, epochs=1)
    _save_run(tmp_path, model, labels)
    raw = json.loads((tmp_path / MANIFEST).read_text())
    assert raw["format"] == FORMAT
    old = {k: v for k, v in raw.items() if k != "format"}  # a manifest of eai before the format field
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    with pytest.raises(EaiError, match=rf"manifest format 1, .*reads format {FORMAT}"):
        load_run(tmp_path)
    del raw["encoder"]["temporal_kernel"]  # a saved field missing: never filled from today's defaults
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(EaiError, match="does not fit manifest format"):
        load_run(tmp_path)


def test_descriptor_expert_is_fused_as_a_geometric_mean():
    from eai.encoder.forest import late_fusion

    torch.manual_seed(0)
    model = SkeletonEncoder(dataclasses.replace(TINY, n_classes=3, n_descriptors=4)).eval()
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5, 60, canonical().n, 3)).astype(np.float32)
    mask = np.ones((5, canonical().n), bool)
    d = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
    x, m = model.prepare(raw, mask)
    with torch.no_grad():
        _, logits, (graph, desc) = model(x, m, d)
        # the same fusion as the bench's encoder+baseline row, of the two experts' probabilities
        want = late_fusion(torch.softmax(graph, 1).numpy(), torch.softmax(desc, 1).numpy())
        np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), want, rtol=1e-5, atol=1e-6)
        # each expert sees only its own input
        _, _, (graph2, desc2) = model(*model.prepare(raw + 0.3, mask), d)
        _, _, (graph3, desc3) = model(x, m, d + 1.0)
    torch.testing.assert_close(desc2, desc)
    assert not torch.allclose(graph2, graph)
    torch.testing.assert_close(graph3, graph)
    assert not torch.allclose(desc3, desc)


def test_an_epoch_draws_its_share_of_the_crops(synth_clips):
    labels = sorted({c.label for c in synth_clips})
    ws = window_set(synth_clips[:14], labels, 60, 10, False)
    cfg = dataclasses.replace(ENCODER_SCHEDULES["smoke"], epochs=2, batch=8, descriptors=False, epoch_fraction=1 / 3)
    _, hist = train_encoder(ws, len(labels), cfg, TINY, progress=False)
    want = round(len(ws.y) / 3)  # batches of 8; a ragged last batch of 2 or fewer is dropped
    assert all(want - 1 <= h["windows"] <= want for h in hist), (len(ws.y), hist)


def test_training_resumes_after_a_kill(synth_clips, tmp_path):
    labels = sorted({c.label for c in synth_clips})
    clips = synth_clips[:14]
    _, (full, hist_full) = _tiny_train(clips, labels, checkpoint=tmp_path / "a.pt", epochs=4)

    class Killed(Exception):
        pass

    def kill_after_two(rec):
        if rec["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        _tiny_train(clips, labels, checkpoint=tmp_path / "b.pt", log=kill_after_two, epochs=4)
    _, (resumed, hist) = _tiny_train(clips, labels, checkpoint=tmp_path / "b.pt", epochs=4)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_checkpoint_resumes_on_a_moved_dataset_and_nowhere_else(synth_dir, tmp_path):
    from eai.data.joint import open_datasets
    from eai.schedules import encoder_schedule
    from eai.train.encoder_run import _check_resume

    moved = tmp_path / synth_dir.name  # the same dataset at another path, as on another machine
    shutil.copytree(synth_dir, moved)
    run, cfg = tmp_path / "run", encoder_schedule("smoke")
    run.mkdir()
    here, there = open_datasets([str(synth_dir)], None, False), open_datasets([str(moved)], None, False)
    labels, split = here[0].labels, {"holdout": 0.2, "fold": 0}
    _check_resume(run, cfg, labels, here, split)
    (run / "checkpoint.pt").write_bytes(b"")  # an interrupted run
    _check_resume(run, cfg, labels, there, split)
    with pytest.raises(EaiError, match="another configuration"):
        _check_resume(run, cfg, labels, here, {"holdout": 0.2, "fold": 1})
    fewer = [dataclasses.replace(here[0], clips=here[0].clips[1:])]
    with pytest.raises(EaiError, match="another configuration"):
        _check_resume(run, cfg, labels, fewer, split)


@pytest.mark.slow
def test_cli_train_and_evaluate(synth_dir, tmp_path, capsys):
    from eai.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_dir), "--out", str(run), "--schedule", "smoke", "--quiet"]) == 0
    m = json.loads((run / "manifest.json").read_text())
    held_out_groups = m["datasets"][0]["held_out_groups"]
    assert m["stage"] == "encoder" and len(m["labels"]) == 7 and len(held_out_groups) >= 7
    assert list(m["held_out"]) == [synth_dir.name]
    assert m["config"]["schedule"] == "smoke" and m["train"]["epochs"] == 4 and m["format"] == FORMAT
    assert (run / "encoder.safetensors").exists() and (run / "curves.png").exists()
    assert not (run / "checkpoint.pt").exists()
    assert main(["evaluate", str(run), "--data", str(synth_dir), "--quiet"]) == 0
    ev = json.loads((run / f"eval-{synth_dir.name}" / "evaluation.json").read_text())
    assert ev["scope"] == "held-out clips" and ev["clips"] == len(held_out_groups)
    # evaluate scores the same held-out clips, with the same model, as training did
    assert ev["window_accuracy"] == pytest.approx(m["held_out"][synth_dir.name]["window_accuracy"])
    # the same dataset copied elsewhere (a run trained on another machine) is still known: held-out clips only
    moved = tmp_path / "elsewhere" / synth_dir.name
    shutil.copytree(synth_dir, moved)
    assert main(["evaluate", str(run), "--data", str(moved), "--quiet", "--out", str(tmp_path / "ev2")]) == 0
    ev2 = json.loads((tmp_path / "ev2" / "evaluation.json").read_text())
    assert ev2["scope"] == "held-out clips" and ev2["window_accuracy"] == ev["window_accuracy"]
    assert main(["train", "--data", str(synth_dir), "--out", str(run), "--schedule", "smoke"]) == 2


@pytest.mark.slow
def test_bench_recognition_json(synth_dir, tmp_path, capsys):
    from eai.cli import main

    out = tmp_path / "r.json"
    assert main(["bench", "recognition", "--data", str(synth_dir), "--folds", "3", "--schedule", "smoke",
                 "--epochs", "2", "--quiet", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["folds"] == 3 and r["seeds"] == 1 and r["task"] == "emotion"
    assert list(r["models"]) == ["encoder", "baseline", "encoder+baseline"]  # the late fusion comes free
    # the baseline row is the same forest on the same folds as `eai baseline` alone
    alone = tmp_path / "b.json"
    assert main(["baseline", "--data", str(synth_dir), "--folds", "3", "--quiet", "--json", str(alone)]) == 0
    b = json.loads(alone.read_text())["models"]["baseline"]
    assert b["runs"] == r["models"]["baseline"]["runs"] and b["confusion"] == r["models"]["baseline"]["confusion"]
    for name, m in r["models"].items():
        assert sum(map(sum, m["confusion"])) == r["windows"]  # every test window once, over the 3 folds
        assert set(m["std"]) == {"window_accuracy", "clip_accuracy", "macro_f1"}
        assert [(f["seed"], f["fold"]) for f in m["runs"]] == [(0, 0), (0, 1), (0, 2)]
        assert m["window_accuracy"] == pytest.approx(np.mean([f["window_accuracy"] for f in m["runs"]]))
    text = capsys.readouterr().out
    assert "encoder+baseline" in text and "baseline" in text


def test_late_fusion_is_a_renormalised_geometric_mean():
    from eai.encoder.forest import late_fusion

    p = np.array([[0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.0, 0.9, 0.1], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    f = late_fusion(p, q)
    assert np.allclose(f.sum(1), 1)
    assert np.allclose(f[0], [0, 1, 0])  # the one class neither model rules out
    assert np.allclose(f[1], [0.5, 0, 0.5])  # they rule out everything: their mean
    assert np.allclose(f[2], p[2])  # agreement is kept as it is
