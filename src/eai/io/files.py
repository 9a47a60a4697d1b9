"""Guarded reading and atomic writing of user files."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from eai.errors import FormatError

DEFAULT_MAX_MB = 512


def cache_root() -> Path:
    """eai's cache folder: EAI_CACHE, else ~/.cache/eai (the bundled LLM's conversion, window caches)."""
    return Path(os.environ.get("EAI_CACHE") or Path.home() / ".cache" / "eai")


def is_number(s: str) -> bool:
    """Whether a text token parses as a float (the readers' test when naming a bad value)."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def max_file_bytes() -> int:
    """The largest motion file eai reads, in bytes (EAI_MAX_FILE_MB overrides the default)."""
    raw = os.environ.get("EAI_MAX_FILE_MB", str(DEFAULT_MAX_MB))
    try:
        return int(float(raw) * 2**20)
    except ValueError:
        raise FormatError(f"EAI_MAX_FILE_MB={raw!r} is not a number of megabytes") from None


def read_bytes(path: str | Path) -> bytes:
    """The whole file, refusing missing, empty and oversized files before reading them."""
    p = Path(path)
    if not p.is_file():
        raise FormatError("no such file", p)
    size = p.stat().st_size
    if size == 0:
        raise FormatError("the file is empty", p)
    limit = max_file_bytes()
    if size > limit:
        raise FormatError(
            f"the file is {size / 2**20:.0f} MB, over eai's {limit / 2**20:.0f} MB limit for one clip; "
            "split it, or raise the limit with EAI_MAX_FILE_MB", p)
    return p.read_bytes()


def decode_text(data: bytes, path: str | Path, what: str) -> str:
    """Text of a file that must be text; binary content is refused with one line."""
    if b"\x00" in data[:65536]:
        raise FormatError(f"this is a binary file, not {what}", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
            raise FormatError(f"not a text file; expected {what}", path) from None
        printable = sum(c.isprintable() or c.isspace() for c in text[:65536])
        if printable < 0.95 * min(len(text), 65536):
            raise FormatError(f"this is a binary file, not {what}", path) from None
        return text


def _umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename. The file gets the
    mode `open()` would give a new file (0666 less the umask), not mkstemp's private 0600, so that others
    can read what eai writes where the umask lets them."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix or ".tmp", dir=dest.parent)
    mode = 0o666 & ~_umask()
    os.fchmod(fd, mode)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # again: a writer may have replaced the file (safetensors writes a private one)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def share_like_open(folder: str | Path) -> None:
    """Give a folder written by a library (mkdtemp's 0700, files of 0600) and everything in it the modes
    `mkdir()` and `open()` would have given under the umask, before it is renamed into place."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
