"""`eai train --stage all`: encoder -> emotion description -> emotion recognition into one run folder, and
the Interpreter that turns clips into emotion, probabilities and a checked explanation.

Run folder additions: `llm.safetensors` (LoRA weights and MGST projectors), `llm-adapter/` (the same LoRA
as a peft adapter for other tools), `base.safetensors` for the tiny test backbone only, and the manifest's
"llm" section (backbone, MGST and LoRA config, dataset tag, neutral reference, stages done, peak memory).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from eai.encoder.train import predict_dataset_proba, window_set
from eai.errors import EaiError
from eai.kinematics import descriptor_vector
from eai.llm import evidence as ev
from eai.llm.backbone import BUNDLED, TINY, load_backbone
from eai.llm.mgst import MGST, MGSTConfig
from eai.llm.scores import explanation_scores
from eai.llm.model import EmotionLLM, description_prompt, recognition_prompt
from eai.llm.train import (LORA, STAGES, FeatureSet, Sampler, Voice, add_lora, configs_json, feature_set,
                           peak_memory_mb, stage_configs, train_stage, trainable_state)
from eai.protocol import metrics
from eai.run import MANIFEST, Run, load_run, write_manifest
from eai.skeleton.unify import UnifiedMotion

LLM_WEIGHTS = "llm.safetensors"
DRAFT_ROWS = 8  # explanations decoded with claim drafts up to this many clips at once on the CPU
BASE_WEIGHTS = "base.safetensors"


def build_llm(backbone: str, feature_dim: int, lora: dict | None = None, mgst: dict | None = None,
              seed: int = 0) -> EmotionLLM:
    lm, tok = load_backbone(backbone, seed=seed)
    cfg = MGSTConfig(**{**(mgst or {}), "feature_dim": feature_dim, "hidden": lm.config.hidden_size})
    torch.manual_seed(seed)
    m = MGST(cfg)
    m.scale.fill_(float(lm.get_input_embeddings().weight.detach().std()) * 4)
    llm = EmotionLLM(add_lora(lm, lora), tok, m)
    return llm


def save_llm(run: Path, llm: EmotionLLM, backbone: str) -> None:
    from safetensors.torch import save_file

    from eai.io.files import atomic_path

    state = {k: v.contiguous() for k, v in trainable_state(llm).items()}
    state.update({f"mgst.{k}": v.detach().cpu().contiguous() for k, v in llm.mgst.state_dict().items()})
    with atomic_path(run / LLM_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    tmpdir = Path(tempfile.mkdtemp(prefix=".adapter-", dir=run))
    llm.lm.save_pretrained(tmpdir)
    shutil.rmtree(run / "llm-adapter", ignore_errors=True)
    tmpdir.rename(run / "llm-adapter")
    if backbone == TINY and not (run / BASE_WEIGHTS).is_file():
        base = {k: v for k, v in llm.lm.state_dict().items() if "lora_" not in k}
        with atomic_path(run / BASE_WEIGHTS) as tmp:
            save_file({k: v.detach().cpu().clone().contiguous() for k, v in base.items()}, str(tmp))


def load_llm(run: Run) -> EmotionLLM:
    from safetensors.torch import load_file

    meta = run.manifest["llm"]
    llm = build_llm(meta["backbone"], run.encoder.out_channels, meta["lora"], meta["mgst"], meta.get("seed", 0))
    if meta["backbone"] == TINY:
        llm.lm.load_state_dict(load_file(str(run.path / BASE_WEIGHTS)), strict=False)
    state = load_file(str(run.path / LLM_WEIGHTS))
    missing, unexpected = llm.load_state_dict(state, strict=False)
    trained = {k for k, p in llm.named_parameters() if p.requires_grad}
    if unexpected or trained - set(state):
        raise EaiError(f"the run's LLM weights do not fit its configuration ({len(unexpected)} unexpected, "
                       f"{len(trained - set(state))} missing)", run.path)
    return llm.eval()


def quantize_int8(lm: torch.nn.Module) -> torch.nn.Module:
    """`lm` with every nn.Linear as a dynamically quantized int8 linear layer, one weight scale per tensor
    (per output channel measured worse: bench/RESULTS.md); CPU inference only."""
    import warnings

    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(lm, {torch.nn.Linear}, dtype=torch.qint8)


class FewRowsLinear(torch.nn.Linear):
    """nn.Linear for CPU inference, with the same parameters, that computes the product of few rows (decoding,
    a short prompt) as weight @ x.T: MKL runs x @ weight.T for one to a few dozen rows as a single-threaded,
    bandwidth-starved GEMV/small GEMM, while the transposed product threads over the output rows (one row is
    paired with a copy of itself so as not to fall back to GEMV). 1.4-2.6x faster for 1-32 rows on two cores
    (bench/RESULTS.md); the same values up to float rounding."""

    ROWS = 32

    @staticmethod
    def of(m: torch.nn.Linear) -> "FewRowsLinear":
        new = FewRowsLinear.__new__(FewRowsLinear)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = m.in_features, m.out_features
        new.weight, new.bias = m.weight, m.bias  # shared: tied embeddings stay tied
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > self.ROWS or x.is_cuda:
            return super().forward(x)
        flat = x.reshape(rows, self.in_features)
        y = torch.mm(self.weight, (flat if rows > 1 else torch.cat([flat, flat])).t())[:, :rows].t()
        if self.bias is not None:
            y = y + self.bias
        return y.contiguous().view(*x.shape[:-1], self.out_features)


def few_rows_linears(lm: torch.nn.Module) -> torch.nn.Module:
    """`lm` with every plain nn.Linear swapped for a FewRowsLinear sharing its parameters (inference only)."""
    for name, m in list(lm.named_modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(m, child_name, FewRowsLinear.of(child))
    return lm


def clip_descriptors(clips: list[UnifiedMotion]) -> np.ndarray:
    return np.stack([descriptor_vector(u.metres(), u.mask, u.fps) for u in clips])


def train_all_run(data: str | list[str], out: str, task: str | None = None, schedule_name: str = "paper",
                  llm_schedule: str = "paper", backbone: str = BUNDLED, holdout: float = 0.2, seed: int = 0,
                  use_pretrain: bool = True, progress: bool = True, epochs: int | None = None,
                  steps: dict | None = None, kinematic_token: bool = False, mix: str = "equal",
                  fold: int = 0) -> Path:
    """Encoder (reused if the folder holds a finished one), then the LLM stages; resumable at every step.
    Several datasets (`data` a list) train one model: each dataset's examples carry its tag and its own
    label words, and datasets are drawn by `mix`. The held-out clips are the protocol's fold `fold`."""
    from eai.evaluate import moved_copy, run_datasets
    from eai.joint import open_parts
    from eai.train import train_encoder_run

    datas = [data] if isinstance(data, str) else list(data)
    run_dir = Path(out)
    mf = run_dir / MANIFEST
    if mf.is_file():  # resuming: the datasets as the run read them
        task = json.loads(mf.read_text())["task"]
    parts = open_parts(datas, task, progress)  # read once, for the encoder stage too
    if not mf.is_file():
        train_encoder_run(data, out, task, schedule_name, holdout, seed, use_pretrain, progress, epochs, mix,
                          parts=parts, fold=fold)
    run = load_run(run_dir)
    manifest = run.manifest
    infos = run_datasets(run)
    if len(parts) != len(infos) or not all(p.path == i.path or moved_copy(i, p.name, {u.group for u in p.clips})
                                           for p, i in zip(parts, infos)):  # a run resumed on another machine
        raise EaiError("this folder holds a run on other datasets; choose a new --out", run_dir)
    cfgs = stage_configs(llm_schedule, steps)
    labels = run.labels
    tcfg = manifest["train"]
    fsets, held, voices = [], [], []
    for p, info in zip(parts, infos):  # the encoder stage's held-out clips stay held out
        out_groups = set(info.held_out_groups)
        train_clips = [u for u in p.clips if u.group not in out_groups]
        ws = window_set(train_clips, labels, tcfg["window"], tcfg["train_stride"], True, progress)
        cdesc = clip_descriptors(train_clips)
        ref = ev.Reference.fit(cdesc, [c.label for c in train_clips])
        fsets.append(feature_set(run.encoder, ws, cdesc, ref, mirror=True, progress=progress))
        held.append([u for u in p.clips if u.group in out_groups])
        voices.append({**p.describe(), "reference": ref.to_dict()})
    fs = FeatureSet.concat(fsets)
    meta = manifest.get("llm") or {
        "backbone": backbone, "lora": LORA, "seed": seed, "datasets": voices, "mix": mix,
        "mgst": {"n_temporal": 4, "n_descriptors": len(ev.NAMES) if kinematic_token else 0},
        "schedule": llm_schedule, "stages": configs_json(cfgs), "done": [],
        "history": [], "peak_memory_mb": None, "train_seconds": {}}
    if "datasets" not in meta:  # a run begun before joint training: its one dataset as it was prompted
        meta["datasets"] = [{**voices[0], "tag": meta["tag"], "words": voices[0]["labels"],
                             "reference": meta["reference"]}]
    if meta["done"]:  # resuming after a finished stage: its weights, not a fresh model
        llm = load_llm(Run(run.path, {**manifest, "llm": meta}, run.encoder))
    else:
        llm = build_llm(meta["backbone"], run.encoder.out_channels, meta["lora"], meta["mgst"], seed)
    sampler = Sampler(fs, labels, [Voice.from_dict(v) for v in meta["datasets"]],
                      llm.mgst.cfg.n_tokens, seed, meta.get("mix", "equal"))
    log_path = run_dir / "log.jsonl"

    def log(rec: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    for stage in STAGES:
        if stage in meta["done"]:
            continue
        hist = train_stage(llm, sampler, stage, cfgs[stage], run_dir / f"llm-{stage}.pt", progress, log)
        save_llm(run_dir, llm, meta["backbone"])
        meta["done"].append(stage)
        meta["history"] += [h for h in hist if h["step"] % 5 == 0 or h["step"] == cfgs[stage].steps]
        meta["train_seconds"][stage] = hist[-1]["seconds"] if hist else 0.0  # resumed parts summed
        meta["peak_memory_mb"] = round(peak_memory_mb(), 1)
        manifest["llm"] = meta
        write_manifest(run_dir, manifest)
        (run_dir / f"llm-{stage}.pt").unlink(missing_ok=True)
    if any(held) and "held_out_llm" not in manifest:
        interp = Interpreter(Run(run.path, manifest, run.encoder), llm)
        got = {p.name: interp.recognition_metrics(h, interp.dataset(p.name), progress)
               for p, h in zip(parts, held) if h}
        manifest["held_out_llm"] = got if len(parts) > 1 else got[parts[0].name]
    manifest["stage"] = "all"
    write_manifest(run_dir, manifest)
    plot_llm_curves(meta["history"], run_dir / "llm-curves.png")
    return run_dir


def plot_llm_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eai.report import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for stage in STAGES:
        h = [r for r in history if r["stage"] == stage]
        if h:
            ax.plot([r["step"] for r in h], [r["loss"] for r in h], label=stage)
    ax.set_xlabel("step")
    ax.set_ylabel("answer-token loss")
    ax.legend()
    save_figure(fig, path)


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = proba.max(1), proba.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            e += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return float(e)


def run_voices(manifest: dict) -> list[Voice]:
    """The voices of a run's datasets, from its manifest."""
    meta = manifest["llm"]
    if "datasets" in meta:
        return [Voice.from_dict(v) for v in meta["datasets"]]
    # a run written before joint training: one dataset, its unified labels as words
    return [Voice(meta["tag"], manifest["labels"], manifest["labels"], manifest["data"]["name"], "", meta["reference"])]


@dataclass
class Interpreter:
    """A trained run, ready to read clips: recognition by label likelihood and grounded explanations. A run
    trained on several datasets answers each clip in its dataset's voice: that dataset's tag, labels and
    words, measured against that dataset's neutral clips."""

    run: Run
    llm: EmotionLLM

    @staticmethod
    def load(run_dir: str | Path, int8: bool = False) -> "Interpreter":
        return Interpreter.of(load_run(run_dir), int8)

    @staticmethod
    def of(run: Run, int8: bool = False) -> "Interpreter":
        """The interpreter of a loaded run (its LLM stages must be trained). With `int8`, the LM's linear
        layers run as int8 dynamic quantization on the CPU (weights int8 per tensor, activations quantized
        on the fly): about twice as fast on a small CPU, at a small cost in fidelity (measured in
        bench/RESULTS.md); without it, the exact float32 model, on CUDA when present."""
        if "llm" not in run.manifest or not run.manifest["llm"]["done"]:
            raise EaiError("this run has no trained LLM stages; train with 'eai train --stage all'", run.path)
        llm = load_llm(run)
        llm.lm = llm.lm.merge_and_unload()  # inference: LoRA folded into the weights, one matmul per layer
        if int8:  # CPU only
            llm.lm = quantize_int8(llm.lm)
        elif torch.cuda.is_available():  # inputs follow the models (EmotionLLM.device, the encoder's head)
            llm.cuda()
            run.encoder.cuda()
        else:
            llm.lm = few_rows_linears(llm.lm)
        interp = Interpreter(run, llm)
        n = llm.mgst.cfg.n_tokens
        for v in interp.voices:  # the prompt beginnings every clip of a dataset shares: their cache is kept
            llm.add_stem([recognition_prompt(n, v.tag, v.words)])
            llm.add_stem([description_prompt(n, v.tag, w, e) for w, e in ((v.words[0], "a"), (v.words[-1], "b"))])
        return interp

    @property
    def labels(self) -> list[str]:
        return self.run.labels

    @cached_property
    def voices(self) -> list[Voice]:
        return run_voices(self.run.manifest)

    @cached_property
    def _references(self) -> dict[str, ev.Reference]:
        return {v.tag: ev.Reference.from_dict(v.reference) for v in self.voices}

    def reference(self, voice: Voice) -> ev.Reference:
        return self._references[voice.tag]

    def dataset(self, name: str | None = None, layout: str = "") -> Voice:
        """The voice of the dataset named, else of the only dataset with the clip's layout."""
        from eai.joint import part_for

        return part_for(self.voices, layout, name)

    def window_proba(self, feats: np.ndarray, mask: np.ndarray, z: np.ndarray, frac: np.ndarray, voice: Voice,
                     batch: int = 32) -> np.ndarray:
        """(N, len(voice.labels)) probabilities of the dataset's labels, by their likelihood as answers."""
        prompt = recognition_prompt(self.llm.mgst.cfg.n_tokens, voice.tag, voice.words)
        out = []
        for b in range(0, len(feats), batch):
            f = torch.from_numpy(feats[b:b + batch])
            out.append(self.llm.label_proba(f, torch.from_numpy(mask[b:b + batch]), [prompt] * len(f), voice.words,
                                            torch.from_numpy(z[b:b + batch].astype(np.float32)),
                                            torch.from_numpy(frac[b:b + batch])))
        return np.concatenate(out) if out else np.zeros((0, len(voice.labels)))

    def _windows(self, clips: list[UnifiedMotion], voice: Voice):
        t = self.run.manifest["train"]
        return window_set(clips, voice.labels, t["window"], t["eval_stride"], True)  # descriptors: kinematic token

    def encoder_proba(self, ws, voice: Voice) -> np.ndarray:
        """The encoder head's probabilities over the dataset's labels only."""
        from eai.joint import label_mask

        return predict_dataset_proba(self.run.encoder, ws, label_mask(self.voices, self.labels),
                                     self.voices.index(voice))

    def recognition_metrics(self, clips: list[UnifiedMotion], voice: Voice, progress: bool = False) -> dict:
        """LLM (label likelihood, mirror-averaged) beside the encoder's own head on the same windows."""
        from eai.llm.train import encoder_features
        from eai.skeleton.unify import mirror

        ws = self._windows(clips, voice)
        z = self.reference(voice).z(ws.desc)  # descriptors do not change under mirroring
        p = 0
        for raw, mask in [(ws.raw, ws.mask), mirror(ws.raw, ws.mask)]:
            p = p + self.window_proba(encoder_features(self.run.encoder, raw, mask), mask, z, ws.frac, voice)
        out = {}
        for name, pr in (("llm", p / 2), ("encoder", self.encoder_proba(ws, voice))):
            m = metrics(ws.y, pr, ws.clip, voice.labels)
            out[name] = {k: m[k] for k in ("window_accuracy", "clip_accuracy", "macro_f1", "per_class_recall",
                                           "confusion")}
            out[name]["ece"] = expected_calibration_error(pr, ws.y)
        out["windows"], out["clips"] = int(len(ws.y)), len(clips)
        return out

    def _by_voice(self, clips: list[UnifiedMotion], dataset: str | None) -> list[tuple[Voice, list[int]]]:
        groups: dict[str, tuple[Voice, list[int]]] = {}
        for i, u in enumerate(clips):
            v = self.dataset(dataset, u.layout)
            groups.setdefault(v.tag, (v, []))[1].append(i)
        return list(groups.values())

    def _clip_proba(self, clips: list[UnifiedMotion], voice: Voice):
        """Windows, their encoder features, and each clip's label probabilities (mean over its windows)."""
        from eai.llm.train import encoder_features

        ws = self._windows(clips, voice)
        feats = encoder_features(self.run.encoder, ws.raw, ws.mask)
        pw = self.window_proba(feats, ws.mask, self.reference(voice).z(ws.desc), ws.frac, voice)
        return ws, feats, [pw[ws.clip == i].mean(0) for i in range(len(clips))]

    def recognise(self, clips: list[UnifiedMotion], dataset: str | None = None) -> list[dict]:
        """Per clip: emotion and probabilities by label likelihood (in its dataset's words), no explanation."""
        rows: list[dict] = [{} for _ in clips]
        for v, idx in self._by_voice(clips, dataset):
            _, _, probs = self._clip_proba([clips[i] for i in idx], v)
            for i, p in zip(idx, probs):
                rows[i] = {"emotion": v.words[int(p.argmax())], "dataset": v.name,
                           "probabilities": {w: float(q) for w, q in zip(v.words, p)}}
        return rows

    def explain(self, clips: list[UnifiedMotion], max_new_tokens: int = 40, dataset: str | None = None) -> list[dict]:
        """Per clip: emotion, probabilities (mean over its windows), explanation and the checked evidence, in
        the voice of the clip's dataset (named, or found by the clip's skeleton layout)."""
        rows: list[dict] = [{} for _ in clips]
        for v, idx in self._by_voice(clips, dataset):
            for i, r in zip(idx, self._explain([clips[i] for i in idx], v, max_new_tokens)):
                rows[i] = r
        return rows

    def _explain(self, clips: list[UnifiedMotion], voice: Voice, max_new_tokens: int) -> list[dict]:
        from eai.kinematics import DESCRIPTOR_BY_NAME

        ref, n = self.reference(voice), self.llm.mgst.cfg.n_tokens
        ws, feats, probs = self._clip_proba(clips, voice)
        desc = clip_descriptors(clips)
        rows, prompts, starts, cf, cm, cfrac, zs = [], [], [], [], [], [], []
        for i, (d, p) in enumerate(zip(desc, probs)):
            sel = ws.clip == i
            word = voice.words[int(p.argmax())]
            z = ref.z(d)
            zs.append((z, d))
            prompts.append(description_prompt(n, voice.tag, word, ev.evidence_line(z)))
            starts.append(ev.label_text(word))
            cf.append(feats[sel].mean(0))
            cm.append(ws.mask[sel][0])
            cfrac.append(ws.frac[sel].max())
            rows.append({"emotion": word, "dataset": voice.name,
                         "probabilities": {w: round(float(q), 4) for w, q in zip(voice.words, p)}})
        zc = torch.from_numpy(np.stack([z for z, _ in zs]).astype(np.float32))
        # the evidence line's claims, in its order, drafted (EmotionLLM.generate) where a decoding pass costs
        # about the same for one token as for twenty: a few rows on the CPU, any batch on a GPU
        drafts = ([[p for p, _ in ev.claim_phrases(z)] for z, _ in zs]
                  if len(clips) <= DRAFT_ROWS or self.llm.device.type == "cuda" else None)
        texts = self.llm.generate(torch.from_numpy(np.stack(cf)), torch.from_numpy(np.stack(cm)), prompts, starts,
                                  max_new_tokens, z=zc, frac=torch.tensor(cfrac, dtype=torch.float32), drafts=drafts)
        for r, t, (z, d) in zip(rows, texts, zs):
            r["explanation"] = t
            r["evidence"] = []
            for c in ev.check(t, z):
                e = c.to_dict()
                if c.descriptor != ev.NEUTRAL:
                    k = ev.NAMES.index(c.descriptor)
                    e.update(value=None if not np.isfinite(d[k]) else round(float(d[k]), 4),
                             neutral=round(float(ref.mean[k]), 4), unit=DESCRIPTOR_BY_NAME[c.descriptor].unit)
                r["evidence"].append(e)
            r["label_consistent"] = ev.names_label(t, r["emotion"], voice.words)
            r["reference"] = ev.description(r["emotion"], z)
        return rows

    def assess(self, clips: list[UnifiedMotion], voice: Voice, progress: bool = False) -> tuple[dict, list[dict]]:
        """What `eai evaluate` and `eai bench explain` report of the LLM on labelled clips of one dataset:
        recognition beside the encoder, explanation scores, and the explanation rows (each with its clip's true
        label, in the dataset's words)."""
        rows = self.explanations(clips, voice)
        return {"recognition": self.recognition_metrics(clips, voice, progress),
                "explanations": explanation_scores(rows)}, rows

    def explanations(self, clips: list[UnifiedMotion], voice: Voice) -> list[dict]:
        """Explanation rows of labelled clips, each with its clip's true label in the dataset's words."""
        rows = self._explain(clips, voice, 40)
        for r, u in zip(rows, clips):
            r["label"] = voice.word(u.label)
        return rows
