"""LoRA over pooled adapter slots: one base weight, many adapters, one forward pass.

    x [B, T, in] ─► base Linear (shared, frozen) ──────────────────────────────► + ─► y [B, T, out]
         │                                                                      ▲
         └─► float32: x·A[slot]ᵀ ─► ·B[slot]ᵀ ─► × scaling[slot] ───────────────┘ (in place, one rounding)

Every target ``nn.Linear`` of the decoder keeps its base weight once and, beside it, one
preallocated pool of rank rows shared by its slots, laid out by a :class:`SlotLayout` of rank
buckets (``--rank-buckets 8:24,64:6,256:2``: 24 slots of rank 8, 6 of rank 64, 2 of rank 256)::

    lora_A   [P, in]    float32   row 0: zeros (padding); then bucket by bucket, slot by slot, R_b rows each
    lora_Bt  [P, out]   float32   (Bᵀ, same rows)        slot s holds its adapter's A in rows off_s .. off_s+r-1
    scaling  [S]        float32   (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA)

A slot reserves its bucket's rank, not the node's largest: a rank-8 adapter costs 8 rows beside a
rank-256 one (S-LoRA, arXiv 2311.03285, pages adapters for the same reason; fixed buckets keep every
slot's rows contiguous, so the kernels read them as they read one stack). One bucket of ``max_loras``
slots of ``max_lora_rank`` is vLLM's layout and the default.

Slot 0 is "no adapter", never written. Each row of the batch carries a slot index, and the delta is
BGMV as in Punica (Chen et al., arXiv 2310.18547) and S-LoRA, by one of two paths that compute the
same thing::

    exact     (float32 bases, GPUs)   gather A, Bᵀ rows, scaling per row ─► bmm ─► bmm ─► × scale ─► add
    grouped   (half bases on CPU)     engine.cpu_kernels.bgmv over the adapter rows only, in place, per bucket

The exact path is PEFT's ``lora.Linear.forward`` operation for operation — ``base(x) + (x @ Aᵀ) @ Bᵀ *
scaling`` (dropout is off at inference), the delta in float32 as PEFT's default
``autocast_adapter_dtype=True`` does — and so bit-identical to PEFT in float32. On a CPU, at decode, its
gathers and small ``bmm``s cost several times the base projection; the grouped path reads each adapter
row's weights in place in one C++ pass, skips base rows, and keeps the float32 delta with one rounding
into the half-precision output, but sums in its own order: it is used only where the output is rounded
to bf16/fp16 anyway (its agreement with PEFT is pinned in ``tests/test_lora_numerics.py``). Zero padding
from ``r_s`` to the batch's rank adds exact zeros (the padding row, or rows a slot holds beyond its
adapter's rank), so mixed ranks share one product, and a batch computes only up to the largest rank
among its slots.

Writing a slot copies into the existing tensors (no reallocation), so a swap costs one
memcpy per target module and never disturbs the other slots.

What the stacks cannot hold is applied per row, by PEFT's own operations in PEFT's order, only to the
rows of the slots that need it (``BatchSlots.exact``: empty, and so free, when no such adapter is in the
batch)::

    DoRA        y + ((m/‖W + s·BA‖ − 1)·y + m/‖W + s·BA‖ · (x·Aᵀ·Bᵀ) · s)   (the norm per output row is
                                                                            computed once, at install)
    lora_bias   y + (x·Aᵀ·Bᵀ + b) · s
    lm_head     LoRA on the output head (its vocabulary-wide B would not fit a stack slot per adapter)
    embed_tokens  y + embed(ids, Aᵀ)·Bᵀ · s  (:class:`LoRAEmbedding`)
    modules_to_save  the adapter's own copy of the embedding / head replaces the base's for its rows
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.peft_format import ModuleLoRA
from .cpu_compute import PackedLinear
from .cpu_kernels import bgmv
from .slot_layout import SlotLayout


class BatchSlots:
    """Per-forward routing shared by every :class:`LoRALinear` of one model.

    The engine sets it before each forward; the layers only read it. Not thread-safe by
    design: one engine thread runs all forwards.

    Attributes:
        layout: the slots' rank buckets and pool rows.
        slot_ids: ``int64 [B]`` slot of every batch row (0 = base), or ``None`` when no row
            uses an adapter (the layers then cost nothing beyond the base).
        present: the distinct adapter slots in this batch, for the per-layer "anything here?" test.
        rank: the largest rank among those slots; the layers compute only up to it.
        version: changes whenever the rows' slots, the rank or any slot's weights change. Layers
            keep their gathered per-row weights while it stays the same, so a decode step whose
            batch did not change gathers nothing (in steady decoding that is most steps).
        slot_rank: largest rank held by each slot, kept by the slot manager.
        grouped: the layers take the grouped path (see the module docstring); set at load.
        slot_exact: whether each slot holds an adapter with modules on the exact per-row path
            (:class:`ExactLoRA`), kept by the slot manager.
        exact: for this forward, slot → ``int64 [n]`` batch rows of every present slot in ``slot_exact``;
            empty when there is none (the layers then do nothing more than for plain LoRA).
    """

    def __init__(self, layout: SlotLayout, device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.device = torch.device(device)
        self.grouped = False
        self.slot_ids: torch.Tensor | None = None
        self.present: frozenset[int] = frozenset()
        self.rank = 0
        self.version = 0
        self.slot_rank = [0] * (layout.n_adapters + 1)
        self._groups = layout.groups()
        self._capacity = torch.tensor(layout.capacity(), dtype=torch.long, device=self.device)
        self._offset = torch.tensor(layout.offset(), dtype=torch.long, device=self.device)
        self.slot_exact = [False] * (layout.n_adapters + 1)
        self.exact: dict[int, torch.Tensor] = {}
        self._key: tuple | None = None
        self._tokens: dict[int, list[tuple]] = {}
        self._index: torch.Tensor | None = None

    def set(self, slot_ids: list[int]) -> None:
        """Route the next forward: ``slot_ids[i]`` is the slot of batch row ``i`` (0 = base)."""
        present = frozenset(s for s in slot_ids if s)
        if not present:
            self.clear()
            return
        rank = max(self.slot_rank[s] for s in present)
        key = (tuple(slot_ids), rank)
        if key != self._key:
            self._key = key
            self.version += 1
            self.slot_ids = torch.tensor(slot_ids, dtype=torch.long, device=self.device)
            self.present = present
            self.rank = rank
            self._tokens = {}
            self._index = None
            self.exact = {
                s: torch.tensor([i for i, t in enumerate(slot_ids) if t == s], dtype=torch.long, device=self.device)
                for s in sorted(present)
                if self.slot_exact[s]
            }

    def token_groups(self, tokens: int) -> list[tuple]:
        """The adapter rows of an input ``[B, tokens, in]`` flattened to ``[B·tokens, in]``, per rank bucket.

        Returns:
            One ``(first slot, slots, bucket rank, first pool row, rank, rows, local slots)`` per bucket with a
            slot in this batch: ``rows`` int64 ``[n]`` the flat indices of every token of every row in a slot of the
            bucket (base rows left out), ``local slots`` int64 ``[n]`` each one's slot counted from the
            bucket's first, ``rank`` the largest among the batch's slots of the bucket. Kept until the
            routing changes.
        """
        hit = self._tokens.get(tokens)
        if hit is None:
            hit = self._tokens[tokens] = []
            for first, n, cap, row in self._groups:
                mine = [s for s in self.present if first <= s < first + n]
                if not mine:
                    continue
                batch_rows = torch.nonzero((self.slot_ids >= first) & (self.slot_ids < first + n)).flatten()
                rows = (batch_rows[:, None] * tokens + torch.arange(tokens, device=self.device)).flatten()
                local = (self.slot_ids[batch_rows] - first).repeat_interleave(tokens)
                hit.append((first, n, cap, row, max(self.slot_rank[s] for s in mine), rows, local))
        return hit

    def row_index(self) -> torch.Tensor:
        """``int64 [B, rank]``: the pool row of every batch row's rank row ``0..rank-1``; rows its slot does not
        hold (beyond its bucket's rank, or a base row) point at the padding row, which is zeros."""
        if self._index is None:
            ids, j = self.slot_ids, torch.arange(self.rank, device=self.device)
            cap, off = self._capacity[ids, None], self._offset[ids, None]
            self._index = torch.where(j < cap, off + j, 0)
        return self._index

    def clear(self) -> None:
        """Route the next forward through the base only."""
        self.slot_ids = None
        self.present = frozenset()
        self.rank = 0
        self._key = None
        self._tokens = {}
        self._index = None
        self.exact = {}

    def weights_changed(self) -> None:
        """A slot was written: every layer must gather again."""
        self.version += 1
        self._key = None


@dataclass(frozen=True)
class ExactLoRA:
    """One slot's module on the exact per-row path (the module docstring), float32 as PEFT's default
    ``autocast_adapter_dtype=True`` holds adapters.

    Attributes:
        a: ``[r, in]`` LoRA A (an embedding's: ``[r, vocab]``).
        b: ``[out, r]`` LoRA B.
        scaling: PEFT's scaling (a Python float, as PEFT multiplies by it).
        bias: ``[out]`` ``lora_B.bias``, or ``None``.
        dora: ``[out]`` DoRA's ``m / ‖W + s·B·A‖`` per output row, or ``None``.
        weight: a ``modules_to_save`` copy in the base's dtype (``[vocab, hidden]``) replacing the base's;
            ``a``/``b`` are then unused.
    """

    a: torch.Tensor | None
    b: torch.Tensor | None
    scaling: float = 0.0
    bias: torch.Tensor | None = None
    dora: torch.Tensor | None = None
    weight: torch.Tensor | None = None


def _same_weight(saved: torch.Tensor, held: torch.Tensor) -> bool:
    """Whether ``saved`` is the weight the node holds as ``held``, at the precision the node holds it: PEFT loads a
    saved ``base_layer.weight`` over the base's, rounding it to the base's dtype, so equal there it changes nothing
    (a half-precision base computing in float32, ``engine.cpu_compute``, holds half values upcast)."""
    return any(torch.equal(saved.to(d).to(held.dtype), held) for d in {held.dtype, torch.bfloat16, torch.float16})


def _exact_module(m: ModuleLoRA | None, saved: torch.Tensor | None, base_w: torch.Tensor, embedding: bool) -> ExactLoRA:
    """Build a slot's :class:`ExactLoRA` from the parsed adapter's module ``m`` or its ``modules_to_save``
    copy ``saved``; ``base_w`` is the base's weight (``[out, in]``; an embedding's ``[vocab, hidden]``).

    DoRA's norm is PEFT's ``DoraLinearLayer.get_weight_norm`` (``DoraEmbeddingLayer`` for an embedding),
    operation for operation, so the float32 factor is the one PEFT recomputes every forward.

    Raises:
        ValueError: a ``base_layer.weight`` saved beside the LoRA weights that is not this base's (PEFT would
            load it over the base: another model), or a copy whose shape is not the base's.
    """
    f32 = dict(dtype=torch.float32, device=base_w.device)
    if saved is not None:
        if saved.shape != base_w.shape:
            raise ValueError(f"modules_to_save weight {tuple(saved.shape)} does not fit the base's {tuple(base_w.shape)}")
        return ExactLoRA(None, None, weight=saved.to(dtype=base_w.dtype, device=base_w.device))
    if m.base_weight is not None and not _same_weight(m.base_weight.to(base_w.device), base_w):
        raise ValueError("the adapter's base_layer.weight differs from this base's weights: it was saved from another model")
    a, b = m.a.to(**f32), m.b.to(**f32)
    bias = None if m.bias is None else m.bias.to(**f32)
    dora = None
    if m.magnitude is not None:
        if embedding:  # DoraEmbeddingLayer: lora_weight = (Aᵀ·Bᵀ)ᵀ, the base weight transposed (fan_in_fan_out)
            lora_w = (a.T @ b.T).T
            norm = torch.linalg.norm(base_w.float().T + m.scaling * lora_w, dim=1)
        else:  # DoraLinearLayer: lora_weight = B(A(I))ᵀ, bias included as PEFT computes it
            eye = torch.eye(a.shape[1], **f32)
            lora_w = F.linear(F.linear(eye, a), b, bias).T
            norm = torch.linalg.norm(base_w.float() + m.scaling * lora_w, dim=1)
        dora = m.magnitude.to(**f32) / norm.to(torch.float32)
    return ExactLoRA(a, b, m.scaling, bias, dora)


class LoRALinear(nn.Module):
    """A frozen base ``nn.Linear`` plus LoRA slots (laid out by ``routing.layout``) applied per batch row.

    Args:
        base: the base layer (weight ``[out, in]``, optional bias); kept, not copied.
        routing: the model-wide :class:`BatchSlots`, whose layout sizes this layer's pools.
        stacked: ``False`` for a layer whose adapters all take the exact path (the output head: its
            vocabulary-wide Bᵀ rows would cost far more than the adapters that use it): no pools.

    Input ``x``: ``[B, T, in]`` in the base's dtype; output ``[B, T, out]``.
    """

    def __init__(self, base: nn.Linear, routing: BatchSlots, stacked: bool = True) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        w = base.weight
        out_f, in_f = w.shape
        self.in_features, self.out_features = in_f, out_f
        layout = routing.layout
        rows = layout.rows if stacked else 1  # the padding row only
        # float32 whatever the base dtype: this is PEFT's default (autocast_adapter_dtype=True
        # upcasts adapters and computes the delta in float32), and on CPU small float32 bmm is
        # ~10x faster than bfloat16 bmm. B is stored transposed (a rank row is one row of
        # lora_Bt) so the second product reads it contiguously.
        f32 = dict(dtype=torch.float32, device=w.device)
        self.register_buffer("lora_A", torch.zeros(rows, in_f, **f32))
        self.register_buffer("lora_Bt", torch.zeros(rows, out_f, **f32))
        self.register_buffer("scaling", torch.zeros(layout.n_adapters + 1, **f32))
        self._capacity = layout.capacity() if stacked else [0] * (layout.n_adapters + 1)
        self._offset = layout.offset() if stacked else [0] * (layout.n_adapters + 1)
        # slot → rows holding non-zero weights for this module; an adapter that does not
        # target this module leaves its slot absent here and the layer skips the LoRA path
        self._slot_rank: dict[int, int] = {}
        # per-row gathered weights for routing.version (see BatchSlots.version)
        self._gathered: tuple | None = None
        # slot → this module of an adapter the stacks cannot hold (the module docstring's exact path)
        self._exact: dict[int, ExactLoRA] = {}

    @property
    def r_max(self) -> int:
        """Largest rank a slot of this layer holds (0: no pools)."""
        return max(self._capacity)

    def write_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None, scaling: float) -> None:
        """Copy one adapter's weights for this module into ``slot`` (or clear it).

        Args:
            slot: 1..S-1.
            a: ``[r, in]`` LoRA A, ``r`` at most the slot's rank; ``None`` clears the slot.
            b: ``[out, r]`` LoRA B.
            scaling: ``lora_alpha / r`` (or ``/ sqrt(r)`` for rsLoRA).

        Raises:
            ValueError: slot 0, a shape that does not fit, or rank above the slot's.
        """
        if slot <= 0 or slot >= len(self._capacity):
            raise ValueError(f"slot {slot} out of range 1..{len(self._capacity) - 1}")
        r, cap, off = 0 if a is None else a.shape[0], self._capacity[slot], self._offset[slot]
        if a is not None:
            if r > cap:
                raise ValueError(f"rank {r} exceeds slot {slot}'s rank {cap} (node's largest: {self.r_max})")
            if a.shape != (r, self.in_features) or b is None or b.shape != (self.out_features, r):
                raise ValueError(
                    f"LoRA shapes A{tuple(a.shape)} B{tuple(b.shape) if b is not None else None} do not fit "
                    f"[r, {self.in_features}] / [{self.out_features}, r]"
                )
        self.routing.weights_changed()
        # only rows the previous tenant used beyond the new rank need zeroing; a module that
        # neither tenant touches costs nothing (this keeps a swap to a few ms)
        held = self._slot_rank.get(slot, 0)
        if held > r:
            self.lora_A[off + r : off + held].zero_()
            self.lora_Bt[off + r : off + held].zero_()
        if a is None:
            if held:
                self.scaling[slot] = 0.0
            self._slot_rank.pop(slot, None)
            return
        self.lora_A[off : off + r].copy_(a)
        self.lora_Bt[off : off + r].copy_(b.t())
        self.scaling[slot] = scaling
        self._slot_rank[slot] = r

    def write_adapter(self, slot: int, m: ModuleLoRA | None, saved: torch.Tensor | None = None) -> None:
        """Put one adapter's module ``m`` (or its ``modules_to_save`` copy ``saved``) in ``slot``: in the stacks
        when it is plain LoRA that fits them, else on the exact path; ``None`` for both clears the slot.

        Raises:
            ValueError: as :meth:`write_slot`, or :func:`_exact_module`.
        """
        exact = saved is not None or (m is not None and (m.exact_only or self.r_max == 0))
        if exact:
            # built before anything is cleared: a refused adapter leaves the slot as it was
            built = _exact_module(m, saved, self._base_weight(), False)
        plain = None if exact else m
        self.write_slot(slot, plain.a if plain else None, plain.b if plain else None, plain.scaling if plain else 0.0)
        if exact:
            self._exact[slot] = built
        else:
            self._exact.pop(slot, None)

    def _base_weight(self) -> torch.Tensor:
        """The base weight ``[out, in]`` (a prepacked layer's read back: ``cpu_compute.PackedLinear.dense_weight``)."""
        return self.base.dense_weight() if isinstance(self.base, PackedLinear) else self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        route = self.routing
        if route.slot_ids is None:
            return y
        if route.exact and not self._exact.keys().isdisjoint(route.exact):
            y = self._exact_rows(x, y)
        if self._slot_rank.keys().isdisjoint(route.present):  # no adapter of this batch touches this module
            return y
        if route.grouped:
            y2, x2 = y.view(-1, self.out_features), x.reshape(-1, self.in_features)
            for first, n, cap, row, r, rows, local in route.token_groups(x.shape[-2]):
                a = self.lora_A[row : row + n * cap].view(n, cap, self.in_features)[:, :r]
                bt = self.lora_Bt[row : row + n * cap].view(n, cap, self.out_features)[:, :r]
                bgmv()(y2, x2, a, bt, rows, local, self.scaling[first : first + n])
            return y
        g = self._gathered
        if g is None or g[0] != route.version:
            g = self._gathered = self._gather()
        _, at, bt, scale = g
        # The unfused chain, as PEFT computes it. Fusing q/k/v into one x·Aᵀ bmm was measured
        # ~1.5% faster per decode step but changes the float32 summation order; bit-equality
        # with PEFT is worth more.
        delta = torch.bmm(torch.bmm(x.float(), at), bt).mul_(scale)  # [B, T, out] float32
        # in place: computed in float32, rounded once to the base dtype, as PEFT's
        # ``result + lora_B(lora_A(x)) * scaling`` followed by ``.to(result.dtype)``
        return y.add_(delta)

    def _exact_rows(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The exact path for the rows whose slot holds this module there: PEFT's ``lora.Linear`` (DoRA:
        ``DoraLinearVariant``) forward for those rows, written over ``y``'s (the stacks hold zeros for them)."""
        bias = getattr(self.base, "bias", None)
        for slot, rows in self.routing.exact.items():
            e = self._exact.get(slot)
            if e is None:
                continue
            xs = x.index_select(0, rows)
            if e.weight is not None:  # ModulesToSaveWrapper: the adapter's copy of the layer
                y.index_copy_(0, rows, F.linear(xs.to(e.weight.dtype), e.weight, bias).to(y.dtype))
                continue
            ys = y.index_select(0, rows)
            lora = F.linear(F.linear(xs.to(torch.float32), e.a), e.b, e.bias)
            if e.dora is None:
                out = ys + lora * e.scaling
            else:  # DoraLinearLayer.forward with base_result = y (minus the base's bias)
                base = ys if bias is None else ys - bias
                out = ys + ((e.dora - 1) * base + e.dora * lora * e.scaling)
            y.index_copy_(0, rows, out.to(y.dtype))
        return y

    def _gather(self) -> tuple:
        route = self.routing
        index = route.row_index()  # [B, r]; base rows and rows past a slot's rank read the zero padding row
        b, r = index.shape
        flat = index.flatten()
        return (
            route.version,
            self.lora_A.index_select(0, flat).view(b, r, self.in_features).transpose(1, 2),  # [B, in, r]
            self.lora_Bt.index_select(0, flat).view(b, r, self.out_features),  # [B, r, out]
            self.scaling.index_select(0, route.slot_ids).view(-1, 1, 1),  # [B, 1, 1]
        )


class LoRAEmbedding(nn.Module):
    """The input embedding with per-slot LoRA (PEFT's ``lora.Embedding``) or a ``modules_to_save`` copy, always
    on the exact per-row path (a ``[vocab, r]`` A per slot is too big to stack).

    Args:
        base: the base ``nn.Embedding`` (weight ``[vocab, hidden]``); kept, not copied (a tied output head
            still shares its weight).
        routing: the model-wide :class:`BatchSlots`.

    Input ``ids``: int64 ``[B, T]``; output ``[B, T, hidden]`` in the base's dtype.
    """

    def __init__(self, base: nn.Embedding, routing: BatchSlots) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        self.in_features, self.out_features = base.weight.shape  # the vocabulary is this module's "in"
        self.r_max = 0
        self._exact: dict[int, ExactLoRA] = {}

    @property
    def weight(self) -> torch.Tensor:
        """The base embedding weight (what ``get_input_embeddings().weight`` readers expect)."""
        return self.base.weight

    def write_adapter(self, slot: int, m: ModuleLoRA | None, saved: torch.Tensor | None = None) -> None:
        """Put one adapter's embedding LoRA ``m`` or its ``modules_to_save`` copy ``saved`` in ``slot``
        (``None`` for both clears it).

        Raises:
            ValueError: as :func:`_exact_module`.
        """
        self.routing.weights_changed()
        if m is None and saved is None:
            self._exact.pop(slot, None)
            return
        self._exact[slot] = _exact_module(m, saved, self.base.weight, True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = self.base(ids)
        route = self.routing
        if not route.exact or self._exact.keys().isdisjoint(route.exact):
            return y
        kw = dict(padding_idx=self.base.padding_idx, max_norm=self.base.max_norm, norm_type=self.base.norm_type)
        for slot, rows in route.exact.items():
            e = self._exact.get(slot)
            if e is None:
                continue
            ids_s = ids.index_select(0, rows)
            if e.weight is not None:  # ModulesToSaveWrapper: the adapter's copy of the embedding
                y.index_copy_(0, rows, F.embedding(ids_s, e.weight, **kw))
                continue
            ys = y.index_select(0, rows)
            lora = F.embedding(ids_s, e.a.T, **kw) @ e.b.T  # lora.Embedding: embed(x, Aᵀ) @ Bᵀ
            if e.dora is None:
                out = ys + lora * e.scaling
            else:  # DoraEmbeddingVariant: m/‖·‖ · y + m/‖·‖ · lora · s
                out = e.dora * ys + e.dora * lora * e.scaling
            y.index_copy_(0, rows, out.to(y.dtype))
        return y


def inject_lora(model: nn.Module, layout: SlotLayout) -> tuple[BatchSlots, dict[str, LoRALinear | LoRAEmbedding]]:
    """Wrap every ``nn.Linear`` inside the decoder layers with a :class:`LoRALinear` whose slots ``layout`` sizes, the output head with a
    :class:`LoRALinear` without stacks (its adapters take the exact path) and the input embedding with a
    :class:`LoRAEmbedding`.

    Module names are the base model's own (``model.layers.0.self_attn.q_proj``, ``model.embed_tokens``,
    ``lm_head``), the names PEFT uses in ``adapter_model.safetensors`` after its ``base_model.model.`` prefix.

    Returns:
        The shared routing object and ``{module name: layer}``, the decoder's linears first.
    """
    routing = BatchSlots(layout, next(model.parameters()).device)
    layers: dict[str, LoRALinear | LoRAEmbedding] = {}
    for name, mod in adaptable_linears(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapped = LoRALinear(mod, routing)
        setattr(parent, child, wrapped)
        layers[name] = wrapped
    for name, mod, wrap in _embedding_and_head(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = LoRAEmbedding(mod, routing) if wrap == "embedding" else LoRALinear(mod, routing, stacked=False)
        setattr(parent, child, wrapped)
        layers[name] = wrapped
    return routing, layers


def _embedding_and_head(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, "embedding" | "head")`` of the input embedding and the output head, where the model
    has them as a plain ``nn.Embedding`` / ``nn.Linear``."""
    found = []
    for name, mod in model.named_modules():
        if mod is model.get_input_embeddings() and type(mod) is nn.Embedding:
            found.append((name, mod, "embedding"))
        elif mod is model.get_output_embeddings() and isinstance(mod, nn.Linear):
            found.append((name, mod, "head"))
    return found


def adaptable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` inside the decoder layers (not the output head), by module name."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}" and not name.endswith("lm_head")
    ]


def adaptable_shapes(path) -> dict[str, tuple[int, int]]:
    """Adaptable module name → ``(in_features, out_features)`` of the HF model folder ``path``,
    read from its config alone (the model is built on the meta device: no weights, no memory); the input
    embedding is ``(vocab, hidden)`` and the output head ``(hidden, vocab)``, as :func:`inject_lora` names them.
    What the verifier checks adapters against when the weights live in another engine (vLLM)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
    shapes = {name: (mod.in_features, mod.out_features) for name, mod in adaptable_linears(model)}
    for name, mod, _ in _embedding_and_head(model):
        shapes[name] = tuple(mod.weight.shape) if isinstance(mod, nn.Embedding) else (mod.in_features, mod.out_features)
    return shapes
