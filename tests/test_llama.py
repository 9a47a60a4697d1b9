"""eai.llm.llama's inference decoder and eai.llm.chat_tokenizer give what transformers gives (the cold start of
`eai explain` runs on them), and a run's merged backbone is cached and read back."""
from __future__ import annotations

import json

import pytest
import torch

from eai.llm.backbone import BUNDLED, TINY, load_backbone
from eai.llm.llama import KVCache, LlamaDecoder, LlamaSettings


def _adapter_cfg(folder) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def _twin(lm) -> LlamaDecoder:
    state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    return LlamaDecoder.from_state(LlamaSettings.from_config(lm.config.to_dict()), state)


def test_decoder_gives_transformers_llama_logits_with_padding_and_cache():
    lm, _ = load_backbone(TINY, seed=2)
    ours = _twin(lm)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight  # tied, as the config says
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (3, 11))
    att = torch.ones_like(ids)
    att[1, :4] = 0  # left padding
    att[2, 6] = 0  # a token masked in the middle (a rejected draft)
    pos = (att.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = lm(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
        got = ours(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
        keep = att.bool()
        assert torch.allclose(got.logits[keep], ref.logits[keep], atol=1e-5)
        # a second pass on the cache, two new tokens, the last 2 columns' logits
        more = torch.randint(3, 300, (3, 2))
        att2 = torch.cat([att, torch.ones_like(more)], 1)
        pos2 = pos[:, -1:] + 1 + torch.arange(2)
        ref2 = lm(input_ids=more, attention_mask=att2, position_ids=pos2, past_key_values=ref.past_key_values,
                  use_cache=True, logits_to_keep=2)
        got2 = ours(input_ids=more, attention_mask=att2, position_ids=pos2, past_key_values=got.past_key_values,
                    use_cache=True, logits_to_keep=2)
        assert got2.logits.shape == ref2.logits.shape == (3, 2, lm.config.vocab_size)
        assert torch.allclose(got2.logits, ref2.logits, atol=1e-5)
        assert got2.past_key_values.get_seq_length() == 13
    seen = att2.bool()  # keys and values of columns attended to (a padding row's own output is arbitrary)
    for (k, v), (rk, rv, *_) in zip(got2.past_key_values, ref2.past_key_values):
        k, v, rk, rv = (t.transpose(1, 2)[seen] for t in (k, v, rk, rv))
        assert torch.allclose(k, rk, atol=1e-5) and torch.allclose(v, rv, atol=1e-5)


def test_interpreter_on_the_decoder_answers_as_on_transformers(tiny_run, synth_dir):
    """The whole inference path (stems, label likelihood over a token tree with its 4D mask, grammar-constrained
    decoding with drafts) gives the same probabilities and the same explanations on either decoder."""
    from eai.data.datasets import load_clips, open_dataset
    from eai.interpret import Interpreter

    clips = load_clips(open_dataset(str(synth_dir)), progress=False)[:3]
    ref = Interpreter.load(tiny_run)
    assert not isinstance(ref.llm.lm, LlamaDecoder)  # the tiny backbone is built by transformers
    theirs = [ref.explain([c], 12)[0] for c in clips]
    from eai.llm.cpu import few_rows_linears

    it = Interpreter.load(tiny_run)  # its prompt stems are made on first use: by the decoder here
    it.llm.lm = few_rows_linears(_twin(it.llm.lm))  # as Interpreter.of runs it on a CPU
    assert type(it.llm.lm.model.layers[0].mlp.up_proj).__name__ == "FewRowsLinear"
    it = Interpreter.ready(it.run, it.llm)  # a stem store of the decoder's fingerprint, with its cache type
    ours = [it.explain([c], 12)[0] for c in clips]
    for a, b in zip(ours, theirs):
        assert a["emotion"] == b["emotion"] and a["explanation"] == b["explanation"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_kv_cache_repeats_rows_and_copies():
    import copy

    k, v = torch.arange(24.).view(1, 2, 3, 4), -torch.arange(24.).view(1, 2, 3, 4)
    c = KVCache([(k, v)])
    d = copy.deepcopy(c)
    c.batch_repeat_interleave(3)
    assert c.layers[0][0].shape == (3, 2, 3, 4) and torch.equal(c.layers[0][0][2], k[0])
    assert d.layers[0][0].shape == (1, 2, 3, 4) and c.get_seq_length() == 3


def test_unsupported_configurations_stay_on_transformers():
    plain = {"model_type": "llama", "hidden_act": "silu", "rope_parameters": {"rope_type": "default"}}
    assert LlamaSettings.supported(plain)
    assert not LlamaSettings.supported({**plain, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}})
    assert not LlamaSettings.supported({**plain, "attention_bias": True})
    assert not LlamaSettings.supported({**plain, "model_type": "qwen2"})


@pytest.mark.slow
def test_chat_tokenizer_gives_the_transformers_tokenizer_of_the_bundled_model():
    from transformers import AutoTokenizer

    from eai.llm.backbone import bundled_folder
    from eai.llm.chat_tokenizer import ChatTokenizer
    from eai.llm.prompts import SKELETON, SYSTEM, description_prompt, recognition_prompt

    ref, ours = AutoTokenizer.from_pretrained(str(bundled_folder())), ChatTokenizer.of(bundled_folder())
    for t in (ref, ours):
        t.add_tokens([SKELETON], special_tokens=True)
    assert len(ours) == len(ref) and ours.convert_tokens_to_ids(SKELETON) == ref.convert_tokens_to_ids(SKELETON)
    assert (ours.eos_token, ours.pad_token_id) == (ref.eos_token, ref.pad_token_id)
    for user in (recognition_prompt(4, "bandai-namco-1", ["angry", "happy", "not-confident"]),
                 description_prompt(4, "t", "sad", "the head lowered (head pitch z -1.2)"), "Ünïcode — “quotes”  x\n"):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        a = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == a
        ids = ref(a, add_special_tokens=False)["input_ids"]
        assert ours(a, add_special_tokens=False)["input_ids"] == ids
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_bundled_backbone_merged_on_the_decoder_gives_transformers_logits(tmp_path, monkeypatch):
    """A run's adapter on the bundled SmolLM2: eai.llm.llama over the memory-mapped weights and the cached merged
    layers gives the logits of transformers' model merged in place; the merged layers are written once and read
    back; another adapter file gets another cache entry."""
    from eai.llm import builder
    from eai.llm.builder import ADAPTER, LLMConfig, LoraSettings, _fast_backbone, add_lora, merge_adapter

    monkeypatch.setenv("EAI_MERGED_CACHE", str(tmp_path / "merged"))
    lm, _ = load_backbone(BUNDLED)
    peft_lm = add_lora(lm, LoraSettings(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_lm.save_pretrained(tmp_path / ADAPTER)
    ids = torch.tensor([[1, 504, 3458, 28, 253, 1216, 30, 2]])
    ours = _fast_backbone(LLMConfig(backbone=BUNDLED), tmp_path / ADAPTER, _adapter_cfg(tmp_path / ADAPTER))
    cached = list((tmp_path / "merged").glob("*.safetensors"))
    assert isinstance(ours, LlamaDecoder) and len(cached) == 1
    ref = merge_adapter(load_backbone(BUNDLED)[0], tmp_path / ADAPTER)
    with torch.no_grad():
        a, b = ours(input_ids=ids).logits, ref(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4) and int(a[0, -1].argmax()) == int(b[0, -1].argmax())
    calls = []
    monkeypatch.setattr("eai.llm.llama.merged_state", lambda *a: calls.append(a))
    again = _fast_backbone(LLMConfig(backbone=BUNDLED), tmp_path / ADAPTER, _adapter_cfg(tmp_path / ADAPTER))  # read back, not merged again
    assert calls == []
    monkeypatch.undo()
    monkeypatch.setenv("EAI_MERGED_CACHE", str(tmp_path / "merged"))
    assert torch.equal(again.model.layers[3].self_attn.q_proj.weight, ours.model.layers[3].self_attn.q_proj.weight)
    assert list((tmp_path / "merged").glob("*.safetensors")) == cached
    cfg = json.loads((tmp_path / ADAPTER / "adapter_config.json").read_text())
    (tmp_path / ADAPTER / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 4}))
    _fast_backbone(LLMConfig(backbone=BUNDLED), tmp_path / ADAPTER, _adapter_cfg(tmp_path / ADAPTER))
    assert len(list((tmp_path / "merged").glob("*.safetensors"))) == 2
    assert builder.MERGED_KEEP >= 2
    assert torch.equal(ours.model.embed_tokens.weight, ref.model.embed_tokens.weight)  # untouched by the adapter


def _tiny_adapter(tmp_path):
    from eai.llm.builder import ADAPTER, LoraSettings, add_lora

    lm, _ = load_backbone(TINY, seed=1)
    peft_lm = add_lora(lm, LoraSettings(r=4, lora_alpha=8))
    with torch.no_grad():
        for name, p in peft_lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_lm.save_pretrained(tmp_path / ADAPTER)
    return tmp_path / ADAPTER, {k: v.detach().clone() for k, v in load_backbone(TINY, seed=1)[0].state_dict().items()}


def test_merged_cache_survives_damage_and_evicts_only_its_own_entries(tmp_path, monkeypatch):
    from eai.llm import builder

    monkeypatch.setenv("EAI_MERGED_CACHE", str(tmp_path / "merged"))
    folder, base = _tiny_adapter(tmp_path)
    (tmp_path / "merged").mkdir()
    other = tmp_path / "merged" / "not-ours.safetensors"
    other.write_bytes(b"a user's file")
    for i in range(builder.MERGED_KEEP + 2):  # older entries of other runs
        (tmp_path / "merged" / f"{i:032x}.safetensors").write_bytes(b"x")
    base_file = tmp_path / "model.safetensors"
    base_file.write_bytes(b"stands for the backbone's file")
    first = {k: v.clone() for k, v in builder._merged_weights(base_file, folder, base).items()}  # off the file
    ours = [f for f in (tmp_path / "merged").glob("*.safetensors") if f != other]
    assert len(ours) == builder.MERGED_KEEP and other.is_file()  # the newest kept, a foreign file untouched
    entry = max(ours, key=lambda f: f.stat().st_mtime)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as after a power loss
    again = builder._merged_weights(base_file, folder, base)  # made again, no traceback
    assert set(again) == set(first) and all(torch.equal(again[k], first[k]) for k in first)
    assert entry.stat().st_size > 100
    monkeypatch.setenv("EAI_MERGED_CACHE", str(other))  # a folder that cannot be made: merged in memory
    assert all(torch.equal(v, first[k]) for k, v in builder._merged_weights(base_file, folder, base).items())


def test_a_backbone_folder_not_in_float32_stays_on_transformers(tmp_path):
    from eai.llm.builder import LLMConfig, _fast_backbone

    folder, _ = _tiny_adapter(tmp_path)
    lm, tok = load_backbone(TINY, seed=1)
    lm.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert _fast_backbone(LLMConfig(backbone=str(tmp_path / "bf16")), folder, _adapter_cfg(folder)) is None
    lm.float().save_pretrained(tmp_path / "f32")
    assert isinstance(_fast_backbone(LLMConfig(backbone=str(tmp_path / "f32")), folder, _adapter_cfg(folder)), LlamaDecoder)
