"""Half-precision bases on CPUs without half-precision kernels: float32 arithmetic, half-precision values.

    x bf16 ─► upcast (exact) ─► x·Wᵀ + b  float32 GEMM (MKL), W held as float32 ─► round once ─► y bf16
    q bf16 ─► upcast ─► softmax(q·Kᵀ/√d)·V  float32 SDPA, K/V cached as float32 ──► round once ─► o bf16

A bf16/fp16 GEMM on a CPU without AVX512-BF16, AVX512-FP16 or AMX runs in torch's generic kernel:
measured here (2-core AVX2, torch 2.13) 4× slower than MKL's float32 GEMM at a decode batch of 16 rows
and 7× slower at a 1024-token prefill; bf16 attention is 5× slower than float32. Native half-precision
kernels multiply half-precision inputs and accumulate in float32, rounding the output once; an exact
upcast of the inputs, weights and cached keys/values followed by float32 arithmetic and one rounding
computes the same thing (up to summation order), at float32 speed, for twice the weight and KV memory.
Every value a layer hands the next (hidden states, q/k/v, attention outputs) is still rounded to the
base's dtype, so the model computes what a bf16 model computes.

Where the CPU has native kernels (:func:`native_half_kernels`), or on a GPU, nothing changes.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)
ATTENTION = "sdpa_float32"  # the name this module registers with transformers' attention interfaces


def native_half_kernels(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices in hardware (AMX, AVX512-BF16 / AMX-FP16)."""
    cpu = torch.cpu
    if dtype == torch.bfloat16:
        return cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
    return cpu._is_amx_fp16_supported()


def wants_float32(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a ``dtype`` model on ``device`` should compute in float32 (a half dtype on a CPU without
    native half-precision kernels)."""
    return device.type == "cpu" and dtype in HALF and not native_half_kernels(dtype)


class Float32Linear(nn.Linear):
    """An ``nn.Linear`` holding float32 weights that returns its input's dtype.

    Input ``[.., in]`` (any float dtype); output ``[.., out]`` in the input's dtype, computed in float32
    and rounded once.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight, self.bias).to(x.dtype)


def upcast_linears(model: nn.Module) -> int:
    """Replace every half-precision ``nn.Linear`` of ``model`` (output head included) by a
    :class:`Float32Linear` holding the same values upcast (exact). A weight shared with another module
    (a tied output head) is copied, so the embedding keeps its own half-precision table.

    Returns:
        How many layers were replaced.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.dtype not in HALF:
                continue
            with torch.device("meta"):
                new = Float32Linear(child.in_features, child.out_features, bias=child.bias is not None)
            new.weight = nn.Parameter(child.weight.detach().float(), requires_grad=False)
            if child.bias is not None:
                new.bias = nn.Parameter(child.bias.detach().float(), requires_grad=False)
            setattr(parent, name, new)
            replaced += 1
    return replaced


def _sdpa_float32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on float32 operands; the output in the query's dtype.

    Shapes as transformers' ``sdpa_attention_forward``: query ``[B, heads, T, d]``, key/value
    ``[B, kv_heads, L, d]`` (float32 when the cache holds float32, else upcast here).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


def _register_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, _sdpa_float32)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def compute_in_float32(model: nn.Module) -> None:
    """Make a half-precision ``model`` compute in float32 as this module's docstring draws: linears
    upcast (:func:`upcast_linears`) and attention through :data:`ATTENTION`. The KV cache's float32
    storage is the caller's (``engine.kv.new_cache``)."""
    n = upcast_linears(model)
    _register_attention()
    model.set_attn_implementation(ATTENTION)
    log.info("this CPU has no native half-precision matmul: %d linear layers and attention compute in float32", n)
