"""An inference-only Llama decoder (Touvron et al. 2023, "LLaMA"; as transformers' LlamaForCausalLM computes it)
for the cold start of `eai explain`: importing transformers' Llama costs about 2.5 s on two cores (it brings in
torch.distributed, torch._dynamo and sympy), more than the whole explanation. This module imports torch only,
reads the same safetensors with the same parameter names, and answers the calls EmotionLLM makes of a causal LM:
`lm(input_ids=... | inputs_embeds=..., attention_mask=2D or 4D, position_ids=..., past_key_values=...,
use_cache=..., logits_to_keep=...)` returning `.logits` and `.past_key_values`, and `get_input_embeddings()`.
Training, and any model whose configuration this does not cover (`supported`), stays on transformers; tests
check that both give the same logits.

Weights are not copied: `from_state` assigns the tensors it is given (memory-mapped safetensors stay mapped).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class LlamaSettings:
    """The fields of a Llama config.json this decoder reads (transformers' LlamaConfig names)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool

    @staticmethod
    def supported(cfg: dict) -> bool:
        """Whether config.json `cfg` is a plain Llama this decoder computes exactly: SiLU MLP, no biases, default
        rotary embeddings (no scaling), no tensor-parallel slicing."""
        rope = cfg.get("rope_parameters") or {"rope_type": "default" if not cfg.get("rope_scaling") else "scaled"}
        return (cfg.get("model_type") == "llama" and cfg.get("hidden_act", "silu") == "silu"
                and not cfg.get("attention_bias") and not cfg.get("mlp_bias")
                and rope.get("rope_type", "default") == "default" and cfg.get("pretraining_tp", 1) == 1)

    @staticmethod
    def from_config(cfg: dict) -> "LlamaSettings":
        """From a config.json's dict (raises ValueError when not `supported`)."""
        if not LlamaSettings.supported(cfg):
            raise ValueError("not a plain Llama configuration")
        heads = cfg["num_attention_heads"]
        rope = cfg.get("rope_parameters") or {}
        return LlamaSettings(cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"],
                             cfg["num_hidden_layers"], heads, cfg.get("num_key_value_heads") or heads,
                             cfg.get("head_dim") or cfg["hidden_size"] // heads, float(cfg["rms_norm_eps"]),
                             float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
                             bool(cfg.get("tie_word_embeddings", False)))

    @staticmethod
    def read(folder: str | Path) -> "LlamaSettings | None":
        """The settings of a model folder's config.json; None when it is missing, lacks a field or is not
        `supported`."""
        try:
            return LlamaSettings.from_config(json.loads((Path(folder) / "config.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class KVCache:
    """Keys and values of every layer, each (N, key/value heads, T, head_dim), grown by each forward pass.
    Iterating gives (keys, values) per layer, as transformers' DynamicCache does."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.layers = [list(kv) for kv in layers or []]

    def get_seq_length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if i == len(self.layers):
            self.layers.append([k, v])
        else:
            self.layers[i] = [torch.cat([self.layers[i][0], k], 2), torch.cat([self.layers[i][1], v], 2)]
        return self.layers[i][0], self.layers[i][1]

    def batch_repeat_interleave(self, n: int) -> None:
        """Each row repeated `n` times (one shared prompt for n rows)."""
        self.layers = [[k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)] for k, v in self.layers]

    def __iter__(self):
        return iter((k, v) for k, v in self.layers)

    def __len__(self) -> int:
        return len(self.layers)


META = torch.device("meta")  # modules are made without storage: `from_state` assigns the weights


class Linear(nn.Linear):
    """nn.Linear without bias, made on the meta device and never initialised: random initialisation, even of
    meta tensors, imports torch._dynamo (about 0.9 s of a cold start)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__(n_in, n_out, bias=False, device=META)

    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    """nn.Embedding made on the meta device, never initialised (as `Linear`)."""

    def __init__(self, n: int, size: int):
        super().__init__(n, size, device=META)

    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in float32 as Llama does."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.empty(size, device=META)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


class Attention(nn.Module):
    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        self.q_proj = Linear(s.hidden_size, self.heads * s.head_dim)
        self.k_proj = Linear(s.hidden_size, self.kv_heads * s.head_dim)
        self.v_proj = Linear(s.hidden_size, self.kv_heads * s.head_dim)
        self.o_proj = Linear(self.heads * s.head_dim, s.hidden_size)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, i: int):
        N, L, _ = x.shape
        q = self.q_proj(x).view(N, L, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(N, L, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(N, L, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(i, k, v)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        return self.o_proj(out.transpose(1, 2).reshape(N, L, -1))


class MLP(nn.Module):
    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.gate_proj = Linear(s.hidden_size, s.intermediate_size)
        self.up_proj = Linear(s.hidden_size, s.intermediate_size)
        self.down_proj = Linear(s.intermediate_size, s.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.self_attn, self.mlp = Attention(s), MLP(s)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache, i):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, i)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.embed_tokens = Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(s) for _ in range(s.num_hidden_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)


class LlamaDecoder(nn.Module):
    """Llama for inference, parameter for parameter transformers' LlamaForCausalLM (`model.*`, `lm_head`)."""

    def __init__(self, s: LlamaSettings):
        super().__init__()
        self.settings = s
        self.config = SimpleNamespace(hidden_size=s.hidden_size, vocab_size=s.vocab_size)
        self.model = LlamaBody(s)
        self.lm_head = Linear(s.hidden_size, s.vocab_size)

    @staticmethod
    def fits(s: LlamaSettings, state: dict[str, torch.Tensor]) -> bool:
        """Whether `state` holds exactly this decoder's weights, of its shapes (the output layer may be absent
        when tied)."""
        want = {k: tuple(v.shape) for k, v in LlamaDecoder(s).state_dict().items()}
        if s.tie_word_embeddings:
            want.pop("lm_head.weight")
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        return want == {k: tuple(v.shape) for k, v in state.items()}

    @staticmethod
    def from_state(s: LlamaSettings, state: dict[str, torch.Tensor]) -> "LlamaDecoder":
        """The decoder holding `state`'s tensors themselves (no copy: built on the meta device, then assigned);
        a tied output layer shares the token embeddings. Raises RuntimeError when keys or shapes differ."""
        m = LlamaDecoder(s)
        if s.tie_word_embeddings:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        m.load_state_dict(state, strict=True, assign=True)
        if s.tie_word_embeddings:
            m.lm_head.weight = m.model.embed_tokens.weight
        d = s.head_dim  # the rotary frequencies, as transformers computes them (on the CPU, once)
        m.register_buffer("inv_freq", 1.0 / (s.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)),
                          persistent=False)
        return m.eval()

    @staticmethod
    def cache_of(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> KVCache:
        """A cache holding stored (keys, values) per layer (eai.llm.stems)."""
        return KVCache(layers)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def _rotary(self, pos: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        ang = pos[:, :, None].float() * self.inv_freq  # (N, L, d/2)
        emb = torch.cat([ang, ang], -1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @torch.no_grad()
    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = False, logits_to_keep: int = 0, **_):
        """Logits (N, kept, V) float32 of the last `logits_to_keep` positions (0: all) and the key/value cache.
        `attention_mask`: (N, past + L) 1 where a column may be attended (then causal by column), or an additive
        float mask (N, 1, L, past + L) used as given; `position_ids` (N, L), default past .. past + L - 1."""
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        N, L, _ = x.shape
        cache = past_key_values if past_key_values is not None else (KVCache() if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + L, device=x.device)[None].expand(N, L)
        mask = self._mask(attention_mask, N, L, past, x)
        cos, sin = self._rotary(position_ids, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        x = self.model.norm(x)
        logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x).float()
        return SimpleNamespace(logits=logits, past_key_values=cache)

    @staticmethod
    def _mask(att, N: int, L: int, past: int, x: torch.Tensor) -> torch.Tensor:
        low = torch.finfo(x.dtype).min  # finite: a row that may see nothing (padding) averages, never gives NaN
        if att is not None and att.dim() == 4:
            if not att.is_floating_point():
                raise ValueError("a 4-D attention mask is additive (float): 0 where attended, a large negative else")
            return att.to(x.dtype)
        cols = torch.arange(past + L, device=x.device)
        ok = (cols[None, :] <= past + torch.arange(L, device=x.device)[:, None])[None]  # (1, L, past + L)
        if att is not None:
            ok = ok & att[:, None, :].bool()
        return torch.zeros(ok.shape, dtype=x.dtype, device=x.device).masked_fill(~ok, low)[:, None]


def merged_state(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scaling: float,
                 prefix: str = "base_model.model.") -> dict[str, torch.Tensor]:
    """The weights a LoRA adapter changes, merged: W + (B @ A) * scaling for every `<name>.lora_A.weight`,
    `<name>.lora_B.weight` pair of `adapter` (peft's names under `prefix`), as peft's merge_and_unload computes
    it. Returns {<name>.weight: merged} only. Raises ValueError when a pair does not fit `base`."""
    out = {}
    for key in sorted(k[:-len(".lora_A.weight")] for k in adapter if k.endswith(".lora_A.weight")):
        name = (key[len(prefix):] if key.startswith(prefix) else key) + ".weight"
        w, a, b = base.get(name), adapter[key + ".lora_A.weight"], adapter.get(key + ".lora_B.weight")
        if w is None or b is None or a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] or a.shape[0] != b.shape[1]:
            raise ValueError(f"the adapter's {name} does not fit the model")
        out[name] = w + (b.to(w.dtype) @ a.to(w.dtype)) * scaling
    return out

