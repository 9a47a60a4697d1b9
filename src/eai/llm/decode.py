"""Explanations decoded from the LM: greedy, in the grammar of grounded descriptions (eai.llm.grammar), with
forced-token jumps and speculative drafts of the expected claims checked token by token (the text is the same
as plain greedy decoding, in fewer LM passes)."""
from __future__ import annotations

from collections import Counter

import torch

from eai.llm.evidence import NO_SUPPORT
from eai.llm.grammar import ClaimDecoder, GrammarState
from eai.llm.model import EmotionLLM


class ExplanationDecoder:
    """Decodes explanations with a (frozen) EmotionLLM; remembers which lead the model chose after each answer
    start (`leads_chosen`), to draft it in the prompt's own pass next time."""

    def __init__(self, llm: EmotionLLM):
        self.llm = llm
        self.leads_chosen: dict[str, Counter] = {}  # answer start -> how often each lead followed it

    @torch.no_grad()
    def generate(self, feats, mask, prompts: list[str], starts: list[str], max_new_tokens: int = 40,
                 constrained: bool = True, z=None, real_fraction=None, jump: bool = True,
                 drafts: list[list[str]] | None = None, posterior=None,
                 allow: list[set | None] | None = None) -> list[str]:
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
        reading the weights), not in a large batch bound by arithmetic.

        `allow` (constrained only): per row, the claims it may make (eai.llm.grammar.GrammarState.allow, from
        eai.llm.evidence.sayable); None, or a row's None, for any claim of the lexicon."""
        llm = self.llm
        dev = llm.device
        rows = [llm._prompt_ids(p) + llm._ids(s) for p, s in zip(prompts, starts)]
        N = len(rows)
        done = [False] * N
        gen: list[list[int]] = [[] for _ in rows]
        grammar = ClaimDecoder(llm.tok, llm.eos) if constrained else None
        states = [grammar.start(a) for a in (allow or [None] * N)] if grammar else None
        expect = drafts if grammar and drafts else [None] * N
        # the prompt pass drafts too: the lead this start was most often followed by, then the expected claims
        first = [self._lead_draft(grammar, s, e)[:max_new_tokens] for s, e in zip(starts, expect)]
        K = max(map(len, first)) + 1
        step, cache, att2, nxt_pos = llm._forward([r + d for r, d in zip(rows, first)], feats, mask, z=z,
                                                   real_fraction=real_fraction, keep=K, posterior=posterior)
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
                if grammar and chunk and t[i] != llm.eos:
                    grammar.advance(states[i], t[i])
                    while jump and len(gen[i]) + len(chunk) < max_new_tokens:
                        only = grammar.allowed(states[i])
                        if len(only) != 1:
                            break
                        chunk.append(only[0])
                        if only[0] == llm.eos:
                            break
                        grammar.advance(states[i], only[0])
                chunk = chunk[:max_new_tokens - len(gen[i])]
                gen[i] += chunk
                if chunk and chunk[-1] == llm.eos or len(gen[i]) >= max_new_tokens:
                    done[i] = True
                    chunk = [c for c in chunk if c != llm.eos]
                chunks.append([] if done[i] else chunk)
                d = [] if done[i] or expect[i] is None else grammar.continuation(states[i], expect[i])
                spec.append(d[:max_new_tokens - len(gen[i])])
            if all(done):
                break
            C = max(len(c) + len(d) for c, d in zip(chunks, spec))
            ids = torch.full((N, C), llm.pad, dtype=torch.long, device=dev)
            new_att = torch.zeros((N, C), dtype=torch.long, device=dev)
            for i, (c, d) in enumerate(zip(chunks, spec)):
                if c:
                    ids[i, :len(c) + len(d)], new_att[i, :len(c) + len(d)] = torch.tensor(c + d), 1
            att2 = torch.cat([att2, new_att], 1)
            pos = nxt_pos[:, None] + torch.arange(C, device=dev)
            out = llm.lm(input_ids=ids, attention_mask=att2, position_ids=pos, past_key_values=cache, use_cache=True)
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
            g = g[:g.index(llm.eos)] if llm.eos in g else g
            texts.append((s + llm.tok.decode(g, skip_special_tokens=True)).strip())
        return texts

    def _lead_draft(self, grammar: "ClaimDecoder | None", start: str, claims: list[str] | None) -> list[int]:
        """The draft of a row's first pass: the lead most often chosen after `start` so far (none before the
        first), then the expected claims; [] without claims to draft; the no-support sentence when that is
        what is expected (`claims` == [NO_SUPPORT])."""
        seen = self.leads_chosen.get(start)
        if claims is not None and claims == [NO_SUPPORT]:  # the no-support sentence: no lead to guess
            return list(grammar.no_support) + list(grammar.end)
        if claims is None or not seen:
            return []
        lead = seen.most_common(1)[0][0]
        st = grammar.start()
        for t in lead:
            grammar.advance(st, t)
        return list(lead) + grammar.continuation(st, claims)

    @staticmethod
    def _accepted(grammar: "ClaimDecoder | None", st: GrammarState, logits: torch.Tensor, draft: list[int]) -> int:
        """How many tokens of `draft` are the model's own greedy choices in the grammar, `logits[k]` being its
        prediction for `draft[k]`; the grammar state advances through them."""
        k = 0
        while k < len(draft) and grammar.choose(st, logits[k]) == draft[k]:
            grammar.advance(st, draft[k])
            k += 1
        return k
