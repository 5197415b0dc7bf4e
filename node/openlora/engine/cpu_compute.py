"""Half-precision bases on a CPU: the fastest kernels each CPU has, half-precision values throughout.

    native bf16 (AVX512-BF16 / AMX):
    x bf16 ─► oneDNN matmul, W prepacked once for it (what inductor's weight freezing does) ─► y bf16
    no native half-precision kernels:
    x bf16 ─► upcast (exact) ─► x·Wᵀ + b  float32 GEMM (MKL), W held as float32 ─► round once ─► y bf16
    q bf16 ─► upcast ─► softmax(q·Kᵀ/√d)·V  float32 SDPA, K/V cached as float32 ──► round once ─► o bf16

torch's ``F.linear`` on bf16 reorders the weight into oneDNN's blocked layout on every call; a weight
reordered once (``torch.ops.mkldnn._reorder_linear_weight``, the op inductor's freezing pass uses) runs
the same kernel, with the same result bit for bit, and faster at decode shapes (a hand measurement on 2
cores, AVX512-BF16, once: 216 → 120 µs for a 16×576 by 576×1536 projection, 8.7 → 4.3 ms for SmolLM2's
output head).

Attention at decode, on every CPU (native half kernels or not). A decode step has one query per row;
torch's CPU flash-attention kernel, built for long query blocks, spends 1.09 ms per layer there on a
16-row batch against this module's 0.19 ms (``scripts/profile_step.py --sdpa``, 2 cores: the step's
wall time 85.6 against 42.8 ms). A one-token query is computed as
grouped-query attention (GQA, Ainslie et al., arXiv 2305.13245: each key/value head serves
``heads / kv_heads`` query heads) in float32 on exactly upcast operands, rounded once, as the flash
kernel does, by ``engine.cpu_kernels.decode_attention``, which reads the cache once in its stored
dtype (plain torch where the kernels cannot be built: two ``matmul``s on upcast copies)::

    q [B, H, 1, d] ─► per (row, kv head): s = q·Kᵀ × scale, masked ─► softmax ─► ·V ─► [B, 1, H, d]

Longer queries (prefill) go to transformers' SDPA unchanged (float32 operands where the base computes
in float32). Float32 bases never take these paths: their outputs stay PEFT's bit for bit.

On a GPU nothing changes.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import available as kernels_available
from .cpu_kernels import decode_attention

log = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)
# the names this module registers with transformers' attention interfaces: native half-precision prefill,
# and float32 prefill for bases that compute in float32
ATTENTION, ATTENTION_FLOAT32 = "openlora_cpu", "openlora_cpu_float32"


class PackedLinear(nn.Module):
    """A bf16 ``nn.Linear`` whose weight oneDNN holds prepacked (the module docstring).

    Input ``[.., in]`` bf16; output ``[.., out]`` bf16, computed by oneDNN (float32 accumulation, one
    rounding), equal to ``F.linear`` on the same CPU. The packed weight replaces the layer's own (a weight
    shared with another module, as a tied output head's, is copied).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # the batch-size hint only picks oneDNN's blocking; any number of rows runs on the packed weight
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 16)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def dense_weight(self) -> torch.Tensor:
        """The weight ``[out, in]`` bf16 back from oneDNN's packing, by multiplying the identity (exact: one non-zero
        product per sum; without the bias, which a subtraction after a bf16 rounding would not give back exactly);
        for install-time work (DoRA's norms, checking a saved base weight), not per step."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch.ops.mkldnn._linear_pointwise(eye, self.packed, None, "none", [], "").T


def can_pack(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a ``dtype`` base on ``device`` runs its linears as :class:`PackedLinear` (bf16 on a CPU whose
    oneDNN has native bf16 kernels)."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def pack_linears(model: nn.Module) -> int:
    """Replace every bf16 ``nn.Linear`` of ``model`` (LoRA layers' bases and the output head included) by a
    :class:`PackedLinear`.

    Returns:
        How many layers were replaced.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16:
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced


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
    scale = d**-0.5 if scaling is None else scaling
    plain_mask = attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.shape[1:3] == (1, 1))
    if plain_mask and kernels_available():
        out = query.new_empty(b, 1, heads, d)
        mask = None if attention_mask is None else attention_mask[:, 0, 0]
        decode_attention()(out.view(b, heads, d), query[:, :, 0], key, value, mask, scale)
        return out, None
    kv_heads = key.shape[1]
    q = query.view(b, kv_heads, heads // kv_heads, d).float()
    scores = torch.matmul(q, key.float().transpose(-1, -2)).mul_(scale)
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
