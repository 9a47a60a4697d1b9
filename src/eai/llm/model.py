"""EmotionLLM: skeleton tokens spliced into a chat prompt of a (LoRA-tuned) causal LM.

The user turn holds one `<skeleton>` placeholder per skeleton token (eai.llm.tokenizer, MGST), written in the
model's own chat template (eai.llm.prompts), as LLaVA splices image features at its placeholder;
`embed` swaps the placeholders' embeddings for the tokens (their attention masked where a body part is
absent). Training labels cover only the assistant's answer; a batch whose placeholders or labels do not line
up raises instead of training on nothing. Recognition scores every candidate label's log-likelihood in one
batched pass that shares the prompt's key/value cache; explanations are decoded by eai.llm.decode.

The skeleton inputs of every method, on any device (they are moved to the model's):
feats (N, C', T', K) float encoder features; mask (N, K) bool joint presence; z (N, D) float64/32 descriptor
z-scores against neutral (NaN: missing; read by a kinematic token only); real_fraction (N,) float the real
share of each window's frames (the rest is padding of a short clip; None: all real); posterior (N, n_labels)
float the skeleton encoder's class posterior over the run's labels (read by a posterior token only).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eai.llm.prompts import IGNORE, SKELETON, SYSTEM
from eai.llm.tokenizer import SkeletonTokenizer


class EmotionLLM(nn.Module):
    """A causal LM (`lm`, with LoRA adapters when trained) reading skeleton tokens; `tok` its text tokenizer."""

    def __init__(self, lm: nn.Module, tokenizer, skeleton_tokenizer: SkeletonTokenizer):
        super().__init__()
        self.lm = lm
        self.skeleton_tokenizer = skeleton_tokenizer
        self.tok = tokenizer
        if SKELETON not in tokenizer.get_vocab():
            tokenizer.add_tokens([SKELETON], special_tokens=True)
        self.sk_id = tokenizer.convert_tokens_to_ids(SKELETON)
        self.eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.stems: dict[tuple[int, ...], object] | None = None  # prompt stems -> their key/value cache
        self.stem_store = None  # eai.llm.stems.StemStore: stem caches kept between processes (inference only)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def _to_device(self, *xs):
        """Inputs (feature tensors, masks, z, real_fraction; None passes) on the model's device."""
        return [None if x is None else x.to(self.device) for x in xs]

    # ---- text -> ids
    @torch.no_grad()
    def word_embeddings(self, words: list[str]) -> torch.Tensor:
        """(len(words), hidden): the mean input embedding of each word's tokens (as it follows a space)."""
        emb = self.lm.get_input_embeddings().weight
        return torch.stack([emb[torch.tensor(self._ids(" " + w), device=emb.device)].mean(0) for w in words])

    def _prompt_ids(self, prompt: str) -> list[int]:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _rows(self, prompts: list[str], answers: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token rows (prompt, answer, end of turn) and their labels (-100 on the prompt)."""
        rows, labs = [], []
        for p, a in zip(prompts, answers):
            ids, ans = self._prompt_ids(p), self._ids(a) + [self.eos]
            rows.append(ids + ans)
            labs.append([IGNORE] * len(ids) + ans)
        return rows, labs

    # ---- splice
    def embed(self, ids: torch.Tensor, attention: torch.Tensor, tokens: torch.Tensor, tmask: torch.Tensor):
        """Embeddings with the skeleton tokens in place of the placeholders, the attention mask (padding and
        absent body parts masked) and position ids (counting real tokens)."""
        is_sk = ids == self.sk_id
        counts = is_sk.sum(1)
        if (counts != tokens.shape[1]).any():
            raise ValueError(f"skeleton placeholders per row {counts.tolist()} do not match the "
                             f"{tokens.shape[1]} skeleton tokens")
        emb = self.lm.get_input_embeddings()(ids.masked_fill(is_sk, 0))
        emb = emb.masked_scatter(is_sk[..., None], tokens.to(emb.dtype))
        pos = (attention.cumsum(1) - 1).clamp_min(0)
        att = attention.masked_scatter(is_sk, tmask.to(attention.dtype))
        return emb, att, pos

    def loss(self, feats, mask, prompts: list[str], answers: list[str], z=None, real_fraction=None,
             posterior=None):
        """Mean cross-entropy over the answers' tokens (a scalar), and the semantic embeddings (N, text_dim)
        for the contrastive loss; answers are the assistant turn after each prompt."""
        rows, labs = self._rows(prompts, answers)
        logits, lab, sem = self._forward(rows, feats, mask, labs, z=z, real_fraction=real_fraction,
                                         posterior=posterior)
        logits = logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1),
                               ignore_index=IGNORE), sem

    def _forward(self, rows: list[list[int]], feats, mask, labels: list[list[int]] | None = None, z=None,
                 real_fraction=None, keep: int = 1, posterior=None):
        """Run token rows holding placeholders through the LM (`_inputs`).
        Training: returns (logits of the rest, right-padded labels of the rest, semantic embeddings).
        Inference (labels None, left padding): (logits of the last `keep` columns (N, keep, V), cache, attention
        mask, next positions)."""
        emb, full, pos, cache, lab, sem = self._inputs(rows, feats, mask, labels, z, real_fraction, posterior)
        # logits only where they are used: from the column before the first answer token (training), the
        # last column (inference); the vocabulary projection of every prompt position is skipped
        L = emb.shape[1]
        cols = (lab != IGNORE).any(0).nonzero()
        keep = L - (int(cols[0]) - 1 if len(cols) else L - 1) if labels is not None else keep
        out = self.lm(inputs_embeds=emb, attention_mask=full, position_ids=pos, past_key_values=cache,
                      use_cache=labels is None, logits_to_keep=keep)
        if labels is not None:
            return out.logits, lab[:, L - keep:], sem
        return out.logits, out.past_key_values, full, pos[:, -1] + 1

    def _inputs(self, rows: list[list[int]], feats, mask, labels: list[list[int]] | None = None, z=None,
                real_fraction=None, posterior=None):
        """The LM's inputs for token rows holding placeholders. The longest prefix the rows share before their
        first placeholder (the system prompt and question: all of it for recognition) runs once and its
        key/value cache is repeated for every row, in training too (its gradient sums over the rows); a single
        row at inference runs its prefix with the rest, on the cache of a registered stem only (one pass
        less). Returns (embeddings of the rest, attention mask over cache and rest, positions of the rest,
        cache, labels of the rest (right padding in training, left padding and all IGNORE at inference),
        semantic embeddings)."""
        dev = self.device
        feats, mask, z, real_fraction, posterior = self._to_device(feats, mask, z, real_fraction, posterior)
        N = len(rows)
        tokens, tmask, sem = self.skeleton_tokenizer(feats, mask, z, real_fraction, posterior)
        first = min(r.index(self.sk_id) if self.sk_id in r else len(r) for r in rows)
        pre = 0
        while pre < first and all(r[pre] == rows[0][pre] for r in rows):
            pre += 1
        if labels is None and N == 1:
            cache, pre = self._stem_cache(rows[0][:pre])
        else:
            cache = self._prefix_cache(rows[0][:pre], N) if pre else None
        rest = [r[pre:] for r in rows]
        L = max(map(len, rest))
        ids = torch.full((N, L), self.pad, dtype=torch.long, device=dev)
        att = torch.zeros((N, L), dtype=torch.long, device=dev)
        lab = torch.full((N, L), IGNORE, dtype=torch.long, device=dev)
        for i, r in enumerate(rest):
            s = slice(0, len(r)) if labels is not None else slice(L - len(r), L)
            ids[i, s], att[i, s] = torch.tensor(r), 1
            if labels is not None:
                lab[i, s] = torch.tensor(labels[i][pre:])
        if (lab[:, 0] != IGNORE).any():
            raise ValueError("loss mask mismatch: an answer token falls inside the shared prompt prefix")
        emb, att2, pos = self.embed(ids, att, tokens, tmask)
        if ((lab != IGNORE) & (ids == self.sk_id)).any():
            raise ValueError("loss mask mismatch: a skeleton position is labelled")
        full = torch.cat([torch.ones((N, pre), dtype=torch.long, device=dev), att2], 1)
        return emb, full, pos + pre, cache, lab, sem

    def _stem_cache(self, ids: list[int]) -> tuple[object, int]:
        """A copy of the key/value cache of the longest registered stem (`add_stem`) that begins `ids`, made on
        first use (or read from `stem_store`, and written there), and its length; (None, 0) where none does, and
        always in training."""
        if not self.stems or torch.is_grad_enabled():
            return None, 0
        fits = [s for s in self.stems if len(s) <= len(ids) and tuple(ids[:len(s)]) == s]
        if not fits:
            return None, 0
        stem = max(fits, key=len)
        if self.stems[stem] is None and self.stem_store is not None:
            self.stems[stem] = self.stem_store.load(stem, self.device)
        if self.stems[stem] is None:
            self.stems[stem] = self.lm(input_ids=torch.tensor([stem], device=self.device), use_cache=True,
                                       logits_to_keep=1).past_key_values
            if self.stem_store is not None:
                self.stem_store.save(stem, self.stems[stem])
        return copy.deepcopy(self.stems[stem]), len(stem)

    def _prefix_cache(self, ids: list[int], n: int):
        """Key/value cache of the shared prompt prefix `ids`, repeated for `n` rows: the rest of the prefix
        after its registered stem, if any (`_stem_cache`), runs once."""
        cache, done = self._stem_cache(ids)
        if done < len(ids):
            cache = self.lm(input_ids=torch.tensor([ids[done:]], device=self.device),
                            position_ids=torch.arange(done, len(ids), device=self.device)[None],
                            past_key_values=cache, use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(n)
        return cache

    def add_stem(self, prompts: list[str]) -> int:
        """Register the token beginning that `prompts` (renderings of one template; one rendering gives all of
        it before the first skeleton placeholder) share before any skeleton token, for reuse by `_prefix_cache` at
        inference (its cache is made on first use). For a loaded, frozen model only: training changes the weights
        under a stored cache. Returns its length."""
        rows = [self._prompt_ids(p) for p in prompts]
        n = 0
        while all(n < len(r) and r[n] != self.sk_id and r[n] == rows[0][n] for r in rows):
            n += 1
        if n:
            self.stems = self.stems if self.stems is not None else {}
            self.stems.setdefault(tuple(rows[0][:n]), None)
        return n

    @contextlib.contextmanager
    def frozen_stems(self, templates: list[list[str]]):
        """A block in which the weights do not change (a held-out probe between training steps, a run's
        calibration and held-out scoring), in eval mode: each template's stem (`add_stem`: what its renderings
        share before the first skeleton placeholder; one prompt gives all of that) is registered for the block
        only, so every batch scored in it reuses one prefix pass instead of running its own; the stems the model
        had (and its stem store) come back after. The scores are those without, to float rounding (the same pass,
        run once). Stems are never used while gradients are enabled. ValueError in train mode (a dropout draw
        would be shared by every batch)."""
        if self.training:
            raise ValueError("frozen_stems needs the model in eval mode")
        saved = self.stems, self.stem_store
        self.stems, self.stem_store = None, None
        try:
            for t in templates:
                self.add_stem(t)
            yield self
        finally:
            self.stems, self.stem_store = saved

    # ---- recognition by label likelihood
    @torch.no_grad()
    def label_logprobs(self, feats, mask, prompts: list[str], candidates: list[str], z=None,
                       real_fraction=None, posterior=None) -> torch.Tensor:
        """(N, candidates) log-likelihood of each candidate answer (its tokens and the end of turn), one LM pass:
        the prompt, then the candidates' tokens as one token tree (each token sees the prompt and its own
        candidate's earlier tokens; candidates sharing a beginning share its tokens), so no cache is copied
        per candidate and the weights stream once."""
        dev = self.device
        emb, full, pos, cache, _, _ = self._inputs([self._prompt_ids(p) for p in prompts], feats, mask, z=z,
                                                   real_fraction=real_fraction, posterior=posterior)
        cands = [tuple(self._ids(c) + [self.eos]) for c in candidates]
        # the tree: one input token per distinct candidate prefix that predicts a further token
        nodes = sorted({c[:k] for c in cands for k in range(1, len(c))}, key=lambda t: (len(t), t))
        index = {t: i for i, t in enumerate(nodes)}
        (N, L), P, Q = pos.shape, full.shape[1] - pos.shape[1], len(nodes)
        sees = torch.zeros(Q, Q, dtype=torch.bool, device=dev)
        for t, i in index.items():
            for k in range(1, len(t) + 1):
                sees[i, index[t[:k]]] = True
        seen = full.bool()[:, None, :]  # (N, 1, P + L): cache and prompt columns a row attends to
        causal = torch.ones(L, P + L, dtype=torch.bool, device=dev).tril(P)
        allowed = torch.cat([torch.cat([seen & causal, seen.new_zeros(N, L, Q)], 2),
                             torch.cat([seen.expand(N, Q, P + L), sees.expand(N, Q, Q)], 2)], 1)[:, None]
        dtype = self.lm.get_input_embeddings().weight.dtype
        mask4 = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, torch.finfo(dtype).min)
        tree = self.lm.get_input_embeddings()(torch.tensor([t[-1] for t in nodes], device=dev))
        depth = torch.tensor([len(t) for t in nodes], device=dev)
        out = self.lm(inputs_embeds=torch.cat([emb, tree.expand(N, Q, -1).to(emb.dtype)], 1), attention_mask=mask4,
                      position_ids=torch.cat([pos, pos[:, -1:] + depth], 1), past_key_values=cache,
                      logits_to_keep=Q + 1)
        lp = torch.log_softmax(out.logits.float(), -1)  # (N, 1 + Q, V): the prompt's last column, then the tree
        score = lp[:, 0, [c[0] for c in cands]]  # (N, L)
        for j, c in enumerate(cands):
            at = [1 + index[c[:k]] for k in range(1, len(c))]
            score[:, j] += lp[:, at, list(c[1:])].sum(1)
        return score

    @torch.no_grad()
    def label_proba(self, feats, mask, prompts, candidates, z=None, real_fraction=None, posterior=None,
                    temperature: float = 1.0) -> np.ndarray:
        """(N, candidates) float32 probabilities: the softmax of `label_logprobs` over the candidates, divided by
        `temperature` (a run's calibration)."""
        lp = self.label_logprobs(feats, mask, prompts, candidates, z, real_fraction, posterior)
        return torch.softmax(lp / temperature, 1).cpu().numpy()
