"""Errors a user can cause. The CLI turns each into one line, `eai: error: ...`, and exit code 2."""
from __future__ import annotations

import warnings
from pathlib import Path


class EaiError(Exception):
    """A problem with the user's input: which file (and line), what is wrong, what to do."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        return _where(self.path, self.line) + self.message


def _where(path: str | Path | None, line: int | None) -> str:
    if path is None:
        return ""
    return (f"{path}" if line is None else f"{path}:{line}") + ": "


class FormatError(EaiError):
    """A motion file that cannot be read as what it claims to be."""


class LayoutError(EaiError):
    """Joint names that match no registered skeleton layout."""


class DatasetError(EaiError):
    """A dataset folder or manifest that cannot be used."""


class UnitError(FormatError):
    """A body size from which the length unit cannot be told (the user gives --units)."""


class EaiWarning(UserWarning):
    """Something a reader repaired in the user's data; the CLI prints it as `eai: warning: ...`."""


def warn(message: str, path: str | Path | None = None, line: int | None = None) -> None:
    """Tell the user (on stderr, through the CLI) what was repaired, with the file and line."""
    warnings.warn(EaiWarning(_where(path, line) + message), stacklevel=2)
