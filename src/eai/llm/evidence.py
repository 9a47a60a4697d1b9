"""Grounded explanations: movement claims built from measured descriptors, and the checker that verifies them.

A clip's descriptors (eai.features) are compared with the dataset's neutral clips as z-scores:
z = (value - neutral mean) / spread over all training clips. A training description names the label and up
to three claims, one per descriptor with |z| >= `CLAIM_Z`, strongest first, each in one of several wordings;
nothing is claimed that the measurement does not support, and a clip with no marked difference is described
as close to the neutral baseline. The description prompt states the same evidence in the same wordings, so
that a description says what was measured in the words it was given.

The checker finds every claim phrase of the lexicon in a text (longest match first) and verifies it against
the clip's z-scores: a "more" claim holds when z >= `VERIFY_Z`, a "less" claim when z <= -`VERIFY_Z`, the
neutral claim when no |z| reaches `CLAIM_Z`. Text outside the lexicon is not a claim the checker can see:
the faithfulness rate covers the claims it recognises, and `unrecognised` counts sentences with none.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from eai.features import NAMES

CLAIM_Z = 1.0
VERIFY_Z = 0.5
MAX_CLAIMS = 3
NEUTRAL = "__neutral__"

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
assert set(PHRASES) == set(NAMES), "every descriptor needs wordings"

# how an explanation goes on after the label; claims follow, each with a leading space, joined by "," and
# " and", closed by "." (the grammar ClaimDecoder decodes in)
LEADS = (":", ", because of", ". The body shows", " is read from")

# phrase -> (descriptor, direction), longest first so that no phrase is matched inside a longer one
LEXICON: list[tuple[str, str, int]] = sorted(
    [(p, d, +1) for d, (hi, _) in PHRASES.items() for p in hi]
    + [(p, d, -1) for d, (_, lo) in PHRASES.items() for p in lo]
    + [(p, NEUTRAL, 0) for p in NEUTRAL_PHRASES], key=lambda t: -len(t[0]))
assert len({p for p, _, _ in LEXICON}) == len(LEXICON), "claim wordings must be unique"


@dataclass
class Reference:
    """Neutral baseline of a dataset: per-descriptor neutral mean and the spread over all clips."""

    mean: np.ndarray
    scale: np.ndarray
    neutral_label: str | None

    @staticmethod
    def fit(desc: np.ndarray, labels: list[str]) -> "Reference":
        """desc (N, D) in NAMES order (NaN: missing), labels (N,): the label 'neutral' is the baseline, or all
        clips when the dataset has none."""
        desc = np.asarray(desc, np.float64)
        lab = np.asarray(labels)
        neutral = "neutral" if "neutral" in set(labels) else None
        base = desc[lab == neutral] if neutral else desc
        with np.errstate(all="ignore"):
            mean = np.nanmean(base, 0)
            scale = np.nanstd(desc, 0)
        return Reference(np.nan_to_num(mean), np.where(np.isfinite(scale) & (scale > 1e-9), scale, 1.0),
                         neutral)

    def z(self, desc: np.ndarray) -> np.ndarray:
        """z-scores, NaN where the descriptor is missing."""
        return (np.asarray(desc, np.float64) - self.mean) / self.scale

    def to_dict(self) -> dict:
        return {"names": NAMES, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "neutral_label": self.neutral_label}

    @staticmethod
    def from_dict(d: dict) -> "Reference":
        if d["names"] != NAMES:
            raise ValueError("the run's descriptor set differs from this eai's")
        return Reference(np.array(d["mean"]), np.array(d["scale"]), d["neutral_label"])


def salient(z: np.ndarray, k: int = MAX_CLAIMS, threshold: float = CLAIM_Z) -> list[tuple[str, int, float]]:
    """The k descriptors furthest from neutral with |z| >= threshold: (name, direction, z), strongest first."""
    z = np.asarray(z, np.float64)
    order = np.argsort(-np.nan_to_num(np.abs(z), nan=-1))
    return [(NAMES[i], int(np.sign(z[i])), float(z[i])) for i in order[:k]
            if np.isfinite(z[i]) and abs(z[i]) >= threshold]


def _picker(rng: np.random.Generator | None):
    """One of a sequence: drawn by rng, the first when rng is None."""
    return (lambda seq: seq[0]) if rng is None else (lambda seq: seq[int(rng.integers(len(seq)))])


def claim_phrases(z: np.ndarray, rng: np.random.Generator | None = None) -> list[tuple[str, float | None]]:
    """The claims the measurement supports, strongest first, as (wording, z): each in a wording picked by
    `rng` (the first wording when None); the neutral claim (z None) when no descriptor is marked."""
    pick = _picker(rng)
    out: list[tuple[str, float | None]] = [(pick(PHRASES[n][0 if s > 0 else 1]), v) for n, s, v in salient(z)]
    return out or [(pick(NEUTRAL_PHRASES), None)]


def evidence_line(z: np.ndarray, phrases: list[tuple[str, float | None]] | None = None) -> str:
    """The measured evidence as the description prompt states it, strongest first, in the wordings of
    `phrases` (claim_phrases; the first wordings when None): 'slow movement (z -1.6); the head lowered (z +1.3)'.
    The description written for that prompt says its claims in the same words."""
    items = phrases or claim_phrases(z)
    if items[0][1] is None:
        return f"{items[0][0]} (no descriptor beyond {CLAIM_Z:g} sd)"
    return "; ".join(f"{p} (z {v:+.1f})" for p, v in items)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def label_text(label: str) -> str:
    """How an explanation begins: the label, capitalised."""
    return label[:1].upper() + label[1:]


def description(label: str, z: np.ndarray, rng: np.random.Generator | None = None,
                phrases: list[tuple[str, float | None]] | None = None) -> str:
    """A grounded description: the label and the claims the measurements support, in the wordings of
    `phrases` (else picked by rng, the first wordings when rng is None), after a lead-in picked by rng."""
    claims = [p for p, _ in (phrases or claim_phrases(z, rng))]
    return f"{label_text(label)}{_picker(rng)(LEADS)} {_join(claims)}."


@dataclass
class Claim:
    phrase: str
    descriptor: str
    direction: int  # +1 more than neutral, -1 less, 0 close to neutral
    z: float | None
    verified: bool

    def to_dict(self) -> dict:
        return {"phrase": self.phrase, "descriptor": None if self.descriptor == NEUTRAL else self.descriptor,
                "direction": {1: "higher", -1: "lower", 0: "neutral"}[self.direction],
                "z": None if self.z is None or not np.isfinite(self.z) else round(self.z, 2),
                "verified": self.verified}


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


def check(text: str, z: np.ndarray) -> list[Claim]:
    """Every recognised movement claim of `text`, verified against the clip's z-scores."""
    z = np.asarray(z, np.float64)
    out = []
    for _, phrase, d, s in find_claims(text):
        if d == NEUTRAL:
            zz = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else None
            ok = zz is not None and zz < CLAIM_Z
        else:
            zz = float(z[NAMES.index(d)])
            ok = bool(np.isfinite(zz) and s * zz >= VERIFY_Z)
        out.append(Claim(phrase, d, s, zz, ok))
    return out


def names_label(text: str, label: str, labels: list[str]) -> bool:
    """The text names `label` and no other label of the set (case, hyphens and spaces ignored)."""
    norm = lambda s: re.sub(r"[\s_-]+", " ", s.lower())
    t = norm(text)
    has = lambda lab: re.search(r"(?<![a-z])" + re.escape(norm(lab)) + r"(?![a-z])", t) is not None
    others = [l for l in labels if l != label and not (norm(l) in norm(label))]
    return has(label) and not any(has(l) for l in others)
