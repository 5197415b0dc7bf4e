"""The resident base model: loaded once, LoRA slots injected, tokenizer and chat template beside it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .base import BaseModelSource
from .lora import BatchSlots, LoRALinear, inject_lora

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ResidentModel:
    """Everything the engine needs from the base.

    Attributes:
        source: where the weights came from, with the base fingerprint.
        model: the HF causal LM in eval mode with :class:`LoRALinear` in its decoder layers.
        tokenizer: its tokenizer (with chat template when the model has one).
        routing: per-forward slot routing shared by the LoRA layers.
        lora_layers: base module name → LoRA layer.
        dtype: compute dtype of weights and adapter slots.
        eos_ids: token ids that end a completion.
        max_context: the model's position limit in tokens.
    """

    source: BaseModelSource
    model: torch.nn.Module
    tokenizer: object
    routing: BatchSlots
    lora_layers: dict[str, LoRALinear]
    dtype: torch.dtype
    eos_ids: frozenset[int]
    max_context: int

    @property
    def base_modules(self) -> dict[str, tuple[int, int]]:
        """Adaptable module name → ``(in_features, out_features)``."""
        return {n: (m.in_features, m.out_features) for n, m in self.lora_layers.items()}

    @property
    def max_rank(self) -> int:
        """Largest LoRA rank a slot holds."""
        return next(iter(self.lora_layers.values())).r_max

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


def load_resident(source: BaseModelSource, dtype: str, n_slots: int, max_rank: int) -> ResidentModel:
    """Load the base from its safetensors folder and inject ``n_slots`` LoRA slots.

    Args:
        source: a resolved base model (``engine.base.resolve_base_model``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        n_slots: adapter slots on the device (slot 0 for the base is added).
        max_rank: largest adapter rank a slot can hold.

    Raises:
        ValueError: unknown dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    tok = AutoTokenizer.from_pretrained(str(source.path))
    model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=DTYPES[dtype])
    model.eval().requires_grad_(False)
    routing, layers = inject_lora(model, n_slots + 1, max_rank)
    eos: set[int] = set()
    for value in (model.config.eos_token_id, tok.eos_token_id):
        eos.update(value if isinstance(value, list) else [value] if value is not None else [])
    try:
        gen = GenerationConfig.from_pretrained(str(source.path))
        value = gen.eos_token_id
        eos.update(value if isinstance(value, list) else [value] if value is not None else [])
    except OSError:  # no generation_config.json: the model config's EOS is all we have
        pass
    max_ctx = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    log.info("base %s loaded (%s, %d adaptable modules, eos %s)", source.name, dtype, len(layers), sorted(eos))
    return ResidentModel(source, model, tok, routing, layers, DTYPES[dtype], frozenset(eos), max_ctx)
