"""`eai serve`: a local web app (FastAPI + uvicorn) around one loaded run.

Routes: `GET /` the upload page (the viewer of `eai explain --html`, a tab per uploaded file);
`POST /api/explain` (multipart `file`) the `eai explain --json` row of the file, with `?view=true` also the
data the page draws; `GET /api/health`; OpenAPI at `/openapi.json`, its pages at `/docs` (Swagger UI served
from the pinned fastapi-offline package, nothing from a CDN). Unknown routes 404.

Safety: the server binds to loopback unless a token is given; with a token every request needs it (header
`X-EAI-Token: T` or `Authorization: Bearer T`, or `?token=T` once, which sets a same-site cookie). An upload
is written under a fixed name into a private temporary folder (mode 0700) removed after the request; the
client's file name is only echoed back, never used on disk. Pickles are refused (415): unpickling runs code.
Load: the model is loaded once; reading and measuring run in parallel, the model one request at a time (a
lock); a request that cannot finish in `timeout_s` gets 504.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from fastapi import File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline

from eai.errors import EaiError
from eai.viewer.clipview import clip_view
from eai.viewer.page import app_page

SUFFIXES = (".bvh", ".csv", ".txt", ".npz")  # what an upload may be; pickles are refused
PICKLE_SUFFIXES = (".pkl", ".pickle")
MULTIPART_SLACK = 64 * 1024  # bytes of multipart framing allowed beyond the file itself
CHUNK = 1 << 20


class Timeout(Exception):
    """The request ran out of time (waiting for the model or in it)."""


class RunExplainer:
    """A run loaded once, explaining one file at a time: `explain(path, name, deadline)` -> (row, view).

    `path` is a server-side file; `name` the client's file name, used only in the row and in messages.
    Reading, unifying and the page's timelines run outside the lock; the shared model inside it.
    """

    def __init__(self, model: str | Path, max_tokens: int = 40, read_options: dict | None = None):
        from eai.interpret import Interpreter

        self.interp = Interpreter.load(model)
        self.name = Path(model).resolve().name
        self.max_tokens, self.read_options = max_tokens, dict(read_options or {})
        self.lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return self.interp.labels

    def explain(self, path: Path, name: str, deadline: float) -> tuple[dict, dict]:
        from eai.io.inputs import read_clip

        m, u = read_clip(path, **self.read_options, trust_pickle=False)
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise Timeout("timed out waiting for the model (other requests are being served)")
        try:
            row = self.interp.explain([u], self.max_tokens)[0]
        finally:
            self.lock.release()
        row = {"file": name, **row}
        return row, clip_view(row, m, u, name)


def safe_name(name: str | None) -> str:
    """The client's file name as a label: its last part, printable, at most 120 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(c for c in base if c.isprintable())[:120]
    return base or "upload"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(explainer, max_upload_mb: float = 50, token: str | None = None, timeout_s: float = 120.0):
    """The FastAPI app around `explainer` (an object with `explain(path, name, deadline)` -> (row, view),
    `name` and `labels`). Every request needs `token` when one is given."""
    max_bytes = int(max_upload_mb * 2**20)
    app = FastAPIOffline(title="eai", version="0.1.0", redoc_url=None, max_body_size=max_bytes + MULTIPART_SLACK,
                         description="Emotion-Action Interpreter: the emotion in a 3D motion file, its "
                         "probabilities and a checked explanation.")
    page = app_page(max_upload_mb)

    if token:
        @app.middleware("http")
        async def need_token(request: Request, call_next):
            auth = request.headers.get("authorization", "")
            given = [request.headers.get("x-eai-token"), auth[7:] if auth.lower().startswith("bearer ") else None,
                     request.cookies.get("eai_token"), request.query_params.get("token")]
            if not any(g and hmac.compare_digest(g.encode(), token.encode()) for g in given):
                return JSONResponse({"detail": "this server needs its token: header X-EAI-Token, "
                                     "'Authorization: Bearer T', or ?token=T"}, status_code=401)
            response = await call_next(request)
            if given[3] and hmac.compare_digest(given[3].encode(), token.encode()):
                response.set_cookie("eai_token", token, httponly=True, samesite="strict")
            return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/api/health", summary="The server is up; which run it serves")
    async def health() -> dict:
        return {"status": "ok", "model": explainer.name, "labels": list(explainer.labels),
                "max_upload_mb": max_upload_mb}

    @app.post("/api/explain", summary="Emotion, probabilities, explanation and checked evidence of one file",
              responses={400: {"description": "the file cannot be read (eai's one-line message)"},
                         413: {"description": "over the upload limit"}, 415: {"description": "a pickle"},
                         504: {"description": "timed out"}})
    async def explain(file: UploadFile = File(..., description="a BVH, Kinect CSV or NPZ motion file"),
                      view: bool = False) -> dict:
        """The `eai explain --json` row of the file; with `view=true` also `view`, what the page draws."""
        name = safe_name(file.filename)
        suffix = Path(name).suffix.lower()
        head = await file.read(2)
        if suffix in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
            raise HTTPException(415, f"{name}: pickles are refused (unpickling runs code from the file); "
                                "convert it to NPZ on a machine you trust: eai --trust-pickle convert X.pkl X.npz")
        if suffix not in SUFFIXES:
            raise HTTPException(400, f"{name}: unknown motion format {suffix or '(no extension)'}; "
                                f"eai serve reads {', '.join(SUFFIXES)}")
        deadline = time.monotonic() + timeout_s
        folder = Path(tempfile.mkdtemp(prefix="eai-upload-"))  # 0700: private to this user
        try:
            path = folder / f"upload{suffix}"  # never a name from the client
            size = await _save(file, head, path, max_bytes)
            if size > max_bytes:
                raise HTTPException(413, f"{name}: over the {max_upload_mb:g} MB upload limit")
            try:
                row, data = await asyncio.wait_for(run_in_threadpool(explainer.explain, path, name, deadline),
                                                   timeout=max(0.0, deadline - time.monotonic()))
            except EaiError as e:
                raise HTTPException(400, _message(e, path, name)) from None
            except (Timeout, asyncio.TimeoutError):
                raise HTTPException(504, f"{name}: not explained within {timeout_s:g} s; try again") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return {**row, "view": data} if view else row

    return app


async def _save(file, head: bytes, path: Path, max_bytes: int) -> int:
    """Copy the upload to `path`, stopping one byte past `max_bytes`; returns the bytes written."""
    n = 0
    with open(path, "wb") as out:
        chunk = head
        while chunk and n <= max_bytes:
            out.write(chunk)
            n += len(chunk)
            chunk = await file.read(CHUNK)
    return n


def _message(e: EaiError, path: Path, name: str) -> str:
    """eai's one-line message, naming the client's file instead of the server's temporary one."""
    if e.path is not None and Path(e.path) == path:
        e.path = name
    return e.format().replace(str(path), name)


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, max_upload_mb: float = 50,
          timeout_s: float = 120.0, max_tokens: int = 40, read_options: dict | None = None) -> None:
    """Load the run once and serve it until interrupted."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise EaiError(f"binding to {host} lets other machines in; give --token T (or EAI_TOKEN) so that every "
                       "request must carry it, or bind to 127.0.0.1")
    if max_upload_mb <= 0 or timeout_s <= 0:
        raise EaiError("--max-upload-mb and --timeout must be positive")
    explainer = RunExplainer(model, max_tokens, read_options)
    app = create_app(explainer, max_upload_mb, token, timeout_s)
    shown = f"[{host}]" if ":" in host else host
    print(f"eai serve: {explainer.name} on http://{shown}:{port}/ (API docs at /docs"
          f"{'; every request needs the token' if token else ''}); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)
