"""The torch engine's resident base model: loaded once, LoRA slots injected, its text codec beside it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .base import BaseModelSource
from .cpu_compute import HALF, can_pack, compute_in_float32, pack_linears, use_cpu_attention, wants_float32
from .lora import BatchSlots, LoRAEmbedding, LoRALinear, inject_lora
from .slot_layout import SlotLayout
from .cpu_kernels import available as kernels_available
from .text import TextCodec, load_codec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ResidentModel:
    """Everything the torch engine needs from the base.

    Attributes:
        source: where the weights came from, with the base fingerprint.
        model: the HF causal LM in eval mode with :class:`LoRALinear` in its decoder layers.
        codec: its tokenizer, chat template, EOS ids and context limit.
        routing: per-forward slot routing shared by the LoRA layers.
        lora_layers: base module name → LoRA layer (the decoder's linears, then the output head and the
            input embedding, whose adapters take the exact path).
        dtype: the base's dtype (weights' values, activations).
        kv_dtype: what the KV cache stores: float32 where the base computes in float32 (``engine.cpu_compute``),
            else ``dtype``.
    """

    source: BaseModelSource
    model: torch.nn.Module
    codec: TextCodec
    routing: BatchSlots
    lora_layers: dict[str, LoRALinear | LoRAEmbedding]
    dtype: torch.dtype
    kv_dtype: torch.dtype

    @property
    def base_modules(self) -> dict[str, tuple[int, int]]:
        """Adaptable module name → ``(in_features, out_features)``."""
        return {n: (m.in_features, m.out_features) for n, m in self.lora_layers.items()}

    @property
    def device(self) -> torch.device:
        """Where the weights (and so the slots and the KV cache) live."""
        return next(self.model.parameters()).device

    @property
    def max_rank(self) -> int:
        """Largest LoRA rank a slot holds."""
        return self.routing.layout.r_max


def load_resident(
    source: BaseModelSource, dtype: str, n_slots: int = 8, max_rank: int = 64, device: str = "cpu", layout: SlotLayout | None = None
) -> ResidentModel:
    """Load the base from its safetensors folder and inject LoRA slots: ``n_slots`` of rank ``max_rank``, or ``layout``.

    Args:
        source: a resolved base model (``engine.base.resolve_base_model``).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        n_slots: adapter slots on the device (slot 0 for the base is added).
        max_rank: largest adapter rank a slot can hold.
        layout: rank buckets instead (``--rank-buckets``: few big slots beside many small ones); replaces
            ``n_slots`` and ``max_rank``.
        device: ``"cpu"`` or ``"cuda"`` (weights, slots and the KV cache live there). On a CPU without
            native half-precision kernels, a bf16/fp16 base computes in float32 (``engine.cpu_compute``).
            A bf16/fp16 base on a CPU takes the grouped LoRA path (``engine.lora``) and the decode attention
            of ``engine.cpu_compute``, whose C++ kernels (``engine.cpu_kernels``) are built here on first use;
            where they cannot be built the node says why and takes plain-torch paths.

    Raises:
        ValueError: unknown dtype.
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    codec = load_codec(source.path)
    model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=DTYPES[dtype]).to(device)
    model.eval().requires_grad_(False)
    half_on_cpu = torch.device(device).type == "cpu" and DTYPES[dtype] in HALF
    float32 = wants_float32(DTYPES[dtype], torch.device(device))
    if float32:
        compute_in_float32(model)
    elif half_on_cpu:
        use_cpu_attention(model)
    routing, layers = inject_lora(model, layout or SlotLayout.uniform(n_slots, max_rank))
    routing.grouped = half_on_cpu and kernels_available()
    if can_pack(DTYPES[dtype], torch.device(device)):
        log.info("%d linear layers prepacked for oneDNN's bf16 kernels", pack_linears(model))
    log.info("base %s loaded (%s, %d adaptable modules, eos %s)", source.name, dtype, len(layers), sorted(codec.eos_ids))
    return ResidentModel(source, model, codec, routing, layers, DTYPES[dtype], torch.float32 if float32 else DTYPES[dtype])

