"""The run folder, the contract every stage shares: what the user asked (`RunConfig`), what the run is made of
and measured (`Manifest`, saved as manifest.json), and the weights beside it. `load_run(dir)` rebuilds every
part of a run from its folder alone, as nanoGPT rebuilds a model from its checkpoint's `model_args`: no
code default is consulted, so changing one never changes what a saved run computes.

Run folder: manifest.json; encoder.safetensors; with the LLM stages llm-adapter/ (peft) and
skeleton_tokenizer.safetensors; log.jsonl, curves.png, llm-curves.png; after an auxiliary pre-training
pretrain.safetensors (where the encoder and the LLM stages' cross-fitted encoders start); while training,
checkpoints (checkpoint.pt, llm-<stage>.pt).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from eai.calibration import Calibration
from eai.data.joint import RunDataset
from eai.encoder.model import EncoderConfig, SkeletonEncoder
from eai.errors import EaiError
from eai.io.files import atomic_path, atomic_write_text
from eai.io.inputs import FORMAT, MANIFEST, read_manifest_json
from eai.llm.backbone import BUNDLED
from eai.llm.builder import LLMConfig
from eai.schedules import TrainConfig
from eai.skeleton.registry import canonical

ENCODER_WEIGHTS = "encoder.safetensors"


@dataclass
class RunConfig:
    """What the user asked of a run (`eai train`, the demo, `eai bench llm`): the data, the task, the
    held-out fold, the seed, the schedules, the language model and the options of joint training."""

    data: list[str]
    out: str
    stage: str = "encoder"  # encoder, or all: encoder, then the LLM's description and recognition stages
    task: str | None = None  # Bandai only: emotion (default), style or content
    schedule: str = "paper"  # eai.schedules.ENCODER_SCHEDULES
    epochs: int | None = None  # overrides the schedule's (its milestones scale with it)
    llm_schedule: str | None = None  # eai.schedules.LLM_SCHEDULES; None: default_llm_schedule(schedule)
    description_steps: int | None = None
    recognition_steps: int | None = None
    backbone: str = BUNDLED
    holdout: float = 0.2  # share of clips held out: fold `fold` of round(1 / holdout) protocol folds
    fold: int = 0
    seed: int = 0
    pretrain: bool = True  # pre-train the encoder on the datasets' auxiliary clips
    kinematic_token: bool = False  # a skeleton token of the window's descriptor z-scores
    posterior_token: bool = True  # a skeleton token of the encoder's class posterior (eai.llm.tokenizer)
    mix: str = "equal"  # several datasets: each one's share of an epoch (eai.data.joint.MIXES)
    # the encoder's initial weights (eai.weights.resolve_init): pretrained (shipped; from scratch when none are),
    # none, or a folder `eai pretrain` wrote; the auxiliary pre-training above starts from them
    init: str = "pretrained"

    def __post_init__(self):
        if self.stage not in ("encoder", "all"):
            raise EaiError(f"unknown stage {self.stage!r}: 'encoder', or 'all' (encoder, description, recognition)")


@dataclass
class LLMTraining:
    """How the LLM stages went: stages done, the loss history (every 5th step), seconds per stage, peak memory."""

    done: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None


@dataclass
class Manifest:
    """manifest.json of a run folder: the run's configuration, parts and measurements.

    `labels` is the run's joint label set (unified names); each of `datasets` has its own subset and words.
    `held_out` maps a dataset's name to the encoder's held-out metrics (eai.metrics.pick). `held_out_llm` is
    {"llm": ..., "encoder": ..., "windows", "clips", "datasets": {name: the same of that dataset}}: both models on
    the same held-out windows, the top level pooled over the datasets (`pool_held_out`)."""

    config: RunConfig
    labels: list[str]
    task: str
    datasets: list[RunDataset]
    encoder: EncoderConfig
    train: TrainConfig
    canonical_joints: list[str]
    format: int = FORMAT
    stage: str = "encoder"
    train_windows: int = 0
    # how the encoder started: {"init": "none" | "pretrained" | "folder", "source", "sha256", ...} (eai.weights)
    # and, after an auxiliary pre-training (from those weights), its {"labels", "windows", "auxiliary_data"}
    pretrain: dict | None = None
    held_out: dict[str, dict] = field(default_factory=dict)
    train_seconds: float = 0.0
    llm: LLMConfig | None = None
    llm_training: LLMTraining | None = None
    held_out_llm: dict = field(default_factory=dict)
    calibration: Calibration | None = None  # temperatures of the encoder and the LLM (eai.calibration)
    versions: dict = field(default_factory=dict)

    def held_out_llm_of(self, dataset: str) -> dict | None:
        """The LLM's and the encoder's held-out metrics on one dataset ({"llm", "encoder", "windows", "clips"}),
        or None where the run held none of it out."""
        return self.held_out_llm.get("datasets", {}).get(dataset)

    @property
    def name(self) -> str:
        """The datasets' names, joined: the run's data in one word for titles."""
        return "+".join(d.name for d in self.datasets)

    @property
    def llm_done(self) -> bool:
        return self.llm_training is not None and len(self.llm_training.done) == len(self.llm.stages)

    def save(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / MANIFEST, json.dumps(to_dict(self), indent=2) + "\n")

    @staticmethod
    def load(run_dir: str | Path) -> "Manifest":
        """The manifest of a run folder; EaiError when there is none or it is of another format."""
        d = Path(run_dir)
        raw = read_manifest_json(d, FORMAT)
        if isinstance(raw.get("llm"), dict) and "token_confidence" not in raw["llm"]:
            # format 5 before LLMConfig.token_confidence: such runs were trained on in-sample tokens
            raw["llm"]["token_confidence"] = "in-sample"
        try:
            return from_dict(Manifest, raw)
        except (KeyError, TypeError, ValueError) as e:
            raise EaiError(f"{MANIFEST} does not fit manifest format {FORMAT} ({e})", d) from None


def versions() -> dict:
    import eai

    return {"eai": getattr(eai, "__version__", "0.1.0"), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


@dataclass
class Run:
    """A loaded run: its folder, its manifest and its encoder (eval mode, on the CPU)."""

    path: Path
    manifest: Manifest
    encoder: SkeletonEncoder

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def datasets(self) -> list[RunDataset]:
        return self.manifest.datasets


def load_run(run_dir: str | Path) -> Run:
    """Rebuild a trained run (its encoder in eval mode, on the CPU) from its folder alone."""
    d = Path(run_dir)
    manifest = Manifest.load(d)
    if manifest.canonical_joints != list(canonical().names):
        raise EaiError("this run was trained on another canonical skeleton than this eai's", d)
    model = SkeletonEncoder(manifest.encoder)
    model.load_state_dict(load_file(str(d / ENCODER_WEIGHTS)))
    model.eval()
    return Run(d, manifest, model)


def to_dict(obj):
    """A dataclass (nested ones too) as plain JSON data; RunDataset leaves out its unsaved fields."""
    if isinstance(obj, RunDataset):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls, data):
    """Rebuild `cls` from `to_dict`'s output, following the field types (nested dataclasses, lists and dicts
    of them, optional ones). Every saved field must be there and no other: a missing one is not filled from
    today's defaults (KeyError), an unknown one is refused (TypeError)."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.metadata.get("saved", True)]
        extra = set(data) - set(names)
        if extra:
            raise TypeError(f"unknown fields {sorted(extra)} for {cls.__name__}")
        return cls(**{n: from_dict(hints[n], data[n]) for n in names})
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        return from_dict(next(a for a in args if a is not type(None)), data)
    if origin is list and args:
        return [from_dict(args[0], v) for v in data]
    if origin is dict and len(args) == 2:
        return {k: from_dict(args[1], v) for k, v in data.items()}
    return data


POOLED = ("window_accuracy", "clip_accuracy", "macro_f1", "ece", "ece_uncalibrated")


def pool_held_out(per: dict[str, dict]) -> dict:
    """`held_out_llm` from the per-dataset entries ({"llm", "encoder", "windows", "clips", ...} each): their own
    figures for one dataset; over several, each model's POOLED figures as the window-weighted mean of the
    datasets' (each dataset scored over its own labels), said in "pooled"."""
    if not per:
        return {}
    if len(per) == 1:
        (h,) = per.values()
        return {"llm": h["llm"], "encoder": h["encoder"], "windows": h["windows"], "clips": h["clips"],
                "datasets": per}
    n = {k: v["windows"] for k, v in per.items()}
    total = sum(n.values())
    out = {m: {f: sum(per[k][m][f] * w for k, w in n.items()) / total for f in POOLED if
               all(f in per[k][m] for k in per)} for m in ("llm", "encoder")}
    return {**out, "windows": total, "clips": sum(v["clips"] for v in per.values()),
            "pooled": "window-weighted mean over the datasets", "datasets": per}
