"""The prompts of EAI-LLM's two tasks, in the LM's own chat template (LLaVA's conversation.py counterpart).

The user turn ends with one `SKELETON` placeholder per skeleton token, so that everything before it is one
prefix shared by all windows of a dataset (its key/value cache is computed once). Recognition asks for one
of the dataset's label words; description gives the recognised label and the measured evidence, and asks
which movements show the emotion.
"""
from __future__ import annotations

SKELETON = "<skeleton>"
SYSTEM = "You read human body movement from skeleton tokens and explain the emotion it expresses."
IGNORE = -100


def recognition_prompt(n_tokens: int, tag: str, labels: list[str]) -> str:
    return (f"[{tag}] Which emotion does this body express? Answer with one of: {', '.join(labels)}.\n"
            f"Movement: {SKELETON * n_tokens}")


def description_prompt(n_tokens: int, tag: str, label: str, evidence: str) -> str:
    return (f"[{tag}] Emotion: {label}. Measured against neutral: {evidence}.\n"
            f"Explain which movements show the emotion.\nMovement: {SKELETON * n_tokens}")


def recognition_templates(n_tokens: int, datasets) -> list[list[str]]:
    """Each dataset's recognition prompt as EmotionLLM.add_stem and frozen_stems take a template: one rendering,
    whose stem is everything before its first skeleton placeholder (the chat template's beginning, the question
    and the dataset's label words). `datasets`: objects with `tag` and `words` (eai.data.joint.RunDataset)."""
    return [[recognition_prompt(n_tokens, d.tag, d.words)] for d in datasets]


def description_templates(n_tokens: int, datasets) -> list[list[str]]:
    """Each dataset's description prompt as a template: two renderings, with the dataset's first and last label
    word and placeholder evidence 'a' and 'b', whose shared beginning (up to the label word; with one label
    word, up to the evidence) is its stem."""
    return [[description_prompt(n_tokens, d.tag, w, e) for w, e in ((d.words[0], "a"), (d.words[-1], "b"))]
            for d in datasets]
