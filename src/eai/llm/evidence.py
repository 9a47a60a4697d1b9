"""Grounded explanations: movement claims built from measured descriptors, and the checker that verifies them.

A clip's descriptors (eai.features) are compared with the dataset's neutral clips as z-scores:
z = (value - neutral mean) / spread over all training clips (for the gait descriptors, over the clips that walk:
eai.features.GAIT, `walks`). A claim is made only when it is

- true of the clip: |z| >= `CLAIM_Z` in its direction;
- about a descriptor that applies to the movement: the gait descriptors only of a clip that walks, by its own
  measurement (eai.features.applicable), so a standing wave never gets "short strides";
- in support of the label: it points the way the label's training clips differ from the neutral ones, sign(class
  mean - neutral mean) of that descriptor, where that difference is at least `SUPPORT_SD` of the spread (the
  run stores the class means, `Reference.class_mean`). The neutral label is supported by movement close to the
  baseline (the neutral claim) and by no claim of a marked difference.

A training description names the label and up to three such claims, strongest first, each in one of several
wordings; when no measured movement supports the label it says so in one fixed sentence (`NO_SUPPORT`: "Sad,
though no measured movement clearly points to it."). The description prompt states the same evidence in the same
wordings, so that a description says what was measured in the words it was given. A run trained before class
means were stored has none: its claims are judged true-or-not only (support unknown, today's selection).

The checker finds every claim phrase of the lexicon in a text (longest match first) and verifies it against
the clip's z-scores: a "more" claim holds when z >= `VERIFY_Z` and the descriptor applies, a "less" claim when
z <= -`VERIFY_Z`, the neutral claim when no applicable |z| reaches `CLAIM_Z`, the no-support sentence when the
measurement gives no supporting claim; with the label's `Grounds`, each claim also says whether it supports the
label. Text outside the lexicon is not a claim the checker can see: the faithfulness rate covers the claims it
recognises.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

from eai.features import GAIT, NAMES, applicable, walks

CLAIM_Z = 1.0
VERIFY_Z = 0.5
MAX_CLAIMS = 3
# A class mean supports a direction when it differs from the neutral mean by >= 0.3 of the descriptor's spread:
# above a "small" effect (Cohen's d 0.2) and, with Bandai's ~11 training clips a class against ~20 neutral ones,
# about one standard error of that difference; on Bandai it leaves every emotion 8-11 of the 16 descriptors to support it.
SUPPORT_SD = 0.3
NEUTRAL = "__neutral__"
NO_SUPPORT_KEY = "__no_support__"

# descriptor -> (wordings when higher than neutral, wordings when lower); every phrase is unique
PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "speed": (("fast, energetic movement", "quick limb movement"),
              ("slow movement", "slow limb movement")),
    "speed_variability": (("uneven, stop-and-go pacing", "bursts of motion between pauses"),
                          ("steady, even pacing", "an even rhythm")),
    "travel_speed": (("ground covered quickly", "a brisk walking pace"),
                     ("little ground covered", "a slow walking pace")),
    "acceleration": (("sharp changes of speed", "forceful accelerations"),
                     ("gentle changes of speed", "soft accelerations")),
    "jerk": (("abrupt, jerky motion", "sudden, jerky moves"),
             ("smooth, flowing motion", "fluid, smooth moves")),
    "expansiveness": (("an expansive posture that takes up space", "a wide-open body"),
                      ("a contracted, closed posture", "a compact body")),
    "hand_spread": (("the hands held far apart", "wide-apart hands"),
                    ("the hands kept close together", "hands near each other")),
    "hand_height": (("the hands raised high", "lifted hands"),
                    ("the hands hanging low", "lowered hands")),
    "head_pitch": (("the head lowered", "a downcast head"),
                   ("the head raised", "the chin lifted")),
    "trunk_lean": (("the trunk leaning forward", "a forward-bent trunk"),
                   ("the trunk upright or leaning back", "a backward-leaning trunk")),
    "step_frequency": (("quick, rapid steps", "a high step rate"),
                       ("few, slow steps", "a low step rate")),
    "stride_length": (("long strides", "lengthy strides"),
                      ("short strides", "shuffling, short steps")),
    "vertical_bounce": (("a bouncy gait", "a lively up-and-down bounce"),
                        ("a flat, unbouncing gait", "little vertical bounce")),
    "arm_swing": (("wide arm swing", "arms swinging freely"),
                  ("little arm swing", "arms held close to the trunk")),
    "symmetry": (("symmetric left-right movement", "balanced use of both sides"),
                 ("lopsided, asymmetric movement", "one side moving more")),
    "stillness": (("long moments of stillness", "frequent pauses in place"),
                  ("constant motion", "hardly any stillness")),
}
NEUTRAL_PHRASES = ("movement close to the neutral baseline", "nothing far from neutral movement")
# the honest sentence when no measured movement supports the label: "<Label>, though no measured movement ..."
NO_SUPPORT = "no measured movement clearly points to it"
NO_SUPPORT_LEAD = ", though"
assert set(PHRASES) == set(NAMES), "every descriptor needs wordings"

# how an explanation goes on after the label; claims follow, each with a leading space, joined by "," and
# " and", closed by "." (the grammar ClaimDecoder decodes in)
LEADS = (":", ", because of", ". The body shows", " is read from")

# phrase -> (descriptor, direction), longest first so that no phrase is matched inside a longer one
LEXICON: list[tuple[str, str, int]] = sorted(
    [(p, d, +1) for d, (hi, _) in PHRASES.items() for p in hi]
    + [(p, d, -1) for d, (_, lo) in PHRASES.items() for p in lo]
    + [(p, NEUTRAL, 0) for p in NEUTRAL_PHRASES] + [(NO_SUPPORT, NO_SUPPORT_KEY, 0)], key=lambda t: -len(t[0]))
assert len({p for p, _, _ in LEXICON}) == len(LEXICON), "claim wordings must be unique"


@dataclass
class Grounds:
    """What claims about one clip, answered as one label, are judged against. applies (D,) bool: the descriptor
    applies to this movement (eai.features.applicable); toward (D,) int: the way the label's training clips
    differ from neutral (+1 higher, -1 lower, 0 no marked difference; all 0 for the neutral label), None when
    the run stores no class means (support unknown); neutral: the label is the baseline's own."""

    applies: np.ndarray
    toward: np.ndarray | None
    neutral: bool = False


@dataclass
class Reference:
    """Baseline of a dataset: per-descriptor neutral mean and the spread over all clips (D,) in the descriptors'
    units; for the GAIT descriptors both over the clips that walk (eai.features.walks), when some do. class_mean:
    label -> (D,) mean of that label's training clips (gait descriptors over its walking clips; NaN where none
    measured it), None for a run trained before class means were stored."""

    mean: np.ndarray
    scale: np.ndarray
    neutral_label: str | None
    class_mean: dict[str, np.ndarray] | None = None

    @staticmethod
    def fit(desc: np.ndarray, labels: list[str]) -> "Reference":
        """desc (N, D) in NAMES order (NaN: missing), labels (N,): the label 'neutral' is the baseline, or all
        clips when the dataset has none."""
        desc = np.asarray(desc, np.float64)
        lab = np.asarray(labels)
        neutral = "neutral" if "neutral" in set(labels) else None
        gait = np.isin(NAMES, GAIT)
        walk = walks(desc)
        # each descriptor's rows: all clips, the gait descriptors' only those that walk (when any does)
        rows = np.where(gait[None] & walk.any(), walk[:, None], True)
        kept = np.where(rows, desc, np.nan)
        base = lab == neutral if neutral else np.ones(len(lab), bool)
        nb = np.where(base[:, None] & rows, desc, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column with no value: NaN, handled below
            mean = np.where(np.isfinite(np.nanmean(nb, 0)), np.nanmean(nb, 0), np.nanmean(kept, 0))
            scale = np.nanstd(kept, 0)
            cls = {str(c): np.nanmean(kept[lab == c], 0) for c in sorted(set(labels))}
        return Reference(np.nan_to_num(mean), np.where(np.isfinite(scale) & (scale > 1e-9), scale, 1.0),
                         neutral, cls)

    def z(self, desc: np.ndarray) -> np.ndarray:
        """z-scores, NaN where the descriptor is missing."""
        return (np.asarray(desc, np.float64) - self.mean) / self.scale

    def values(self, z: np.ndarray) -> np.ndarray:
        """The descriptors (..., D) whose z-scores are `z` (the inverse of `z`)."""
        return np.asarray(z, np.float64) * self.scale + self.mean

    def toward(self, label: str) -> np.ndarray | None:
        """(D,) int: the way `label`'s training clips differ from neutral, sign(class mean - neutral mean) where
        that is >= SUPPORT_SD of the spread, else 0; all 0 for the neutral label; None when unknown (no class
        means stored, or a label the run has none for)."""
        if self.class_mean is None or label not in self.class_mean:
            return None
        if label == self.neutral_label:
            return np.zeros(len(NAMES), int)
        diff = (self.class_mean[label] - self.mean) / self.scale
        return np.where(np.isfinite(diff) & (np.abs(diff) >= SUPPORT_SD), np.sign(np.nan_to_num(diff)), 0).astype(int)

    def grounds(self, label: str, values: np.ndarray) -> Grounds:
        """What claims about a clip of descriptors `values` (D,) (NaN where missing), answered as `label`, are
        judged against."""
        return Grounds(applicable(values), self.toward(label), label == self.neutral_label)

    def to_dict(self) -> dict:
        out = {"names": NAMES, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
               "neutral_label": self.neutral_label}
        if self.class_mean is not None:
            out["class_mean"] = {c: [None if not np.isfinite(x) else float(x) for x in m]
                                 for c, m in self.class_mean.items()}
        return out

    @staticmethod
    def from_dict(d: dict) -> "Reference":
        """The reference a run stored; one stored before class means were (no 'class_mean') loads with
        class_mean None: support unknown."""
        if d["names"] != NAMES:
            raise ValueError("the run's descriptor set differs from this eai's")
        cls = d.get("class_mean")
        return Reference(np.array(d["mean"]), np.array(d["scale"]), d["neutral_label"],
                         None if cls is None else {c: np.array([np.nan if x is None else x for x in m], np.float64)
                                                   for c, m in cls.items()})


def salient(z: np.ndarray, k: int = MAX_CLAIMS, threshold: float = CLAIM_Z) -> list[tuple[str, int, float]]:
    """The k descriptors furthest from neutral with |z| >= threshold: (name, direction, z), strongest first."""
    z = np.asarray(z, np.float64)
    order = np.argsort(-np.nan_to_num(np.abs(z), nan=-1))
    return [(NAMES[i], int(np.sign(z[i])), float(z[i])) for i in order[:k]
            if np.isfinite(z[i]) and abs(z[i]) >= threshold]


def _picker(rng: np.random.Generator | None):
    """One of a sequence: drawn by rng, the first when rng is None."""
    return (lambda seq: seq[0]) if rng is None else (lambda seq: seq[int(rng.integers(len(seq)))])


def claim_phrases(z: np.ndarray, rng: np.random.Generator | None = None,
                  grounds: Grounds | None = None) -> list[tuple[str, float | None]]:
    """The claims to make of a clip of z-scores `z` (D,), strongest first, as (wording, z): each in a wording
    picked by `rng` (the first wording when None). Every claim is true (|z| >= CLAIM_Z); with `grounds`, it
    is also about a descriptor that applies and, when the grounds know the label's way (`toward`), points that
    way. Without a claim: the neutral claim (z None) when no applicable descriptor is marked and the label is
    the neutral one (or its way is unknown), else the no-support sentence ([(NO_SUPPORT, None)])."""
    pick = _picker(rng)
    z = np.asarray(z, np.float64)
    if grounds is not None:
        z = np.where(grounds.applies, z, np.nan)
    marked = salient(z, len(NAMES))
    toward = None if grounds is None else grounds.toward
    kept = marked if toward is None else [m for m in marked if m[1] == toward[NAMES.index(m[0])]]
    out: list[tuple[str, float | None]] = [(pick(PHRASES[n][0 if s > 0 else 1]), v) for n, s, v in kept[:MAX_CLAIMS]]
    if out:
        return out
    if not marked and (toward is None or grounds.neutral):
        return [(pick(NEUTRAL_PHRASES), None)]
    return [(NO_SUPPORT, None)]


def evidence_line(z: np.ndarray, phrases: list[tuple[str, float | None]] | None = None,
                  grounds: Grounds | None = None) -> str:
    """The measured evidence as the description prompt states it, strongest first, in the wordings of
    `phrases` (else claim_phrases(z, grounds) in the first wordings): 'slow movement (z -1.6); the head
    lowered (z +1.3)'. The description written for that prompt says its claims in the same words."""
    items = phrases or claim_phrases(z, grounds=grounds)
    if items[0][0] == NO_SUPPORT:
        return f"{NO_SUPPORT} (none beyond {CLAIM_Z:g} sd its way)"
    if items[0][1] is None:
        return f"{items[0][0]} (no descriptor beyond {CLAIM_Z:g} sd)"
    return "; ".join(f"{p} (z {v:+.1f})" for p, v in items)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def label_text(label: str) -> str:
    """How an explanation begins: the label, capitalised."""
    return label[:1].upper() + label[1:]


def description(label: str, z: np.ndarray, rng: np.random.Generator | None = None,
                phrases: list[tuple[str, float | None]] | None = None, grounds: Grounds | None = None) -> str:
    """A grounded description: the label and the claims to make (`phrases`, else claim_phrases(z, rng,
    grounds)), after a lead-in picked by rng; '<Label>, though no measured movement clearly points to it.'
    when nothing supports the label."""
    claims = [p for p, _ in (phrases or claim_phrases(z, rng, grounds))]
    if claims == [NO_SUPPORT]:
        return f"{label_text(label)}{NO_SUPPORT_LEAD} {NO_SUPPORT}."
    return f"{label_text(label)}{_picker(rng)(LEADS)} {_join(claims)}."


@dataclass
class Claim:
    """One claim found in a text: its descriptor (NEUTRAL for the neutral claim, NO_SUPPORT_KEY for the
    no-support sentence) and direction (+1 more than neutral, -1 less, 0 neither), the clip's z, whether it
    holds (`verified`), whether the descriptor applies to the movement, the label's way for that descriptor
    (`toward`, None unknown) and whether the claim supports the label (`supports`, None unknown)."""

    phrase: str
    descriptor: str
    direction: int
    z: float | None
    verified: bool
    applies: bool = True
    toward: int | None = None
    supports: bool | None = None

    @property
    def kind(self) -> str:
        return {NEUTRAL: "neutral", NO_SUPPORT_KEY: "no_support"}.get(self.descriptor, "movement")

    def to_dict(self) -> dict:
        way = {1: "higher", -1: "lower", 0: "none", None: None}
        return {"phrase": self.phrase, "kind": self.kind,
                "descriptor": None if self.kind != "movement" else self.descriptor,
                "direction": {1: "higher", -1: "lower", 0: "neutral"}[self.direction] if self.kind != "no_support"
                else None,
                "z": None if self.z is None or not np.isfinite(self.z) else round(self.z, 2),
                "verified": self.verified, "applies": self.applies, "supports": self.supports,
                "class_direction": way[self.toward]}


def find_claims(text: str) -> list[tuple[int, str, str, int]]:
    """(position, phrase, descriptor, direction) of every lexicon phrase in text, in reading order."""
    low = text.lower()
    taken = np.zeros(len(low) + 1, bool)
    found = []
    for phrase, d, s in LEXICON:
        for m in re.finditer(re.escape(phrase), low):
            if not taken[m.start():m.end()].any():
                taken[m.start():m.end()] = True
                found.append((m.start(), phrase, d, s))
    return sorted(found)


def check(text: str, z: np.ndarray, grounds: Grounds | None = None) -> list[Claim]:
    """Every recognised claim of `text`, verified against the clip's z-scores (D,); with the `grounds` of the
    clip and its label, a claim about a descriptor that does not apply does not hold, and each claim says
    whether it supports the label (a movement claim: it applies and points the label's way; the neutral claim:
    the label is the neutral one; the no-support sentence: never). Without grounds (or without the label's
    way), support is None: unknown."""
    z = np.asarray(z, np.float64)
    applies = np.ones(len(NAMES), bool) if grounds is None else np.asarray(grounds.applies, bool)
    toward = None if grounds is None else grounds.toward
    za = np.where(applies, z, np.nan)
    out = []
    for _, phrase, d, s in find_claims(text):
        if d == NEUTRAL:
            zz = float(np.nanmax(np.abs(za))) if np.isfinite(za).any() else None
            ok = zz is not None and zz < CLAIM_Z
            c = Claim(phrase, d, s, zz, ok, toward=None if toward is None else 0,
                      supports=None if toward is None else bool(grounds.neutral))
        elif d == NO_SUPPORT_KEY:
            ok = claim_phrases(z, None, grounds)[0][0] == (NEUTRAL_PHRASES[0] if toward is None else NO_SUPPORT)
            c = Claim(phrase, d, s, None, bool(ok), supports=None if toward is None else False)
        else:
            k = NAMES.index(d)
            zz = float(z[k])
            a = bool(applies[k])
            ok = bool(a and np.isfinite(zz) and s * zz >= VERIFY_Z)
            w = None if toward is None else int(toward[k])
            c = Claim(phrase, d, s, zz, ok, a, w, None if w is None else bool(a and w == s))
        out.append(c)
    return out


def sayable(z: np.ndarray, grounds: Grounds | None = None) -> set[tuple[str, int]]:
    """The claims `check` would verify on a clip of z-scores `z` (D,) and, where the grounds know the label's
    way, count as supporting it: (descriptor, direction) pairs, (NEUTRAL, 0) for the neutral claim and
    (NO_SUPPORT_KEY, 0) for the no-support sentence. What the explanation grammar holds a row to
    (eai.llm.grammar.GrammarState.allow); judged by `check` itself, one wording per claim, so the two never
    disagree. Never empty: when nothing supports the label, the no-support sentence holds."""
    return {key for key, phrase in FIRST_WORDING.items()  # the no-support sentence never supports: it holds alone
            if (c := check(phrase, z, grounds)[0]).verified and (c.supports is not False or key[0] == NO_SUPPORT_KEY)}


# each claim's first wording in the lexicon: what `sayable` judges it by
FIRST_WORDING: dict[tuple[str, int], str] = {}
for _phrase, _d, _s in LEXICON:
    FIRST_WORDING.setdefault((_d, _s), _phrase)


def names_label(text: str, label: str, labels: list[str]) -> bool:
    """The text names `label` and no other label of the set (case, hyphens and spaces ignored)."""
    norm = lambda s: re.sub(r"[\s_-]+", " ", s.lower())
    t = norm(text)
    has = lambda lab: re.search(r"(?<![a-z])" + re.escape(norm(lab)) + r"(?![a-z])", t) is not None
    others = [l for l in labels if l != label and not (norm(l) in norm(label))]
    return has(label) and not any(has(l) for l in others)
