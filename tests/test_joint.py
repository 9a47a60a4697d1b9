"""Joint training across datasets: derived datasets, vocabularies that overlap in part, mixed-layout batches
through the tokenizer and the LLM, joint encoder and LLM runs, `eai bench joint`."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eai.errors import EaiError
from eai.llm.backbone import TINY

GAIT_WORDS = {"angry": "anger", "happy": "joy", "sad": "sadness", "neutral": "neutral"}


def _synth(out, layout, emotions, per_label=5, seconds=4.0, rename=None):
    from eai.data.synth import write_dataset

    write_dataset(out, [layout], clips_per_label=per_label, seconds=seconds, emotions=emotions, seed=len(emotions))
    for a, b in (rename or {}).items():
        if a != b:
            (out / a).rename(out / b)
    return out


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """A gait16 set in its own words (anger, joy, sadness, neutral) and a bandai22 set sharing only angry and
    happy with it, one of its clips shorter than a window."""
    from eai.data.synth import express, generate
    from eai.io import write_motion
    from eai.skeleton.registry import registry

    root = tmp_path_factory.mktemp("joint")
    a = _synth(root / "gait", "gait16", list(GAIT_WORDS), rename=GAIT_WORDS)
    b = _synth(root / "mocap", "bandai22", ["angry", "happy", "proud", "tired"])
    short = express(generate("tired", seconds=1.5, seed=99), registry().get("bandai22"), 30.0, "tired")
    write_motion(short, b / "tired" / "short_bandai22.bvh")
    return a, b


def test_derive_splits_by_clip_and_re_expresses_in_another_skeleton(tmp_path):
    from eai.data.datasets import load_clips, open_dataset
    from eai.data.derive import derive
    from eai.io import read_motion
    from eai.skeleton.registry import canonical
    from eai.skeleton.unify import to_canonical, unify

    src = _synth(tmp_path / "src", "bandai22", ["neutral", "angry", "happy", "sad", "tired"], per_label=4)
    rec = derive(str(src), str(tmp_path / "out"), progress=False)
    derived, rest = rec["derived"]["clips"], rec["rest"]["clips"]
    assert not {c["group"] for c in derived} & {c["group"] for c in rest}  # never the same clip on both sides
    assert len(derived) == 4 * 2 and len(derived) + len(rest) == 5 * 4
    assert all(c["label"] != "tired" for c in derived)  # labels outside the vocabulary stay in the rest

    ds = open_dataset(tmp_path / "out" / "src-gait16")
    assert ds.vocab == GAIT_WORDS and ds.labels == sorted(GAIT_WORDS)
    first = derived[0]
    m = read_motion(tmp_path / "out" / "src-gait16" / first["file"])
    assert m.fps == 25 and len(m.joints) == 16 and to_canonical(m)[2].name == "gait16"
    # known joints: the derived clip's knee is the source's canonical knee, resampled to 25 fps
    u = unify(read_motion(first["source"]), fps=25.0)
    can = canonical()
    assert np.allclose(m.positions[:, m.joints.index("left_knee")], u.metres()[:, can.index("l_knee")], atol=1e-4)
    assert np.allclose(m.positions[:, m.joints.index("head")], u.metres()[:, can.index("head")], atol=1e-4)

    rest_ds = open_dataset(tmp_path / "out" / "src-rest")
    assert len(load_clips(rest_ds, progress=False)) == len(rest) and rest_ds.name == "src-rest"
    assert json.loads((tmp_path / "out" / "split.json").read_text())["derived"]["layout"] == "gait16"
    with pytest.raises(EaiError, match="exists already"):
        derive(str(src), str(tmp_path / "out"), progress=False)
    with pytest.raises(EaiError, match="lacks"):
        derive(str(src), str(tmp_path / "other"), rename={"fearful": "fear"}, progress=False)


def test_vocabularies_that_overlap_in_part(two_sets):
    from eai.data.joint import joint_labels, label_mask, mix_weights, open_datasets

    parts = open_datasets([str(p) for p in two_sets], progress=False)
    a, b = parts
    assert a.labels == ["angry", "happy", "neutral", "sad"] and a.words == ["anger", "joy", "neutral", "sadness"]
    assert b.labels == b.words == ["angry", "happy", "proud", "tired"]
    assert a.layout == "gait16" and b.layout == "bandai22" and a.tag != b.tag
    labels = joint_labels(parts)
    assert labels == ["angry", "happy", "neutral", "proud", "sad", "tired"]  # anger and angry are one class
    assert label_mask(parts, labels).tolist() == [[1, 1, 1, 0, 1, 0], [1, 1, 0, 1, 0, 1]]
    ds = np.array([0] * 30 + [1] * 90)
    p = mix_weights(ds, 2, "equal")
    assert p[:30].sum() == pytest.approx(0.5) and p.sum() == pytest.approx(1)
    assert mix_weights(ds, 2, "size") == pytest.approx(np.full(120, 1 / 120))
    with pytest.raises(EaiError, match="twice"):
        open_datasets([str(two_sets[0])] * 2, progress=False)


def test_masked_cross_entropy_is_cross_entropy_over_the_allowed_labels():
    from eai.train.encoder import masked_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    ones = torch.ones(5)
    every = torch.ones(6, 5, dtype=torch.bool)
    assert masked_cross_entropy(logits, y, every, ones, 0.1) == pytest.approx(
        float(F.cross_entropy(logits, y, label_smoothing=0.1)), abs=1e-6)
    some = every.clone()
    some[:, 3:] = False  # a dataset without labels 3 and 4: the loss is the one over its three labels
    assert masked_cross_entropy(logits, y, some, ones, 0.1) == pytest.approx(
        float(F.cross_entropy(logits[:, :3], y, label_smoothing=0.1)), abs=1e-6)


def test_mixed_layout_batch_goes_through_tokenizer_and_llm_with_the_right_masks(two_sets, full_batch):
    from eai.data.joint import open_datasets
    from eai.data.windows import WindowSet, window_set
    from eai.encoder.model import EncoderConfig, SkeletonEncoder, encoder_features
    from eai.llm.backbone import load_backbone
    from eai.llm.model import EmotionLLM
    from eai.llm.prompts import recognition_prompt
    from eai.llm.tokenizer import SkeletonTokenizer, SkeletonTokenizerConfig

    a, b = open_datasets([str(p) for p in two_sets], progress=False)
    short = next(u for u in b.clips if u.n_frames < 60)
    # one window of each: 16 joints, full; the 22-joint skeleton, padded
    ws = WindowSet.concat([window_set(a.clips[:1], a.labels, 60, 1000), window_set([short], b.labels, 60, 1000)],
                          dataset_idx=[0, 1])
    assert ws.frames.tolist() == [60, short.n_frames] and ws.dataset_idx.tolist() == [0, 1]
    assert ws.mask[0].sum() == 16 and ws.mask[1].sum() > 16
    torch.manual_seed(0)
    feats = torch.from_numpy(encoder_features(SkeletonEncoder(EncoderConfig()).eval(), ws.raw, ws.mask))
    mask, frac = torch.from_numpy(ws.mask), torch.from_numpy(ws.real_fraction)
    lm, tok = load_backbone(TINY)
    llm = EmotionLLM(lm, tok, SkeletonTokenizer(SkeletonTokenizerConfig(hidden=lm.config.hidden_size)))
    cfg = llm.skeleton_tokenizer.cfg
    tokens, tmask, _ = llm.skeleton_tokenizer(feats, mask, real_fraction=frac)
    T = feats.shape[2]
    real = int(np.ceil(short.n_frames / 60 * T))
    seg_start = [(i * T) // cfg.n_temporal for i in range(cfg.n_temporal)]
    assert tmask[0].all()  # the full window: every token
    assert tmask[1, :cfg.n_temporal].tolist() == [s < real for s in seg_start]  # padding-only segments masked
    assert not tmask[1, :cfg.n_temporal].all()
    # the padded window's tokens do not depend on what fills its padding
    f2 = feats.clone()
    f2[1, :, real:] = torch.randn_like(f2[1, :, real:])
    t2, _, _ = llm.skeleton_tokenizer(f2, mask, real_fraction=frac)
    assert torch.allclose(t2[1][tmask[1]], tokens[1][tmask[1]], atol=1e-5)
    # with every frame real, pooling is plain adaptive average pooling
    full, _, _ = llm.skeleton_tokenizer(feats, mask)
    m = mask.float()
    per_t = (feats.permute(0, 2, 3, 1) * m[:, None, :, None]).sum(2) / m.sum(1)[:, None, None]
    seg = F.adaptive_avg_pool1d(per_t.transpose(1, 2), cfg.n_temporal).transpose(1, 2)
    assert torch.allclose(full[:, :cfg.n_temporal], llm.skeleton_tokenizer.temporal(llm.skeleton_tokenizer.norm(seg)) * llm.skeleton_tokenizer.scale, atol=1e-5)

    # both rows in one LLM batch, each with its own tag and label words: masks reach attention
    prompts = [recognition_prompt(cfg.n_tokens, a.tag, a.words), recognition_prompt(cfg.n_tokens, b.tag, b.words)]
    batch = full_batch(llm, prompts, ["anger", "tired"])
    emb, att, _ = llm.embed(batch["input_ids"], batch["attention_mask"], tokens, tmask)
    for i in range(2):
        where = (batch["input_ids"][i] == llm.sk_id).nonzero()[:, 0]
        assert att[i, where].tolist() == tmask[i].long().tolist()
    loss, _ = llm.loss(feats, mask, prompts, ["anger", "tired"], real_fraction=frac)
    assert torch.isfinite(loss)
    lp = llm.label_logprobs(feats[:1], mask[:1], prompts[:1], a.words, real_fraction=frac[:1])
    assert lp.shape == (1, 4) and torch.isfinite(lp).all()


@pytest.fixture(scope="module")
def joint_run(two_sets, tmp_path_factory):
    from eai.run import RunConfig
    from eai.train.llm_run import train_run

    out = tmp_path_factory.mktemp("jointrun") / "run"
    train_run(RunConfig(data=[str(p) for p in two_sets], out=str(out), stage="all", schedule="smoke",
                        llm_schedule="smoke", backbone=TINY, holdout=0.4), progress=False)
    return out


def test_joint_run_keeps_each_dataset_in_its_own_labels(joint_run, two_sets):
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter
    from eai.run import load_run

    m = json.loads((joint_run / "manifest.json").read_text())
    assert [d["name"] for d in m["datasets"]] == ["gait", "mocap"] and m["config"]["mix"] == "equal"
    assert m["encoder"]["n_datasets"] == 2  # a learned label prior per dataset (its tag, for the encoder)
    assert set(m["held_out"]) == set(m["held_out_llm"]["datasets"]) == {"gait", "mocap"}
    assert [d["words"] for d in m["datasets"]] == [["anger", "joy", "neutral", "sadness"],
                                                   ["angry", "happy", "proud", "tired"]]
    assert all(d["reference"]["neutral_label"] == ("neutral" if d["name"] == "gait" else None) for d in m["datasets"])
    it = Interpreter.of(load_run(joint_run))
    for path, words in zip(two_sets, (["anger", "joy", "neutral", "sadness"], ["angry", "happy", "proud", "tired"])):
        clips = load_clips(open_dataset(path), progress=False)[:2]
        for r in it.explain(clips, 12):
            assert list(r["probabilities"]) == words and r["emotion"] in words
            assert r["explanation"].lower().startswith(r["emotion"])  # names its dataset's word
            others = set(it.labels + [w for d in it.datasets for w in d.words]) - set(words)
            assert not any(o in r["explanation"].lower().split() for o in others)
        enc = it.encoder_proba(it.windows(clips, it.dataset(path.name)), it.dataset(path.name))
        assert enc.shape[1] == 4 and np.allclose(enc.sum(1), 1)


def test_joint_run_needs_the_dataset_when_the_skeleton_does_not_tell(joint_run, synth_dir, two_sets, capsys):
    from eai.cli import main

    kinect = next(synth_dir.rglob("*kinect25.csv"))
    assert main(["explain", str(kinect), "--model", str(joint_run)]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["explain", str(kinect), "--model", str(joint_run), "--dataset", "gait", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["dataset"] == "gait" and set(row["probabilities"]) == {"anger", "joy", "neutral", "sadness"}
    assert main(["evaluate", str(joint_run), "--data", str(two_sets[0]), "--quiet"]) == 0
    assert "read as gait" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_joint_reports_single_and_joint_on_the_same_folds(two_sets, tmp_path, capsys):
    from eai.cli import main

    out = tmp_path / "joint.json"
    assert main(["bench", "joint", "--data", str(two_sets[0]), "--data", str(two_sets[1]), "--folds", "2",
                 "--schedule", "smoke", "--json", str(out), "--plot", str(tmp_path / "j.png"), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert set(r["datasets"]) == {"gait", "mocap"} and r["folds"] == 2
    for d in r["datasets"].values():
        for kind in ("single", "joint"):  # every test window of the dataset once, over the 2 folds
            assert len(d[kind]["confusion"]) == 4 and sum(map(sum, d[kind]["confusion"])) == d["windows"]
    assert (tmp_path / "j.png").stat().st_size > 0
    assert main(["bench", "joint", "--data", str(two_sets[0]), "--quiet"]) == 2
