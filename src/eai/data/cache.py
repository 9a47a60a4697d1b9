"""A cache of unified windows on disk: a dataset's clips read, unified and cut once, then memory-mapped.

`window_cache(path)` reads every clip of a dataset (a batch of 64 at a time), cuts it into faced windows
(eai.data.windows) and streams them to flat files under `$EAI_CACHE/windows/<name>-<key>/`, so memory stays
flat however many clips there are; later calls map those files (np.memmap) without reading a clip. The key
hashes eai's cache format and version, the window parameters and every clip's path, size, modification time
and labels: touching, replacing or relabelling a file gives another key, hence a fresh cache. A cache is
written in a temporary folder renamed into place when complete, so an interrupted write leaves nothing that
a later call could mistake for a cache; a new cache deletes the one it supersedes (same dataset folder and
window parameters).

Folder: raw.f32 (N, T, K, 3) float32 faced windows in body heights; mask.u8 (N, K); arrays.npz (clip (N,)
index into `clips`, frames (N,) real frames, style and content (N,) label indices, -1 where a clip has none);
meta.json (shapes, clip ids and paths, label names, frames read, problems). Labels: the Bandai layout gives each
clip its style and its content; another dataset's own labels (folder or manifest) count as its style.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eai.data.datasets import Dataset, load_clips, open_dataset
from eai.data.windows import STRIDE, WINDOW, face_windows, windows
from eai.errors import DatasetError
from eai.io.files import cache_root
from eai.skeleton.registry import canonical

CACHE_FORMAT = 1  # raise when what a cache folder holds changes
BATCH = 64  # clips read per batch (one BVH parse and FK pass each)


@dataclass
class WindowCache:
    """The windows of one dataset, memory-mapped. raw (N, T, K, 3) float32 faced windows in body heights;
    mask (N, K) bool; clip (N,) index into `clips` (each clip's group id: Bandai's file stem) and `sources`
    (its file); frames (N,) real frames per window; style, content (N,) indices into labels["style"] and
    labels["content"], -1 where the clip has none. `hit`: read from the cache (no clip was read)."""

    path: Path
    raw: np.ndarray
    mask: np.ndarray
    clip: np.ndarray
    frames: np.ndarray
    style: np.ndarray
    content: np.ndarray
    clips: list[str]
    sources: list[str]
    labels: dict[str, list[str]]
    meta: dict = field(default_factory=dict)
    hit: bool = False

    def __len__(self) -> int:
        return len(self.clip)

    @property
    def name(self) -> str:
        return self.meta.get("dataset", self.path.name)

    @property
    def total_frames(self) -> int:
        """Frames of every clip read (after resampling to 30 fps)."""
        return int(self.meta.get("frames_read", 0))


def clip_labels(ds: Dataset) -> dict[str, tuple[str | None, str | None]]:
    """{clip path: (style, content)} for every clip of `ds` (opened with task "style" for the Bandai layout)."""
    if ds.kind != "bandai":
        return {str(c.path): (c.label, None) for c in ds.clips}
    content = {str(c.path): c.label for c in open_dataset(ds.root, "content").clips}
    return {str(c.path): (c.label, content.get(str(c.path))) for c in ds.clips}


def open_for_cache(path: str | Path) -> Dataset:
    """The dataset at `path` with every labelled clip: the Bandai layout by style (all its styles, so no clip is
    left out as auxiliary), any other by its own labels."""
    p = Path(path)
    return open_dataset(p, "style" if (p / "cfg" / "style_label.txt").is_file() else None)


def cache_key(ds: Dataset, labels: dict, size: int, stride: int, face: bool) -> str:
    """sha256 of the cache format, eai's version, the window parameters and each clip's file (path, size,
    modification time) and labels."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        eai_version = version("eai")
    except PackageNotFoundError:  # a source tree not installed
        eai_version = "source"
    files = []
    for c in ds.clips:
        st = c.path.stat()
        files.append([str(c.path.resolve()), st.st_size, st.st_mtime_ns, c.group, *labels[str(c.path)]])
    blob = json.dumps({"format": CACHE_FORMAT, "eai": eai_version, "size": size,
                       "stride": stride, "face": face, "joints": list(canonical().names), "files": files})
    return hashlib.sha256(blob.encode()).hexdigest()


def window_cache(data: str | Path | Dataset, size: int = WINDOW, stride: int = STRIDE, face: bool = True,
                 progress: bool = True, root: Path | None = None) -> WindowCache:
    """The cached windows of the dataset at `data` (a path, or a Dataset opened by `open_for_cache`), built on
    first use (every clip read once, progress shown) under `root` (default $EAI_CACHE/windows)."""
    ds = data if isinstance(data, Dataset) else open_for_cache(data)
    labels = clip_labels(ds)
    key = cache_key(ds, labels, size, stride, face)
    base = Path(root) if root is not None else cache_root() / "windows"
    final = base / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', ds.name)[:60]}-{key[:20]}"
    if not (final / "meta.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
        try:
            _write(tmp, ds, labels, size, stride, face, progress, key)
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same cache first: theirs is as good
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _drop_superseded(base, final)
        return _open(final, hit=False)
    return _open(final, hit=True)


def _drop_superseded(base: Path, final: Path) -> None:
    """Delete the caches `final` replaces (the same dataset folder and window parameters, files since changed) and
    temporary folders a killed write left over a day ago: a cache of dataset-2 is hundreds of MB."""
    meta = json.loads((final / "meta.json").read_text())
    same = ("root", "window", "stride", "face")
    for d in base.iterdir():
        if d == final or not d.is_dir():
            continue
        if d.name.startswith(".tmp-"):
            if time.time() - d.stat().st_mtime > 86400:
                shutil.rmtree(d, ignore_errors=True)
            continue
        try:
            other = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if all(other.get(k) == meta[k] for k in same):
            shutil.rmtree(d, ignore_errors=True)


def _write(out: Path, ds: Dataset, labels: dict, size: int, stride: int, face: bool, progress: bool,
           key: str) -> None:
    style_names = sorted({s for s, _ in labels.values() if s})
    content_names = sorted({c for _, c in labels.values() if c})
    K = canonical().n
    clip_ids, sources, clip_of, frames, style, content = [], [], [], [], [], []
    n, frames_read = 0, 0
    bar = tqdm(total=len(ds.clips), desc=f"caching {ds.name}", unit="clip", disable=not progress, leave=False)
    with open(out / "raw.f32", "wb") as f_raw, open(out / "mask.u8", "wb") as f_mask:
        for start in range(0, len(ds.clips), BATCH):
            batch = ds.clips[start:start + BATCH]
            try:
                clips = load_clips(ds, progress=False, refs=batch)
            except DatasetError:  # no clip of this batch could be read: each is noted in ds.problems
                clips = []
            for u in clips:
                w, valid = windows(u.positions, size, stride)
                mk = np.repeat(u.mask[None], len(w), 0)
                if face:
                    w = face_windows(w, mk)
                np.ascontiguousarray(w, np.float32).tofile(f_raw)
                mk.astype(np.uint8).tofile(f_mask)
                s, c = labels[u.source]
                clip_of.append(np.full(len(w), len(clip_ids), np.int32))
                frames.append(valid.astype(np.int16))
                style.append(np.full(len(w), style_names.index(s) if s else -1, np.int16))
                content.append(np.full(len(w), content_names.index(c) if c else -1, np.int16))
                clip_ids.append(u.group)
                sources.append(u.source)
                n += len(w)
                frames_read += u.n_frames
            bar.update(len(batch))
    bar.close()
    if not n:
        raise DatasetError("no clip of the dataset could be read: " + "; ".join(ds.problems[:3]), ds.root)
    cat = lambda xs: np.concatenate(xs)  # noqa: E731
    np.savez(out / "arrays.npz", clip=cat(clip_of), frames=cat(frames), style=cat(style), content=cat(content))
    meta = {"format": CACHE_FORMAT, "key": key, "dataset": ds.name, "root": str(ds.root), "kind": ds.kind,
            "attribution": ds.attribution, "windows": n, "window": size, "stride": stride, "joints": K,
            "face": face, "frames_read": frames_read, "clips": clip_ids, "sources": sources,
            "labels": {"style": style_names, "content": content_names}, "problems": ds.problems}
    (out / "meta.json").write_text(json.dumps(meta))


def _open(path: Path, hit: bool) -> WindowCache:
    meta = json.loads((path / "meta.json").read_text())
    n, T, K = meta["windows"], meta["window"], meta["joints"]
    raw = np.memmap(path / "raw.f32", np.float32, "r", shape=(n, T, K, 3))
    mask = np.memmap(path / "mask.u8", np.uint8, "r", shape=(n, K)).view(bool)
    with np.load(path / "arrays.npz") as a:
        arrays = {k: a[k] for k in ("clip", "frames", "style", "content")}
    return WindowCache(path, raw, mask, arrays["clip"], arrays["frames"], arrays["style"], arrays["content"],
                       meta["clips"], meta["sources"], meta["labels"], meta, hit)
