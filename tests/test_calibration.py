"""Issue 22: the posterior token, cross-fitted encoder posteriors, temperature scaling and close calls."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eai.calibration import fit_temperature, scale, scale_proba, temper_to_entropy
from eai.metrics import expected_calibration_error, pooled_ece, reliability


def test_temperature_fit_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((20000, 5)) * 3
    p_true = scale(logits, 2.0)  # the labels follow softmax(logits / 2): the model is overconfident by T = 2
    y = np.array([rng.choice(5, p=p) for p in p_true])
    t = fit_temperature(logits, y)
    assert abs(t - 2.0) < 0.1
    before, after = expected_calibration_error(scale(logits, 1.0), y), expected_calibration_error(scale(logits, t), y)
    assert after < 0.02 < before
    # scaling never changes the answer; impossible classes stay impossible
    p = scale_proba(np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]]), 3.0)
    assert p.argmax(1).tolist() == [0, 1] and p[0, 2] == 0 and np.allclose(p.sum(1), 1)
    # -inf (a label outside the dataset) is allowed in the fit
    lp = np.log(np.clip(scale(logits[:, :3], 1.0), 1e-12, None))
    lp = np.concatenate([lp, np.full((len(lp), 1), -np.inf)], 1)
    assert np.isfinite(fit_temperature(lp, np.minimum(y, 2)))


def test_a_confident_posterior_tempered_to_a_hesitant_one_keeps_its_answer_and_takes_its_entropy():
    from scipy.stats import entropy as scipy_entropy

    entropy = lambda p: scipy_entropy(p, axis=1)  # noqa: E731
    rng = np.random.default_rng(1)
    sure = rng.dirichlet(np.full(7, 0.1), 200)  # in-sample: nearly one-hot
    sure[:20] = np.eye(7)[rng.integers(0, 6, 20)]  # some exactly one-hot, as a forest's leaves make them
    sure[:, 6] = 0.0  # a label outside the dataset
    sure /= sure.sum(1, keepdims=True)
    hesitant = rng.dirichlet(np.full(7, 2.0), 200)
    hesitant[:, 6] = 0.0
    hesitant /= hesitant.sum(1, keepdims=True)
    hesitant[:5] = sure[:5]  # already as sure: left as it is
    got = temper_to_entropy(sure, hesitant)
    flatter = entropy(hesitant) > entropy(sure) + 1e-9
    reached = np.isclose(entropy(got), entropy(hesitant), atol=1e-4)
    assert reached[flatter].mean() > 0.95  # the rest are near uniform: as flat as the largest T makes them
    assert (entropy(got)[flatter] <= entropy(hesitant)[flatter] + 1e-4).all()
    assert np.allclose(got[~flatter], sure[~flatter], atol=1e-5)  # a row as flat as its target stays as it is
    # tempered, not mixed: on each row's labels, log got = log p / T + c with one T >= 1 per row
    lp, lg = np.log(np.maximum(sure[flatter, :6], 1e-6)), np.log(got[flatter, :6])
    lp, lg = lp - lp.mean(1, keepdims=True), lg - lg.mean(1, keepdims=True)
    inv_t = (lp * lg).sum(1) / (lp * lp).sum(1)
    assert np.allclose(lg, inv_t[:, None] * lp, atol=1e-3) and (inv_t <= 1 + 1e-6).all() and (inv_t > 0).all()
    assert np.array_equal(got.argmax(1), sure.argmax(1))
    assert np.allclose(got.sum(1), 1) and (got[:, 6] == 0).all()


def test_reliability_bins_count_every_window_once():
    proba = np.array([[0.95, 0.05], [0.55, 0.45], [0.52, 0.48], [0.1, 0.9]])
    r = reliability(proba, np.array([0, 1, 0, 1]), bins=10)
    assert sum(r["count"]) == 4
    assert r["accuracy"] == [0.5, 1.0] and r["confidence"] == [0.535, 0.925] and r["count"] == [2, 2]


def test_posterior_token_is_the_posterior_weighted_word_embedding():
    from eai.llm.tokenizer import SkeletonTokenizer, SkeletonTokenizerConfig

    cfg = SkeletonTokenizerConfig(feature_dim=8, hidden=16, n_labels=3)
    sk = SkeletonTokenizer(cfg)
    words = torch.randn(3, 16)
    sk.init_posterior_token(words)
    feats, mask = torch.randn(2, 8, 4, 23), torch.ones(2, 23, dtype=torch.bool)
    post = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    tokens, tmask, _ = sk(feats, mask, posterior=post)
    assert tokens.shape == (2, cfg.n_tokens, 16) and cfg.n_tokens == 4 + 6 + 1 + 1 and tmask.all()
    assert torch.allclose(tokens[0, -1], words[1]) and torch.allclose(tokens[1, -1], (words[0] + words[2]) / 2)
    with pytest.raises(ValueError, match="posterior"):
        sk(feats, mask)


def test_out_of_fold_posterior_never_comes_from_a_model_that_saw_the_clip(monkeypatch, tmp_path):
    from eai.data.windows import WindowSet
    from eai.encoder.model import EncoderConfig
    from eai.schedules import encoder_schedule
    from eai.train import crossfit

    rng = np.random.default_rng(0)
    n_clips, per = 12, 4
    clip = np.repeat(np.arange(n_clips), per)
    ws = WindowSet(rng.standard_normal((len(clip), 60, 23, 3)).astype(np.float32), np.ones((len(clip), 23), bool),
                   np.zeros((len(clip), 16), np.float32), clip % 3, clip, clip.astype(str), np.zeros(len(clip), int),
                   np.full(len(clip), 60))
    trained_on: list[set] = []

    class Model:
        def __init__(self, clips):
            self.clips = clips

    def fake_train(train, n_classes, *a, **k):
        trained_on.append(set(train.clip.tolist()))
        return Model(set(train.clip.tolist())), []

    def fake_predict(model, w, allowed=None):
        seen = np.isin(w.clip, list(model.clips))
        return np.where(seen[:, None], np.eye(3)[w.y], 1 / 3).astype(np.float32)  # a seen clip: certain

    monkeypatch.setattr(crossfit, "train_encoder", fake_train)
    monkeypatch.setattr(crossfit, "predict_proba", fake_predict)
    cache = tmp_path / crossfit.CROSSFIT
    p = crossfit.out_of_fold_posterior(ws, 3, encoder_schedule("smoke"), EncoderConfig(), None, None, k=3,
                                       cache=cache, progress=False)
    assert len(trained_on) == 3 and np.allclose(p, 1 / 3)  # every window from a model that never saw its clip
    assert set().union(*trained_on) == set(range(n_clips))
    again = crossfit.out_of_fold_posterior(ws, 3, encoder_schedule("smoke"), EncoderConfig(), None,
                                           lambda: pytest.fail("start weights read for a cached posterior"), k=3,
                                           cache=cache, progress=False)
    assert len(trained_on) == 3 and np.array_equal(again, p)  # read back from the cache, nothing retrained
    ws.y[0] = (ws.y[0] + 1) % 3  # other windows: the cache does not fit them, and they are computed anew
    crossfit.out_of_fold_posterior(ws, 3, encoder_schedule("smoke"), EncoderConfig(), None, None, k=3, cache=cache,
                                   progress=False)
    assert len(trained_on) == 6


def test_fewer_folds_where_a_label_has_fewer_clips_and_none_with_a_single_clip():
    from eai.data.windows import WindowSet
    from eai.train.crossfit import folds_used

    def windows(clips_per_label):  # one window a clip
        y = np.repeat(np.arange(len(clips_per_label)), clips_per_label)
        n = len(y)
        return WindowSet(np.zeros((n, 60, 23, 3), np.float32), np.ones((n, 23), bool), np.zeros((n, 16), np.float32),
                         y, np.arange(n), np.arange(n).astype(str), np.zeros(n, int), np.full(n, 60))

    assert folds_used(windows([6, 5, 7]), 3) == 3
    assert folds_used(windows([6, 2, 7]), 5) == 2
    with pytest.raises(ValueError, match="only 1 training clip"):
        folds_used(windows([6, 1, 7]), 3)


def test_log_posterior_floors_small_probabilities_and_keeps_labels_ruled_out():
    from eai.calibration import log_posterior

    got = log_posterior(np.array([[0.5, 1e-20, 0.0, 0.5]]))
    assert np.allclose(got[0, [0, 3]], np.log(0.5)) and np.isclose(got[0, 1], np.log(1e-12)) and got[0, 2] == -np.inf


def test_the_cross_fitted_encoders_start_where_the_run_s_encoder_started(synth_dir, smoke_run, tmp_path,
                                                                          monkeypatch):
    """Out-of-fold posteriors stand for the run's encoder on clips it never saw: from the shipped weights when it
    started from them (before, with no auxiliary pre-training written, they started from scratch)."""
    import eai.train.llm_run as llm_run
    from eai.weights import load_pretrained

    class Seen(Exception):
        pass

    def capture(ws, n_classes, cfg, enc, allowed, init, **kw):
        raise Seen(init)

    monkeypatch.setattr(llm_run, "out_of_fold_posterior", capture)
    with pytest.raises(Seen) as got:
        llm_run.train_run(smoke_run(synth_dir, tmp_path / "run"), progress=False)
    init, shipped = got.value.args[0](), load_pretrained()  # read when encoders are trained (not from a cache)
    assert shipped is not None and init is not None and init.keys() == shipped.keys()
    assert all(torch.equal(init[k], shipped[k]) for k in shipped)


def test_a_run_saves_its_temperatures_and_applies_them(tiny_run, synth_dir):
    from eai.interpret import Interpreter
    from eai.io.inputs import read_clip
    from eai.run import Manifest

    m = Manifest.load(tiny_run)
    cal = m.calibration
    assert cal is not None and cal.encoder > 0 and cal.llm > 0 and cal.windows["llm"] > 0
    assert len(cal.ece_fit["llm"]) == 2 and "held-out" not in cal.fitted_on
    assert (tiny_run / "crossfit.safetensors").is_file()
    assert m.llm.tokenizer.n_labels == len(m.labels) and m.llm.token_confidence == "out-of-fold"
    h = next(iter(m.held_out_llm["datasets"].values()))
    for k in ("llm", "encoder"):
        assert {"ece", "ece_uncalibrated", "temperature", "reliability", "ece_consistency"} <= set(h[k])
        c, cal_d = h[k]["ece_consistency"], h[k]["reliability"]["calibrated"]  # kept in the run: a calibrated
        assert c["ece"] == pooled_ece([cal_d]) and 0 < c["clips"]["p_value"] <= 1  # model's ECE on the same windows
        assert all(len(row) == len(cal_d["count"]) for row in cal_d["consistency"]["clips"])
        assert len(cal_d["consistency"]["clips"]) == 200
    assert any(tiny_run.glob("reliability*.png"))
    it = Interpreter.load(tiny_run)
    clip = read_clip(sorted(synth_dir.rglob("*.bvh"))[0])[1]
    d = it.dataset(layout=clip.layout)
    ws, feats, post, _ = it._clip_proba([clip], d)
    z = it.reference(d).z(ws.model_desc)
    raw = it.window_proba(feats, ws.mask, z, ws.real_fraction, d, post, calibrated=False)
    cal_p = it.window_proba(feats, ws.mask, z, ws.real_fraction, d, post)
    assert np.allclose(cal_p, scale_proba(raw, cal.llm), atol=1e-5)
    assert np.array_equal(cal_p.argmax(1), raw.argmax(1))


def test_a_run_made_before_token_confidence_loads_as_trained_on_in_sample_tokens(tiny_run, tmp_path):
    from eai.run import MANIFEST, Manifest

    raw = json.loads((tiny_run / MANIFEST).read_text())
    del raw["llm"]["token_confidence"]
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    assert Manifest.load(tmp_path).llm.token_confidence == "in-sample"


def test_a_close_call_names_both_labels(tiny_run, synth_dir, monkeypatch):
    from eai import interpret
    from eai.interpret import Interpreter
    from eai.io.inputs import read_clip

    it = Interpreter.load(tiny_run)
    clip = read_clip(sorted(synth_dir.rglob("*.bvh"))[0])[1]
    far = it.explain([clip])[0]
    monkeypatch.setattr(interpret, "CLOSE", 1.01)  # every call is close
    row = it.explain([clip])[0]
    assert row["runner_up"] and row["runner_up"] != row["emotion"]
    p = row["probabilities"]
    assert p[row["runner_up"]] == max(v for k, v in p.items() if k != row["emotion"])
    assert row["explanation"].endswith(interpret.runner_up_sentence(row))
    assert row["runner_up"].lower() in row["explanation"].lower() and row["label_consistent"] == far["label_consistent"]
    monkeypatch.setattr(interpret, "CLOSE", 0.0)  # never close
    assert it.explain([clip])[0]["runner_up"] is None
    json.dumps(row)


def test_the_posterior_token_reads_the_encoder_fused_with_the_run_s_descriptor_forest(tiny_run, synth_dir):
    """The run keeps one forest per dataset; the token's posterior is the renormalised geometric mean of the
    encoder head's and that forest's on the same windows, and a reloaded run reads the same, to the bit."""
    from eai.encoder.forest import FUSED, DescriptorForest, forest_path, late_fusion
    from eai.interpret import Interpreter
    from eai.io.inputs import read_clip
    from eai.run import Manifest

    m = Manifest.load(tiny_run)
    assert m.llm.posterior == FUSED and forest_path(tiny_run, 0).is_file()
    it = Interpreter.load(tiny_run)
    clips = [read_clip(p)[1] for p in sorted(synth_dir.rglob("*.bvh"))[:3]]
    d = it.dataset(layout=clips[0].layout)
    ws = it.windows(clips, d)
    enc = it.encoder_proba(ws, d, calibrated=False)
    forest = DescriptorForest.load(forest_path(tiny_run, 0)).predict_proba(ws.desc, len(m.labels))
    post = it.posterior(ws, d)
    assert post.shape == (len(ws.y), len(m.labels)) and np.allclose(post.sum(1), 1, atol=1e-5)
    assert np.allclose(post, late_fusion(enc.astype(np.float64), forest), atol=1e-6)
    assert not np.allclose(post, enc, atol=1e-3)  # the forest moves it
    assert np.array_equal(Interpreter.load(tiny_run).posterior(ws, d), post)


def test_a_stored_forest_predicts_as_scikit_learn_reloads_exactly_and_a_damaged_file_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file
    from sklearn.ensemble import RandomForestClassifier

    from eai.encoder.forest import DescriptorForest, out_of_fold_forest
    from eai.errors import EaiError

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40) + 1  # label 0 never seen
    F = rng.normal(size=(120, 5)) + y[:, None]
    F[:, 4] = np.nan  # a descriptor no window has: dropped
    F[3, 1] = np.nan  # a missing value reads 0
    f = DescriptorForest(0, trees=50).fit(F, y)
    sk = RandomForestClassifier(n_estimators=50, class_weight="balanced", min_samples_leaf=2, random_state=0)
    sk.fit(np.nan_to_num(F[:, :4]), y)
    G = rng.normal(size=(200, 5)) * 2 + 2
    want = np.zeros((200, 4))
    want[:, 1:] = sk.predict_proba(np.nan_to_num(G[:, :4]))
    got = f.predict_proba(G, 4)
    assert np.allclose(got, want, rtol=0, atol=1e-12) and (got[:, 0] == 0).all()
    f.save(tmp_path / "f.safetensors")
    back = DescriptorForest.load(tmp_path / "f.safetensors")
    assert np.array_equal(back.predict_proba(G, 4), got)
    arrays = load_file(str(tmp_path / "f.safetensors"))
    arrays["left"][arrays["left"] > 0] += 10_000  # children outside their tree
    save_file(arrays, str(tmp_path / "bad.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name in ("bad", "junk"):
        with pytest.raises(EaiError, match="not a descriptor forest"):
            DescriptorForest.load(tmp_path / f"{name}.safetensors")
    # out of fold: labels drawn per clip at random and descriptors that only name the clip. A forest that saw a
    # clip knows its label; out of fold, none did, and the labels are read at chance
    group = np.repeat(np.arange(24), 5)
    yc = rng.permutation(np.repeat(np.arange(3), 8))[group]
    G = np.stack([group + rng.normal(0, 0.01, len(group)), rng.normal(size=len(group))], 1)
    assert (DescriptorForest(0, trees=50).fit(G, yc).predict_proba(G, 3).argmax(1) == yc).mean() > 0.95
    oof = out_of_fold_forest(G, yc, group, 3, trees=50)
    assert oof.shape == (120, 3) and np.allclose(oof.sum(1), 1)
    assert (oof.argmax(1) == yc).mean() < 0.6


def test_pooled_ece_from_reliability_diagrams_is_the_ece_of_the_pooled_windows():
    rng = np.random.default_rng(3)
    sets = []
    for n in (50, 120, 80):
        p = rng.dirichlet(np.ones(4) * 0.6, n)
        sets.append((p, rng.integers(0, 4, n)))
    want = expected_calibration_error(np.concatenate([p for p, _ in sets]), np.concatenate([y for _, y in sets]),
                                      bins=10)
    got = pooled_ece([reliability(p, y, bins=10) for p, y in sets])
    assert abs(got - want) < 1e-3 and want > 0.05  # the diagrams round to 4 digits


def test_consistency_draws_tell_a_calibrated_model_from_a_miscalibrated_one():
    from eai.metrics import consistency_range, ece_consistency, pooled_ece

    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.full(5, 0.5), 3000)
    calibrated_y = (p.cumsum(1) < rng.random(len(p))[:, None]).sum(1)  # labels drawn from p: calibrated
    for y, holds in ((calibrated_y, True), (rng.integers(0, 5, len(p)), False)):
        c = ece_consistency([reliability(p, y, draws=200)])
        assert c["ece"] == pooled_ece([reliability(p, y)])
        for scheme in ("windows", "clips"):  # one window per clip: the two draw alike
            assert (c[scheme]["p_value"] > 0.05) == holds and c[scheme]["median"] < 0.05
        assert holds or (c["ece"] > 3 * c["windows"]["p90"] and c["windows"]["p_value"] == 1 / 201)
    assert consistency_range(c).startswith(f"{c['ece']:.3f} vs ") and consistency_range(None) == "n/a"
    # a bin's draws hit as often as its confidence says
    r = reliability(p, calibrated_y, draws=400)
    hits = np.asarray(r["consistency"]["windows"], float).mean(0) / np.asarray(r["count"])
    assert np.allclose(hits, r["confidence"], atol=0.03)
    # "clips": one draw per clip; windows of one clip are right or wrong together as far as their confidences allow
    rows = np.array([[0.6, 0.3, 0.1]] * 30 + [[0.1, 0.2, 0.7]] * 30 + [[0.05, 0.9, 0.05]] * 30)
    clip = np.repeat([0, 1, 1], 30)  # clip 1: 30 windows at 0.7, 30 at 0.9 (another label in another order)
    r = reliability(rows, np.zeros(90, int), clip=clip, draws=300, seed=1)
    assert r["bin"] == [6, 7, 9] and r["count"] == [30, 30, 30]
    together, alone = np.asarray(r["consistency"]["clips"]), np.asarray(r["consistency"]["windows"])
    assert set(np.unique(together[:, :2])) <= {0, 30} and abs((together[:, 0] == 30).mean() - 0.6) < 0.1
    assert ((together[:, 1] == 30) <= (together[:, 2] == 30)).all()  # 0.7 right: the same clip's 0.9 is too
    assert not set(np.unique(alone)) <= {0, 30}  # windows alone: partial hits
    assert ece_consistency([reliability(rows, np.zeros(90, int))]) is None  # no draws kept: nothing to say
    assert "consistency" not in reliability(rows[:0], np.zeros(0, int), draws=10)  # no windows: no draws


def test_consistency_draws_pool_over_folds_bin_by_bin():
    from eai.metrics import ece_consistency, pooled_ece

    rng = np.random.default_rng(5)
    diagrams = []
    for n in (40, 90):
        p = rng.dirichlet(np.ones(4), n)
        diagrams.append(reliability(p, rng.integers(0, 4, n), clip=np.arange(n) // 5, draws=50, seed=n))
    c = ece_consistency(diagrams)
    # the same as one diagram whose bins hold both folds' windows and draws
    merged = {"bin": [], "confidence": [], "accuracy": [], "count": [],
              "consistency": {s: [[] for _ in range(50)] for s in ("windows", "clips")}}
    for b in sorted(set(diagrams[0]["bin"] + diagrams[1]["bin"])):
        parts = [(d, d["bin"].index(b)) for d in diagrams if b in d["bin"]]
        k = sum(d["count"][i] for d, i in parts)
        merged["bin"].append(b)
        merged["count"].append(k)
        for key in ("confidence", "accuracy"):
            merged[key].append(sum(d[key][i] * d["count"][i] for d, i in parts) / k)
        for s, draws in merged["consistency"].items():
            for r, row in enumerate(draws):
                row.append(sum(d["consistency"][s][r][i] for d, i in parts))
    one = ece_consistency([merged])
    for s in ("windows", "clips"):
        assert one[s] == pytest.approx(c[s])
    # a diagram kept without bin indices whose two bins' mean confidences round into one bin (0.39996 -> 0.4):
    # both count there, windows and draws alike
    old = {"confidence": [0.4, 0.45], "accuracy": [1.0, 0.0], "count": [1, 1],
           "consistency": {"windows": [[1, 0]], "clips": [[0, 1]]}}
    got = ece_consistency([old])
    assert got["ece"] == pytest.approx(pooled_ece([old])) == pytest.approx(0.075)
    assert got["windows"]["median"] == got["clips"]["median"] == pytest.approx(0.075)
    with pytest.raises(ValueError, match="numbers of consistency draws"):
        ece_consistency([diagrams[0], {**old, "consistency": {"windows": [[1, 0]] * 2, "clips": [[0, 1]] * 2}}])
