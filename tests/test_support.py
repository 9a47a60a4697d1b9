"""Evidence that supports the answer: claims true of the clip, about movement it makes, pointing the way the
answer's emotion differs from neutral in the training data; the no-support sentence; the support rate; runs
stored before class means were."""
import json
import re
import shutil

import numpy as np
import pytest

from eai.features import GAIT, NAMES, applicable, clip_descriptors, walks
from eai.llm import evidence as ev
from eai.llm.scores import explanation_scores, pooled_scores

HEAD, TRUNK, SPEED = (NAMES.index(n) for n in ("head_pitch", "trunk_lean", "speed"))
STRIDE, STEPS = NAMES.index("stride_length"), NAMES.index("step_frequency")


def _walking(n, rng, **shift):
    """n descriptor rows of walking clips (1.2 m/s, 1.8 steps/s, 0.65 m strides), `shift`: name -> offset."""
    v = np.tile([1.0, 0.5, 1.2, 5.0, 50.0, 0.8, 0.5, 0.0, 10.0, 5.0, 1.8, 0.65, 0.03, 0.1, 0.9, 0.1], (n, 1))
    v = v + rng.normal(0, 0.02, v.shape) * np.abs(v)
    for k, x in shift.items():
        v[:, NAMES.index(k)] += x
    return v


@pytest.fixture
def reference():
    """Neutral, proud (head raised: lower head_pitch, trunk upright) and sad (head lowered, slow) walkers."""
    rng = np.random.default_rng(0)
    d = np.concatenate([_walking(10, rng), _walking(10, rng, head_pitch=-12.0, trunk_lean=-6.0),
                        _walking(10, rng, head_pitch=12.0, speed=-0.4)])
    return ev.Reference.fit(d, ["neutral"] * 10 + ["proud"] * 10 + ["sad"] * 10), d


def test_the_reference_stores_each_label_s_way_and_reloads_with_it(reference):
    ref, _ = reference
    assert set(ref.class_mean) == {"neutral", "proud", "sad"}
    assert ref.toward("proud")[HEAD] == -1 and ref.toward("proud")[TRUNK] == -1 and ref.toward("proud")[SPEED] == 0
    assert ref.toward("sad")[HEAD] == 1 and ref.toward("sad")[SPEED] == -1
    assert not ref.toward("neutral").any() and ref.toward("unknown label") is None
    back = ev.Reference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert all(np.array_equal(back.toward(c), ref.toward(c)) for c in ref.class_mean)


def test_a_lowered_head_is_never_claimed_for_proud(reference):
    ref, _ = reference
    clip = ref.mean.copy()  # a neutral walker...
    clip[HEAD] += 3 * ref.scale[HEAD]  # head lowered: true of the clip, but proud clips raise the head
    clip[TRUNK] -= 2 * ref.scale[TRUNK]  # trunk upright: true, and the way proud differs
    z = ref.z(clip)
    assert ev.claim_phrases(z)[0][0] == "the head lowered"  # without grounds: true is enough
    g = ref.grounds("proud", clip)
    said = ev.claim_phrases(z, grounds=g)
    assert [p for p, _ in said] == ["the trunk upright or leaning back"]
    assert "head" not in ev.evidence_line(z, said) and "head" not in ev.description("proud", z, grounds=g)
    rng = np.random.default_rng(1)
    for _ in range(50):  # in every wording
        assert not any(c.descriptor == "head_pitch" for c in ev.check(ev.description("Proud", z, rng, grounds=g), z))
    # a text that says it anyway: true of the clip, not in support of the answer
    claims = ev.check("Proud: the head lowered and the trunk upright or leaning back.", z, g)
    assert [(c.descriptor, c.verified, c.supports) for c in claims] == [("head_pitch", True, False),
                                                                        ("trunk_lean", True, True)]
    assert claims[0].to_dict()["class_direction"] == "lower" and claims[0].to_dict()["supports"] is False
    # read as sad, the same clip's lowered head supports the answer
    assert [p for p, _ in ev.claim_phrases(z, grounds=ref.grounds("sad", clip))] == ["the head lowered"]


def test_a_standing_clip_never_gets_gait_claims(reference, known_motion):
    from eai.skeleton.unify import unify

    ref, _ = reference
    standing = clip_descriptors([unify(known_motion(T=90))])[0]  # a figure standing still
    assert not walks(standing) and standing[STRIDE] == 0.0
    assert not applicable(standing)[[NAMES.index(n) for n in GAIT]].any() and applicable(standing)[HEAD]
    z = ref.z(standing)
    assert z[STRIDE] <= -ev.CLAIM_Z and z[STEPS] <= -ev.CLAIM_Z  # measured far below the walking baseline...
    rng = np.random.default_rng(2)
    for label in ("proud", "sad", "neutral"):
        g = ref.grounds(label, standing)
        for _ in range(30):  # ... and never said, in any wording, of any label
            text = ev.description(label, z, rng, grounds=g)
            assert not {c.descriptor for c in ev.check(text, z, g)} & set(GAIT), text
    # said anyway, it does not hold
    c = ev.check("Sad: short strides.", z, ref.grounds("sad", standing))[0]
    assert c.descriptor == "stride_length" and not c.applies and not c.verified and not c.supports
    # a walking clip's short strides are claimable (sad clips walk no differently here: support is its own test)
    walker = ref.mean.copy()
    walker[STRIDE] -= 2 * ref.scale[STRIDE]
    assert walks(walker) and ev.check("Sad: short strides.", ref.z(walker), ref.grounds("sad", walker))[0].verified


def test_the_gait_baseline_is_the_clips_that_walk(known_motion):
    from eai.skeleton.unify import unify

    rng = np.random.default_rng(3)
    stand = clip_descriptors([unify(known_motion(T=90))])[0]
    d = np.concatenate([_walking(6, rng), np.tile(stand, (6, 1))])
    ref = ev.Reference.fit(d, ["neutral"] * 12)
    assert ref.mean[STRIDE] == pytest.approx(d[:6, STRIDE].mean())  # standing clips' 0.0 m strides left out
    assert ref.mean[HEAD] == pytest.approx(d[:, HEAD].mean())


def test_the_no_support_sentence_when_nothing_supports_the_answer(reference):
    from eai.llm.backbone import TINY, load_backbone
    from eai.llm.grammar import ClaimDecoder

    ref, _ = reference
    clip = ref.mean.copy()
    clip[HEAD] += 3 * ref.scale[HEAD]  # only a lowered head is marked: nothing proud about it
    z, g = ref.z(clip), ref.grounds("proud", clip)
    assert ev.claim_phrases(z, grounds=g) == [(ev.NO_SUPPORT, None)]
    text = ev.description("proud", z, grounds=g)
    assert text == "Proud, though no measured movement clearly points to it."
    assert ev.evidence_line(z, grounds=g).startswith(ev.NO_SUPPORT)
    (c,) = ev.check(text, z, g)
    assert c.kind == "no_support" and c.verified and c.supports is False
    assert not ev.check(text, z, ref.grounds("sad", clip))[0].verified  # for sad the head is evidence
    # the neutral label: movement close to the baseline supports it, a marked difference does not
    assert ev.claim_phrases(ref.z(ref.mean), grounds=ref.grounds("neutral", ref.mean))[0][0] in ev.NEUTRAL_PHRASES
    assert ev.claim_phrases(z, grounds=ref.grounds("neutral", clip)) == [(ev.NO_SUPPORT, None)]
    # the sentence is in the decoding grammar, and nothing follows it but the full stop
    lm, tok = load_backbone(TINY)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    grammar = ClaimDecoder(tok, eos)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    st = grammar.start()
    body = ids(text)[len(ids("Proud")):]
    for t in body + [eos]:
        assert t in grammar.allowed(st)
        if t != eos:
            grammar.advance(st, t)
    st = grammar.start()
    for t in body[:-1]:
        grammar.advance(st, t)
    assert grammar.allowed(st) == ids(".")


def _row(*items):
    kinds = {"m": ("movement", "speed"), "n": ("neutral", None), "x": ("no_support", None)}
    return {"emotion": "sad", "explanation": "", "reference": "", "label_consistent": True,
            "evidence": [{"kind": kinds[k][0], "descriptor": kinds[k][1], "verified": v, "supports": s}
                         for k, v, s in items]}


def test_support_rate_on_hand_made_rows():
    rows = [_row(("m", True, True), ("m", True, False), ("m", False, True)),  # 2 of 3 support
            _row(("n", True, False)),  # the neutral claim of a non-neutral answer: 0 of 1
            _row(("x", True, False)),  # the no-support sentence: no movement claim at all
            _row(("m", True, True))]  # 1 of 1
    s = explanation_scores(rows, similarity=False)
    assert s["support_rate"] == pytest.approx(3 / 5) and s["claims_supporting"] == 3
    assert s["claims_support_known"] == 5 and s["explanations_no_support"] == 1
    assert s["faithfulness"] == pytest.approx(5 / 6)
    pooled = pooled_scores([s, explanation_scores(rows[:1], similarity=False)])
    assert pooled["support_rate"] == pytest.approx(5 / 8)
    unknown = [_row(("m", True, None))]  # a run without class means: support unknown, not 0
    assert explanation_scores(unknown, similarity=False)["support_rate"] is None


def test_a_run_stores_class_means_and_one_without_them_still_explains(tiny_run, synth_dir, tmp_path):
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    for d in manifest["datasets"]:
        assert set(d["reference"]["class_mean"]) == set(d["labels"])
    clips = load_clips(open_dataset(synth_dir))[:3]
    new = Interpreter.load(tiny_run).explain(clips, 12)
    for r in new:
        assert "support_unknown" not in r
        assert all(isinstance(e["supports"], bool) for e in r["evidence"])
    old = tmp_path / "old-run"  # the run as a run stored before class means were
    shutil.copytree(tiny_run, old)
    for d in manifest["datasets"]:
        del d["reference"]["class_mean"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    rows = Interpreter.load(old).explain(clips, 12)
    assert [r["emotion"] for r in rows] == [r["emotion"] for r in new]
    for r in rows:
        assert r["support_unknown"] and all(e["supports"] is None for e in r["evidence"])
    assert explanation_scores(rows, similarity=False)["support_rate"] is None


def test_training_descriptions_claim_only_what_supports_their_label(reference):
    from eai.data.joint import RunDataset
    from eai.train.stages import FeatureSet, Sampler

    ref, _ = reference
    labels = ["neutral", "proud", "sad"]
    rng = np.random.default_rng(4)
    n, m = 24, 6
    z = rng.normal(0, 1.5, (n + m, len(NAMES)))
    z[:, HEAD] = 3.0  # every window and clip holds its head lowered
    y = np.arange(n + m) % 3
    f = np.zeros((n, 8, 2, 23), np.float32)
    zeros, ones = (lambda k: np.zeros(k, np.int64)), (lambda k: np.ones(k, np.float32))
    fs = FeatureSet(f, np.ones((n, 23), bool), y[:n], z[:n], np.arange(n) % m, zeros(n), ones(n), f[:m],
                    np.ones((m, 23), bool), y[n:], z[n:], zeros(m), ones(m), np.eye(3, dtype=np.float32)[y[:n]],
                    np.eye(3, dtype=np.float32)[y[n:]])
    dataset = RunDataset("t", "", "folders", "bandai22", labels, labels, "t", reference=ref.to_dict())
    batch = Sampler(fs, labels, [dataset], 4, 0).description(200)
    said = {"proud": set(), "sad": set(), "neutral": set()}
    for zz, prompt, answer in zip(batch.z, batch.prompts, batch.answers):
        label = re.match(r"[a-z]+", answer.lower()).group()
        g = ref.grounds(label, ref.values(zz))
        claims = ev.check(answer, zz, g)
        assert claims and all(c.verified and (c.supports or c.kind == "no_support") for c in claims), answer
        assert all(c.phrase in prompt for c in claims)  # the prompt states what the answer says
        said[label] |= {c.descriptor for c in claims}
    assert "head_pitch" not in said["proud"] and "head_pitch" in said["sad"]
    assert said["neutral"] <= {ev.NEUTRAL, ev.NO_SUPPORT_KEY}


def test_evaluate_bench_explain_and_explain_report_support(tiny_run, synth_dir, tmp_path, capsys):
    from eai.cli import main

    f = sorted(synth_dir.rglob("*.bvh"))[0]
    assert main(["explain", str(f), "--model", str(tiny_run), "--max-tokens", "12"]) == 0
    out = capsys.readouterr()
    assert "support" in out.out or "though no measured movement" in out.out
    assert main(["evaluate", str(tiny_run), "--data", str(synth_dir), "--out", str(tmp_path / "ev")]) == 0
    assert "support rate" in capsys.readouterr().out
    ex = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["llm"]["explanations"]
    assert ex["claims_support_known"] == ex["claims"] - ex["explanations_no_support"]
    assert ex["support_rate"] is None or 0 <= ex["support_rate"] <= 1
    assert main(["bench", "explain", "--model", str(tiny_run), "--data", str(synth_dir), "--json",
                 str(tmp_path / "b.json")]) == 0
    assert "support rate" in capsys.readouterr().out
    assert "support_rate" in json.loads((tmp_path / "b.json").read_text())["explanations"]
