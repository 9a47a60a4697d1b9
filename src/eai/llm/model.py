"""EmotionLLM: skeleton tokens spliced into a chat prompt of a (LoRA-tuned) causal LM.

The user turn holds one `<skeleton>` placeholder per MGST token, written in the model's own chat template;
`embed` swaps the placeholders' embeddings for the tokens (their attention masked where a body part is
absent). Training labels cover only the assistant's answer; a batch whose placeholders or labels do not line
up raises instead of training on nothing. Recognition scores every candidate label's log-likelihood in one
batched pass that shares the prompt's key/value cache; explanations are decoded greedily after the
recognised label, which conditions them.
"""
from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eai.llm.mgst import MGST

SKELETON = "<skeleton>"
SYSTEM = "You read human body movement from skeleton tokens and explain the emotion it expresses."
IGNORE = -100


# the skeleton comes last in the user turn, so that everything before it is one prefix shared by all windows
def recognition_prompt(n_tokens: int, tag: str, labels: list[str]) -> str:
    return (f"[{tag}] Which emotion does this body express? Answer with one of: {', '.join(labels)}.\n"
            f"Movement: {SKELETON * n_tokens}")


def description_prompt(n_tokens: int, tag: str, label: str, evidence: str) -> str:
    return (f"[{tag}] Emotion: {label}. Measured against neutral: {evidence}.\n"
            f"Explain which movements show the emotion.\nMovement: {SKELETON * n_tokens}")


class ClaimDecoder:
    """Decoding constrained to the grounded-description grammar: LEAD claim ("," claim | " and" claim)* "."
    with claims from the checker's lexicon, one per descriptor, at most `max_claims`. The model still chooses
    every token among those the grammar allows, so which claims it makes is its own (and checked)."""

    def __init__(self, tok, eos: int, max_claims: int = 3):
        from eai.llm import evidence as ev

        self._ids = ids = lambda t: tuple(tok(t, add_special_tokens=False)["input_ids"])
        self.leads = [ids(x) for x in ev.LEADS]
        self.claims = {ids(" " + p): d for p, d, _ in ev.LEXICON}
        self.seps = [ids(","), ids(" and")]
        self.end = ids(".")
        self.eos, self.max_claims = eos, max_claims

    def start(self) -> dict:
        return {"phase": "lead", "partial": (), "used": set(), "n": 0}

    def continuation(self, st: dict, claims: list[str]) -> list[int]:
        """Draft tokens from state `st` on, where it has just completed the lead or a claim: the expected
        `claims` not yet made, joined as evidence._join joins them (" c1, c2 and c3"), and the full stop;
        [] anywhere else, or when no expected claim is left to make."""
        piece, n = st["partial"], st["n"]
        if st["phase"] == "lead" and piece in self.leads:
            made: set = set()
        elif st["phase"] == "claim" and piece in self.claims:
            made, n = st["used"] | {self.claims[piece]}, n + 1
        else:
            return []
        rest = [c for c in claims if self.claims.get(self._ids(" " + c)) not in made][:self.max_claims - n]
        if not rest and not made:
            return []
        out: list[int] = []
        for k, c in enumerate(rest):
            if made or k:
                out += self.seps[0 if k < len(rest) - 1 else 1]
            out += self._ids(" " + c)
        return out + list(self.end)

    def choose(self, st: dict, logits: torch.Tensor) -> int:
        """The greedy choice among the allowed tokens (the lowest id of a tie, as argmax over masked logits)."""
        allowed = self.allowed(st)
        return allowed[int(torch.argmax(logits[allowed]))]

    def _pieces(self, st: dict) -> list[tuple[int, ...]]:
        ph = st["phase"]
        if ph == "lead":
            return self.leads
        if ph == "claim":
            return [c for c, d in self.claims.items() if d not in st["used"]]
        if ph == "after":
            return [self.end] + (self.seps if st["n"] < self.max_claims else [])
        return []

    def _next_phase(self, st: dict, piece: tuple[int, ...]) -> None:
        if st["phase"] == "lead" or (st["phase"] == "after" and piece in self.seps):
            st["phase"] = "claim"
        elif st["phase"] == "claim":
            st["used"].add(self.claims[piece])
            st["n"] += 1
            st["phase"] = "after"
        else:
            st["phase"] = "done"
        st["partial"] = ()

    def allowed(self, st: dict) -> list[int]:
        if st["phase"] == "done":
            return [self.eos]
        k = len(st["partial"])
        out = {p[k] for p in self._pieces(st) if len(p) > k and p[:k] == st["partial"]}
        if st["partial"] in self._pieces(st):  # a complete piece: the next phase may begin
            nxt = dict(st, used=set(st["used"]))
            self._next_phase(nxt, st["partial"])
            out |= set(self.allowed(nxt))
        return sorted(out)

    def advance(self, st: dict, token: int) -> None:
        k = len(st["partial"])
        cont = [p for p in self._pieces(st) if len(p) > k and p[:k] == st["partial"] and p[k] == token]
        if not cont and st["partial"] in self._pieces(st):
            self._next_phase(st, st["partial"])
            if st["phase"] == "done":
                return
            return self.advance(st, token)
        st["partial"] = st["partial"] + (token,)


class EmotionLLM(nn.Module):
    def __init__(self, lm: nn.Module, tokenizer, mgst: MGST):
        super().__init__()
        self.lm = lm
        self.mgst = mgst
        self.tok = tokenizer
        if SKELETON not in tokenizer.get_vocab():
            tokenizer.add_tokens([SKELETON], special_tokens=True)
        self.sk_id = tokenizer.convert_tokens_to_ids(SKELETON)
        self.eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.stems: dict[tuple[int, ...], object] | None = None  # prompt stems -> their key/value cache
        self.leads_chosen: dict[str, Counter] = {}  # answer start -> how often each lead followed it (drafts)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def _to_device(self, *xs):
        """Inputs (feature tensors, masks, z, frac; None passes) on the model's device."""
        return [None if x is None else x.to(self.device) for x in xs]

    # ---- text -> ids
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

    def batch(self, prompts: list[str], answers: list[str]) -> dict:
        """The whole rows, right-padded, without prefix sharing: input_ids, attention_mask, labels."""
        rows, labs = self._rows(prompts, answers)
        L = max(map(len, rows))
        ids = torch.full((len(rows), L), self.pad, dtype=torch.long)
        att = torch.zeros((len(rows), L), dtype=torch.long)
        lab = torch.full((len(rows), L), IGNORE, dtype=torch.long)
        for i, (r, l) in enumerate(zip(rows, labs)):
            ids[i, :len(r)], att[i, :len(r)], lab[i, :len(r)] = torch.tensor(r), 1, torch.tensor(l)
        return {"input_ids": ids, "attention_mask": att, "labels": lab}

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

    def loss(self, feats, mask, prompts: list[str], answers: list[str], z=None, frac=None):
        """Mean cross-entropy over answer tokens, and the semantic embeddings for the contrastive loss."""
        rows, labs = self._rows(prompts, answers)
        logits, lab, sem = self._forward(rows, feats, mask, labs, z=z, frac=frac)
        logits = logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1),
                               ignore_index=IGNORE), sem

    def _forward(self, rows: list[list[int]], feats, mask, labels: list[list[int]] | None = None, z=None,
                 frac=None, keep: int = 1):
        """Run token rows holding placeholders through the LM (`_inputs`).
        Training: returns (logits of the rest, right-padded labels of the rest, semantic embeddings).
        Inference (labels None, left padding): (logits of the last `keep` columns (N, keep, V), cache, attention
        mask, next positions)."""
        emb, full, pos, cache, lab, sem = self._inputs(rows, feats, mask, labels, z, frac)
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
                frac=None):
        """The LM's inputs for token rows holding placeholders. The longest prefix the rows share before their
        first placeholder (the system prompt and question: all of it for recognition) runs once and its
        key/value cache is repeated for every row, in training too (its gradient sums over the rows); a single
        row at inference runs its prefix with the rest, on the cache of a registered stem only (one pass
        less). Returns (embeddings of the rest, attention mask over cache and rest, positions of the rest,
        cache, labels of the rest (right padding in training, left padding and all IGNORE at inference),
        semantic embeddings)."""
        dev = self.device
        feats, mask, z, frac = self._to_device(feats, mask, z, frac)
        N = len(rows)
        tokens, tmask, sem = self.mgst(feats, mask, z, frac)
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
        first use, and its length; (None, 0) where none does, and always in training."""
        if not self.stems or torch.is_grad_enabled():
            return None, 0
        fits = [s for s in self.stems if len(s) <= len(ids) and tuple(ids[:len(s)]) == s]
        if not fits:
            return None, 0
        stem = max(fits, key=len)
        if self.stems[stem] is None:
            self.stems[stem] = self.lm(input_ids=torch.tensor([stem], device=self.device), use_cache=True,
                                       logits_to_keep=1).past_key_values
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
        """Register the token beginning that `prompts` (two or more renderings of one template) share before
        any skeleton token, for reuse by `_prefix_cache` at inference (its cache is made on first use). For
        a loaded, frozen model only: training changes the weights under a stored cache. Returns its length."""
        rows = [self._prompt_ids(p) for p in prompts]
        n = 0
        while all(n < len(r) and r[n] != self.sk_id and r[n] == rows[0][n] for r in rows):
            n += 1
        if n:
            self.stems = self.stems if self.stems is not None else {}
            self.stems.setdefault(tuple(rows[0][:n]), None)
        return n

    # ---- recognition by label likelihood
    @torch.no_grad()
    def label_logprobs(self, feats, mask, prompts: list[str], candidates: list[str], z=None,
                       frac=None) -> torch.Tensor:
        """(N, candidates) log-likelihood of each candidate answer (its tokens and the end of turn), one LM pass:
        the prompt, then the candidates' tokens as one token tree (each token sees the prompt and its own
        candidate's earlier tokens; candidates sharing a beginning share its tokens), so no cache is copied
        per candidate and the weights stream once."""
        dev = self.device
        emb, full, pos, cache, _, _ = self._inputs([self._prompt_ids(p) for p in prompts], feats, mask, z=z,
                                                   frac=frac)
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
    def label_proba(self, feats, mask, prompts, candidates, z=None, frac=None) -> np.ndarray:
        return torch.softmax(self.label_logprobs(feats, mask, prompts, candidates, z, frac), 1).cpu().numpy()

    # ---- explanation
    @torch.no_grad()
    def generate(self, feats, mask, prompts: list[str], starts: list[str], max_new_tokens: int = 40,
                 constrained: bool = True, z=None, frac=None, jump: bool = True,
                 drafts: list[list[str]] | None = None) -> list[str]:
        """Greedy continuation of each answer start (returned with it), stopping at the end of turn; with
        `constrained`, in the grammar of grounded descriptions (ClaimDecoder), else free text. In the grammar,
        a token that is the only one allowed is taken without asking the model (the rest of a claim once its
        first words pick it, the end after the full stop), and a row's run of such tokens goes through the
        model in one pass (`jump`): the same text as one pass per token, in fewer passes.

        `drafts` (constrained only): per row, the claims it is expected to make (those of its evidence line).
        Each time a row completes its lead or a claim, the expected claims not yet made (ClaimDecoder.
        continuation) go through the model in the same pass, and each drafted token is kept only while it is
        the model's own greedy choice at its position (speculative decoding, checked token by token); the first
        one that is not is dropped with the rest, masked out of attention, and decoding goes on from the
        model's choice there. The prompt's own pass carries a draft too once this model has explained with
        the same answer start before: the lead it most often chose after it (`leads_chosen`), then the claims.
        The text is the same as without drafts; a draft the model agrees with saves a pass per claim and
        separator. Worth it where a pass costs the same for one token as for twenty (a few rows, bound by
        reading the weights), not in a large batch bound by arithmetic."""
        dev = self.device
        rows = [self._prompt_ids(p) + self._ids(s) for p, s in zip(prompts, starts)]
        N = len(rows)
        done = [False] * N
        gen: list[list[int]] = [[] for _ in rows]
        grammar = ClaimDecoder(self.tok, self.eos) if constrained else None
        states = [grammar.start() for _ in rows] if grammar else None
        expect = drafts if grammar and drafts else [None] * N
        # the prompt pass drafts too: the lead this start was most often followed by, then the expected claims
        first = [self._lead_draft(grammar, s, e)[:max_new_tokens] for s, e in zip(starts, expect)]
        K = max(map(len, first)) + 1
        step, cache, att2, nxt_pos = self._forward([r + d for r, d in zip(rows, first)], feats, mask, z=z,
                                                   frac=frac, keep=K)
        last = []
        for i, d in enumerate(first):
            base = K - 1 - len(d)  # the column of the answer start's last token
            k = self._accepted(grammar, states[i], step[i, base:], d) if d else 0
            gen[i] = d[:k]
            att2[i, att2.shape[1] - len(d) + k:] = 0  # the rejected draft tokens
            nxt_pos[i] -= len(d) - k
            done[i] = len(gen[i]) >= max_new_tokens
            last.append(base + k)
        logits = step[torch.arange(N, device=dev), torch.tensor(last, device=dev)]
        while not all(done):
            if grammar:
                allow = torch.full_like(logits, float("-inf"))
                for i, st in enumerate(states):
                    allow[i, grammar.allowed(st)] = 0
                logits = logits + allow
            t = logits.argmax(-1).tolist()
            chunks: list[list[int]] = []
            spec: list[list[int]] = []
            for i in range(N):
                chunk = [] if done[i] else [t[i]]
                if grammar and chunk and t[i] != self.eos:
                    grammar.advance(states[i], t[i])
                    while jump and len(gen[i]) + len(chunk) < max_new_tokens:
                        only = grammar.allowed(states[i])
                        if len(only) != 1:
                            break
                        chunk.append(only[0])
                        if only[0] == self.eos:
                            break
                        grammar.advance(states[i], only[0])
                chunk = chunk[:max_new_tokens - len(gen[i])]
                gen[i] += chunk
                if chunk and chunk[-1] == self.eos or len(gen[i]) >= max_new_tokens:
                    done[i] = True
                    chunk = [c for c in chunk if c != self.eos]
                chunks.append([] if done[i] else chunk)
                d = [] if done[i] or expect[i] is None else grammar.continuation(states[i], expect[i])
                spec.append(d[:max_new_tokens - len(gen[i])])
            if all(done):
                break
            C = max(len(c) + len(d) for c, d in zip(chunks, spec))
            ids = torch.full((N, C), self.pad, dtype=torch.long, device=dev)
            new_att = torch.zeros((N, C), dtype=torch.long, device=dev)
            for i, (c, d) in enumerate(zip(chunks, spec)):
                if c:
                    ids[i, :len(c) + len(d)], new_att[i, :len(c) + len(d)] = torch.tensor(c + d), 1
            att2 = torch.cat([att2, new_att], 1)
            pos = nxt_pos[:, None] + torch.arange(C, device=dev)
            out = self.lm(input_ids=ids, attention_mask=att2, position_ids=pos, past_key_values=cache, use_cache=True)
            cache, step = out.past_key_values, out.logits
            last = []
            for i, (c, d) in enumerate(zip(chunks, spec)):
                k = self._accepted(grammar, states[i], step[i, len(c) - 1:], d) if c and d else 0
                gen[i] += d[:k]
                att2[i, att2.shape[1] - C + len(c) + k:] = 0  # the rejected draft tokens (and padding)
                done[i] = done[i] or len(gen[i]) >= max_new_tokens
                last.append(max(len(c) + k, 1) - 1)
            logits = step[torch.arange(N, device=dev), torch.tensor(last, device=dev)]
            nxt_pos = nxt_pos + att2[:, att2.shape[1] - C:].sum(1)
        texts = []
        for s, g, e in zip(starts, gen, expect):
            lead = next((x for x in grammar.leads if tuple(g[:len(x)]) == x), None) if grammar else None
            if e is not None and lead:
                self.leads_chosen.setdefault(s, Counter())[lead] += 1
            g = g[:g.index(self.eos)] if self.eos in g else g
            texts.append((s + self.tok.decode(g, skip_special_tokens=True)).strip())
        return texts

    def _lead_draft(self, grammar: "ClaimDecoder | None", start: str, claims: list[str] | None) -> list[int]:
        """The draft of a row's first pass: the lead most often chosen after `start` so far (none before the
        first), then the expected claims; [] without claims to draft."""
        seen = self.leads_chosen.get(start)
        if claims is None or not seen:
            return []
        lead = seen.most_common(1)[0][0]
        st = grammar.start()
        for t in lead:
            grammar.advance(st, t)
        return list(lead) + grammar.continuation(st, claims)

    @staticmethod
    def _accepted(grammar: "ClaimDecoder | None", st: dict, logits: torch.Tensor, draft: list[int]) -> int:
        """How many tokens of `draft` are the model's own greedy choices in the grammar, `logits[k]` being its
        prediction for `draft[k]`; the grammar state advances through them."""
        k = 0
        while k < len(draft) and grammar.choose(st, logits[k]) == draft[k]:
            grammar.advance(st, draft[k])
            k += 1
        return k
