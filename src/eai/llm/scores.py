"""Explanation quality: label consistency, faithfulness (checked claims), support rate (claims pointing the way
the answer's emotion differs from neutral in the training data), BLEU-4 and ROUGE-L against the grounded
reference description, MiniLM cosine similarity, and whether same-emotion clips that move differently get
different explanations."""
from __future__ import annotations

import math
import re
from collections import Counter
from itertools import combinations

import numpy as np


def _words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", s.lower())


def bleu4(hyp: str, ref: str) -> float:
    """Sentence BLEU-4 with add-one smoothing of the higher orders (Lin & Och 2004) and brevity penalty."""
    h, r = _words(hyp), _words(ref)
    if not h:
        return 0.0
    logp = 0.0
    for n in range(1, 5):
        hc = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
        rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
        match = sum(min(c, rc[g]) for g, c in hc.items())
        total = max(sum(hc.values()), 0)
        s = 1 if n > 1 else 0
        logp += math.log((match + s) / (total + s)) if match + s > 0 else -math.inf
    bp = 1.0 if len(h) > len(r) else math.exp(1 - len(r) / len(h))
    return float(bp * math.exp(logp / 4)) if logp > -math.inf else 0.0


def rouge_l(hyp: str, ref: str) -> float:
    """ROUGE-L F1 from the longest common subsequence of words."""
    h, r = _words(hyp), _words(ref)
    if not h or not r:
        return 0.0
    dp = [0] * (len(r) + 1)
    for a in h:
        prev = 0
        for j, b in enumerate(r, 1):
            cur = dp[j]
            dp[j] = prev + 1 if a == b else max(dp[j], dp[j - 1])
            prev = cur
    lcs = dp[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def support_counts(rows: list[dict]) -> dict:
    """Of the explanation rows' movement claims (evidence items of kind 'movement' or 'neutral'; the
    no-support sentence is no claim about movement): how many say whether they support the answer
    (`claims_support_known`), how many do (`claims_supporting`), and the explanations that say no measured
    movement supports their answer (`explanations_no_support`)."""
    claims = [c for r in rows for c in r["evidence"] if c.get("kind", "movement") != "no_support"]
    known = [c for c in claims if c.get("supports") is not None]
    return {"claims_support_known": len(known), "claims_supporting": int(sum(c["supports"] for c in known)),
            "explanations_no_support": int(sum(any(c.get("kind") == "no_support" for c in r["evidence"])
                                               for r in rows))}


def support_rate(counts: dict) -> float | None:
    """Claims pointing the way the answer's emotion differs from neutral / claims (support_counts); None when no
    claim's support is known (a run without class means, or no claims)."""
    n = counts["claims_support_known"]
    return counts["claims_supporting"] / n if n else None


def explanation_scores(rows: list[dict], similarity: bool = True) -> dict:
    """rows: Interpreter.explain outputs (with 'label' where the truth is known). Faithfulness: verified claims
    / claims; support rate: supporting claims / claims whose support is known (support_counts)."""
    claims = [c for r in rows for c in r["evidence"]]
    verified = sum(c["verified"] for c in claims)
    sup = support_counts(rows)
    out = {
        "explanations": len(rows),
        "label_consistency": float(np.mean([r["label_consistent"] for r in rows])) if rows else None,
        "faithfulness": verified / len(claims) if claims else None,
        "support_rate": support_rate(sup), **sup,
        "claims": len(claims), "claims_verified": int(verified),
        "claims_per_explanation": len(claims) / max(1, len(rows)),
        "explanations_without_claims": int(sum(not r["evidence"] for r in rows)),
        "bleu4": float(np.mean([bleu4(r["explanation"], r["reference"]) for r in rows])) if rows else None,
        "rouge_l": float(np.mean([rouge_l(r["explanation"], r["reference"]) for r in rows])) if rows else None,
    }
    if similarity and rows:
        from eai.llm.text import embed

        a, b = embed([r["explanation"] for r in rows]), embed([r["reference"] for r in rows])
        out["minilm_similarity"] = float((a * b).sum(1).mean())
    # same emotion, different measured evidence -> different explanation?
    pairs = differ = 0
    measured = [_claimset(r["reference"]) for r in rows]
    for i, j in combinations(range(len(rows)), 2):
        ri, rj = rows[i], rows[j]
        if ri["emotion"] == rj["emotion"] and measured[i] != measured[j]:
            pairs += 1
            differ += ri["explanation"] != rj["explanation"]
    out["differs_when_movement_differs"] = differ / pairs if pairs else None
    return out


def pooled_scores(scores: list[dict]) -> dict:
    """The explanation_scores of several sets of explanations (folds) as one: counts summed, faithfulness and
    support rate over all claims, rates and similarities averaged over all explanations; same-emotion pairs were compared within
    each set only (one model explained each set), so that rate is the mean over the sets that have pairs."""
    n = sum(s["explanations"] for s in scores)
    out = {k: sum(s.get(k, 0) for s in scores) for k in (
        "explanations", "claims", "claims_verified", "explanations_without_claims", "claims_support_known",
        "claims_supporting", "explanations_no_support")}  # .get: folds scored before support was
    out["faithfulness"] = out["claims_verified"] / out["claims"] if out["claims"] else None
    out["support_rate"] = support_rate(out)
    out["claims_per_explanation"] = out["claims"] / max(1, n)
    for k in ("label_consistency", "bleu4", "rouge_l", "minilm_similarity"):
        have = [s for s in scores if s.get(k) is not None]
        w = sum(s["explanations"] for s in have)
        out[k] = sum(s[k] * s["explanations"] for s in have) / w if w else None
    d = [s["differs_when_movement_differs"] for s in scores if s["differs_when_movement_differs"] is not None]
    out["differs_when_movement_differs"] = float(np.mean(d)) if d else None
    return out


def _claimset(text: str) -> frozenset:
    from eai.llm.evidence import find_claims

    return frozenset((d, s) for _, _, d, s in find_claims(text))
