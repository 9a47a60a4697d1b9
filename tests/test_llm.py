"""The LLM stage: splice and masks, label scoring, decoding, grounded descriptions and their checker, a run
that trains, reloads to identical probabilities and explains; one test with the real bundled model."""
import json

import numpy as np
import pytest
import torch

from eai.llm import evidence as ev
from eai.llm.backbone import TINY, load_backbone
from eai.llm.decode import ExplanationDecoder
from eai.llm.model import EmotionLLM
from eai.llm.prompts import description_prompt, recognition_prompt
from eai.llm.scores import bleu4, rouge_l
from eai.llm.tokenizer import SkeletonTokenizer, SkeletonTokenizerConfig
from eai.run import RunConfig

LABELS = ["angry", "happy", "not-confident", "sad"]


@pytest.fixture()
def tiny():
    """A fresh tiny EmotionLLM for each test (no prompt stems registered, no decoding history)."""
    lm, tok = load_backbone(TINY)
    torch.manual_seed(0)
    return EmotionLLM(lm, tok, SkeletonTokenizer(SkeletonTokenizerConfig(hidden=lm.config.hidden_size)))


def generate(llm, *args, **kw):
    """Explanations decoded by a fresh decoder (no lead history)."""
    return ExplanationDecoder(llm).generate(*args, **kw)


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, 192, 8, 23, generator=g)
    mask = torch.ones(n, 23, dtype=torch.bool)
    return f, mask


def test_placeholders_become_skeleton_tokens_and_absent_parts_are_masked(tiny, full_batch):
    f, mask = _inputs(2)
    mask[1, 15:] = False  # no legs: the two leg tokens of row 1 must be masked
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    b = full_batch(tiny, [recognition_prompt(n, "t", LABELS)] * 2, ["sad", "happy"])
    tokens, tmask, _ = tiny.skeleton_tokenizer(f, mask)
    emb, att, pos = tiny.embed(b["input_ids"], b["attention_mask"], tokens, tmask)
    where = (b["input_ids"][0] == tiny.sk_id).nonzero()[:, 0]
    assert len(where) == n
    assert torch.allclose(emb[0, where], tokens[0])
    assert att[0, where].all() and att[1, where].tolist() == tmask[1].long().tolist()
    legs = [i for i, p in enumerate(tiny.skeleton_tokenizer.cfg.parts) if "leg" in p]
    assert not tmask[1, tiny.skeleton_tokenizer.cfg.n_temporal + np.array(legs)].any()
    # answer tokens only are supervised
    lab = b["labels"][0]
    assert (lab[: where.max() + 1] == -100).all() and (lab != -100).sum() == len(tiny._ids("sad")) + 1


def test_placeholder_mismatch_raises(tiny, full_batch):
    f, mask = _inputs(1)
    b = full_batch(tiny, [recognition_prompt(3, "t", LABELS)], ["sad"])  # 3 placeholders, 11 tokens
    tokens, tmask, _ = tiny.skeleton_tokenizer(f, mask)
    with pytest.raises(ValueError, match="placeholders"):
        tiny.embed(b["input_ids"], b["attention_mask"], tokens, tmask)


@pytest.mark.parametrize("same", [True, False])
def test_label_scoring_with_shared_prefix_equals_full_sequences(tiny, same, full_batch):
    f, mask = _inputs(3)
    mask[2, :5] = False
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    prompts = [recognition_prompt(n, "t", LABELS), recognition_prompt(n, "t" if same else "a longer tag", LABELS),
               recognition_prompt(n, "t", LABELS)]
    fast = tiny.label_logprobs(f, mask, prompts, LABELS)
    ref = torch.zeros(3, len(LABELS))
    with torch.no_grad():
        for j, c in enumerate(LABELS):
            b = full_batch(tiny, prompts, [c] * 3)
            tokens, tmask, _ = tiny.skeleton_tokenizer(f, mask)
            emb, att, pos = tiny.embed(b["input_ids"], b["attention_mask"], tokens, tmask)
            lp = torch.log_softmax(tiny.lm(inputs_embeds=emb, attention_mask=att, position_ids=pos).logits, -1)
            lab = b["labels"]
            sel = lab[:, 1:] != -100
            tok_lp = lp[:, :-1].gather(2, lab[:, 1:].clamp_min(0)[..., None])[..., 0]
            ref[:, j] = (tok_lp * sel).sum(1)
    assert torch.allclose(fast, ref, atol=1e-4)
    p = tiny.label_proba(f, mask, prompts, LABELS)
    assert np.allclose(p.sum(1), 1, atol=1e-5)


def test_prompt_stems_are_computed_once_and_change_no_result(tiny):
    f, mask = _inputs(3)
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    rec = [recognition_prompt(n, "t", LABELS)] * 3
    desc = [description_prompt(n, "t", w, e) for w, e in (("sad", "slower steps"), ("happy", "x"), ("angry", "y"))]
    starts = ["Sad", "Happy", "Angry"]
    ref = tiny.label_logprobs(f, mask, rec, LABELS)
    ref1 = tiny.label_logprobs(f[:1], mask[:1], rec[:1], LABELS)
    text = generate(tiny, f, mask, desc, starts, 12)
    ids = tiny._prompt_ids(rec[0])
    assert tiny.add_stem(rec[:1]) == ids.index(tiny.sk_id)  # the whole question
    k = tiny.add_stem([description_prompt(n, "t", "angry", "a"), description_prompt(n, "t", "tired", "b")])
    assert 0 < k < tiny._prompt_ids(desc[0]).index(tiny.sk_id)  # up to the emotion word
    for _ in range(2):  # the stored caches are copied, never extended by a use
        assert torch.allclose(tiny.label_logprobs(f, mask, rec, LABELS), ref, atol=1e-5)
        assert torch.allclose(tiny.label_logprobs(f[:1], mask[:1], rec[:1], LABELS), ref1, atol=1e-5)
        assert generate(tiny, f, mask, desc, starts, 12) == text
    assert all(c is not None and c.get_seq_length() == len(s) for s, c in tiny.stems.items())


def test_each_datasets_stem_templates_give_the_question_and_the_description_up_to_its_label(tiny):
    from types import SimpleNamespace

    from eai.llm.prompts import description_templates, recognition_templates

    n = tiny.skeleton_tokenizer.cfg.n_tokens
    sets = [SimpleNamespace(tag="t", words=LABELS), SimpleNamespace(tag="u", words=["calm"])]
    rec, desc = recognition_templates(n, sets), description_templates(n, sets)
    assert rec == [[recognition_prompt(n, "t", LABELS)], [recognition_prompt(n, "u", ["calm"])]]
    assert [len(t) for t in desc] == [2, 2]
    for t in rec:  # the whole question, label words included
        assert tiny.add_stem(t) == tiny._prompt_ids(t[0]).index(tiny.sk_id)
    ids = tiny._prompt_ids(desc[0][0])
    k = tiny.add_stem(desc[0])  # up to the label word, which differs between the two renderings
    assert 0 < k < ids.index(tiny.sk_id) and tiny.tok.decode(ids[k:]).startswith(" angry")
    one = tiny._prompt_ids(desc[1][0])
    k1 = tiny.add_stem(desc[1])  # one label word: up to the evidence
    assert "calm. Measured against neutral:" in tiny.tok.decode(one[:k1]) and k1 < one.index(tiny.sk_id)


def test_frozen_stems_score_alike_pass_the_prefix_once_and_leave_the_model_as_it_was(tiny):
    f, mask = _inputs(3)
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    rec = [recognition_prompt(n, "t", LABELS)] * 3
    ref = tiny.label_logprobs(f, mask, rec, LABELS)
    tiny.add_stem([description_prompt(n, "t", "angry", "a"), description_prompt(n, "t", "tired", "b")])
    before, store = dict(tiny.stems), object()
    tiny.stem_store = store
    loss_ref = tiny.loss(f[:2], mask[:2], rec[:2], ["sad", "happy"])[0]
    lengths = []
    hook = tiny.lm.register_forward_pre_hook(
        lambda _, args, kw: lengths.append((kw.get("input_ids", kw.get("inputs_embeds"))).shape[:2]), with_kwargs=True)
    tiny.eval()
    with tiny.frozen_stems([rec[:1]]) as llm:
        assert llm.stem_store is None  # caches of weights in training never reach the store
        prefix = tiny._prompt_ids(rec[0])[:tiny._prompt_ids(rec[0]).index(tiny.sk_id)]
        assert list(llm.stems) == [tuple(prefix)]
        got = [llm.label_logprobs(f[i:i + 2], mask[i:i + 2], rec[i:i + 2], LABELS) for i in (0, 1)]
        assert len(lengths) == 3 and lengths[0] == (1, len(prefix))  # the prefix once, then each batch's rest
        with torch.enable_grad():  # with gradients the stem is not used: the loss passes its own prefix
            loss = tiny.loss(f[:2], mask[:2], rec[:2], ["sad", "happy"])[0]
        assert len(lengths) == 5 and lengths[3] == (1, len(prefix)) and torch.allclose(loss, loss_ref, atol=1e-6)
    hook.remove()
    assert torch.allclose(got[0], ref[:2], atol=1e-5) and torch.allclose(got[1], ref[1:], atol=1e-5)
    assert tiny.stems == before and tiny.stem_store is store  # the model's own back, the block's dropped
    tiny.train()
    with pytest.raises(ValueError, match="eval mode"), tiny.frozen_stems([rec[:1]]):
        pass


def test_cached_greedy_decoding_equals_recomputing(tiny):
    f, mask = _inputs(1)
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    prompt = recognition_prompt(n, "t", LABELS)
    got = generate(tiny, f, mask, [prompt], ["Sad"], max_new_tokens=6, constrained=False)[0]
    ids = tiny._prompt_ids(prompt) + tiny._ids("Sad")
    with torch.no_grad():
        tokens, tmask, _ = tiny.skeleton_tokenizer(f, mask)
        for _ in range(6):
            x = torch.tensor([ids])
            emb, att, pos = tiny.embed(x, torch.ones_like(x), tokens, tmask)
            nxt = int(tiny.lm(inputs_embeds=emb, attention_mask=att, position_ids=pos).logits[0, -1].argmax())
            if nxt == tiny.eos:
                break
            ids.append(nxt)
    start = len(tiny._prompt_ids(prompt)) + len(tiny._ids("Sad"))
    assert got == ("Sad" + tiny.tok.decode(ids[start:], skip_special_tokens=True)).strip()


def test_grounded_descriptions_claim_only_what_is_measured():
    rng = np.random.default_rng(0)
    for _ in range(200):
        z = rng.normal(0, 1.2, len(ev.NAMES))
        z[rng.random(len(z)) < 0.1] = np.nan
        label = LABELS[rng.integers(4)]
        text = ev.description(label, z, rng)
        claims = ev.check(text, z)
        assert claims and all(c.verified for c in claims), text
        assert ev.names_label(text, label, LABELS)
        assert len(claims) == max(1, len(ev.salient(z)))
        said = ev.claim_phrases(z, rng)  # the prompt's evidence and the description in the same words
        line, text = ev.evidence_line(z, said), ev.description(label, z, rng, said)
        assert [p for _, p, _, _ in ev.find_claims(text)] == [p for p, _ in said]
        assert all(p in line for p, _ in said) and ev.evidence_line(z) == ev.evidence_line(z, ev.claim_phrases(z))


def test_checker_flags_contradicted_and_missing_claims():
    z = np.zeros(len(ev.NAMES))
    z[ev.NAMES.index("speed")] = -1.5
    z[ev.NAMES.index("head_pitch")] = np.nan
    claims = ev.check("Happy: fast, energetic movement, the head lowered and slow limb movement.", z)
    assert [(c.descriptor, c.verified) for c in claims] == [("speed", False), ("head_pitch", False),
                                                             ("speed", True)]
    assert not ev.names_label("Sad and happy", "sad", ["sad", "happy"])
    assert ev.names_label("Not confident: slow movement", "not-confident", LABELS)


def test_reference_is_the_neutral_clips():
    d = np.array([[1.0] * 16, [3.0] * 16, [5.0] * 16])
    ref = ev.Reference.fit(d, ["neutral", "sad", "happy"])
    assert np.allclose(ref.mean, 1.0) and np.allclose(ref.z(d[1]), 2 / np.std([1, 3, 5]))
    assert ev.Reference.from_dict(json.loads(json.dumps(ref.to_dict()))).z(d[2]).tolist() == ref.z(d[2]).tolist()


def test_bleu_and_rouge_known_values():
    assert bleu4("the head is lowered and slow", "the head is lowered and slow") == pytest.approx(1.0)
    assert bleu4("", "x") == 0.0
    # LCS of (a b c d) and (a c d e) is 3 words: P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)


def test_stage_all_writes_a_run_that_reloads_to_identical_probabilities(tiny_run, synth_dir):
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter

    m = json.loads((tiny_run / "manifest.json").read_text())
    assert m["stage"] == "all" and m["llm_training"]["done"] == ["description", "recognition"]
    assert {"llm", "encoder"} <= set(m["held_out_llm"]["datasets"][synth_dir.name])
    assert m["held_out_llm"]["llm"] == m["held_out_llm"]["datasets"][synth_dir.name]["llm"]  # one dataset: its own
    assert m["llm_training"]["peak_memory_mb"] > 0
    assert m["llm"]["tokenizer"]["parts"] and m["llm"]["tokenizer"]["hidden"] == 64  # the whole tokenizer config
    assert (tiny_run / "llm-adapter" / "adapter_config.json").is_file()
    clips = load_clips(open_dataset(str(synth_dir)), progress=False)[:3]
    a = Interpreter.load(tiny_run).explain(clips, 8)
    b = Interpreter.load(tiny_run).explain(clips, 8)
    assert [r["probabilities"] for r in a] == [r["probabilities"] for r in b]
    assert [r["explanation"] for r in a] == [r["explanation"] for r in b]
    for r in a:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-3
        assert r["explanation"].lower().startswith(r["emotion"].lower())


def test_a_saved_run_is_rebuilt_from_its_manifest_alone(tiny_run, synth_dir, monkeypatch):
    """Loading a run reads no code default: every config and record type refuses to fill a field from one,
    and the run computes exactly what it computed before."""
    import dataclasses

    from eai.data.datasets import load_clips, open_dataset
    from eai.data.joint import RunDataset
    from eai.encoder.model import EncoderConfig
    from eai.interpret import Interpreter
    from eai.llm.builder import LLMConfig, LoraSettings
    from eai.run import LLMTraining, Manifest
    from eai.schedules import StageConfig, TrainConfig

    clips = load_clips(open_dataset(str(synth_dir)), progress=False)[:3]
    before = Interpreter.load(tiny_run).explain(clips, 8)
    for cls in (Manifest, RunConfig, RunDataset, EncoderConfig, TrainConfig, LLMConfig, LoraSettings,
                SkeletonTokenizerConfig, StageConfig, LLMTraining):
        saved = [f.name for f in dataclasses.fields(cls) if f.metadata.get("saved", True)]

        def strict(self, *args, __init=cls.__init__, __saved=saved, __cls=cls, **kwargs):
            missing = [n for n in __saved[len(args):] if n not in kwargs]
            assert not missing, f"{__cls.__name__} built with today's defaults for {missing}"
            __init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", strict)
    with pytest.raises(AssertionError, match="today's defaults"):  # the guard itself works
        SkeletonTokenizerConfig(hidden=64)
    after = Interpreter.load(tiny_run).explain(clips, 8)
    assert [r["probabilities"] for r in after] == [r["probabilities"] for r in before]
    assert [r["explanation"] for r in after] == [r["explanation"] for r in before]


def test_llm_stages_resume_on_a_moved_copy_of_the_dataset(tiny_run, synth_dir, tmp_path, smoke_run):
    import shutil

    from eai.errors import EaiError
    from eai.train.llm_run import train_run

    run, data = tmp_path / "run", tmp_path / "moved-data" / synth_dir.name
    shutil.copytree(synth_dir, data)  # another machine: same dataset, other path
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("llm*", "skeleton_tokenizer*"))
    m = json.loads((run / "manifest.json").read_text())
    m.update(llm=None, llm_training=None, held_out_llm={}, stage="encoder")  # the encoder stage only
    (run / "manifest.json").write_text(json.dumps(m))
    train_run(smoke_run(data, run), progress=False)
    done = json.loads((run / "manifest.json").read_text())
    assert done["llm_training"]["done"] == ["description", "recognition"]
    assert done["held_out_llm"] == json.loads((tiny_run / "manifest.json").read_text())["held_out_llm"]
    other = tmp_path / "other" / synth_dir.name  # same name, but a held-out clip is missing: not the dataset
    shutil.copytree(synth_dir, other)
    held = m["datasets"][0]["held_out_groups"][0]
    for f in other.rglob(f"{held}*"):
        f.unlink()
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EaiError, match="other datasets"):
        train_run(smoke_run(other, run), progress=False)


def test_interrupted_llm_stage_resumes_to_the_same_weights(tmp_path):
    from eai.data.joint import RunDataset
    from eai.llm.builder import LLMConfig, build_llm
    from eai.schedules import StageConfig
    from eai.train.stages import FeatureSet, Sampler, train_stage

    rng = np.random.default_rng(0)
    n, m = 16, 4
    f = rng.standard_normal((n, 32, 4, 23)).astype(np.float32)
    zeros, ones = (lambda k: np.zeros(k, np.int64)), (lambda k: np.ones(k, np.float32))
    fs = FeatureSet(f, np.ones((n, 23), bool), np.arange(n) % 4, rng.standard_normal((n, len(ev.NAMES))),
                    np.arange(n) % m, zeros(n), ones(n), f[:m], np.ones((m, 23), bool), np.arange(m) % 4,
                    rng.standard_normal((m, len(ev.NAMES))), zeros(m), ones(m),
                    rng.dirichlet(np.ones(4), n).astype(np.float32), rng.dirichlet(np.ones(4), m).astype(np.float32))
    cfg = StageConfig(24, 2, 1e-3, 1e-3, 2, mix=0.5, contrastive=0.0)  # a checkpoint every 20 steps
    dataset = RunDataset("t", "", "folders", "gait16", LABELS, LABELS, "t")

    class Killed(Exception):
        pass

    def train(ckpt, kill_at=None):
        llm = build_llm(LLMConfig(TINY, tokenizer=SkeletonTokenizerConfig(feature_dim=32, hidden=64, n_labels=4)))
        sampler = Sampler(fs, LABELS, [dataset], llm.skeleton_tokenizer.cfg.n_tokens, 0)

        def log(rec):
            if rec["step"] == kill_at:
                raise Killed

        return llm, train_stage(llm, sampler, "recognition", cfg, ckpt, False, log)

    full, hist = train(tmp_path / "a.pt")
    with pytest.raises(Killed):
        train(tmp_path / "b.pt", kill_at=22)  # killed two steps after the checkpoint of step 20
    resumed, hist2 = train(tmp_path / "b.pt")
    assert [h["step"] for h in hist2] == list(range(1, 25)) and [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    assert all(a["seconds"] <= b["seconds"] for a, b in zip(hist2, hist2[1:]))
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_linear_computes_what_linear_computes(bias):
    from eai.llm.cpu import FewRowsLinear, few_rows_linears

    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40, bias=bias)
    few = FewRowsLinear.of(lin)
    assert few.weight is lin.weight
    with torch.no_grad():
        for shape in [(1, 24), (1, 1, 24), (2, 3, 24), (5, 7, 24)]:  # one row, a few, more than ROWS
            x = torch.randn(*shape)
            assert few(x).shape == lin(x).shape
            assert torch.allclose(few(x), lin(x), atol=1e-6)
    lm, _ = load_backbone(TINY)
    lm = few_rows_linears(lm)
    assert not any(type(m) is torch.nn.Linear for m in lm.modules())
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight  # ties kept


def test_cpu_interpreter_answers_as_the_plain_linear_layers_do(tiny_run, synth_dir, monkeypatch):
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter
    from eai.llm.cpu import FewRowsLinear

    clips = load_clips(open_dataset(str(synth_dir)), progress=False)[:2]
    it = Interpreter.load(tiny_run)
    assert any(isinstance(m, FewRowsLinear) for m in it.llm.lm.modules())
    fast = it.explain(clips, 8)
    monkeypatch.setattr(FewRowsLinear, "ROWS", 0)  # every product through nn.Linear's own path
    plain = it.explain(clips, 8)
    assert [r["explanation"] for r in fast] == [r["explanation"] for r in plain]
    for a, b in zip(fast, plain):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_finished_stages_are_not_retrained(tiny_run, synth_dir, tmp_path, smoke_run):
    import shutil

    from eai.errors import EaiError
    from eai.train.llm_run import train_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    m = json.loads((run / "manifest.json").read_text())
    m.update(stage="encoder", held_out_llm={})  # killed after both stages, before the held-out scores
    (run / "manifest.json").write_text(json.dumps(m))
    before = (run / "skeleton_tokenizer.safetensors").stat().st_mtime_ns
    train_run(smoke_run(synth_dir, run), progress=False)
    assert (run / "skeleton_tokenizer.safetensors").stat().st_mtime_ns == before
    assert json.loads((run / "manifest.json").read_text())["held_out_llm"] == \
        json.loads((tiny_run / "manifest.json").read_text())["held_out_llm"]
    with pytest.raises(EaiError, match="finished run"):  # a finished run is never trained over
        train_run(smoke_run(synth_dir, run), progress=False)


def test_cli_explain_json_and_bad_input(tiny_run, synth_dir, tmp_path, capsys):
    from eai.cli import main

    f = sorted(p for p in synth_dir.rglob("*.bvh"))[0]
    assert main(["explain", str(f), "--model", str(tiny_run), "--json", "--max-tokens", "6"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["file"] == str(f) and set(rows[0]) >= {"emotion", "probabilities", "explanation", "evidence"}
    bad = tmp_path / "bad.bvh"
    bad.write_text("HIERARCHY\nROOT Hips {\n")
    assert main(["explain", str(bad), "--model", str(tiny_run)]) == 2
    assert main(["explain", str(f), "--model", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_bundled_model_trains_a_few_steps_and_explains(synth_dir, tmp_path, smoke_run):
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter
    from eai.llm.backbone import BUNDLED
    from eai.train.llm_run import train_run

    run = train_run(smoke_run(synth_dir, tmp_path / "run", backbone=BUNDLED, description_steps=2, recognition_steps=2),
                    progress=False)
    it = Interpreter.load(run)
    assert it.llm.lm.config.hidden_size == 576
    clip = load_clips(open_dataset(str(synth_dir)), progress=False)[:1]
    r = it.explain(clip, 12)[0]
    assert r["emotion"] in it.labels and r["explanation"].lower().startswith(r["emotion"].lower())
    assert Interpreter.load(run).recognise(clip)[0]["probabilities"] == pytest.approx(
        it.recognise(clip)[0]["probabilities"], abs=1e-6)


def test_training_loss_with_shared_prefix_equals_full_sequences(tiny, full_batch):
    f, mask = _inputs(3)
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    prompts = [recognition_prompt(n, "t", LABELS)] * 3
    answers = ["sad", "not-confident", "happy"]
    loss, _ = tiny.loss(f, mask, prompts, answers)
    b = full_batch(tiny, prompts, answers)
    tokens, tmask, _ = tiny.skeleton_tokenizer(f, mask)
    emb, att, pos = tiny.embed(b["input_ids"], b["attention_mask"], tokens, tmask)
    logits = tiny.lm(inputs_embeds=emb, attention_mask=att, position_ids=pos).logits[:, :-1]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                                            ignore_index=-100)
    assert float(loss) == pytest.approx(float(ref), abs=1e-5)
    loss.backward()
    assert tiny.skeleton_tokenizer.semantic[0].weight.grad is not None
    tiny.zero_grad()


def test_every_training_description_is_in_the_decoding_grammar(tiny):
    from eai.llm.grammar import ClaimDecoder

    g = ClaimDecoder(tiny.tok, tiny.eos)
    rng = np.random.default_rng(1)
    for _ in range(150):
        z = rng.normal(0, 1.3, len(ev.NAMES))
        label = LABELS[rng.integers(4)]
        ids = tiny._ids(ev.description(label, z, rng))
        start = tiny._ids(ev.label_text(label))
        assert ids[:len(start)] == start
        st = g.start()
        for t in ids[len(start):] + [tiny.eos]:
            assert t in g.allowed(st)
            if t != tiny.eos:
                g.advance(st, t)


def test_constrained_decoding_makes_only_lexicon_claims(tiny):
    f, mask = _inputs(4, seed=3)
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    texts = generate(tiny, f, mask, [recognition_prompt(n, "t", LABELS)] * 4, ["Sad", "Happy", "Angry", "Sad"], 40)
    for t in texts:
        claims = ev.find_claims(t)
        assert t.endswith(".") and 1 <= len(claims) <= 3, t
        assert len({d for _, _, d, _ in claims}) == len(claims)  # one claim per descriptor
    # taking the grammar's forced tokens in one pass gives the same text as one pass per token
    one_by_one = generate(tiny, f, mask, [recognition_prompt(n, "t", LABELS)] * 4, ["Sad", "Happy", "Angry", "Sad"],
                               40, jump=False)
    assert texts == one_by_one


def test_claim_drafts_continue_in_the_grammar_from_where_a_row_is(tiny):
    from eai.llm.grammar import ClaimDecoder

    g = ClaimDecoder(tiny.tok, tiny.eos)
    claims = ["slow movement", "the head lowered", "short strides"]
    st = g.start()
    assert g.continuation(st, claims) == []  # nothing before the lead
    for t in tiny._ids(" is read from"):
        g.advance(st, t)
    draft = g.continuation(st, claims)
    assert tiny.tok.decode(draft) == " slow movement, the head lowered and short strides."
    for t in tiny._ids(" the head lowered"):  # the model made another claim first
        g.advance(st, t)
    assert tiny.tok.decode(g.continuation(st, claims)) == ", slow movement and short strides."
    for t in tiny._ids(", short strides"):
        g.advance(st, t)
    assert tiny.tok.decode(g.continuation(st, claims)) == " and slow movement."
    for t in tiny._ids(" and slow movement"):
        g.advance(st, t)
    assert tiny.tok.decode(g.continuation(st, claims)) == "."  # three claims made: only the end is left
    st = g.start()
    for t in tiny._ids(":") + draft:
        assert t in g.allowed(st)
        g.advance(st, t)


def test_drafted_claims_change_no_text_and_save_passes_when_right(tiny, monkeypatch):
    from collections import Counter

    dec = ExplanationDecoder(tiny)  # one decoder: it remembers the leads chosen
    f, mask = _inputs(4, seed=3)
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    prompts, starts = [recognition_prompt(n, "t", LABELS)] * 4, ["Sad", "Happy", "Angry", "Sad"]
    calls = []
    forward = tiny.lm.forward
    monkeypatch.setattr(tiny.lm, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    plain = dec.generate(f, mask, prompts, starts, 40)
    n_plain = len(calls)
    own = [[p for _, p, _, _ in ev.find_claims(t)] for t in plain]  # the claims the model makes, its order
    assert all(own)
    wrong = [list(reversed([w for w, _, _ in ev.LEXICON if w not in o][:3])) for o in own]
    for drafts in (wrong, [o[:1] + ["a long stride"] for o in own], [["movement close to the neutral baseline"]] * 4):
        assert dec.generate(f, mask, prompts, starts, 40, drafts=drafts) == plain
    calls.clear()
    assert dec.generate(f, mask, prompts, starts, 40, drafts=own) == plain
    assert len(calls) < n_plain  # the first claims accepted in the lead's pass (the separators are the model's)
    calls.clear()
    dec.generate(f, mask, prompts, starts, 1)  # the prompt's passes only
    n_prompt = len(calls)
    # a draft of exactly the model's own tokens after the lead: all of it accepted in one pass
    from eai.llm.grammar import ClaimDecoder

    exact = []
    for t, s0 in zip(plain, starts):
        ids = tiny._ids(t)[len(tiny._ids(s0)):]
        lead = next(x for x in ClaimDecoder(tiny.tok, tiny.eos).leads if tuple(ids[:len(x)]) == x)
        exact.append(ids[len(lead):])
    monkeypatch.setattr(ClaimDecoder, "continuation",
                        lambda self, st, d: list(d) if st.phase == "lead" and st.partial in self.leads else [])
    dec.leads_chosen = {}
    calls.clear()
    assert dec.generate(f, mask, prompts, starts, 40, drafts=exact) == plain
    assert len(calls) == n_prompt + 1
    # the leads chosen are remembered: next time the lead is drafted too, and all of it is read in the prompt pass
    assert {s0: c.most_common(1)[0][0] for s0, c in dec.leads_chosen.items()} == {
        s0: tuple(tiny._ids(t)[len(tiny._ids(s0)):][:len(tiny._ids(t)) - len(tiny._ids(s0)) - len(e)])
        for t, s0, e in zip(plain, starts, exact)}
    calls.clear()
    assert dec.generate(f, mask, prompts, starts, 40, drafts=exact) == plain
    assert len(calls) == n_prompt
    dec.leads_chosen = {"Sad": Counter({tuple(tiny._ids(",")): 5})}  # a lead the grammar does not have: rejected
    assert dec.generate(f, mask, prompts, starts, 40, drafts=exact) == plain
    dec.leads_chosen = {}
    monkeypatch.undo()
    assert dec.generate(f, mask, prompts, starts, 9, drafts=own) == dec.generate(f, mask, prompts, starts, 9)


def test_kinematic_token_needs_and_uses_descriptors():
    m = SkeletonTokenizer(SkeletonTokenizerConfig(hidden=32, n_descriptors=len(ev.NAMES)))
    f, mask = _inputs(2)
    with pytest.raises(ValueError, match="z-scores"):
        m(f, mask)
    f = f[:1].repeat(2, 1, 1, 1)  # the same movement twice
    z = torch.zeros(2, len(ev.NAMES))
    z[1, 0] = float("nan")  # missing differs from neutral
    tokens, tmask, _ = m(f, mask, z)
    assert tokens.shape == (2, m.cfg.n_tokens, 32) and tmask.all()
    assert not torch.allclose(tokens[0, -1], tokens[1, -1])
    assert torch.allclose(tokens[0, :-1], tokens[1, :-1])


def test_stage_all_with_the_kinematic_token(tiny_run, synth_dir, tmp_path, smoke_run):
    import shutil

    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter
    from eai.train.llm_run import train_run

    run = tmp_path / "kin"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("llm*", "skeleton_tokenizer*"))
    m = json.loads((run / "manifest.json").read_text())
    m.update(llm=None, llm_training=None, held_out_llm={}, stage="encoder")  # the encoder stage only
    (run / "manifest.json").write_text(json.dumps(m))
    train_run(smoke_run(synth_dir, run, kinematic_token=True), progress=False)
    it = Interpreter.load(run)
    assert it.llm.skeleton_tokenizer.cfg.n_descriptors == len(ev.NAMES)
    clips = load_clips(open_dataset(str(synth_dir)), progress=False)[:2]
    assert [r["probabilities"] for r in it.explain(clips, 8)] == [
        r["probabilities"] for r in Interpreter.load(run).explain(clips, 8)]


@pytest.mark.slow
def test_bench_llm_trains_each_protocol_fold_and_reads_finished_folds_back(capsys, synth_dir, tmp_path):
    from eai.cli import main
    from eai.data.datasets import load_clips, open_dataset
    from eai.data.splits import folds
    from eai.data.windows import window_set

    out, js = tmp_path / "folds", tmp_path / "bench.json"
    args = ["bench", "llm", "--data", str(synth_dir), "--out", str(out), "--folds", "2", "--schedule", "smoke",
            "--llm-schedule", "smoke", "--backbone", TINY, "--quiet", "--json", str(js)]
    assert main(args) == 0
    r = json.loads(js.read_text())
    assert r["folds"] == 2 and [(f["seed"], f["fold"]) for f in r["per_fold"]] == [(0, 0), (0, 1)]
    assert set(r["models"]) == {"llm", "encoder"}
    for k in ("llm", "encoder"):  # the protocol figures are the folds' held-out figures, averaged
        assert r["models"][k]["window_accuracy"] == pytest.approx(np.mean([f[k]["window_accuracy"]
                                                                            for f in r["per_fold"]]))
        c = r["models"][k]["ece_pooled_consistency"]  # what a calibrated model would read on the same windows
        assert c["ece"] == pytest.approx(r["models"][k]["ece_pooled"]) and set(c) == {"ece", "windows", "clips"}
    assert r["explanations"]["explanations"] == r["clips"]
    # each fold's run held out exactly the clips that fold of the protocol tests
    clips = load_clips(open_dataset(str(synth_dir)), progress=False)
    w = window_set(clips, sorted({c.label for c in clips}), descriptors=False, face=False)
    for i, (_, test) in enumerate(folds(w.y, w.group, 2, 0)):
        m = json.loads((out / f"seed-0-fold-{i}" / "manifest.json").read_text())
        assert set(m["datasets"][0]["held_out_groups"]) == {clips[c].group for c in set(w.clip[test])}
        assert m["config"]["fold"] == i
    assert r["clips"] == len(clips)
    # run again: the finished folds are read back, not retrained, and score the same
    weights = [out / f"seed-0-fold-{i}" / "skeleton_tokenizer.safetensors" for i in range(2)]
    stamp = [p.stat().st_mtime_ns for p in weights]
    assert main(args) == 0
    assert stamp == [p.stat().st_mtime_ns for p in weights]
    again = json.loads(js.read_text())
    assert again["models"] == r["models"] and again["explanations"] == r["explanations"]
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if "a calibrated model would read" in x)
    assert "LLM window accuracy >= the encoder's in" in printed and "n/a" not in line
    # each fold's explanations were kept beside its weights and read back, not explained again
    kept = [out / f"seed-0-fold-{i}" / "held-out-explanations.json" for i in range(2)]
    assert sum(len(json.loads(k.read_text())["rows"]) for k in kept) == len(clips)
    assert all(row["clip"] and row["explanation"] for k in kept for row in json.loads(k.read_text())["rows"])
    kept_at = [k.stat().st_mtime_ns for k in kept]
    assert main(args) == 0
    assert kept_at == [k.stat().st_mtime_ns for k in kept]
    # other weights in a fold's folder: its clips are explained again
    weights[1].write_bytes(weights[0].read_bytes())
    assert main(args) == 0
    assert kept[1].stat().st_mtime_ns != kept_at[1] and kept[0].stat().st_mtime_ns == kept_at[0]
    # folds whose encoder started from the shipped weights are not averaged with folds from scratch
    assert main(args + ["--init", "none"]) == 2
    assert "started otherwise" in capsys.readouterr().err
    # nor folds whose LLM trained on another schedule (the cpu schedule's LoRA has no dropout: the run says so)
    assert r["schedule"]["llm"] == "smoke" and r["schedule"]["lora_dropout"] == 0.05
    other = [("cpu" if a == "smoke" and args[i - 1] == "--llm-schedule" else a) for i, a in enumerate(args)]
    assert main(other) == 2
    assert "LLM trained otherwise (smoke schedule, LoRA dropout 0.05)" in capsys.readouterr().err



def test_hand_merged_adapter_gives_peft_merge_and_unload_logits(tmp_path):
    """load_merged_llm folds LoRA without peft: the same weights and logits as peft's merge_and_unload, bit for bit."""
    from eai.llm.builder import LoraSettings, add_lora, merge_adapter, plain_lora

    lm, _ = load_backbone(TINY, seed=1)
    peft_lm = add_lora(lm, LoraSettings(r=8, lora_alpha=16))
    torch.manual_seed(3)
    with torch.no_grad():  # fresh LoRA B is zero: give both factors random values
        for name, p in peft_lm.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    peft_lm.save_pretrained(tmp_path / "adapter")
    assert plain_lora(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()))
    ids = torch.randint(0, 200, (2, 9))
    merged = peft_lm.merge_and_unload().eval()
    base, _ = load_backbone(TINY, seed=1)
    ours = merge_adapter(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, merged(input_ids=ids).logits)
        plain, _ = load_backbone(TINY, seed=1)
        assert not torch.allclose(plain(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-3)
    for (k, a), b in zip(merged.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), k
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert not plain_lora({**cfg, "use_dora": True})  # DoRA is left to peft
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "r": 4}))
    with pytest.raises(ValueError, match="does not fit"):
        merge_adapter(load_backbone(TINY)[0], tmp_path / "adapter")


def test_stem_caches_kept_between_processes_change_no_answer(tiny_run, synth_dir, tmp_path, monkeypatch):
    """A second load of a run reads the prompt stems' caches the first one stored instead of computing them,
    with the same answers; another model's weights have another fingerprint, so never read them."""
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter
    from eai.llm.stems import weights_fingerprint

    monkeypatch.setenv("EAI_STEM_CACHE", str(tmp_path / "stems"))
    clips = load_clips(open_dataset(str(synth_dir)), progress=False)[:2]
    first = Interpreter.load(tiny_run).explain(clips, 8)
    assert len(list((tmp_path / "stems").glob("*.safetensors"))) == 2  # the recognition and description stems
    it = Interpreter.load(tiny_run)
    forward, stem_passes = it.llm.lm.forward, []

    def counting(*args, **kw):
        if kw.get("input_ids") is not None and kw.get("past_key_values") is None:
            stem_passes.append(kw["input_ids"].shape)
        return forward(*args, **kw)

    it.llm.lm.forward = counting
    again = it.explain(clips, 8)
    assert not stem_passes and [r["explanation"] for r in again] == [r["explanation"] for r in first]
    for a, b in zip(first, again):
        assert a["probabilities"] == b["probabilities"]
    before = weights_fingerprint(it.llm.lm)
    with torch.no_grad():
        next(it.llm.lm.parameters()).add_(1e-3)
    assert weights_fingerprint(it.llm.lm) != before


def test_decoding_held_to_a_clip_s_grounded_claims_makes_only_claims_the_checker_accepts(tiny):
    """Random clips and labels, an untrained LM: free decoding in the lexicon makes claims the clip does not
    bear out; held to evidence.sayable, every claim is verified and supports the label, and a row whose label
    nothing supports says so."""
    rng = np.random.default_rng(4)
    desc = rng.normal(0, 1, (40, len(ev.NAMES)))
    labs = [LABELS[i % 4] for i in range(40)] + ["neutral"] * 20
    desc = np.concatenate([desc + np.eye(4, len(ev.NAMES))[[i % 4 for i in range(40)]] * 2,
                           rng.normal(0, 1, (20, len(ev.NAMES)))])
    ref = ev.Reference.fit(desc, labs)
    f, mask = _inputs(8, seed=5)
    n = tiny.skeleton_tokenizer.cfg.n_tokens
    clips = rng.normal(0, 1.5, (8, len(ev.NAMES))) * ref.scale + ref.mean
    labels = [LABELS[i % 4] for i in range(7)] + ["neutral"]
    clips[7] = ref.mean + 3 * ref.scale  # answered neutral, moving far from neutral: nothing supports the answer
    grounds = [ref.grounds(lab, c) for lab, c in zip(labels, clips)]
    zs = [ref.z(c) for c in clips]
    args = (tiny, f, mask, [recognition_prompt(n, "t", LABELS)] * 8, [ev.label_text(x) for x in labels], 40)
    free = generate(*args)
    held = generate(*args, allow=[ev.sayable(z, g) for z, g in zip(zs, grounds)])
    judged_free = [c for t, z, g in zip(free, zs, grounds) for c in ev.check(t, z, g)]
    assert not all(c.verified and c.supports is not False for c in judged_free)  # the test can tell
    for t, z, g in zip(held, zs, grounds):
        claims = ev.check(t, z, g)
        assert claims and t.endswith("."), t
        assert all(c.verified and (c.supports is not False or c.descriptor == ev.NO_SUPPORT_KEY)
                   for c in claims), (t, [c.to_dict() for c in claims])
        if ev.sayable(z, g) == {(ev.NO_SUPPORT_KEY, 0)}:
            assert ev.NO_SUPPORT in t
    assert ev.sayable(zs[7], grounds[7]) == {(ev.NO_SUPPORT_KEY, 0)} and ev.NO_SUPPORT in held[7]
    # the set is the checker's own: every wording of an allowed claim passes, every other movement claim fails
    z, g = zs[0], grounds[0]
    ok = ev.sayable(z, g)
    for phrase, d, s in ev.LEXICON:
        if d not in (ev.NEUTRAL, ev.NO_SUPPORT_KEY):
            c = ev.check(phrase, z, g)[0]
            assert ((d, s) in ok) == (c.verified and c.supports is not False)
