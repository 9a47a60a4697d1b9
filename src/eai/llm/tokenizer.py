"""The skeleton tokenizer: EAI-LLM's multi-granularity skeleton tokenizer (MGST, Lu et al. AAAI 2025):
encoder features (N, C', T', K) -> LLM input tokens.

- temporal tokens: mean over present joints, then `n_temporal` segments over time (T' pooled adaptively,
  padded frames of a short clip left out and a segment of padding only masked out of attention);
- spatial tokens: one per body part, mean over time and the part's present joints (a part with no joint is
  masked out of attention);
- one semantic token: the global mean, also projected into the sentence-embedding space where a CLIP-style
  contrastive loss pulls it towards the embedding of the clip's description;
- one kinematic token (with `n_descriptors`): the window's descriptor z-scores against neutral (clipped to
  +-5, missing ones zero and flagged), as the encoder's head also sees them;
- one posterior token (with `n_labels`): the skeleton encoder's class posterior p (N, n_labels) as p @ E, E one
  learned row per label initialised to the embedding of the label's word in the LM (`init_posterior_token`):
  the encoder's reading, in the LM's own input space (LLaVA's stage-1 alignment of a projector to the word
  embeddings, here exact at initialisation, so the LM reads it from the first step). The LM still answers
  by its own label likelihood; it learns how far to trust this token beside the others.
Each kind has its own projector to the LLM hidden size (an MLP for temporal and semantic, linear for spatial).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from eai.llm.text import DIM
from eai.skeleton.registry import canonical

PARTS = {
    "head": ["neck", "head"],
    "torso": ["pelvis", "spine", "chest"],
    "left arm": ["l_collar", "l_shoulder", "l_elbow", "l_wrist", "l_hand"],
    "right arm": ["r_collar", "r_shoulder", "r_elbow", "r_wrist", "r_hand"],
    "left leg": ["l_hip", "l_knee", "l_ankle", "l_toe"],
    "right leg": ["r_hip", "r_knee", "r_ankle", "r_toe"],
}


@dataclass
class SkeletonTokenizerConfig:
    """feature_dim: the encoder's C'; hidden: the LM's hidden size; n_temporal temporal tokens; parts: body
    part -> canonical joints (one spatial token each); text_dim: the sentence encoder's size (eai.llm.text);
    temperature of the contrastive loss; n_descriptors: with a kinematic token of that many z-scores (0: none);
    n_labels: with a posterior token over the run's that many labels (0: none)."""

    feature_dim: int = 192
    hidden: int = 576
    n_temporal: int = 4
    parts: dict = field(default_factory=lambda: dict(PARTS))
    text_dim: int = DIM
    temperature: float = 0.07
    n_descriptors: int = 0
    n_labels: int = 0

    @property
    def n_tokens(self) -> int:
        return self.n_temporal + len(self.parts) + 1 + bool(self.n_descriptors) + bool(self.n_labels)

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(c_in, c_out), nn.GELU(), nn.Linear(c_out, c_out))


class SkeletonTokenizer(nn.Module):
    """MGST: temporal, spatial (body part), semantic and optional kinematic tokens from encoder features."""

    def __init__(self, cfg: SkeletonTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        names = list(canonical().names)
        member = torch.zeros(len(cfg.parts), len(names))
        for i, joints in enumerate(cfg.parts.values()):
            for j in joints:
                member[i, names.index(j)] = 1.0
        self.register_buffer("member", member, persistent=False)
        self.norm = nn.LayerNorm(cfg.feature_dim)
        self.temporal = _mlp(cfg.feature_dim, cfg.hidden)
        self.spatial = nn.Linear(cfg.feature_dim, cfg.hidden)
        self.part_embed = nn.Parameter(torch.zeros(len(cfg.parts), cfg.hidden))
        self.semantic = _mlp(cfg.feature_dim, cfg.hidden)
        self.to_text = nn.Linear(cfg.feature_dim, cfg.text_dim)
        if cfg.n_descriptors:
            self.kinematic = _mlp(2 * cfg.n_descriptors, cfg.hidden)
        if cfg.n_labels:
            self.label_embed = nn.Parameter(torch.zeros(cfg.n_labels, cfg.hidden))
        # the projectors' output scale should match the LM's token embeddings (set by eai.llm.builder)
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def init_posterior_token(self, word_embeddings: torch.Tensor) -> None:
        """Start E (the posterior token's rows) at the LM's embeddings of the labels' words (n_labels, hidden),
        e.g. the mean embedding of each word's tokens."""
        self.label_embed.copy_(word_embeddings.to(self.label_embed))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor, z: torch.Tensor | None = None,
                real_fraction: torch.Tensor | None = None, posterior: torch.Tensor | None = None):
        """feats (N, C, T, K), mask (N, K)[, descriptor z-scores (N, D), NaN where missing][, the real share of
        each window's frames (N,), the rest padding][, the encoder's class posterior (N, n_labels), rows
        summing to 1] -> tokens (N, n_tokens, H), token mask (N, n_tokens) bool,
        semantic text-space embedding (N, text_dim), unit. Pooling covers present joints and real frames only;
        a temporal token that falls wholly in padding is masked, like a body part with no joint."""
        N, C, T, K = feats.shape
        n_t = self.cfg.n_temporal
        m = mask.to(feats.dtype)
        x = feats.permute(0, 2, 3, 1)  # (N, T, K, C)
        per_t = (x * m[:, None, :, None]).sum(2) / m.sum(1).clamp_min(1)[:, None, None]  # (N, T, C)
        real_t = T if real_fraction is None else torch.ceil(real_fraction.to(feats.dtype) * T).clamp(1, T)  # (N,) real time steps
        tv = (torch.arange(T, device=feats.device)[None] < torch.as_tensor(real_t, device=feats.device).reshape(-1, 1)
              ).to(feats.dtype).expand(N, T)  # (N, T)
        lo = [(i * T) // n_t for i in range(n_t)]
        hi = [-((-(i + 1) * T) // n_t) for i in range(n_t)]  # the segments of adaptive average pooling
        seg_of = torch.zeros(n_t, T, dtype=feats.dtype, device=feats.device)
        for i in range(n_t):
            seg_of[i, lo[i]:hi[i]] = 1
        a = seg_of[None] * tv[:, None]  # (N, n_t, T)
        seg = a @ per_t / a.sum(2, keepdim=True).clamp_min(1)
        w = self.member[None] * m[:, None, :]  # (N, P, K)
        per_part = (torch.einsum("npk,ntkc->npc", w, x * tv[:, :, None, None])
                    / (w.sum(2, keepdim=True) * tv.sum(1)[:, None, None]).clamp_min(1e-6))
        glob = (per_t * tv[..., None]).sum(1) / tv.sum(1, keepdim=True)
        tok_t = self.temporal(self.norm(seg))
        tok_s = self.spatial(self.norm(per_part)) + self.part_embed
        tok_g = self.semantic(self.norm(glob))[:, None]
        kinds = [tok_t, tok_s, tok_g]
        if self.cfg.n_descriptors:
            if z is None or z.shape != (N, self.cfg.n_descriptors):
                raise ValueError(f"this tokenizer needs descriptor z-scores of shape ({N}, {self.cfg.n_descriptors})")
            z = z.to(feats.dtype)
            present = torch.isfinite(z)
            zin = torch.cat([torch.nan_to_num(z).clamp(-5, 5), present.to(z.dtype)], 1)
            kinds.append(self.kinematic(zin)[:, None])
        tokens = torch.cat(kinds, 1) * self.scale
        if self.cfg.n_labels:  # already in the LM's embedding scale
            if posterior is None or posterior.shape != (N, self.cfg.n_labels):
                raise ValueError(f"this tokenizer needs the encoder's posterior of shape ({N}, {self.cfg.n_labels})")
            tokens = torch.cat([tokens, (posterior.to(feats.dtype) @ self.label_embed)[:, None]], 1)
        ones = lambda k: torch.ones(N, k, dtype=torch.bool, device=feats.device)
        tmask = torch.cat([a.sum(2) > 0, w.sum(2) > 0,
                           ones(1 + bool(self.cfg.n_descriptors) + bool(self.cfg.n_labels))], 1)
        sem = F.normalize(self.to_text(self.norm(glob)), dim=1)
        return tokens, tmask, sem

    def contrastive_loss(self, sem: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between semantic embeddings and their descriptions' embeddings (both unit)."""
        logits = sem @ text.T / self.cfg.temperature
        target = torch.arange(len(sem), device=sem.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
