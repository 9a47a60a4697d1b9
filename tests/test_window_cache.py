"""The cache of unified windows: built once, memory-mapped, invalidated when a file changes, never partial."""
import os

import numpy as np
import pytest

import eai.data.cache as cache_mod
from eai.data.cache import window_cache
from eai.data.datasets import load_clips, open_dataset
from eai.data.windows import window_set


def test_cache_holds_the_windows_with_style_and_content(bandai_like, tmp_path):
    c = window_cache(bandai_like, progress=False, root=tmp_path / "cache")
    assert not c.hit and isinstance(c.raw, np.memmap)
    assert c.labels == {"style": ["angry", "happy", "sad"], "content": ["stand", "walk"]}
    assert (c.style >= 0).all() and (c.content >= 0).all()
    assert len(c.clips) == 9 and c.total_frames > 0
    # the same windows as the in-memory path (faced, centred)
    ds = open_dataset(bandai_like, "style")
    ws = window_set(load_clips(ds, progress=False), ds.labels, descriptors=False)
    np.testing.assert_array_equal(np.asarray(c.raw), ws.raw)
    np.testing.assert_array_equal(np.asarray(c.mask), ws.mask)
    assert [c.labels["style"][s] for s in c.style] == [ds.labels[y] for y in ws.y]


def test_second_open_hits_the_cache(bandai_like, tmp_path, monkeypatch):
    first = window_cache(bandai_like, progress=False, root=tmp_path / "cache")

    def no_read(*a, **k):
        raise AssertionError("a clip was read again")

    monkeypatch.setattr(cache_mod, "load_clips", no_read)
    again = window_cache(bandai_like, progress=False, root=tmp_path / "cache")
    assert again.hit and again.path == first.path
    np.testing.assert_array_equal(np.asarray(again.raw), np.asarray(first.raw))


def test_touching_a_file_invalidates_the_cache(bandai_like, tmp_path):
    first = window_cache(bandai_like, progress=False, root=tmp_path / "cache")
    f = sorted((bandai_like / "data").glob("*.bvh"))[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = window_cache(bandai_like, progress=False, root=tmp_path / "cache")
    assert not again.hit and again.path != first.path
    assert not first.path.exists()  # superseded: deleted
    # and other window parameters are another cache
    other = window_cache(bandai_like, stride=15, progress=False, root=tmp_path / "cache")
    assert not other.hit and len(other) > len(again) and again.path.exists()  # both kept


def test_an_interrupted_write_leaves_no_cache(bandai_like, tmp_path, monkeypatch):
    real = cache_mod.load_clips
    calls = []

    def dies_after_a_batch(*a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "BATCH", 2)
    monkeypatch.setattr(cache_mod, "load_clips", dies_after_a_batch)
    with pytest.raises(KeyboardInterrupt):
        window_cache(bandai_like, progress=False, root=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # neither a cache nor its temporary folder
    monkeypatch.setattr(cache_mod, "load_clips", real)
    assert not window_cache(bandai_like, progress=False, root=tmp_path / "cache").hit
