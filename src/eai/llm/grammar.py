"""The grammar of grounded explanations, for constrained decoding: LEAD claim ("," claim | " and" claim)* "."
with claims from the checker's lexicon (eai.llm.evidence), one per descriptor, at most `max_claims`; or the
no-support sentence, ", though no measured movement clearly points to it." (evidence.NO_SUPPORT).

A row may be held to the claims its clip grounds (`GrammarState.allow`, from evidence.sayable): only claims the
checker verifies on that clip and counts as supporting its answer, so that an explanation cannot state what the
measurement contradicts, whatever the LM would prefer (as constrained decoding keeps any output inside a
grammar; here the grammar is the checker's own)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class GrammarState:
    """Where one row is in the grammar: the phase (lead, claim, after a claim, done), the tokens of the piece
    begun (`partial`), the descriptors claimed so far (`used`) and their count (`n`); `allow`, the (descriptor,
    direction) claims the row may make (evidence.sayable; evidence.NO_SUPPORT_KEY for the no-support sentence),
    None for any claim of the lexicon."""

    phase: str = "lead"
    partial: tuple[int, ...] = ()
    used: set = field(default_factory=set)
    n: int = 0
    allow: frozenset | None = None


class ClaimDecoder:
    """Decoding constrained to the grounded-description grammar: LEAD claim ("," claim | " and" claim)* "."
    with claims from the checker's lexicon, one per descriptor, at most `max_claims`, or the no-support
    sentence (NO_SUPPORT_LEAD NO_SUPPORT "."), taken as one piece in place of the lead and its claims. The
    model still chooses every token among those the grammar allows, so which claims it makes is its own (and
    checked)."""

    def __init__(self, tok, eos: int, max_claims: int = 3):
        from eai.llm import evidence as ev

        self._ids = ids = lambda t: tuple(tok(t, add_special_tokens=False)["input_ids"])
        self.leads = [ids(x) for x in ev.LEADS]
        self.no_support = ids(f"{ev.NO_SUPPORT_LEAD} {ev.NO_SUPPORT}")
        self.key = {ids(" " + p): (d, s) for p, d, s in ev.LEXICON if d != ev.NO_SUPPORT_KEY}
        self.claims = {c: d for c, (d, _) in self.key.items()}
        self._no_support_key = (ev.NO_SUPPORT_KEY, 0)
        self.seps = [ids(","), ids(" and")]
        self.end = ids(".")
        self.eos, self.max_claims = eos, max_claims

    def start(self, allow: set | frozenset | None = None) -> GrammarState:
        """A row's first state; `allow` (GrammarState.allow) holds it to those claims. An `allow` with no
        claim of the lexicon in it leaves the row free (None): the grammar always has a sentence to end."""
        if allow is not None and not (set(allow) & (set(self.key.values()) | {self._no_support_key})):
            allow = None
        return GrammarState(allow=None if allow is None else frozenset(allow))

    def _open(self, st: GrammarState) -> list[tuple[int, ...]]:
        """The claims row `st` may still make: allowed, about a descriptor not yet claimed."""
        return [c for c, d in self.claims.items()
                if d not in st.used and (st.allow is None or self.key[c] in st.allow)]

    def continuation(self, st: GrammarState, claims: list[str]) -> list[int]:
        """Draft tokens from state `st` on, where it has just completed the lead or a claim: the expected
        `claims` not yet made, joined as evidence._join joins them (" c1, c2 and c3"), and the full stop;
        [] anywhere else, or when no expected claim is left to make."""
        piece, n = st.partial, st.n
        if st.phase == "lead" and piece in self.leads:
            made: set = set()
        elif st.phase == "claim" and piece in self.claims:
            made, n = st.used | {self.claims[piece]}, n + 1
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

    def choose(self, st: GrammarState, logits: torch.Tensor) -> int:
        """The greedy choice among the allowed tokens (the lowest id of a tie, as argmax over masked logits)."""
        allowed = self.allowed(st)
        return allowed[int(torch.argmax(logits[allowed]))]

    def _pieces(self, st: GrammarState) -> list[tuple[int, ...]]:
        ph = st.phase
        if ph == "lead":
            free = st.allow is None
            return ((self.leads if free or self._open(st) else [])
                    + ([self.no_support] if free or self._no_support_key in st.allow else []))
        if ph == "claim":
            return self._open(st)
        if ph == "after":
            return [self.end] + (self.seps if st.n < self.max_claims and self._open(st) else [])
        return []

    def _next_phase(self, st: GrammarState, piece: tuple[int, ...]) -> None:
        if st.phase == "lead" and piece == self.no_support:  # the whole sentence but its full stop
            st.phase, st.n = "after", self.max_claims
        elif st.phase == "lead" or (st.phase == "after" and piece in self.seps):
            st.phase = "claim"
        elif st.phase == "claim":
            st.used.add(self.claims[piece])
            st.n += 1
            st.phase = "after"
        else:
            st.phase = "done"
        st.partial = ()

    def allowed(self, st: GrammarState) -> list[int]:
        if st.phase == "done":
            return [self.eos]
        k = len(st.partial)
        out = {p[k] for p in self._pieces(st) if len(p) > k and p[:k] == st.partial}
        if st.partial in self._pieces(st):  # a complete piece: the next phase may begin
            nxt = dataclasses.replace(st, used=set(st.used))
            self._next_phase(nxt, st.partial)
            out |= set(self.allowed(nxt))
        return sorted(out)

    def advance(self, st: GrammarState, token: int) -> None:
        k = len(st.partial)
        cont = [p for p in self._pieces(st) if len(p) > k and p[:k] == st.partial and p[k] == token]
        if not cont and st.partial in self._pieces(st):
            self._next_phase(st, st.partial)
            if st.phase == "done":
                return
            return self.advance(st, token)
        st.partial = st.partial + (token,)
