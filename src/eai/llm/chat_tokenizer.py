"""A model folder's text tokenizer read with the `tokenizers` library alone, for the cold start of `eai explain`:
importing transformers to get the same tokenizer costs about 0.8 s on two cores. It gives what EmotionLLM asks of
a transformers tokenizer (`tok(text, add_special_tokens=False)["input_ids"]`, `decode`, `apply_chat_template`,
`add_tokens`, `convert_tokens_to_ids`, the eos and pad tokens) for a folder holding tokenizer.json,
tokenizer_config.json and chat_template.jinja, as transformers' TokenizersBackend reads them; tests check both
give the same ids, text and prompts. Training keeps transformers' tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path


class ChatTokenizer:
    """The fast tokenizer of a model folder (see the module). Raises ValueError from `of` when the folder lacks
    a file or names another tokenizer class."""

    def __init__(self, tokenizer, config: dict, template: str):
        self.backend, self.config, self.chat_template = tokenizer, config, template
        self.eos_token = config.get("eos_token")
        self.bos_token = config.get("bos_token")
        self.pad_token = config.get("pad_token") or self.eos_token  # as eai.llm.backbone.load_tokenizer
        self._template = None

    @staticmethod
    def of(folder: str | Path) -> "ChatTokenizer":
        from tokenizers import Tokenizer

        folder = Path(folder)
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text())
            template = (folder / "chat_template.jinja").read_text()
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # OSError, ValueError, and the bare Exception tokenizers raises on a bad file
            raise ValueError(f"cannot read the tokenizer of {folder} ({e})") from None
        if config.get("tokenizer_class") not in ("TokenizersBackend", "PreTrainedTokenizerFast") or \
                any(not isinstance(config.get(k), (str, type(None))) for k in ("eos_token", "bos_token", "pad_token")):
            raise ValueError(f"{folder}: not a plain fast tokenizer")
        return ChatTokenizer(backend, config, template)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def add_tokens(self, tokens: list[str], special_tokens: bool = False) -> int:
        from tokenizers import AddedToken

        added = [AddedToken(t, special=special_tokens, normalized=not special_tokens) for t in tokens]
        return self.backend.add_special_tokens(added) if special_tokens else self.backend.add_tokens(added)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.backend.token_to_id(self.pad_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.backend.token_to_id(self.eos_token)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False):
        """The conversation rendered by the folder's Jinja chat template, in a sandbox with transformers' settings
        (trim_blocks, lstrip_blocks, loop controls); token ids with `tokenize`."""
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            self._template = env.from_string(self.chat_template)
        text = self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, eos_token=self.eos_token,
            bos_token=self.bos_token, pad_token=self.pad_token)
        return self(text)["input_ids"] if tokenize else text
