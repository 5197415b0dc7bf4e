"""Half-precision bases on a CPU: float32 arithmetic where torch's half-precision kernels are slow, half-precision values.

    x bf16 ─► upcast (exact) ─► x·Wᵀ + b  float32 GEMM (MKL), W held as float32 ─► round once ─► y bf16
    q bf16 ─► upcast ─► softmax(q·Kᵀ/√d)·V  float32 SDPA, K/V cached as float32 ──► round once ─► o bf16

Attention at decode, on every CPU (native half kernels or not). A decode step has one query per row;
torch's CPU flash-attention kernel, built for long query blocks, spends ~0.7 ms per layer there on a
16-row batch (measured on 2 cores: 30 % of a SmolLM2 step), where the same arithmetic as two small
matmuls takes ~0.15 ms. So a one-token query is computed as grouped-query attention (GQA, Ainslie et
al., arXiv 2305.13245: each key/value head serves ``heads / kv_heads`` query heads) in float32 on
exactly upcast operands, rounded once, as the flash kernel does::

    q [B, H, 1, d] ─► [B, KVH, H/KVH, d] ─► ·Kᵀ [B, KVH, d, L] × scale ─► mask ─► softmax ─► ·V ─► [B, 1, H, d]

Longer queries (prefill) go to transformers' SDPA unchanged (float32 operands where the base
computes in float32). Float32 bases never take these paths: their outputs stay PEFT's bit for bit.

A bf16/fp16 GEMM on a CPU without AVX512-BF16, AVX512-FP16 or AMX runs in torch's generic kernel:
measured here (2-core AVX2, torch 2.13) 4× slower than MKL's float32 GEMM at a decode batch of 16 rows
and 7× slower at a 1024-token prefill; bf16 attention is 5× slower than float32. Native half-precision
kernels multiply half-precision inputs and accumulate in float32, rounding the output once; an exact
upcast of the inputs, weights and cached keys/values followed by float32 arithmetic and one rounding
computes the same thing (up to summation order), at float32 speed, for twice the weight and KV memory.
Every value a layer hands the next (hidden states, q/k/v, attention outputs) is still rounded to the
base's dtype, so the model computes what a bf16 model computes.

Where the CPU has native kernels (:func:`native_half_kernels`) the linears stay as they are; on a GPU
nothing changes.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)
# the names this module registers with transformers' attention interfaces: native half-precision prefill,
# and float32 prefill for bases that compute in float32
ATTENTION, ATTENTION_FLOAT32 = "openlora_cpu", "openlora_cpu_float32"


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


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, float32: bool, **kwargs):
    """Attention for a half-precision base on a CPU (the module docstring draws it); ``float32``: the
    prefill's SDPA runs on upcast operands too.

    Shapes as transformers' ``sdpa_attention_forward``: query ``[B, heads, T, d]``, key/value
    ``[B, kv_heads, L, d]`` (float32 when the cache holds float32), ``attention_mask`` a boolean
    ``[B, 1, T, L]`` (True: attend) or additive float mask, or None. Returns ``([B, T, heads, d]`` in the
    query's dtype, ``None)``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or dropout or kwargs.get("position_bias") is not None or getattr(module, "sinks", None) is not None:
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, dropout=dropout, scaling=scaling, **kwargs
        ) if float32 else sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )  # fmt: skip
        return out.to(query.dtype), weights
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    q = query.view(b, kv_heads, heads // kv_heads, d).float()
    scores = torch.matmul(q, key.float().transpose(-1, -2)).mul_(d**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, float("-inf"))
        else:
            scores.add_(attention_mask)
    out = torch.matmul(scores.softmax(-1), value.float())  # [B, KVH, H/KVH, d]
    return out.view(b, 1, heads, d).to(query.dtype), None


def _register_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    for name, float32 in ((ATTENTION, False), (ATTENTION_FLOAT32, True)):
        AttentionInterface.register(name, functools.partial(_attention, float32=float32))
        AttentionMaskInterface.register(name, sdpa_mask)


def use_cpu_attention(model: nn.Module, float32: bool = False) -> None:
    """Route a half-precision ``model`` on a CPU through this module's attention (the module docstring);
    ``float32``: its prefill too computes in float32 (:data:`ATTENTION_FLOAT32`), else :data:`ATTENTION`."""
    _register_attention()
    model.set_attn_implementation(ATTENTION_FLOAT32 if float32 else ATTENTION)


def compute_in_float32(model: nn.Module) -> None:
    """Make a half-precision ``model`` compute in float32 as this module's docstring draws: linears
    upcast (:func:`upcast_linears`); attention through :func:`use_cpu_attention`, which computes on the
    float32 cache in float32. The KV cache's float32 storage is the caller's (``engine.kv.new_cache``)."""
    n = upcast_linears(model)
    use_cpu_attention(model, float32=True)
    log.info("this CPU has no native half-precision matmul: %d linear layers and attention compute in float32", n)
