"""The base model's text side, shared by every engine: tokenizer, chat template, EOS ids, context.

    prompt (str) ──encode_prompt──► token ids ──► engine.submit
    chat messages ──chat template──encode_chat──► token ids ──► engine.submit

The node tokenizes, not the engine, so the prompt tokens it limits and bills are the tokens the
engine ran, whichever engine it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .structured import Grammars


@dataclass(frozen=True)
class TextCodec:
    """Tokenizer and text limits of one base model.

    Attributes:
        tokenizer: the HF tokenizer (with chat template when the model has one).
        eos_ids: token ids that end a completion (model config, tokenizer and generation config).
        max_context: the model's position limit, tokens.
        vocab_size: rows of the model's output head (``None``: the tokenizer's size).
    """

    tokenizer: object
    eos_ids: frozenset[int]
    max_context: int
    vocab_size: int | None = None

    @cached_property
    def grammars(self) -> Grammars:
        """The structured-output compiler for this tokenizer (``engine.structured``), made on first use."""
        return Grammars(self.tokenizer, self.vocab_size or len(self.tokenizer), self.eos_ids)

    @property
    def pad_id(self) -> int:
        """The padding token id (the smallest EOS id when the tokenizer has none)."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else min(self.eos_ids, default=0)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a raw prompt (the tokenizer's own special-token policy)."""
        return list(self.tokenizer(prompt)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of chat messages rendered by the model's chat template, ready to answer.

        Raises:
            ValueError: the model has no chat template or a role the template rejects.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this base model has no chat template; send a raw prompt instead")
        try:
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # jinja raises its own types for template errors
            raise ValueError(f"chat template failed: {e}") from None
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)


def load_codec(path: Path) -> TextCodec:
    """The codec of the base model folder ``path`` (HF layout: config, tokenizer files).

    Raises:
        OSError: the folder lacks a config or tokenizer.
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(path))
    config = AutoConfig.from_pretrained(str(path))
    eos: set[int] = set()
    sources = [config.eos_token_id, tok.eos_token_id]
    try:
        sources.append(GenerationConfig.from_pretrained(str(path)).eos_token_id)
    except OSError:  # no generation_config.json: the model config's EOS is all we have
        pass
    for value in sources:
        eos.update(value if isinstance(value, list) else [value] if value is not None else [])
    max_ctx = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    return TextCodec(tok, frozenset(eos), max_ctx, int(getattr(config, "vocab_size", 0) or 0) or None)
