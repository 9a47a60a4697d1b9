"""Prompt stems' key/value caches kept on disk between processes. Every clip of a run's dataset begins its prompts
with the same tokens (system prompt, the dataset's question); a loaded model computes their cache once
(EmotionLLM.add_stem), which a cold `eai explain` pays on every start (two LM passes of 40-70 tokens, about 0.3 s
on two cores). A StemStore keeps them under $EAI_CACHE/stems, a few MB per run, named by the stem's tokens and a
fingerprint of the model's weights as loaded, so a cache is only ever read back by a model computing the same.
EAI_STEM_CACHE names another folder."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def stem_cache_root() -> Path:
    """Where stem caches are kept: $EAI_STEM_CACHE, else $EAI_CACHE/stems (default ~/.cache/eai/stems)."""
    from eai.llm.backbone import cache_root

    return Path(os.environ.get("EAI_STEM_CACHE") or cache_root() / "stems")


def weights_fingerprint(module: torch.nn.Module, per_tensor: int = 64) -> str:
    """A hash of every parameter's name, shape, dtype and device type and of `per_tensor` values spread over
    it: any other base model or adapter (whose merge changes every value of a layer) gives another."""
    h = hashlib.sha256(f"{torch.__version__}{type(module).__name__}".encode())  # and the code computing it
    for name, p in module.state_dict(keep_vars=False).items():
        if not isinstance(p, torch.Tensor) or p.is_quantized:
            h.update(f"{name}{type(p).__name__}".encode())
            continue
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // per_tensor)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}{p.device.type}".encode())
        h.update(flat[::step][:per_tensor].float().cpu().numpy().tobytes())
    return h.hexdigest()


class StemStore:
    """Stem caches of one model (`fingerprint`, weights_fingerprint) in `folder`, one safetensors file per stem;
    a file that cannot be read or written is ignored (the cache is computed as without a store)."""

    def __init__(self, folder: str | Path, fingerprint: str, make_cache=None):
        """`make_cache(layers)`: the model's cache type from [(keys, values)] per layer (default transformers'
        DynamicCache)."""
        self.folder, self.fingerprint, self.make_cache = Path(folder), fingerprint, make_cache

    def path(self, ids: tuple[int, ...]) -> Path:
        key = hashlib.sha256(f"{self.fingerprint}:{','.join(map(str, ids))}".encode()).hexdigest()[:32]
        return self.folder / f"{key}.safetensors"

    def load(self, ids: tuple[int, ...], device: torch.device):
        """The stored cache of stem `ids` (`make_cache`'s type, on `device`), or None."""
        from safetensors.torch import load_file

        try:
            t = load_file(str(self.path(ids)), device=str(device))
            if t["ids"].tolist() != list(ids):
                return None
            n = len([k for k in t if k.startswith("k")])
            layers = [(t[f"k{i}"], t[f"v{i}"]) for i in range(n)]
            if self.make_cache is not None:
                return self.make_cache(layers)
            from transformers import DynamicCache

            return DynamicCache(ddp_cache_data=layers)
        except (OSError, KeyError, RuntimeError, ValueError):
            return None

    def save(self, ids: tuple[int, ...], cache) -> None:
        """Store the cache of stem `ids` (atomically; quietly skipped where the folder is not writable)."""
        from safetensors.torch import save_file

        from eai.io.files import atomic_path

        tensors = {"ids": torch.tensor(ids)}
        for i, (k, v, *_) in enumerate(cache):
            tensors[f"k{i}"], tensors[f"v{i}"] = k.detach().cpu().contiguous(), v.detach().cpu().contiguous()
        try:
            os.makedirs(self.folder, exist_ok=True)
            with atomic_path(self.path(ids)) as tmp:
                save_file(tensors, str(tmp))
        except OSError:
            pass
