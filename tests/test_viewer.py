"""The viewer: descriptor timelines, the page's data, `eai serve`'s API (statuses, token, private uploads,
one request at a time in the model), and both pages drawn in a real headless Chromium (slow)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from eai.features import describe, descriptor_series, extreme_span
from eai.skeleton.registry import canonical

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _raised_hands(seconds=6.0, fps=30.0, up=(2.0, 3.0)):
    """A standing clip (T, K, 3) metres whose wrists and hands are 0.4 m higher during `up` seconds."""
    from eai.data.synth import generate

    x = generate("neutral", seconds, fps, content="stand", seed=1)
    can = canonical()
    a, b = int(up[0] * fps), int(up[1] * fps)
    for n in ("l_wrist", "r_wrist", "l_hand", "r_hand"):
        x[a:b, can.index(n), 1] += 0.4
    return x, np.ones(can.n, bool), fps


def test_descriptor_series_finds_where_the_hands_are_raised():
    x, mask, fps = _raised_hands()
    starts, values, w = descriptor_series(x, mask, fps, "hand_height")
    assert w == pytest.approx(1.0) and len(starts) == len(values) and np.isfinite(values).all()
    lo, hi = extreme_span(starts, values, w, +1)
    assert 1.8 <= lo <= 2.2 and hi == pytest.approx(lo + 1.0)  # the raised second, not elsewhere
    lo2, _ = extreme_span(starts, values, w, -1)
    assert not 1.0 < lo2 < 3.0  # lowest: outside the raise
    assert extreme_span(starts, values, w, 0) is None


def test_descriptor_series_is_the_clip_descriptor_on_each_window():
    x, mask, fps = _raised_hands()
    starts, values, w = descriptor_series(x, mask, fps, "speed", window_s=2.0, step_s=1.0)
    for s, v in zip(starts, values):
        a = int(round(s * fps))
        assert v == pytest.approx(describe(x[a:a + int(w * fps)], mask, fps)["speed"]["value"])
    # a clip shorter than the window: one window, the whole clip
    s1, v1, w1 = descriptor_series(x[:20], mask, fps, "speed")
    assert len(s1) == 1 and w1 == pytest.approx(20 / fps)
    assert v1[0] == pytest.approx(describe(x[:20], mask, fps)["speed"]["value"])


def test_descriptor_series_of_an_absent_joint_is_not_invented():
    x, mask, fps = _raised_hands()
    mask = mask.copy()
    mask[canonical().index("head")] = False
    starts, values, w = descriptor_series(x, mask, fps, "head_pitch")
    assert len(starts) and np.isnan(values).all()
    assert extreme_span(starts, values, w, +1) is None


def _row(evidence=None, explanation="Sad: the head lowered."):
    return {"file": "x.bvh", "emotion": "sad", "dataset": "d", "probabilities": {"sad": 0.7, "happy": 0.3},
            "explanation": explanation,
            "evidence": evidence if evidence is not None else [
                {"phrase": "the head lowered", "descriptor": "head_pitch", "direction": "higher", "z": 1.2,
                 "verified": True, "value": 20.0, "neutral": 3.0, "unit": "deg"},
                {"phrase": "movement close to the neutral baseline", "descriptor": None, "direction": "neutral",
                 "z": 0.4, "verified": True}]}


def _npz_clip(tmp_path, layout="gait16"):
    """A generated sad walk in `layout`, written as NPZ and read back: (Motion, UnifiedMotion)."""
    from eai.io import read_motion, write_motion
    from eai.skeleton.registry import registry
    from eai.skeleton.unify import unify
    from eai.data.synth import express, generate

    p = tmp_path / f"clip_{layout}.npz"
    write_motion(express(generate("sad", 4.0, 30.0, seed=3), registry().get(layout), 30.0, "sad"), p)
    m = read_motion(p)
    return m, unify(m)


def test_clip_view_draws_only_present_joints_and_gives_each_claim_a_timeline(tmp_path):
    from eai.viewer.clipview import clip_view

    m, u = _npz_clip(tmp_path, "gait16")
    v = clip_view(_row(), m, u)
    K = canonical().n
    assert len(v["positions_mm"]) == v["frames"] * K * 3 and v["frames"] == u.n_frames
    assert v["skeleton"]["present"] == [bool(k) for k in u.mask] and not all(v["skeleton"]["present"])
    assert set(v["facts"]["canonical_missing"]) == {n for n, k in zip(canonical().names, u.mask) if not k}
    assert v["facts"]["frames"] == m.n_frames and v["facts"]["layout"] == "gait16"
    s0, s1 = v["series"]
    assert s0["descriptor"] == "head_pitch" and s0["unit"] == "deg" and len(s0["times"]) == len(s0["values"])
    assert 0 <= s0["span"][0] < s0["span"][1] <= v["duration_s"] + 1e-6
    assert s1 is None  # the neutral claim names no descriptor
    # millimetres of the unified clip in metres
    assert np.allclose(np.array(v["positions_mm"]).reshape(-1, K, 3) / 1000, u.metres(), atol=6e-4)


def test_page_is_self_contained_and_its_data_cannot_end_the_script(tmp_path):
    from eai.viewer.clipview import clip_view
    from eai.viewer.page import render_page

    m, u = _npz_clip(tmp_path, "bandai22")
    row = _row(explanation="Sad </script><script>alert(1)</script> the head lowered.")
    page = render_page([clip_view(row, m, u)])
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # everything inline
    assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", page)  # the SVG namespace is a name, not a fetch
    assert page.count("</script>") == 2  # the data's and the viewer's: the row's own was escaped
    data = re.search(r'<script type="application/json" id="eai-clips">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)[0]["row"]["explanation"] == row["explanation"]
    assert len(page.encode()) < 5 * 2**20


# ---- the API, with a stand-in model ----
class FakeExplainer:
    """Reads and unifies the file as eai serve does; answers a fixed row; records what it was given."""

    name, labels = "fake", ["happy", "sad"]

    def __init__(self):
        self.paths, self.delay = [], 0.0

    def explain(self, path, name, deadline):
        from eai.io import read_motion
        from eai.skeleton.unify import unify
        from eai.viewer.clipview import clip_view

        self.paths.append((Path(path), Path(path).exists()))
        m = read_motion(path)
        u = unify(m)
        time.sleep(self.delay)
        row = {"file": name, **_row()}
        row["file"] = name
        return row, clip_view(row, m, u, name)


@pytest.fixture()
def api(synth_dir):
    from fastapi.testclient import TestClient

    from eai.viewer.serve import create_app

    fake = FakeExplainer()
    return TestClient(create_app(fake, max_upload_mb=1)), fake


def _bvh(synth_dir):
    return sorted(synth_dir.rglob("*bandai22.bvh"))[0]


def test_api_statuses(api, synth_dir, tmp_path):
    client, fake = api
    f = _bvh(synth_dir)
    r = client.post("/api/explain", files={"file": ("../../etc/walk.bvh", f.read_bytes())})
    assert r.status_code == 200 and r.json()["emotion"] == "sad" and r.json()["file"] == "walk.bvh"
    assert "view" not in r.json()
    path, existed = fake.paths[-1]
    assert existed and path.name == "upload.bvh" and not path.parent.exists()  # fixed name; folder removed
    r = client.post("/api/explain?view=true", files={"file": ("walk.bvh", f.read_bytes())})
    assert r.status_code == 200 and r.json()["view"]["frames"] > 0
    r = client.post("/api/explain", files={"file": ("bad.bvh", b"HIERARCHY\nROOT Hips\n{\n")})
    assert r.status_code == 400 and r.json()["detail"].startswith("bad.bvh") and "eai-upload" not in r.text
    assert "\n" not in r.json()["detail"]
    assert not fake.paths[-1][0].parent.exists()
    assert client.post("/api/explain", files={"file": ("x.pkl", b"garbage")}).status_code == 415
    import pickle

    assert client.post("/api/explain", files={"file": ("x.npz", pickle.dumps({"a": 1}))}).status_code == 415
    assert client.post("/api/explain", files={"file": ("x.exe", b"MZ")}).status_code == 400
    assert client.post("/api/explain", files={"file": ("big.bvh", b"x" * (2 * 2**20))}).status_code == 413
    assert client.post("/api/explain", files={"file": ("big.bvh", b"x" * (2**20 + 10))}).status_code == 413
    assert client.post("/api/explain").status_code == 422
    assert client.get("/no/such/route").status_code == 404
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["labels"] == ["happy", "sad"]
    assert "/api/explain" in client.get("/openapi.json").json()["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text and "https://" not in docs.text
    js = re.search(r'src="([^"]+swagger-ui-bundle\.js)"', docs.text).group(1)
    assert client.get(js).status_code == 200
    assert 'id="upload"' in client.get("/").text


def test_token_is_required_on_every_route_when_set(synth_dir):
    from fastapi.testclient import TestClient

    from eai.viewer.serve import create_app

    client = TestClient(create_app(FakeExplainer(), token="s3cret"))
    for path in ("/api/health", "/", "/docs", "/openapi.json", "/no/such"):
        assert client.get(path).status_code == 401
    assert client.post("/api/explain", files={"file": ("w.bvh", _bvh(synth_dir).read_bytes())}).status_code == 401
    assert client.get("/api/health", headers={"X-EAI-Token": "wrong"}).status_code == 401
    assert client.get("/api/health", headers={"X-EAI-Token": "s3cret"}).status_code == 200
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = client.get("/?token=s3cret")  # the browser's way in: a same-site cookie for what the page fetches
    assert r.status_code == 200 and "eai_token" in r.headers.get("set-cookie", "")
    assert client.get("/api/health").status_code == 200


def test_binding_beyond_loopback_needs_a_token(capsys, monkeypatch, tmp_path):
    from eai.cli import main
    from eai.viewer.serve import is_loopback

    monkeypatch.delenv("EAI_TOKEN", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert main(["serve", "--model", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_the_model_serves_one_request_at_a_time_and_times_out(synth_dir):
    from fastapi.testclient import TestClient

    from eai.viewer.serve import RunExplainer, create_app

    class Interp:  # stands in for the Interpreter: counts how many requests are inside it at once
        labels = ["sad"]
        inside = most = 0

        def explain(self, clips, max_tokens):
            Interp.inside += 1
            Interp.most = max(Interp.most, Interp.inside)
            time.sleep(0.15)
            Interp.inside -= 1
            return [_row()]

    ex = RunExplainer.__new__(RunExplainer)
    ex.interp, ex.name, ex.max_tokens, ex.read_options, ex.lock = Interp(), "stub", 8, {}, threading.Lock()
    client = TestClient(create_app(ex, timeout_s=30))
    data = _bvh(synth_dir).read_bytes()
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(
        client.post("/api/explain", files={"file": ("w.bvh", data)}).status_code)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert codes == [200] * 4 and Interp.most == 1
    slow = TestClient(create_app(ex, timeout_s=0.2))
    with ex.lock:  # the model is busy past the request's time
        assert slow.post("/api/explain", files={"file": ("w.bvh", data)}).status_code == 504


# ---- in a real browser ----
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("no chromium (make test installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


BODY_PIXELS = """(i) => { const c = EAI.players[i].canvas, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let k = 0; k < d.length; k += 4) { const r = d[k], g = d[k + 1], b = d[k + 2];
  if ((r > 170 && g < 140 && b < 90) || (r < 90 && g < 150 && b > 160)) n++; } return n; }"""


def _check_player(page, i, row, shot):
    """The canvas draws a body that moves, bars and claims are there, a claim click moves the time."""
    page.evaluate(f"EAI.show({i})")
    assert page.evaluate(BODY_PIXELS, i) > 200  # left and right limbs in their colours
    a = page.evaluate(f"EAI.players[{i}].canvas.toDataURL()")
    page.wait_for_timeout(400)
    assert page.evaluate(f"EAI.players[{i}].canvas.toDataURL()") != a  # it plays
    page.evaluate(f"(() => {{ const p = EAI.players[{i}]; p.setPlaying(false); p.seek(0); }})()")
    pane = page.locator(".clip").nth(i)
    assert pane.locator(".bar").count() == len(row["probabilities"])
    assert pane.locator(".bar.top .lab").inner_text() == row["emotion"]
    assert pane.locator(".claim").count() == len(row["evidence"])
    spans = page.evaluate(f"EAI.players[{i}].clip.series.map((s) => s && s.span)")
    k = next((j for j, s in enumerate(spans) if s and s[0] > 0.05), None)
    if k is not None:
        pane.locator(".claim q").nth(k).click()
        assert page.evaluate(f"EAI.players[{i}].t") == pytest.approx(spans[k][0], abs=1e-6)
        assert "selected" in pane.locator(".claim").nth(k).get_attribute("class")
    page.evaluate(f"EAI.players[{i}].seek(EAI.players[{i}].duration / 2)")
    page.screenshot(path=str(shot), full_page=True)
    from PIL import Image

    assert np.asarray(Image.open(shot).convert("L"), float).std() > 5


def _offline(page, blocked):
    page.route("**/*", lambda r: (blocked.append(r.request.url), r.abort())
               if not r.request.url.startswith(("file:", "data:", "http://127.0.0.1")) else r.continue_())


@pytest.mark.slow
def test_page_in_chromium(tiny_run, synth_dir, tmp_path, browser, capsys):
    from eai.cli import main

    files = [str(_bvh(synth_dir)), str(sorted(synth_dir.rglob("*gait16.npz"))[0])]
    out = tmp_path / "page.html"
    assert main(["explain", *files, "--model", str(tiny_run), "--html", str(out), "--json", "--max-tokens", "12"]) == 0
    rows = json.loads(capsys.readouterr().out)
    page, errors, blocked = browser.new_page(viewport={"width": 1280, "height": 900}), [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _offline(page, blocked)
    page.goto(out.as_uri())
    page.wait_for_function("window.EAI && EAI.players.length == 2")
    assert page.locator("#tabs .tab").count() == 2
    for i, row in enumerate(rows):
        _check_player(page, i, row, tmp_path / f"page-{i}.png")
    # gait16 lacks hands, collars, toes: those joints are not drawn
    drawn = page.evaluate("EAI.players[1].stage.bones.map((b) => [b[0], b[1]])")
    present = page.evaluate("EAI.players[1].clip.skeleton.present")
    assert not all(present) and all(present[a] and present[b] for a, b in drawn)
    assert not errors and not blocked


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_page_after_an_upload_in_chromium(tiny_run, synth_dir, tmp_path, browser, capsys):
    import httpx

    import eai
    from eai.cli import main

    port, f = _free_port(), _bvh(synth_dir)
    env = {**os.environ, "PYTHONPATH": str(Path(eai.__file__).parents[1])}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "eai.cli", "serve", "--model", str(tiny_run), "--port", str(port),
                             "--max-tokens", "12"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(base + "/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        r = httpx.post(base + "/api/explain", files={"file": (f.name, f.read_bytes())}, timeout=120)
        assert r.status_code == 200
        assert main(["explain", str(f), "--model", str(tiny_run), "--json", "--max-tokens", "12"]) == 0
        cli = json.loads(capsys.readouterr().out)[0]
        assert r.json() == {**cli, "file": f.name}  # the row of eai explain --json
        page, errors, blocked = browser.new_page(viewport={"width": 1280, "height": 900}), [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        _offline(page, blocked)
        page.goto(base + "/")
        page.wait_for_function("document.querySelector('#upload .model').textContent.includes('labels')")
        page.set_input_files("#upload input[type=file]", str(f))
        page.wait_for_function("window.EAI && EAI.players.length == 1", timeout=120000)
        _check_player(page, 0, r.json(), tmp_path / "served.png")
        page.set_input_files("#upload input[type=file]", {"name": "bad.bvh", "mimeType": "text/plain",
                                                          "buffer": b"HIERARCHY\nROOT Hips\n{\n"})
        page.wait_for_function("document.querySelector('#upload .msg').textContent.startsWith('400')")
        assert not errors and not blocked
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
