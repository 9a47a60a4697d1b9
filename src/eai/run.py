"""Run folders: manifest.json (config, labels, versions, seed, metrics), weights as safetensors, training
log and curves. `load_run(dir)` rebuilds the model exactly from the folder alone."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from eai.encoder.model import EncoderConfig, SkeletonEncoder
from eai.errors import EaiError
from eai.io.files import atomic_path, atomic_write_text
from eai.skeleton.registry import canonical

MANIFEST = "manifest.json"
ENCODER_WEIGHTS = "encoder.safetensors"


def versions() -> dict:
    import eai

    return {"eai": getattr(eai, "__version__", "0.1.0"), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def write_manifest(run_dir: Path, manifest: dict) -> None:
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


@dataclass
class Run:
    path: Path
    manifest: dict
    encoder: SkeletonEncoder

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]


def load_run(run_dir: str | Path) -> Run:
    """Rebuild a trained run (model in eval mode, on the CPU) from its folder."""
    d = Path(run_dir)
    if not (d / MANIFEST).is_file():
        raise EaiError(f"not an eai run folder (no {MANIFEST}); train one with 'eai train'", d)
    manifest = json.loads((d / MANIFEST).read_text())
    if manifest.get("canonical_joints") != list(canonical().names):
        raise EaiError("this run was trained on another canonical skeleton than this eai's", d)
    cfg = EncoderConfig(**{"descriptor_expert": False, **manifest["encoder"]})  # runs from before the key
    model = SkeletonEncoder(cfg)
    model.load_state_dict(load_file(str(d / ENCODER_WEIGHTS)))
    model.eval()
    return Run(d, manifest, model)


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eai.report import save_figure

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h["loss"] for h in history])
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("training loss")
    ax[1].plot(ep, [h["train_accuracy"] for h in history], label="train (augmented)")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("accuracy")
    ax[1].legend()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
