"""Errors a user can cause. The CLI turns each into one line, `eai: error: ...`, and exit code 2."""
from __future__ import annotations

from pathlib import Path


class EaiError(Exception):
    """A problem with the user's input: which file (and line), what is wrong, what to do."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
            where += ": "
        return where + self.message


class FormatError(EaiError):
    """A motion file that cannot be read as what it claims to be."""


class LayoutError(EaiError):
    """Joint names that match no registered skeleton layout."""


class DatasetError(EaiError):
    """A dataset folder or manifest that cannot be used."""
