"""eai pretrain: the encoder pretrained on clips with or without labels, its weights as `eai train --init`."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import eai.train.pretrain as pre
import eai.weights as weights
from eai.encoder.model import EncoderConfig, SkeletonEncoder
from eai.errors import EaiError
from eai.train.encoder import load_init
from eai.weights import resolve_init


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EAI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "pretrained_path", lambda: None)  # as if none were shipped


@pytest.fixture(scope="module")
def pre_data(tmp_path_factory):
    from conftest import write_bandai_like

    return write_bandai_like(tmp_path_factory.mktemp("pre") / "data", clips_per_label=5, seconds=4.0)


def test_hidden_positions_reach_no_stream():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 30, 23, 3)).astype(np.float32)
    mask = np.ones((2, 23), bool)
    hide = rng.random((2, 30, 23)) < 0.3
    streams = ["joints", "bones", "motion"]
    from eai.encoder.streams import make_streams

    x = pre.hide_entries(make_streams(w, mask, streams), hide, streams)
    w2 = w.copy()
    w2[hide] += 5.0  # move every hidden position: nothing the encoder reads may change
    np.testing.assert_array_equal(pre.hide_entries(make_streams(w2, mask, streams), hide, streams), x)


@pytest.mark.parametrize("objective", ["masked", "labels"])
def test_pretraining_lowers_its_loss(pre_data, tmp_path, cache_env, objective):
    run = pre.pretrain_run([str(pre_data)], tmp_path / "run", objective, "smoke", epochs=3, progress=False)
    hist = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]
    info = json.loads((run / "pretrained.json").read_text())
    assert info["objective"] == objective and info["epochs"] == 3 and info["windows_seen"] == sum(
        h["windows"] for h in hist)
    assert info["licence"].startswith("CC BY-NC 4.0") and info["sha256"] == weights.sha256(run / "pretrained.safetensors")
    assert info["data"][0]["clips"] == 15 and "clips" in info["held_out"]
    assert (run / "pretrain-curves.png").is_file()
    # the held-out clips as manifests a fine-tuning benchmark reads (eai bench recognition --data)
    held = sum(len(v) for v in info["held_out"]["clips"].values())
    assert held > 0 and info["held_out"]["manifests"] == ["held-out-style.csv", "held-out-content.csv"]
    for kind in info["held_out"]["manifests"]:
        from eai.data.datasets import open_dataset

        assert len(open_dataset(run / kind).clips) == held
    assert all(k.startswith(weights.BACKBONE) for k in load_file(str(run / "pretrained.safetensors")))


def test_weights_start_the_emotion_encoder(pre_data, tmp_path, cache_env):
    run = pre.pretrain_run([str(pre_data)], tmp_path / "run", "mix", "smoke", epochs=1, progress=False)
    state, info = resolve_init(str(run))
    assert info["init"] == "folder" and info["sha256"]
    # the pretrained encoder as it was trained (its checkpoint) and the emotion encoder started from the file
    ck = torch.load(run / pre.CHECKPOINT, weights_only=False)
    trained = pre.PretrainModel(EncoderConfig(n_classes=1), 3, 2, True, True)
    trained.load_state_dict(ck["model"])
    emotion = SkeletonEncoder(EncoderConfig(n_classes=5, n_descriptors=16))
    load_init(emotion, state)
    trained.eval()
    emotion.eval()
    x = torch.randn(4, 9, 30, 23).contiguous(memory_format=torch.channels_last)
    m = torch.ones(4, 23, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(emotion.features(x, m), trained.encoder.features(x, m), rtol=0, atol=0)
    # weights of another architecture are refused in one line
    with pytest.raises(EaiError, match="feature extractor"):
        load_init(SkeletonEncoder(EncoderConfig(channels=[32] * 6)), state)
    # a damaged file is refused
    (run / "pretrained.safetensors").write_bytes((run / "pretrained.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(EaiError, match="sha256"):
        resolve_init(str(run))


def test_resume_gives_the_uninterrupted_weights(pre_data, tmp_path, cache_env, monkeypatch):
    a = pre.pretrain_run([str(pre_data)], tmp_path / "a", "mix", "smoke", epochs=2, progress=False)
    real = pre.save_checkpoint

    def killed_after_first_epoch(*args, **kw):
        real(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(pre, "save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        pre.pretrain_run([str(pre_data)], tmp_path / "b", "mix", "smoke", epochs=2, progress=False)
    assert not (tmp_path / "b" / "pretrained.safetensors").exists()
    monkeypatch.setattr(pre, "save_checkpoint", real)
    b = pre.pretrain_run([str(pre_data)], tmp_path / "b", "mix", "smoke", epochs=2, progress=False)
    wa, wb = load_file(str(a / "pretrained.safetensors")), load_file(str(b / "pretrained.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # another objective in the same folder is refused, not mixed in
    with pytest.raises(EaiError, match="another|other data"):
        pre.pretrain_run([str(pre_data)], tmp_path / "b", "labels", "smoke", epochs=2, progress=False)


def test_train_init_none_is_from_scratch_and_a_folder_is_used(pre_data, tmp_path, cache_env):
    from eai.run import Manifest, RunConfig
    from eai.train.encoder_run import initial_weights, train_encoder_run

    def train(out, init):
        cfg = RunConfig(data=[str(pre_data)], out=str(tmp_path / out), schedule="smoke", epochs=1, init=init)
        return train_encoder_run(cfg, progress=False)

    none = train("none", "none")
    with pytest.warns(UserWarning, match="ships no pretrained"):
        default = train("default", "pretrained")  # none shipped: from scratch, said once
    wn, wd = load_file(str(none / "encoder.safetensors")), load_file(str(default / "encoder.safetensors"))
    assert all(torch.equal(wn[k], wd[k]) for k in wn)
    assert Manifest.load(none).pretrain["init"] == "none"
    run = pre.pretrain_run([str(pre_data)], tmp_path / "pre", "masked", "smoke", epochs=1, progress=False)
    m = Manifest.load(train("init", str(run)))
    assert m.config.init == str(run) and m.pretrain["init"] == "folder" and "labels" not in m.pretrain
    assert m.pretrain["sha256"] == weights.sha256(run / "pretrained.safetensors")
    # the LLM stages' cross-fitted encoders start where the run's encoder started: the folder's weights
    start = initial_weights(tmp_path / "init", str(run), m.pretrain)
    given = load_file(str(run / "pretrained.safetensors"))
    assert start.keys() == given.keys() and all(torch.equal(start[k], given[k]) for k in start)
    moved = tmp_path / "moved"  # the same weights elsewhere are accepted, by their sha256
    run.rename(moved)
    assert all(torch.equal(initial_weights(tmp_path / "init", str(moved), m.pretrain)[k], given[k]) for k in given)
    with pytest.raises(EaiError, match="does not give now"):  # weights replaced since the run, or gone
        initial_weights(tmp_path / "init", str(moved), {**m.pretrain, "sha256": "0" * 64})
    with pytest.raises(EaiError, match="does not give now"):
        initial_weights(tmp_path / "init", str(run), m.pretrain)
    # from scratch: None, whatever file lies in the folder; after an auxiliary pre-training its file, required
    (none / "pretrain.safetensors").write_bytes((moved / "pretrained.safetensors").read_bytes())
    assert initial_weights(none, "none", Manifest.load(none).pretrain) is None
    aux = {"init": "none", "labels": ["old", "childish"], "windows": 10}
    assert initial_weights(none, "none", aux).keys() == given.keys()
    (none / "pretrain.safetensors").unlink()
    with pytest.raises(EaiError, match="missing"):
        initial_weights(none, "none", aux)


def test_auxiliary_pretraining_starts_from_the_init_weights(tmp_path, monkeypatch):
    """Bandai's character-style clips pre-train the encoder from the shipped weights (issue 21: worth 0.04 window
    accuracy over the shipped weights alone on Bandai-1; bench/RESULTS.md), the emotion encoder starts from that
    pre-training, and a run stopped after it resumes only from the same start."""
    from conftest import write_bandai_like

    import eai.train.encoder_run as er
    from eai.run import Manifest, RunConfig

    monkeypatch.setenv("EAI_CACHE", str(tmp_path / "cache"))
    data = write_bandai_like(tmp_path / "d", clips_per_label=5, emotions=("happy", "sad", "angry", "proud", "tired"))
    # the last two styles renamed to character styles: their clips are auxiliary, never emotion clips
    (data / "cfg" / "style_label.txt").write_text("\n".join(f"dataset-x_{s}" for s in
                                                            ("happy", "sad", "angry", "old", "childish")))
    starts, real = [], er.train_encoder

    def spy(ws, n_classes, cfg, enc, **kw):
        starts.append((n_classes, kw.get("init")))
        return real(ws, n_classes, cfg, enc, **kw)

    monkeypatch.setattr(er, "train_encoder", spy)
    run = er.train_encoder_run(RunConfig(data=[str(data)], out=str(tmp_path / "run"), schedule="smoke", epochs=1),
                               progress=False)
    m, shipped = Manifest.load(run), weights.load_pretrained()
    assert m.pretrain["init"] == "pretrained" and m.pretrain["labels"] == ["childish", "old"]
    assert m.pretrain["auxiliary_data"] == [m.datasets[0].name]  # beside the weights' own data (dataset-2)
    (n_aux, first), (n_task, second) = starts
    assert n_aux == 2 and all(torch.equal(first[k], shipped[k]) for k in shipped)
    pretrained_on_aux = load_file(str(run / er.PRETRAIN_WEIGHTS))
    assert n_task == 3 and all(torch.equal(second[k], pretrained_on_aux[k]) for k in pretrained_on_aux)
    assert not all(torch.equal(pretrained_on_aux[k], shipped[k]) for k in shipped)
    start = er.initial_weights(run, m.config.init, m.pretrain)  # and the cross-fitted encoders from there too
    assert all(torch.equal(start[k], pretrained_on_aux[k]) for k in pretrained_on_aux)

    # a run stopped after its pre-training from scratch is not resumed from other weights
    def stop_after_pretraining(ws, n_classes, cfg, enc, **kw):
        if n_classes == 3:
            raise KeyboardInterrupt
        return real(ws, n_classes, cfg, enc, **kw)

    monkeypatch.setattr(er, "train_encoder", stop_after_pretraining)
    cfg = RunConfig(data=[str(data)], out=str(tmp_path / "stopped"), schedule="smoke", epochs=1, init="none")
    with pytest.raises(KeyboardInterrupt):
        er.train_encoder_run(cfg, progress=False)
    assert (tmp_path / "stopped" / er.PRETRAIN_WEIGHTS).is_file()
    with pytest.raises(EaiError, match="another configuration"):
        er.train_encoder_run(dataclasses.replace(cfg, init="pretrained"), progress=False)


def test_cli_pretrain(pre_data, tmp_path, cache_env, capsys):
    from eai.cli import main

    assert main(["pretrain", "--data", str(pre_data), "--out", str(tmp_path / "ok"), "--objective", "masked",
                 "--schedule", "smoke", "--epochs", "1", "--quiet"]) == 0
    assert "wrote " in capsys.readouterr().out and (tmp_path / "ok" / "pretrained.json").is_file()

    capsys.readouterr()
    assert main(["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eai: error:") and "nope" in err[0]
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--schedule", "x"]) == 2
    assert main(["pretrain", "--data", str(pre_data), "--out", str(tmp_path / "r"), "--objective", "x"]) == 2
    capsys.readouterr()
    assert main(["train", "--data", str(pre_data), "--out", str(tmp_path / "r"), "--init", str(tmp_path / "x")]) == 2
    assert "--init" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_two_processes_train_disjoint_shards_to_the_same_weights(pre_data, tmp_path, cache_env):
    """`accelerate launch` with 2 CPU processes: each trains on its own shard of every epoch's batches, and they
    end each epoch with the same weights (the log's record of every epoch says both)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    # --multi_gpu: accelerate's multi-process launcher, over gloo without a GPU (--cpu wants MPI for several)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           "-m", "eai.cli", "pretrain", "--data", str(pre_data), "--out", str(out), "--objective", "mix",
           "--schedule", "smoke", "--epochs", "2", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    hist = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(hist) == 2  # written by the main process only
    for h in hist:
        assert h["processes"] == 2 and h["shards_disjoint"] and h["weights_agree"]
        assert len(set(h["windows_per_process"])) == 1 and sum(h["windows_per_process"]) == h["windows"]
    assert json.loads((out / "pretrained.json").read_text())["processes"] == 2


def test_two_datasets_one_without_content_labels(pre_data, tmp_path, cache_env):
    """A folder dataset (its labels count as style, no content) beside the Bandai layout: one label space, the
    Bandai content head trained on its windows only; the pool's rows read back the right windows."""
    from eai.data.synth import write_dataset

    folder = tmp_path / "folder"
    write_dataset(folder, ["kinect25"], clips_per_label=3, seconds=3.0, emotions=["happy", "proud"])
    cfg = pre.pretrain_schedule("smoke")
    caches, labels, train, held, _ = pre.open_pool([str(pre_data), str(folder)], cfg, False)
    assert labels["style"] == ["angry", "happy", "proud", "sad"] and labels["content"] == ["stand", "walk"]
    rows = np.arange(len(train))
    raw, mask, style, content = train.take(rows[::-1])
    second = train.which[rows[::-1]] == 1
    assert (content[second] == -1).all() and (content[~second] >= 0).all() and (style >= 0).all()
    i = int(np.flatnonzero(second)[0])
    np.testing.assert_array_equal(raw[i], caches[1].raw[train.local[rows[::-1][i]]])
    run = pre.pretrain_run([str(pre_data), str(folder)], tmp_path / "run", "labels", "smoke", epochs=1,
                           progress=False)
    info = json.loads((run / "pretrained.json").read_text())
    assert [d["clips"] for d in info["data"]] == [15, 6] and info["licence"].startswith("inherited")
