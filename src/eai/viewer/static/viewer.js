/* eai viewer: the moving skeleton, the probabilities and the evidence of explained clips.
   Plain JavaScript, no library: a perspective projection drawn on a 2D canvas. Data: one object per clip as
   written by eai.viewer.clipview.clip_view (positions in millimetres, y up). Exposes window.EAI. */
(function () {
  "use strict";
  const SIDE_COLOUR = { left: "#d9622b", right: "#1f6fd1", centre: "#3b3b3b" };
  const players = [];

  function el(tag, attrs, ...kids) {
    const ns = ["svg", "line", "polyline", "rect", "path"].includes(tag) ? "http://www.w3.org/2000/svg" : null;
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  }
  const num = (v, nd) => (v == null ? "n/a" : Number(v).toPrecision(nd || 3).replace(/\.?0+$/, ""));
  const secs = (t) => t.toFixed(2) + " s";

  /* ---- the 3D stage ---- */
  class Stage {
    constructor(canvas, clip) {
      this.canvas = canvas;
      this.clip = clip;
      const s = clip.skeleton, K = s.joints.length;
      this.K = K;
      this.pos = Float32Array.from(clip.positions_mm, (v) => v / 1000);
      this.bones = [];
      for (let k = 0; k < K; k++) {
        const p = s.parents[k];
        if (p >= 0 && s.present[k] && s.present[p]) this.bones.push([k, p, s.side[k] === "centre" ? s.side[p] : s.side[k]]);
      }
      let floor = Infinity, py = 0, n = 0;
      for (let f = 0; f < clip.frames; f++) {
        for (let k = 0; k < K; k++) if (s.present[k]) floor = Math.min(floor, this.pos[(f * K + k) * 3 + 1]);
      }
      this.floor = isFinite(floor) ? floor : 0;
      const pel = s.joints.indexOf("pelvis");
      for (let f = 0; f < clip.frames; f += 5) { py += this.pos[(f * K + pel) * 3 + 1]; n++; }
      this.targetY = n ? py / n : 1;
      this.reset();
      this.follow = true;
      this._mouse();
    }
    reset() { this.yaw = 0.6; this.pitch = 0.2; this.dist = 3.4; }
    joint(f, k) { const i = (f * this.K + k) * 3; return [this.pos[i], this.pos[i + 1], this.pos[i + 2]]; }
    _mouse() {
      const c = this.canvas;
      let drag = null;
      c.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; });
      window.addEventListener("mouseup", () => { drag = null; });
      window.addEventListener("mousemove", (e) => {
        if (!drag) return;
        this.yaw -= (e.clientX - drag[0]) * 0.01;
        this.pitch = Math.max(-0.2, Math.min(1.45, this.pitch + (e.clientY - drag[1]) * 0.01));
        drag = [e.clientX, e.clientY];
        this.dirty = true;
      });
      c.addEventListener("wheel", (e) => {
        e.preventDefault();
        this.dist = Math.max(1, Math.min(30, this.dist * Math.exp(e.deltaY * 0.001)));
        this.dirty = true;
      }, { passive: false });
    }
    camera(frame) {
      const pel = this.clip.skeleton.joints.indexOf("pelvis");
      const p = this.follow ? this.joint(frame, pel) : [0, 0, 0];
      const T = [p[0], this.targetY, p[2]];
      const cp = Math.cos(this.pitch);
      const C = [T[0] + this.dist * cp * Math.sin(this.yaw), T[1] + this.dist * Math.sin(this.pitch),
        T[2] + this.dist * cp * Math.cos(this.yaw)];
      const f = norm(sub(T, C)), r = norm(cross(f, [0, 1, 0])), u = cross(r, f);
      return { C, f, r, u, T };
    }
    draw(frame) {
      const c = this.canvas, g = c.getContext("2d");
      const w = c.width, h = c.height, focal = 1.1 * Math.min(w, h);
      const cam = this.camera(frame);
      const proj = (P) => {
        const v = sub(P, cam.C), z = dot(v, cam.f);
        if (z < 0.05) return null;
        return [w / 2 + (focal * dot(v, cam.r)) / z, h / 2 - (focal * dot(v, cam.u)) / z, z];
      };
      g.fillStyle = "#f7f7f4";
      g.fillRect(0, 0, w, h);
      // floor grid, 0.5 m squares around the body, fixed in the world so that travel shows
      const y0 = this.floor, R = 5, step = 0.5;
      const cx = Math.round(cam.T[0] / step) * step, cz = Math.round(cam.T[2] / step) * step;
      g.lineWidth = 1;
      for (let i = -R; i <= R + 1e-9; i += step) {
        g.strokeStyle = Math.abs((cx + i) % 1) < 1e-6 || Math.abs((cz + i) % 1) < 1e-6 ? "#c9c9c2" : "#e2e2dc";
        this._seg(g, proj, [cx + i, y0, cz - R], [cx + i, y0, cz + R]);
        this._seg(g, proj, [cx - R, y0, cz + i], [cx + R, y0, cz + i]);
      }
      // shadow on the floor, then bones far to near, then joints
      g.strokeStyle = "rgba(0,0,0,0.12)";
      g.lineWidth = 5;
      for (const [k, p] of this.bones) {
        const a = this.joint(frame, k), b = this.joint(frame, p);
        this._seg(g, proj, [a[0], y0, a[2]], [b[0], y0, b[2]], 1);
      }
      const segs = [];
      for (const [k, p, side] of this.bones) {
        const a = proj(this.joint(frame, k)), b = proj(this.joint(frame, p));
        if (a && b) segs.push([a, b, side, (a[2] + b[2]) / 2]);
      }
      segs.sort((s1, s2) => s2[3] - s1[3]);
      g.lineCap = "round";
      for (const [a, b, side, z] of segs) {
        g.strokeStyle = SIDE_COLOUR[side];
        g.lineWidth = Math.max(2, (0.045 * focal) / z);
        g.beginPath(); g.moveTo(a[0], a[1]); g.lineTo(b[0], b[1]); g.stroke();
      }
      const s = this.clip.skeleton;
      for (let k = 0; k < this.K; k++) {
        if (!s.present[k]) continue;  // absent in the source: not drawn, not invented
        const a = proj(this.joint(frame, k));
        if (!a) continue;
        g.fillStyle = s.joints[k] === "head" ? "#3b3b3b" : "#fff";
        g.strokeStyle = SIDE_COLOUR[s.side[k]];
        g.lineWidth = 1.5;
        g.beginPath(); g.arc(a[0], a[1], Math.max(2.5, ((s.joints[k] === "head" ? 0.09 : 0.03) * focal) / a[2]), 0, 7);
        g.fill(); g.stroke();
      }
      this.dirty = false;
    }
    _seg(g, proj, A, B, n) {
      n = n || 12;
      g.beginPath();
      let pen = false;
      for (let i = 0; i <= n; i++) {
        const t = i / n, q = proj([A[0] + (B[0] - A[0]) * t, A[1] + (B[1] - A[1]) * t, A[2] + (B[2] - A[2]) * t]);
        if (!q) { pen = false; continue; }
        if (pen) g.lineTo(q[0], q[1]); else g.moveTo(q[0], q[1]);
        pen = true;
      }
      g.stroke();
    }
  }
  const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const norm = (a) => { const n = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / n, a[1] / n, a[2] / n]; };

  /* ---- one clip: stage, controls, probabilities, explanation, claims, facts ---- */
  class Player {
    constructor(clip) {
      this.clip = clip;
      this.t = 0;
      this.speed = 1;
      this.playing = true;
      this.duration = clip.frames / clip.fps;
      this.canvas = el("canvas", { class: "stage", width: 640, height: 480 });
      this.stage = new Stage(this.canvas, clip);
      this.timelines = [];
      this.root = this._build();
    }
    get frame() { return Math.min(this.clip.frames - 1, Math.floor(this.t * this.clip.fps)); }
    seek(t) { this.t = Math.max(0, Math.min(this.duration, t)); this.render(); }
    setPlaying(on) { this.playing = on; this.playBtn.textContent = on ? "Pause" : "Play"; }
    tick(dt) {
      if (this.playing) { this.t += dt * this.speed; if (this.t >= this.duration) this.t = 0; }
      if (this.playing || this.stage.dirty) this.render();
    }
    render() {
      const f = this.frame;
      this.stage.draw(f);
      this.scrub.value = f;
      this.clock.textContent = secs(f / this.clip.fps) + " / " + secs(this.duration);
      for (const tl of this.timelines) tl.setTime(this.t);
    }
    _build() {
      const c = this.clip, row = c.row;
      this.playBtn = el("button", { class: "play", onclick: () => this.setPlaying(!this.playing), text: "Pause" });
      this.scrub = el("input", { type: "range", min: 0, max: c.frames - 1, value: 0, class: "scrub" });
      this.scrub.addEventListener("input", () => { this.seek(this.scrub.value / c.fps); });
      const speed = el("select", { class: "speed", title: "speed" },
        ...[0.25, 0.5, 1, 2].map((s) => el("option", { value: s, text: s + "x" })));
      speed.value = "1";
      speed.addEventListener("change", () => { this.speed = Number(speed.value); });
      const follow = el("input", { type: "checkbox", checked: "" });
      follow.addEventListener("change", () => { this.stage.follow = follow.checked; this.render(); });
      this.clock = el("span", { class: "clock" });
      this.band = el("div", { class: "band" });
      const absent = c.skeleton.joints.filter((_, k) => !c.skeleton.present[k]);
      const left = el("div", { class: "left" }, this.canvas,
        el("div", { class: "scrubwrap" }, this.band, this.scrub),
        el("div", { class: "controls" }, this.playBtn, speed, this.clock,
          el("label", {}, follow, " follow"),
          el("button", { onclick: () => { this.stage.reset(); this.render(); }, text: "Reset view" })),
        el("p", { class: "legend" },
          el("span", { class: "sw", style: "background:" + SIDE_COLOUR.left }), " left  ",
          el("span", { class: "sw", style: "background:" + SIDE_COLOUR.right }), " right  ",
          el("span", { class: "sw", style: "background:" + SIDE_COLOUR.centre }), " centre. Drag to orbit, wheel to zoom.",
          el("br"), "Absent in the source (not drawn): " + (absent.join(", ") || "none")));
      const right = el("div", { class: "right" }, this._emotion(row), this._claims(row), this._facts(c.facts));
      return el("section", { class: "clip" }, left, right);
    }
    _emotion(row) {
      const probs = Object.entries(row.probabilities).sort((a, b) => b[1] - a[1]);
      const bars = el("div", { class: "bars" }, ...probs.map(([k, p]) =>
        el("div", { class: "bar" + (k === row.emotion ? " top" : "") },
          el("span", { class: "lab", text: k }),
          el("span", { class: "track" }, el("span", { class: "fill", style: `width:${(100 * p).toFixed(1)}%` })),
          el("span", { class: "val", text: p.toFixed(2) }))));
      const note = row.calibrated ? "calibrated probabilities" : "probabilities by label likelihood (not calibrated)";
      return el("div", { class: "emotion" }, el("h2", {}, el("span", { class: "word", text: row.emotion }),
        el("small", { text: " " + (row.dataset || "") })), bars, el("p", { class: "note", text: note }),
        this._explanation(row));
    }
    _explanation(row) {
      // the explanation with each claim's phrase marked; a click jumps to where it shows
      const p = el("p", { class: "explanation" });
      let text = row.explanation || "", low = text.toLowerCase(), at = 0;
      const ev = (row.evidence || []).map((e, i) => [low.indexOf(e.phrase.toLowerCase()), e, i]).filter((x) => x[0] >= 0)
        .sort((a, b) => a[0] - b[0]);
      for (const [i, e, k] of ev) {
        if (i < at) continue;
        p.append(text.slice(at, i));
        p.append(el("mark", { class: e.verified ? "ok" : "no", onclick: () => this.select(k), text: text.slice(i, i + e.phrase.length) }));
        at = i + e.phrase.length;
      }
      p.append(text.slice(at));
      return p;
    }
    select(i) {
      const s = this.clip.series[i];
      this.root.querySelectorAll(".claim").forEach((n, k) => n.classList.toggle("selected", k === i));
      if (s && s.span) {
        this.band.style.left = (100 * s.span[0] / this.duration) + "%";
        this.band.style.width = (100 * (s.span[1] - s.span[0]) / this.duration) + "%";
        this.band.style.display = "block";
        this.seek(s.span[0]);
      } else {
        this.band.style.display = "none";
      }
    }
    _claims(row) {
      const items = (row.evidence || []).map((e, i) => {
        const s = this.clip.series[i];
        const way = e.class_direction == null ? "" : e.supports
          ? `; supports ${row.emotion}` : `; does not support ${row.emotion} (its clips: ${e.class_direction})`;
        const what = e.kind === "no_support"
          ? `no applicable descriptor is marked the way ${row.emotion} differs from neutral`
          : e.descriptor
            ? `${e.descriptor.replace(/_/g, " ")}: ${num(e.value)} ${e.unit} against neutral ${num(e.neutral)} ${e.unit}` +
              ` (z ${e.z == null ? "n/a" : (e.z > 0 ? "+" : "") + e.z}, claimed ${e.direction}${way})`
            : `overall: largest |z| ${e.z == null ? "n/a" : e.z}, claimed close to neutral${way}`;
        const li = el("li", { class: "claim " + (e.verified ? "ok" : "no"), onclick: () => this.select(i) },
          el("div", {}, el("span", { class: "badge", text: e.verified ? "verified" : "not verified" }),
            el("q", { text: e.phrase })),
          el("div", { class: "what", text: what }));
        if (s) {
          const tl = new Timeline(s, e, this);
          this.timelines.push(tl);
          li.append(tl.root, el("div", { class: "what", text: s.span
            ? `shows most ${secs(s.span[0])} to ${secs(s.span[1])} (windows of ${s.window_s} s); click to jump there`
            : "not measurable along the clip" }));
        }
        return li;
      });
      return el("div", { class: "claims" }, el("h3", { text: "Claims and their evidence" }),
        items.length ? el("ol", {}, ...items) : el("p", { text: "The explanation makes no claim eai can check." }));
    }
    _facts(f) {
      const rows = [["layout", `${f.layout} (${f.layout_description})`], ["format", f.format],
        ["joints in the file", f.joints], ["frames", `${f.frames} at ${num(f.fps, 4)} fps (${secs(f.duration_s)})`],
        ["body height", `${f.body_height_m} m`],
        ["canonical joints missing", f.canonical_missing.join(", ") || "none"],
        ["joints not used", f.unused_joints.join(", ") || "none"],
        ["repairs by the reader", f.repairs.join("; ") || "none reported"],
        ["unification", f.unification.join("; ")]];
      return el("div", { class: "facts" }, el("h3", { text: "The file" }),
        el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])));
    }
  }

  /* ---- a descriptor along the clip: values, neutral line, the span where it shows most, the playhead ---- */
  class Timeline {
    constructor(s, e, player) {
      const W = 300, H = 56, dur = player.duration;
      const vals = s.values.filter((v) => v != null);
      const ref = e.neutral == null ? [] : [e.neutral];
      let lo = Math.min(...vals, ...ref), hi = Math.max(...vals, ...ref);
      if (!isFinite(lo)) { lo = 0; hi = 1; }
      if (hi - lo < 1e-9) { hi += 1e-3; lo -= 1e-3; }
      const X = (t) => (W * t) / dur, Y = (v) => H - 4 - ((H - 8) * (v - lo)) / (hi - lo);
      const mid = s.window_s / 2;
      const pts = s.times.map((t, i) => (s.values[i] == null ? null : `${X(t + mid).toFixed(1)},${Y(s.values[i]).toFixed(1)}`))
        .filter(Boolean).join(" ");
      this.head = el("line", { x1: 0, x2: 0, y1: 0, y2: H, class: "head" });
      const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "timeline" },
        s.span ? el("rect", { x: X(s.span[0]), y: 0, width: X(s.span[1]) - X(s.span[0]), height: H, class: "span" }) : null,
        e.neutral == null ? null : el("line", { x1: 0, x2: W, y1: Y(e.neutral), y2: Y(e.neutral), class: "neutral" }),
        el("polyline", { points: pts, class: "series" }), this.head);
      svg.addEventListener("click", (ev) => {
        ev.stopPropagation();
        const r = svg.getBoundingClientRect();
        player.seek(((ev.clientX - r.left) / r.width) * dur);
      });
      this.W = W; this.dur = dur;
      this.root = el("div", { class: "tlwrap" }, svg,
        el("div", { class: "axis", text: `${num(lo)} to ${num(hi)} ${s.unit}; dashed: neutral; shaded: where it shows most` }));
    }
    setTime(t) { const x = (this.W * t) / this.dur; this.head.setAttribute("x1", x); this.head.setAttribute("x2", x); }
  }

  /* ---- tabs, the animation loop, the upload form of `eai serve` ---- */
  let tabs, panes, last = null;
  function addClip(clip) {
    const p = new Player(clip);
    players.push(p);
    const i = players.length - 1;
    tabs.append(el("button", { class: "tab", onclick: () => show(i), text: clip.name.split(/[\\/]/).pop() }));
    panes.append(p.root);
    show(i);
    p.render();
    return p;
  }
  function show(i) {
    players.forEach((p, k) => { p.root.style.display = k === i ? "" : "none"; p.active = k === i; });
    tabs.querySelectorAll(".tab").forEach((b, k) => b.classList.toggle("active", k === i));
    if (players[i]) players[i].render();
  }
  function loop(now) {
    const dt = last == null ? 0 : Math.min(0.1, (now - last) / 1000);
    last = now;
    for (const p of players) if (p.active) p.tick(dt);
    requestAnimationFrame(loop);
  }
  function upload(form) {
    const msg = form.querySelector(".msg"), input = form.querySelector("input[type=file]");
    const token = new URLSearchParams(location.search).get("token");
    const auth = token ? { "X-EAI-Token": token } : {};
    fetch("api/health", { headers: auth }).then((r) => r.json()).then((h) => {
      form.querySelector(".model").textContent = `run ${h.model}; labels: ${h.labels.join(", ")}`;
    }).catch(() => {});
    const send = async (file) => {
      msg.textContent = "explaining " + file.name + " ...";
      const body = new FormData();
      body.append("file", file);
      try {
        const r = await fetch("api/explain?view=true", { method: "POST", body, headers: auth });
        const j = await r.json();
        if (!r.ok) { msg.textContent = `${r.status}: ${j.detail || JSON.stringify(j)}`; return; }
        msg.textContent = "";
        addClip(j.view);
      } catch (err) { msg.textContent = "failed: " + err; }
    };
    input.addEventListener("change", () => { if (input.files[0]) send(input.files[0]); });
    form.addEventListener("dragover", (e) => { e.preventDefault(); form.classList.add("over"); });
    form.addEventListener("dragleave", () => form.classList.remove("over"));
    form.addEventListener("drop", (e) => {
      e.preventDefault(); form.classList.remove("over");
      if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
    });
  }
  function start() {
    tabs = document.getElementById("tabs");
    panes = document.getElementById("panes");
    const data = document.getElementById("eai-clips");
    for (const clip of data ? JSON.parse(data.textContent) : []) addClip(clip);
    show(0);
    const form = document.getElementById("upload");
    if (form) upload(form);
    requestAnimationFrame(loop);
  }
  window.EAI = { players, addClip, show };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
