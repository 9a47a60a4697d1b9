"""The viewer page: one self-contained HTML file (its CSS, JavaScript and data inlined; nothing fetched).

`render_page(views)` writes the page for clips explained already (`eai explain --html`); `app_page()` the page
of `eai serve`, which starts empty and adds a tab per uploaded file. Both draw with the same script,
static/viewer.js (our own code, no library).
"""
from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

from eai.io.files import atomic_write_text
from eai.motion import Motion
from eai.skeleton.unify import UnifiedMotion
from eai.viewer.clipview import clip_view

ATTRIBUTION = ("Rows: emotion and probabilities by the run's label likelihood; claims checked against the clip's "
               "measured descriptors (eai.features) and the training data's neutral clips.")


def _static(name: str) -> str:
    return resources.files("eai.viewer").joinpath("static", name).read_text(encoding="utf-8")


def _json_for_script(obj) -> str:
    """JSON that cannot end its <script> element early: '<' is written as \\u003c."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _page(title: str, body: str, data: list[dict] | None) -> str:
    script = "" if data is None else \
        f'<script type="application/json" id="eai-clips">{_json_for_script(data)}</script>\n'
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{_static('viewer.css')}</style></head>\n<body>\n"
            f"<header><h1>{html.escape(title)}</h1><nav id=\"tabs\"></nav></header>\n{body}"
            f"<main id=\"panes\"></main>\n<footer>{html.escape(ATTRIBUTION)}</footer>\n{script}"
            f"<script>\n{_static('viewer.js')}</script>\n</body></html>\n")


def render_page(views: list[dict], title: str = "eai: emotion and evidence") -> str:
    """The page for clips already explained: `views` are clipview.clip_view dicts, one tab each."""
    return _page(title, "", views)


def app_page(max_upload_mb: float, title: str = "eai serve") -> str:
    """The page of `eai serve`: an upload form (drop or choose a file), then a tab per explained file."""
    form = (f'<form id="upload" onsubmit="return false"><p>Drop a motion file here (BVH, Kinect CSV, NPZ; up to '
            f'{max_upload_mb:g} MB) or <input type="file" name="file" accept=".bvh,.csv,.txt,.npz"></p>'
            f'<p class="model"></p><div class="msg"></div></form>\n')
    return _page(title, form, None)


def write_page(path: str | Path, rows: list[dict], motions: list[Motion], clips: list[UnifiedMotion]) -> int:
    """Write the page of explained clips (rows of Interpreter.explain with "file", the motions as read and
    their unified forms, same order) atomically; returns its size in bytes."""
    text = render_page([clip_view(r, m, u) for r, m, u in zip(rows, motions, clips)])
    atomic_write_text(path, text)
    return len(text.encode("utf-8"))
