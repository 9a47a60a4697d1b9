"""Pretrained encoder weights: the ones shipped in this package (`pretrained.safetensors` with `pretrained.json`
beside it, written by `eai pretrain`) or those of any pretraining folder, read offline and checked against the
sha256 their JSON records. The weights are the encoder's feature extractor only (its `embed`, `stem` and
`blocks`); `eai train --init` starts the emotion encoder from them."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from eai.errors import EaiError

WEIGHTS = "pretrained.safetensors"
INFO = "pretrained.json"
BACKBONE = ("embed.", "stem.", "blocks.")  # the feature extractor's keys in a SkeletonEncoder state dict


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pretrained_path() -> Path | None:
    """The shipped weights' file, or None when this eai ships none."""
    p = Path(__file__).with_name(WEIGHTS)
    return p if p.is_file() and p.with_name(INFO).is_file() else None


def read_folder(folder: str | Path) -> tuple[dict, dict]:
    """(state dict of torch tensors, the JSON beside them) of a folder holding pretrained.safetensors and
    pretrained.json (a pretraining run folder, or the package's); EaiError when either is missing or the file's
    sha256 is not the one recorded."""
    from safetensors.torch import load_file

    d = Path(folder)
    if not (d / WEIGHTS).is_file() or not (d / INFO).is_file():
        raise EaiError(f"no {WEIGHTS} with its {INFO} here; write them with 'eai pretrain --out' (or use "
                       "--init none)", d)
    try:
        info = json.loads((d / INFO).read_text())
    except (OSError, ValueError) as e:
        raise EaiError(f"cannot read {INFO} ({e})", d) from None
    if info.get("sha256") != sha256(d / WEIGHTS):
        raise EaiError(f"{WEIGHTS} does not match the sha256 in {INFO}: damaged or replaced; pretrain again", d)
    return load_file(str(d / WEIGHTS)), info


def load_pretrained() -> dict | None:
    """The shipped weights (state dict), checked against their sha256; None when this eai ships none."""
    p = pretrained_path()
    return None if p is None else read_folder(p.parent)[0]


def resolve_init(init: str) -> tuple[dict | None, dict]:
    """`--init`: 'pretrained' (the shipped weights; none shipped: None, noted), 'none', or a folder holding
    pretrained.safetensors -> (state dict or None, what was used: {"init", "source", "sha256", "note"})."""
    if init == "none":
        return None, {"init": "none"}
    if init == "pretrained":
        p = pretrained_path()
        if p is None:
            return None, {"init": "none", "asked": "pretrained",
                          "note": "this eai ships no pretrained encoder weights: the encoder starts from scratch"}
        folder = p.parent
    else:
        folder = Path(init)
        if not folder.is_dir():
            raise EaiError("--init takes pretrained, none, or a folder that 'eai pretrain' wrote", folder)
    state, info = read_folder(folder)
    return state, {"init": init if init == "pretrained" else "folder", "source": str(folder),
                   "sha256": info.get("sha256"), "objective": info.get("objective"), "licence": info.get("licence"),
                   "data": [d.get("name") for d in info.get("data", [])]}
