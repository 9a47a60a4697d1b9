"""`Motion`: the one in-memory form every reader produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Motion:
    """A skeleton sequence.

    positions: (T, J, 3) float32, metres, y up.
    joints: J joint names; parents: J parent indices (-1 for a root).
    fps: frames per second. layout: registry name once detected ("" if unknown).
    meta: what the reader found, e.g. format, unit_scale, up (the file's up axis), filled_frames, and
    notes: one line per thing it repaired or guessed (units, up axis, gaps, timestamps), shown by
    `eai info` and listed by `eai data`.
    """

    positions: np.ndarray
    joints: list[str]
    parents: list[int]
    fps: float
    layout: str = ""
    label: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float32)
        if self.positions.ndim != 3 or self.positions.shape[2] != 3:
            raise ValueError(f"positions must be (T, J, 3), got {self.positions.shape}")
        if self.positions.shape[1] != len(self.joints) or len(self.parents) != len(self.joints):
            raise ValueError("positions, joints and parents disagree on the joint count")

    def note(self, text: str) -> None:
        """Record something the reader repaired or guessed (shown by `eai info`, listed by `eai data`)."""
        self.meta.setdefault("notes", []).append(text)

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.n_frames / self.fps
