"""`eai pretrain`: the skeleton encoder pretrained on many clips, with or without emotion labels.

The encoder is the emotion encoder's architecture (EncoderConfig's feature extractor), so its weights start
`eai train` (`--init`). Objectives: `labels`, the clips' own style and content labels (two heads over the
pooled features, cross-entropy each); `masked`, masked motion modelling (MotionBERT / SkeletonMAE style: a share
of (frame, joint) entries and of whole frames is hidden from every input stream, and a light decoder over the
features, upsampled in time, reconstructs their 3D positions; L1 on the hidden entries); `mix`, both losses
summed on the same masked input. Data come from the cache of unified windows (eai.data.cache); a fixed share
of clips (eai.data.splits.pretrain_holdout) is kept out and scored after every epoch.

Runs under Hugging Face Accelerate: one process on a CPU, or `accelerate launch` on several processes or GPUs,
each on its own shard of every epoch's batches; the main process writes the checkpoint after every epoch
(atomic; a rerun resumes from it bit-identically: every random draw is seeded by the epoch and the batch) and
the outputs: pretrained.safetensors (the feature extractor), pretrained.json, log.jsonl, pretrain-curves.png.
"""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from eai.data.cache import WindowCache, window_cache
from eai.data.datasets import BANDAI_ATTRIBUTION
from eai.data.splits import pretrain_holdout
from eai.encoder.model import EncoderConfig, SkeletonEncoder
from eai.encoder.streams import augment, make_streams
from eai.errors import EaiError
from eai.io.files import atomic_path, atomic_write_text
from eai.report import plot_pretrain_curves
from eai.run import versions
from eai.schedules import PretrainConfig, pretrain_schedule
from eai.skeleton.registry import canonical
from eai.train.checkpoint import JsonlLog, load_checkpoint, save_checkpoint
from eai.weights import BACKBONE, INFO, WEIGHTS, sha256

OBJECTIVES = ("labels", "masked", "mix")
CHECKPOINT = "pretrain-checkpoint.pt"
LICENCE = "CC BY-NC 4.0 (Bandai Namco Research Motiondataset-2 / -1)"


class Pool:
    """Windows of several caches, addressed by one row index: a subset (`keep`, per cache) with labels mapped
    onto the union of the caches' style and content names."""

    def __init__(self, caches: list[WindowCache], keep: list[np.ndarray], labels: dict[str, list[str]]):
        self.caches = caches
        self.which = np.concatenate([np.full(len(k), i) for i, k in enumerate(keep)]).astype(np.int64)
        self.local = np.concatenate(keep).astype(np.int64)
        self.y = {}
        for kind in ("style", "content"):
            parts = []
            for c, k in zip(caches, keep):
                remap = np.array([labels[kind].index(n) for n in c.labels[kind]] + [-1], np.int64)
                parts.append(remap[getattr(c, kind)[k]])  # -1 indexes the appended -1
            self.y[kind] = np.concatenate(parts)

    def __len__(self) -> int:
        return len(self.local)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Windows (n, T, K, 3), masks (n, K), style and content indices (n,) of the given rows."""
        c0 = self.caches[0]
        raw = np.empty((len(rows), *c0.raw.shape[1:]), np.float32)
        mask = np.empty((len(rows), c0.mask.shape[1]), bool)
        for i, c in enumerate(self.caches):
            sel = np.flatnonzero(self.which[rows] == i)
            if len(sel):
                loc = self.local[rows[sel]]
                order = np.argsort(loc)  # ascending reads from the memory map
                raw[sel[order]] = c.raw[loc[order]]
                mask[sel[order]] = c.mask[loc[order]]
        return raw, mask, self.y["style"][rows], self.y["content"][rows]


def hide_entries(x: np.ndarray, hide: np.ndarray, streams: list[str]) -> np.ndarray:
    """Zero every stream entry of x (N, 3S, T, K) that depends on a hidden position, hide (N, T, K) bool: the
    joint itself, a bone from or to it, a motion into or out of it; nothing of a hidden position reaches the
    encoder."""
    parents = np.array([max(p, 0) for p in canonical().parents])
    x = x.copy()
    for i, s in enumerate(streams):
        if s == "joints":
            h = hide
        elif s == "bones":
            h = hide | hide[:, :, parents]
        else:  # motion at t is x[t + 1] - x[t]
            h = hide.copy()
            h[:, :-1] |= hide[:, 1:]
        x[:, 3 * i:3 * i + 3] *= ~h[:, None]
    return x


def make_batch(pool: Pool, rows: np.ndarray, cfg: PretrainConfig, enc: EncoderConfig, masked: bool,
               seed: list[int]) -> dict[str, torch.Tensor]:
    """An augmented batch of the pool's `rows`: streams x (N, 3S, T', K), mask (N, K), style and content (N,), and
    with `masked` the hidden entries hide (N, T', K) and their target positions (N, 3, T', K). All draws come from
    `seed`, so a batch is the same whenever and wherever it is made."""
    rng = np.random.default_rng(seed)
    raw, mask, style, content = pool.take(rows)
    raw, mask = augment(raw, mask, rng, cfg.yaw_deg, cfg.scale, cfg.mirror_p, cfg.drop_p, cfg.speed)
    raw = raw[:, ::enc.frame_step]
    x = make_streams(raw, mask, enc.streams)
    out = {"mask": torch.from_numpy(mask), "style": torch.from_numpy(style), "content": torch.from_numpy(content),
           "rows": torch.from_numpy(np.asarray(rows, np.int64))}
    if masked:
        N, T, K, _ = raw.shape
        hide = (rng.random((N, T, K)) < cfg.mask_joints) | (rng.random((N, T, 1)) < cfg.mask_frames)
        hide &= mask[:, None, :]
        x = hide_entries(x, hide, enc.streams)
        out["hide"] = torch.from_numpy(hide)
        out["target"] = torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 3, 1, 2)))
    out["x"] = torch.from_numpy(x)
    return out


class PretrainModel(nn.Module):
    """The encoder's feature extractor with the objective's heads: style and content classifiers over the pooled
    features (labels), a 1x1-conv decoder of 3D positions over features upsampled to the input frames (masked)."""

    def __init__(self, enc: EncoderConfig, n_style: int, n_content: int, labels: bool, masked: bool):
        super().__init__()
        self.encoder = SkeletonEncoder(enc)
        self.encoder.head = nn.Identity()  # the emotion head is trained later, on the user's labels
        C = self.encoder.out_channels
        self.drop = nn.Dropout(enc.dropout)
        self.style = nn.Linear(C, n_style) if labels and n_style else None
        self.content = nn.Linear(C, n_content) if labels and n_content else None
        self.decoder = nn.Sequential(nn.Conv2d(C, 128, 1), nn.ReLU(), nn.Conv2d(128, 3, 1)) if masked else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder.features(x, mask)
        out = {}
        if self.style is not None or self.content is not None:
            z = self.drop(self.encoder.pooled(feats, mask))
            for name in ("style", "content"):
                if getattr(self, name) is not None:
                    out[name] = getattr(self, name)(z)
        if self.decoder is not None:
            up = F.interpolate(feats.float(), size=x.shape[2:], mode="bilinear", align_corners=False)
            out["positions"] = self.decoder(up)  # (N, 3, T', K)
        return out


def losses(out: dict, b: dict, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """The objective's losses: style, content (cross-entropy, windows without the label left out), masked (L1 on
    the hidden entries, body heights), and their sum `total`."""
    got = {}
    for name in ("style", "content"):
        if name in out:  # a batch without the label still touches its head (DDP wants every parameter used)
            got[name] = F.cross_entropy(out[name].float(), b[name], ignore_index=-1) if (b[name] >= 0).any() \
                else out[name].sum() * 0.0
    if "positions" in out:
        hide = b["hide"][:, None].expand_as(b["target"])
        got["masked"] = (out["positions"].float() - b["target"]).abs()[hide].mean() if hide.any() else \
            out["positions"].sum() * 0
    got["total"] = sum(v * (cfg.masked_weight if k == "masked" else 1.0) for k, v in got.items())
    return got


def _held_out_manifests(run: Path, caches: list[WindowCache], fraction: float) -> list[str]:
    """CSV manifests (path,label,group) of the held-out clips by their style and by their content, for judging
    fine-tuning on clips pretraining never saw (`eai bench recognition --data RUN/held-out-style.csv`)."""
    written = []
    for kind in ("style", "content"):
        rows = []
        for c in caches:
            held = pretrain_holdout(c.clips, fraction)
            clips, first = np.unique(c.clip, return_index=True)
            for i, w in zip(clips, first):
                y = int(getattr(c, kind)[w])
                if held[i] and y >= 0:
                    rows.append([c.sources[i], c.labels[kind][y], c.clips[i]])
        if rows:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows([["path", "label", "group"], *rows])
            atomic_write_text(run / f"held-out-{kind}.csv", buf.getvalue())
            written.append(f"held-out-{kind}.csv")
    return written


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])


def _shards(acc, rows: list[int], model: nn.Module) -> tuple[list[list[int]], bool]:
    """Every process's trained rows of the epoch, and whether all processes hold the same weights (a checksum)."""
    check = float(sum(p.detach().double().sum() for p in model.parameters()))
    if acc.num_processes == 1:
        return [rows], True
    from accelerate.utils import gather_object

    got = gather_object([(rows, check)])
    return [r for r, _ in got], len({c for _, c in got}) == 1


def _lr_factor(epoch: int, cfg: PretrainConfig) -> float:
    if epoch < cfg.warmup:
        return (epoch + 1) / (cfg.warmup + 1)
    p = (epoch - cfg.warmup) / max(1, cfg.epochs - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * p))


@torch.no_grad()
def score(model: PretrainModel, pool: Pool, cfg: PretrainConfig, enc: EncoderConfig, masked: bool,
          device) -> dict:
    """Held-out losses and label accuracies (eval mode, no augmentation; the same hidden entries every time)."""
    model.eval()
    n = len(pool)
    rows = np.unique(np.linspace(0, n - 1, min(n, cfg.max_held_out)).round().astype(np.int64))
    quiet = PretrainConfig(**{**cfg.to_dict(), "yaw_deg": 0.0, "scale": 0.0, "mirror_p": 0.0, "drop_p": 0.0,
                              "speed": 0.0})
    sums: dict[str, float] = {}
    for s in range(0, len(rows), 256):
        b = make_batch(pool, rows[s:s + 256], quiet, enc, masked, [cfg.seed, 10**6, s])
        b = {k: v.to(device) for k, v in b.items()}
        out = model(b["x"].contiguous(memory_format=torch.channels_last), b["mask"])
        w = len(b["mask"])
        for k, v in losses(out, b, cfg).items():
            sums[f"held_out_{k}"] = sums.get(f"held_out_{k}", 0.0) + float(v) * w
        for name in ("style", "content"):
            if name in out:
                ok = b[name] >= 0
                sums[f"held_out_{name}_accuracy"] = sums.get(f"held_out_{name}_accuracy", 0.0) + float(
                    (out[name].argmax(1)[ok] == b[name][ok]).float().sum())
                sums[f"_{name}_n"] = sums.get(f"_{name}_n", 0.0) + float(ok.sum())
    res = {}
    for k, v in sums.items():
        if k.startswith("_"):
            continue
        if k.endswith("_accuracy"):
            res[k] = v / max(sums[f"_{k.split('_')[2]}_n"], 1)
        else:
            res[k] = v / len(rows)
    return res


def commit() -> str | None:
    """The git commit of the source tree this eai runs from, when it is a git checkout ("-dirty" when its tracked
    files differ from that commit)."""
    here = Path(__file__).parent
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if r.returncode or not r.stdout.strip():
            return None
        d = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() + ("-dirty" if d.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def open_pool(data: list[str], cfg: PretrainConfig, progress: bool, accelerator=None):
    """The caches of every dataset (built by the main process first), the union label names, the training and
    held-out pools and the held-out clip ids per dataset."""
    caches = []
    for d in data:
        if accelerator is None:
            caches.append(window_cache(d, cfg.window, cfg.stride, progress=progress))
        else:
            with accelerator.main_process_first():
                caches.append(window_cache(d, cfg.window, cfg.stride, progress=progress))
    labels = {k: sorted({n for c in caches for n in c.labels[k]}) for k in ("style", "content")}
    held_clips = [pretrain_holdout(c.clips, cfg.holdout) for c in caches]
    train = Pool(caches, [np.flatnonzero(~h[c.clip]) for c, h in zip(caches, held_clips)], labels)
    held = Pool(caches, [np.flatnonzero(h[c.clip]) for c, h in zip(caches, held_clips)], labels)
    held_ids = {c.name: [cid for cid, h in zip(c.clips, hc) if h] for c, hc in zip(caches, held_clips)}
    return caches, labels, train, held, held_ids


def pretrain_run(data: list[str], out: str | Path, objective: str = "mix", schedule: str = "cpu",
                 epochs: int | None = None, progress: bool = True) -> Path:
    """Pretrain the encoder on the clips of `data` (dataset paths) into the folder `out`, resuming from its
    checkpoint. Returns the folder."""
    from eai.train.encoder import accelerator

    if objective not in OBJECTIVES:
        raise EaiError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    cfg = pretrain_schedule(schedule, epochs)
    acc = accelerator()  # the encoder loop's: one Accelerator setting per process
    show = progress and acc.is_main_process
    caches, labels, train, held, held_ids = open_pool(data, cfg, show, acc)
    use_labels, masked = objective in ("labels", "mix"), objective in ("masked", "mix")
    if use_labels and not (labels["style"] or labels["content"]):
        raise EaiError(f"objective {objective!r} needs labelled clips; these data have none: use --objective masked")
    if len(train) < cfg.batch:
        raise EaiError(f"{len(train)} training windows, fewer than a batch of {cfg.batch}: too few clips")
    run = Path(out)
    if run.exists() and not run.is_dir():
        raise EaiError("--out is a file; give a folder for the pretraining run", run)
    run.mkdir(parents=True, exist_ok=True)
    enc = EncoderConfig(n_classes=1)
    torch.manual_seed(cfg.seed)  # the same initial weights on every process and every run
    model = PretrainModel(enc, len(labels["style"]), len(labels["content"]), use_labels, masked)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stamp = {"objective": objective, "schedule": schedule, "config": cfg.to_dict(), "labels": labels,
             "caches": [c.meta["key"] for c in caches], "encoder": enc.to_dict()}
    start, history, seen, spent = 0, [], 0, 0.0
    state = load_checkpoint(run / CHECKPOINT, np.random.default_rng(), map_location="cpu")
    if state is not None:
        if state["stamp"] != stamp:
            raise EaiError("this folder holds a pretraining checkpoint of other data or settings; choose a new "
                           "--out, or delete the folder to start over", run)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, seen, spent = state["epoch"] + 1, state["history"], state["windows_seen"], state["seconds"]
    model, opt = acc.prepare(model, opt)
    core = acc.unwrap_model(model)
    log = JsonlLog(run / "log.jsonl")
    # every process gets the same number of whole batches, so their shards are disjoint and none waits
    step = cfg.batch * acc.num_processes
    n, per_epoch = len(train), max(step, round(len(train) * cfg.epoch_fraction) // step * step)
    bar = tqdm(range(start, cfg.epochs), desc=f"pretrain ({objective})", unit="epoch", disable=not show,
               initial=start, total=cfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(epoch, cfg)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n)[:per_epoch]
        loader = acc.prepare(torch.utils.data.DataLoader(
            _Rows(order), batch_size=cfg.batch, shuffle=False, drop_last=True,
            collate_fn=lambda ids: make_batch(train, np.array(ids), cfg, enc, masked, [cfg.seed, epoch, *ids[:2]])))
        torch.manual_seed(cfg.seed * 100_003 + epoch * 101 + acc.process_index)  # dropout
        model.train()
        sums = torch.zeros(5, dtype=torch.float64, device=acc.device)  # total, style, content, masked, windows
        mine = []  # the rows this process trained on
        for b in tqdm(loader, desc=f"epoch {epoch + 1}", unit="batch", disable=not show, leave=False):
            mine.append(b["rows"].cpu().numpy())
            with acc.autocast():
                out = model(b["x"].contiguous(memory_format=torch.channels_last), b["mask"])
            got = losses(out, b, cfg)
            if not torch.isfinite(got["total"]):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            acc.backward(got["total"])
            opt.step()
            w = len(b["mask"])
            parts = [float(got[k].detach()) * w if k in got else 0.0 for k in ("total", "style", "content", "masked")]
            sums += torch.tensor(parts + [w], dtype=torch.float64, device=acc.device)
        trained_s = time.perf_counter() - t0
        sums = acc.reduce(sums, "sum")
        shards, agree = _shards(acc, np.concatenate(mine).tolist(), core)
        w = float(sums[4])
        seen += int(w)
        rec = {"epoch": epoch, "windows": int(w), "loss": float(sums[0]) / max(w, 1), "lr": opt.param_groups[0]["lr"]}
        rec.update({k: float(sums[i]) / max(w, 1) for i, k in ((1, "style"), (2, "content"), (3, "masked"))
                    if (k in ("style", "content") and use_labels) or (k == "masked" and masked)})
        if acc.is_main_process and len(held):
            rec.update(score(core, held, cfg, enc, masked, acc.device))
        spent += time.perf_counter() - t0
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        rec["windows_per_s"] = round(w / max(rec["seconds"], 1e-9), 1)  # held-out scoring included
        rec["train_windows_per_s"] = round(w / max(trained_s, 1e-9), 1)
        rec.update({"processes": acc.num_processes, "windows_per_process": [len(r) for r in shards],
                    "shards_disjoint": len(set().union(*map(set, shards))) == sum(map(len, shards)),
                    "weights_agree": agree})
        history.append(rec)
        if acc.is_main_process:
            log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
            save_checkpoint(run / CHECKPOINT, np.random.default_rng(), model=core.state_dict(),
                            optimizer=opt.state_dict(), epoch=epoch, history=history, windows_seen=seen,
                            seconds=spent, stamp=stamp)
        acc.wait_for_everyone()
    if acc.is_main_process:
        _write_outputs(run, core, data, caches, labels, held_ids, objective, schedule, cfg, seen, spent, history,
                       acc.num_processes)
    acc.wait_for_everyone()
    return run


def _write_outputs(run: Path, core: PretrainModel, data, caches, labels, held_ids, objective, schedule, cfg,
                   seen, spent, history, processes) -> None:
    # the feature extractor's keys only, as a SkeletonEncoder names them
    state = {k: v.detach().cpu().contiguous() for k, v in core.encoder.state_dict().items() if k.startswith(BACKBONE)}
    with atomic_path(run / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    bandai = all(c.meta.get("kind") == "bandai" for c in caches)
    info = {
        "data": [{"path": str(d), "name": c.name, "clips": len(c.clips), "windows": len(c), "frames": c.total_frames,
                  "held_out_clips": len(held_ids[c.name]), "attribution": c.meta.get("attribution", "")}
                 for d, c in zip(data, caches)],
        "objective": objective, "schedule": schedule, "config": cfg.to_dict(), "epochs": cfg.epochs,
        "windows_seen": seen, "seconds": round(spent, 1), "processes": processes, "labels": labels,
        "encoder": core.encoder.cfg.to_dict(), "keys": len(state),
        "held_out": {"rule": f"sha256('eai-pretrain-holdout:' + clip id) < {cfg.holdout} of 2^32 "
                             "(eai.data.splits.pretrain_holdout)", "fraction": cfg.holdout, "clips": held_ids},
        "final": history[-1] if history else None, "commit": commit(),
        "licence": LICENCE if bandai else "inherited from the data: see each dataset's attribution",
        "versions": versions(),
    }
    info["held_out"]["manifests"] = _held_out_manifests(run, caches, cfg.holdout)
    info["sha256"] = sha256(run / WEIGHTS)
    atomic_write_text(run / INFO, json.dumps(info, indent=2) + "\n")
    plot_pretrain_curves(history, run / "pretrain-curves.png",
                         f"encoder pretraining ({objective}, {schedule} schedule) on "
                         + "+".join(c.name for c in caches), BANDAI_ATTRIBUTION if bandai else "")
