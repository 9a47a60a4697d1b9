"""Build, save and load the emotion LLM of a run (LLaVA's model/builder.py counterpart).

`LLMConfig` is everything the LLM of a run is made from: the backbone, the seed its random parts start
from, the LoRA settings, the whole skeleton-tokenizer config and the stages' schedule. `build_llm(cfg)`
makes a fresh model from it; `save_llm` writes what training changed, as peft saves it (`llm-adapter/`:
the LoRA adapter and its config) plus the skeleton tokenizer's weights (`skeleton_tokenizer.safetensors`);
`load_llm` rebuilds the base exactly (same backbone, seed and added tokens) and puts both back
(`PeftModel.from_pretrained`), so a run needs nothing but its folder and its manifest. For inference,
`load_merged_llm` folds the saved adapter into the base weights by hand (`merge_adapter`), as peft's
`merge_and_unload` computes it, without importing peft (a cold `eai explain` is a second faster).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from eai.errors import EaiError
from eai.llm.backbone import BUNDLED, load_backbone
from eai.llm.model import EmotionLLM
from eai.llm.tokenizer import SkeletonTokenizer, SkeletonTokenizerConfig
from eai.schedules import StageConfig

ADAPTER = "llm-adapter"
TOKENIZER_WEIGHTS = "skeleton_tokenizer.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # in ADAPTER/, with adapter_config.json: peft's file names
# adapter_config.json settings that change what a LoRA adapter computes beyond W + (B @ A) * alpha / r, with the
# value under which merge_adapter's arithmetic is peft's; any other value is left to peft
_PLAIN_LORA = {"peft_type": "LORA", "use_dora": False, "fan_in_fan_out": False, "lora_bias": False, "bias": "none",
               "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "trainable_token_indices": None,
               "target_parameters": None, "alora_invocation_tokens": None, "layer_replication": None,
               "arrow_config": None, "use_bdlora": None, "velora_config": None, "monteclora_config": None,
               "kasa_config": None}


@dataclass
class LoraSettings:
    """LoRA on the LM (Hu et al. 2021, via peft): rank r, scale alpha / r, dropout, which layers. The
    defaults are EAI-LLM's (r 64, alpha 16, dropout 0.05) on every linear layer."""

    r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass
class LLMConfig:
    """What the LLM of a run is made from (saved whole in its manifest)."""

    backbone: str = BUNDLED
    seed: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    tokenizer: SkeletonTokenizerConfig = field(default_factory=SkeletonTokenizerConfig)
    schedule: str = "paper"
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def add_lora(lm: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    """`lm` wrapped by peft with fresh LoRA adapters (its own weights frozen)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(lm, LoraConfig(**asdict(lora), bias="none"))


def build_llm(cfg: LLMConfig, lora: bool = True) -> EmotionLLM:
    """A fresh EmotionLLM of `cfg`: the backbone, the skeleton tokenizer (its output scale matched to the LM's
    token embeddings: 4 standard deviations) initialised from `cfg.seed`, then LoRA adapters (`lora`).
    `cfg.tokenizer.hidden` must be the backbone's hidden size."""
    lm, tok = load_backbone(cfg.backbone, seed=cfg.seed)
    if cfg.tokenizer.hidden != lm.config.hidden_size:
        raise EaiError(f"the skeleton tokenizer makes tokens of size {cfg.tokenizer.hidden}, but the language "
                       f"model {cfg.backbone!r} reads {lm.config.hidden_size}")
    torch.manual_seed(cfg.seed)
    sk = SkeletonTokenizer(cfg.tokenizer)
    sk.scale.fill_(float(lm.get_input_embeddings().weight.detach().std()) * 4)
    return EmotionLLM(add_lora(lm, cfg.lora) if lora else lm, tok, sk)


def trainable_state(llm: EmotionLLM) -> dict[str, torch.Tensor]:
    """Copies (on the CPU) of the parameters training changes: LoRA and the skeleton tokenizer."""
    return {k: v.detach().cpu().clone() for k, v in llm.named_parameters() if v.requires_grad}


def save_llm(run: Path, llm: EmotionLLM) -> None:
    """Write the LoRA adapter (peft's save_pretrained, into `ADAPTER/`, replaced atomically) and the skeleton
    tokenizer's weights (`TOKENIZER_WEIGHTS`) into a run folder."""
    from safetensors.torch import save_file

    from eai.io.files import atomic_path, share_like_open

    state = {k: v.detach().cpu().contiguous() for k, v in llm.skeleton_tokenizer.state_dict().items()}
    with atomic_path(run / TOKENIZER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    tmpdir = Path(tempfile.mkdtemp(prefix=".adapter-", dir=run))
    llm.lm.save_pretrained(tmpdir)
    share_like_open(tmpdir)
    shutil.rmtree(run / ADAPTER, ignore_errors=True)
    tmpdir.rename(run / ADAPTER)


def _check_saved(run: Path) -> None:
    if not (run / ADAPTER).is_dir() or not (run / TOKENIZER_WEIGHTS).is_file():
        raise EaiError(f"the run has no saved LLM ({ADAPTER}/, {TOKENIZER_WEIGHTS})", run)


def plain_lora(adapter_config: dict) -> bool:
    """Whether a saved adapter is plain LoRA on linear layers (no DoRA, biases, per-layer ranks, extra saved
    modules ...): what `merge_adapter` folds exactly as peft does."""
    return all(adapter_config.get(k, v) == v for k, v in _PLAIN_LORA.items())


def merge_adapter(lm: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Fold the LoRA adapter peft saved in `folder` (adapter_config.json, adapter_model.safetensors) into `lm`'s
    linear weights, in place, as peft's `merge_and_unload` does: W += (B @ A) * scaling, B (out, r), A (r, in),
    scaling alpha / r (alpha / sqrt(r) with rsLoRA), in the weights' dtype. Returns `lm`. Raises ValueError
    when the adapter is not plain LoRA (`plain_lora`: use peft) or its weights do not fit `lm`."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if not plain_lora(cfg):
        raise ValueError("the adapter is not plain LoRA on linear layers")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    modules = dict(lm.named_modules())
    prefix = "base_model.model."
    pairs = {k[:-len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")}
    if not pairs or len(state) != 2 * len(pairs):
        raise ValueError(f"{ADAPTER_WEIGHTS} holds other tensors than LoRA A/B pairs")
    with torch.no_grad():
        for key in sorted(pairs):
            name = key[len(prefix):] if key.startswith(prefix) else key
            layer, a, b = modules.get(name), state[key + ".lora_A.weight"], state.get(key + ".lora_B.weight")
            if not isinstance(layer, torch.nn.Linear) or b is None or a.shape != (r, layer.in_features) \
                    or b.shape != (layer.out_features, r):
                raise ValueError(f"the adapter's {name} does not fit the model")
            w = layer.weight
            w += (b.to(w.dtype) @ a.to(w.dtype)) * scaling  # peft's get_delta_weight, then its merge
    return lm


def load_merged_llm(run: Path, cfg: LLMConfig) -> EmotionLLM:
    """The LLM a run folder saved, for inference (eval mode): the base rebuilt from `cfg` with the saved LoRA
    adapter folded into its weights (`merge_adapter`; through peft when the adapter is not plain LoRA). Raises
    EaiError when the saved weights do not fit the configuration."""
    from safetensors.torch import load_file

    _check_saved(run)
    folder = run / ADAPTER
    try:
        adapter_cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise EaiError(f"cannot read {ADAPTER}/adapter_config.json ({e})", run) from None
    if not plain_lora(adapter_cfg):
        llm = load_llm(run, cfg)
        llm.lm = llm.lm.merge_and_unload()
        return llm
    llm = build_llm(cfg, lora=False)
    try:
        llm.skeleton_tokenizer.load_state_dict(load_file(str(run / TOKENIZER_WEIGHTS)))
        merge_adapter(llm.lm, folder)
    except (RuntimeError, ValueError, OSError) as e:
        raise EaiError(f"the run's LLM weights do not fit its configuration ({str(e).splitlines()[0]})",
                       run) from None
    return llm.eval()


def load_llm(run: Path, cfg: LLMConfig, trainable: bool = False) -> EmotionLLM:
    """The LLM a run folder saved (`save_llm`), rebuilt from `cfg` (its manifest's); `trainable` to go on
    training it. Raises EaiError when the saved weights do not fit the configuration."""
    from peft import PeftModel
    from safetensors.torch import load_file

    _check_saved(run)
    llm = build_llm(cfg, lora=False)
    try:
        llm.skeleton_tokenizer.load_state_dict(load_file(str(run / TOKENIZER_WEIGHTS)))
        llm.lm = PeftModel.from_pretrained(llm.lm, str(run / ADAPTER), is_trainable=trainable)
    except (RuntimeError, ValueError) as e:
        raise EaiError(f"the run's LLM weights do not fit its configuration ({str(e).splitlines()[0]})",
                       run) from None
    return llm.train(trainable) if trainable else llm.eval()
