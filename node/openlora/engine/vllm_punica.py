"""Multi-LoRA for vLLM's CPU platform: one opaque op per LoRA linear, one pass over the rows.

vLLM's CPU LoRA (``vllm/lora/ops/torch_ops``) gathers every token's A and B on every call
(``lora_a[token_indices]``: a prefill of T tokens copies T·r·in weights per module), runs for rows
without an adapter and for modules no loaded adapter targets, and — because its index arithmetic has
data-dependent shapes — makes vLLM's CPU platform switch ``torch.compile`` off for the whole model
whenever LoRA is on. This wrapper keeps vLLM's layers, weights and metadata and replaces the math::

    every step (eager, outside the compiled graph)
        update_metadata(mapping) ─► slot id per token (−1: base row) ─► _Step:
            the rows with an adapter, each one's slot, the set of slots in the batch
    every LoRA linear (inside the compiled graph, as ONE custom op torch.compile does not look into)
        torch.ops.openlora.lora_linear(y, x, A₀…Aₙ, B₀…Bₙ, slices, wrapper)
            no row whose adapter has weights for this module ─► return (y untouched)
            else per output slice i:  y[t, slice_i] += (x[t] @ A_i[s]ᵀ) @ B_i[s]ᵀ   for those rows
                 (engine/cpu_kernels.bgmv, one call for all slices: one shrink over the A_i stacked
                 along the rank, reading each row's weights in place, float32 sums)

so a batch without adapter rows costs the compiled base plus one Python call per layer, and a
mixed batch adds work proportional to its adapter rows. As in vLLM's ops, the shrink (r wide) is
summed in float32 and cast to the model's dtype before the expand; ``lora_alpha / r`` is folded into
B by vLLM when an adapter is loaded. The slices' A are kept stacked along the rank and their B
transposed side by side (a copy per layer, remade when vLLM writes a slot), so the shrink is one pass
and the expand streams contiguous memory.

Selected by :class:`openlora.engine.vllm_platform.OpenLoraCpuPlatform` (vLLM's platform plugin entry
point), never by patching vLLM.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.library import Library
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
from vllm.utils.torch_utils import direct_register_custom_op

from .cpu_kernels import bgmv


@dataclass(frozen=True)
class _Step:
    """One step's adapter rows (computed once per step, read by every layer)."""

    rows: torch.Tensor  # int64 (n,): the rows (tokens) with an adapter
    slots: torch.Tensor  # int64 (n,): each one's slot
    present: frozenset[int]  # the distinct slots


_NO_ROWS = _Step(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), frozenset())
_STEPS: dict[int, _Step] = {}  # wrapper id → its current step (set by every update_metadata before use)


class _PerStack:
    """A value derived from vLLM's stacked tensors, remade when vLLM writes them (their ``_version``
    moves on every ``copy_`` into a slot). Keyed by the first tensor's identity — held by weak
    reference, because ``id()`` of a freed stack is reused by the next one — and dropped with it."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, int, object]] = {}

    def get(self, tensors: list[torch.Tensor], make, *key):
        head, version = tensors[0], (sum(t._version for t in tensors), *key)
        hit = self._entries.get(id(head))
        if hit is None or hit[0]() is not head or hit[1] != version:
            ident = id(head)
            ref = weakref.ref(head, lambda _, ident=ident: self._entries.pop(ident, None))
            hit = (ref, version, make())
            self._entries[ident] = hit
        return hit[2]


_LIVE = _PerStack()  # A stacks → slots with weights
_PACKED = _PerStack()  # A and B stacks → (A stacked along the rank, Bᵀ side by side)


def _step_of(token_slots: list[int]) -> _Step:
    """A step's rows with an adapter (slot −1: none)."""
    rows = [t for t, s in enumerate(token_slots) if s >= 0]
    if not rows:
        return _NO_ROWS
    slots = [token_slots[t] for t in rows]
    return _Step(torch.tensor(rows, dtype=torch.long), torch.tensor(slots, dtype=torch.long), frozenset(slots))


def _live(lora_a: list[torch.Tensor]) -> frozenset[int]:
    """Slots holding weights for this module in any slice (vLLM zeroes the slot of an adapter that
    does not target it); recomputed only when vLLM writes the stacked tensors."""

    def make() -> frozenset[int]:
        held = torch.stack([t.flatten(1).abs().amax(1) > 0 for t in lora_a]).any(0)  # (L,)
        return frozenset(torch.nonzero(held).flatten().tolist())

    return _LIVE.get(lora_a, make)


def _packed(lora_a: list[torch.Tensor], lora_b: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The slices' A stacked along the rank (L, n·R, in) and their Bᵀ side by side (L, R, Σ out_i),
    contiguous, in ``dtype`` (the layout of ``engine/cpu_kernels.bgmv``'s slices); remade only when
    vLLM writes a slot. Only modules some batch's adapter targets are ever packed."""

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.cat([t.squeeze(1) for t in lora_a], dim=1).to(dtype).contiguous()
        bt = torch.cat([t.squeeze(1).transpose(1, 2) for t in lora_b], dim=2).to(dtype).contiguous()
        return a, bt

    return _PACKED.get([*lora_a, *lora_b], make, dtype)


def _apply(step: _Step, y, x, lora_a, lora_b, output_slices) -> None:
    """The kernel over ``step``'s rows, all slices in one call (shapes in :func:`lora_linear`)."""
    if not step.present or _live(lora_a).isdisjoint(step.present):
        return  # no row with an adapter, or none of theirs targets this module
    a, bt = _packed(lora_a, lora_b, y.dtype)
    bgmv()(y, x.to(y.dtype).contiguous(), a, bt, step.rows, step.slots, None, list(output_slices))


def lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    lora_b: list[torch.Tensor],
    output_slices: list[int],
    wrapper: int,
) -> None:
    """``y[:, slice_i] += (x @ A_i[slot]ᵀ) @ B_i[slot]ᵀ`` for every row with an adapter, in place.

    Args:
        y: (T, Σ output_slices) in the model's dtype: the base layer's output, updated in place.
        x: (T, in) in the model's dtype: the layer's input.
        lora_a: per output slice, vLLM's stacked A: (max_loras, 1, max_rank, in).
        lora_b: per output slice, vLLM's stacked B (scaling folded in): (max_loras, 1, out_i, max_rank).
        output_slices: out_i per slice (e.g. q, k, v widths).
        wrapper: ``id()`` of the :class:`PunicaWrapperGrouped` whose step this is.
    """
    _apply(_STEPS.get(wrapper, _NO_ROWS), y, x, lora_a, lora_b, output_slices)


def _lora_linear_fake(y, x, lora_a, lora_b, output_slices, wrapper) -> None:
    return None


def lora_embedding(y: torch.Tensor, x: torch.Tensor, lora_b: torch.Tensor, wrapper: int) -> None:
    """``y[t] += x[t] @ B[slot]ᵀ`` for rows whose adapter has an ``embed_tokens`` LoRA, in place.

    Args:
        y: (T, hidden): the base embeddings, updated in place.
        x: (T, R): each row's LoRA-A embedding row (vLLM looks it up).
        lora_b: (max_loras, 1, hidden, R).
        wrapper: ``id()`` of the :class:`PunicaWrapperGrouped` whose step this is.
    """
    step = _STEPS.get(wrapper, _NO_ROWS)
    if _live([lora_b]).isdisjoint(step.present):
        return
    b = lora_b[step.slots, 0].to(y.dtype)  # (n, hidden, R): rare (embedding adapters), so gathered
    y.index_add_(0, step.rows, torch.bmm(b, x[step.rows].to(y.dtype).unsqueeze(2)).squeeze(2))


def _lora_embedding_fake(y, x, lora_b, wrapper) -> None:
    return None


_LIB = Library("openlora", "FRAGMENT")  # noqa: TOR901 (kept alive for the ops' lifetime)
for _name, _op, _fake in (("lora_linear", lora_linear, _lora_linear_fake), ("lora_embedding", lora_embedding, _lora_embedding_fake)):
    direct_register_custom_op(_name, _op, mutates_args=["y"], fake_impl=_fake, target_lib=_LIB, dispatch_key="CPU")


class PunicaWrapperGrouped(PunicaWrapperCPU):
    """vLLM's CPU punica wrapper with :func:`lora_linear` for every LoRA linear layer, the same
    kernel for ``lm_head`` LoRA and :func:`lora_embedding` for ``embed_tokens`` LoRA — each skipped
    when no adapter in the batch has weights there (vLLM wraps the embedding and the logits whatever
    the adapters target, and its ops gather a vocabulary-wide B per row on every step)."""

    def update_metadata(self, mapping, lora_index_to_id, max_loras, vocab_size, **kwargs) -> None:
        """vLLM's metadata, then this step's rows per slot (once per step, not per layer)."""
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        _STEPS[id(self)] = _step_of(self.token_lora_indices.tolist())

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs) -> None:
        """``y += x @ A ⋅ B`` per row's adapter (shapes in :func:`lora_linear`); ``scale`` is 1.0 in
        every vLLM layer (the adapter's scaling is folded into B at load)."""
        if scale != 1.0:
            raise ValueError(f"lora_linear folds the scale into B; got scale {scale}")
        torch.ops.openlora.lora_linear(y, x, list(lora_a_stacked), list(lora_b_stacked), list(output_slices), id(self))

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs) -> None:
        """``logits[t] += (h[t] @ A[s]ᵀ) @ B[s]ᵀ`` for sampled rows whose adapter has an ``lm_head``
        LoRA (eager: logits are computed outside the compiled graph).

        Shapes: y (rows, vocab) logits, x (rows, hidden), A (L, 1, R, hidden), B (L, 1, vocab, R).
        """
        if scale != 1.0:
            raise ValueError(f"lora_linear folds the scale into B; got scale {scale}")
        step = _step_of(self.sampler_indices.tolist())
        _apply(step, y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1]), [lora_a_stacked], [lora_b_stacked], [y.shape[-1]])

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs) -> None:
        """``y += x @ Bᵀ`` per row's adapter (shapes in :func:`lora_embedding`; inside the compiled
        graph, so one opaque op)."""
        if not add_inputs:
            raise ValueError("lora_embedding adds to the base embeddings (add_inputs=True)")
        torch.ops.openlora.lora_embedding(y, x, lora_b_stacked, id(self))
