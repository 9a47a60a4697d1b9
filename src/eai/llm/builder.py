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

import hashlib
import json
import os
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

    @staticmethod
    def of_schedule(schedule: str) -> "LoraSettings":
        """The defaults with the LLM schedule's own dropout where it has one (eai.schedules.LORA_DROPOUT)."""
        from eai.schedules import LORA_DROPOUT

        return LoraSettings(**({"lora_dropout": LORA_DROPOUT[schedule]} if schedule in LORA_DROPOUT else {}))


@dataclass
class LLMConfig:
    """What the LLM of a run is made from (saved whole in its manifest)."""

    backbone: str = BUNDLED
    seed: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    tokenizer: SkeletonTokenizerConfig = field(default_factory=SkeletonTokenizerConfig)
    schedule: str = "paper"
    stages: dict[str, StageConfig] = field(default_factory=dict)
    # what the posterior token reads: the encoder head's posterior ("encoder"), or that fused with the run's
    # descriptor forest's ("encoder+forest", eai.encoder.forest.fused_posterior)
    posterior: str = "encoder+forest"
    # how confident the posterior token of a training window is: as the run's own experts read it ("in-sample":
    # runs before this field, or too few clips to cross-fit), or softened, argmax kept, to the confidence of that
    # window's out-of-fold posterior ("out-of-fold", eai.calibration.temper_to_entropy), as a new clip's reads
    token_confidence: str = "in-sample"

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


def _read_adapter(folder: Path) -> tuple[dict, float]:
    """A saved plain-LoRA adapter's weights (lora_A/lora_B pairs only) and its scaling alpha / r (alpha / sqrt(r)
    with rsLoRA). Raises ValueError when it is not plain LoRA (`plain_lora`: use peft) or holds other tensors."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if not plain_lora(cfg):
        raise ValueError("the adapter is not plain LoRA on linear layers")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    pairs = [k for k in state if k.endswith(".lora_A.weight")]
    if not pairs or len(state) != 2 * len(pairs):
        raise ValueError(f"{ADAPTER_WEIGHTS} holds other tensors than LoRA A/B pairs")
    if any(state[k].shape[0] != r for k in pairs):
        raise ValueError(f"the adapter's lora_A does not fit its rank r = {r}")
    return state, alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r


def merge_adapter(lm: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Fold the LoRA adapter peft saved in `folder` (adapter_config.json, adapter_model.safetensors) into `lm`'s
    linear weights, in place, as peft's `merge_and_unload` does: W += (B @ A) * scaling, B (out, r), A (r, in),
    in the weights' dtype (eai.llm.llama.merged_state). Returns `lm`. Raises ValueError when the adapter is not
    plain LoRA or its weights do not fit `lm`."""
    from eai.llm.llama import merged_state

    state, scaling = _read_adapter(folder)
    params = dict(lm.named_parameters())
    modules = dict(lm.named_modules())
    merged = merged_state({n: p.detach() for n, p in params.items()}, state, scaling)
    if any(not isinstance(modules.get(n[:-len(".weight")]), torch.nn.Linear) for n in merged):
        raise ValueError("the adapter changes a layer that is not a linear layer of the model")
    with torch.no_grad():
        for name, w in merged.items():
            params[name].copy_(w)
    return lm


MERGED_KEEP = 3  # merged backbones kept (the most recently used)
MERGE_FORMAT = 1  # in the cache key: a change to what an entry holds makes new entries


def merged_cache_root() -> Path:
    """Where runs' merged backbone layers are kept: $EAI_MERGED_CACHE, else $EAI_CACHE/merged (default
    ~/.cache/eai/merged); about 0.4 GB a run for the bundled model, the MERGED_KEEP most recently used."""
    from eai.llm.backbone import cache_root

    return Path(os.environ.get("EAI_MERGED_CACHE") or cache_root() / "merged")


def _merged_weights(base_file: Path, folder: Path, base: dict) -> dict:
    """The backbone weights run adapter `folder` changes, merged (`merged_state`), memory-mapped from
    `merged_cache_root()`/<key>.safetensors: computed and written there (atomically) on a run's first load, keyed
    by both files' path, inode, size, modification and change times (a rewritten adapter gets a new key, even
    within a filesystem's mtime resolution). An entry that cannot be read is deleted and made again; where the
    folder cannot be written (read-only, full), the merge stays in memory."""
    from safetensors.torch import load_file, save_file

    from eai.io.files import atomic_path
    from eai.llm.llama import merged_state

    stats = [(f, f.stat()) for f in (base_file, folder / ADAPTER_WEIGHTS, folder / "adapter_config.json")]
    stamp = [(str(f.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for f, st in stats]
    key = hashlib.sha256(json.dumps([MERGE_FORMAT, stamp]).encode()).hexdigest()[:32]
    where = merged_cache_root()
    path = where / f"{key}.safetensors"
    if path.is_file():
        try:
            out = load_file(str(path))
        except Exception:  # safetensors raises a bare SafetensorError on a truncated or damaged file
            path.unlink(missing_ok=True)
        else:
            try:
                os.utime(path)  # most recently used (a shared, read-only entry is still read)
            except OSError:
                pass
            return out
    state, scaling = _read_adapter(folder)
    out = merged_state(base, state, scaling)
    try:
        with atomic_path(path) as tmp:
            save_file(out, str(tmp))
        _evict(where)
        return load_file(str(path))
    except Exception:  # OSError, or safetensors' own error where it cannot write (a full disk)
        return out


def _evict(where: Path) -> None:
    """Delete all but the MERGED_KEEP most recently used merged entries (eai's own names only)."""
    entries = []
    for f in where.glob("*.safetensors"):
        if len(f.stem) == 32 and all(c in "0123456789abcdef" for c in f.stem):
            try:
                entries.append((f.stat().st_mtime, f))
            except OSError:  # another process evicted it
                pass
    for _, f in sorted(entries)[:-MERGED_KEEP]:
        try:
            f.unlink()
        except OSError:
            pass


def _fast_backbone(cfg: LLMConfig, folder: Path, adapter_cfg: dict):
    """The run's backbone with its adapter merged, as eai.llm.llama's LlamaDecoder on memory-mapped weights, or
    None where that decoder does not apply: not a plain Llama in one float32 safetensors file (another dtype
    would run in it, not as the float32 model transformers builds), weights of other names, not plain LoRA."""
    from safetensors.torch import load_file

    from eai.llm.backbone import local_folder
    from eai.llm.llama import LlamaDecoder, LlamaSettings

    base_dir = local_folder(cfg.backbone)
    if base_dir is None or not (base_dir / "model.safetensors").is_file():
        return None
    settings = LlamaSettings.read(base_dir)
    if settings is None or not plain_lora(adapter_cfg):
        return None
    try:
        base = load_file(str(base_dir / "model.safetensors"))
    except Exception:  # a file safetensors cannot read: left to transformers, which says why
        return None
    base = {k: v for k, v in base.items() if not k.endswith("rotary_emb.inv_freq")}  # older checkpoints' buffers
    if any(v.dtype != torch.float32 for v in base.values()) or not LlamaDecoder.fits(settings, base):
        return None
    merged = _merged_weights(base_dir / "model.safetensors", folder, base)
    return LlamaDecoder.from_state(settings, {**base, **merged})


def _text_tokenizer(backbone: str):
    """The backbone's text tokenizer for inference: for the bundled model, eai.llm.chat_tokenizer's (no
    transformers import; tests check it gives transformers' ids and prompts), else transformers'
    (eai.llm.backbone.load_tokenizer)."""
    from eai.llm.backbone import BUNDLED, bundled_folder, load_tokenizer
    from eai.llm.chat_tokenizer import ChatTokenizer

    if backbone == BUNDLED:
        try:
            return ChatTokenizer.of(bundled_folder())
        except ValueError:
            pass
    return load_tokenizer(backbone)


def load_merged_llm(run: Path, cfg: LLMConfig) -> EmotionLLM:
    """The LLM a run folder saved, for inference (eval mode): the backbone with the saved LoRA adapter folded into
    its weights. A plain Llama backbone in a local folder (the bundled SmolLM2) runs on eai.llm.llama's decoder
    over memory-mapped weights, the merged layers cached per run (`_merged_weights`): no transformers model, no
    copy of the weights. Any other backbone is rebuilt by transformers and merged in place (`merge_adapter`;
    through peft when the adapter is not plain LoRA). Raises EaiError when the saved weights do not fit the
    configuration."""
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
    try:
        lm = _fast_backbone(cfg, folder, adapter_cfg)
        if lm is not None:
            if cfg.tokenizer.hidden != lm.config.hidden_size:
                raise ValueError(f"the skeleton tokenizer makes tokens of size {cfg.tokenizer.hidden}, but the "
                                 f"language model reads {lm.config.hidden_size}")
            torch.manual_seed(cfg.seed)
            llm = EmotionLLM(lm, _text_tokenizer(cfg.backbone), SkeletonTokenizer(cfg.tokenizer))
        else:
            llm = build_llm(cfg, lora=False)
        llm.skeleton_tokenizer.load_state_dict(load_file(str(run / TOKENIZER_WEIGHTS)))
        if lm is None:
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
