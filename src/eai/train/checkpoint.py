"""Checkpoints and training logs shared by the encoder loop and the LLM-stage loop.

A checkpoint is one torch file written atomically (temporary file, then rename), holding the trainable
state, the optimiser's, the step or epoch reached, the history so far and both random generators' states
(numpy's and torch's), so that a killed run resumes as if never interrupted (bit-identical weights)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from eai.io.files import atomic_path


def save_checkpoint(path: Path, rng: np.random.Generator, **state) -> None:
    """Write `state` (tensors, state dicts, history, counters) with the numpy `rng`'s and torch's states."""
    with atomic_path(path) as tmp:
        torch.save({**state, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)


def load_checkpoint(path: Path | None, rng: np.random.Generator, map_location=None) -> dict | None:
    """The state saved at `path` (None when there is none), with the numpy `rng` and torch's generator set back
    to where they were when it was saved."""
    if path is None or not Path(path).is_file():
        return None
    state = torch.load(path, map_location=map_location, weights_only=False)
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    return state


class JsonlLog:
    """A training log, one JSON record per line appended to `path` (log.jsonl in a run folder)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
