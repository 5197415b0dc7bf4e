"""LoRA over stacked adapter slots: one base weight, many adapters, one forward pass.

    x [b, T, in] ─► base Linear (shared, frozen) ─────────────────────────────────► + ─► y [b, T, out]
         │                                                                         ▲
         └─► rows with slot > 0 ─► x·A[slot]ᵀ ─► ·B[slot]ᵀ ─► × scaling[slot] ─────┘ (index_add by row)

Every target ``nn.Linear`` of the decoder keeps its base weight once and, beside it,
preallocated stacks for ``S`` slots::

    lora_A   [S, r_max, in]    (slot s, rows 0..r_s-1 hold the adapter's A; the rest stay 0)
    lora_B   [S, out, r_max]   (columns 0..r_s-1 hold B)
    scaling  [S] float32       (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA)

Slot 0 is "no adapter" and is never written: a row in slot 0 takes the base path only. Each row
of the batch carries a slot index; the delta is a gathered batched matmul over the rows that
use an adapter — BGMV as in Punica (Chen et al., arXiv 2310.18547) and S-LoRA (arXiv
2311.03285), here with ``index_select`` + ``torch.bmm``. Zero padding from ``r_s`` to ``r_max``
adds exact zeros, so mixed ranks share one stack, and a batch computes only up to the
largest rank among its slots. The arithmetic follows PEFT's
``lora.Linear.forward``: ``base(x) + (x @ Aᵀ) @ Bᵀ * scaling`` (dropout is off at inference).

Writing a slot copies into the existing tensors (no reallocation), so a swap costs one
memcpy per target module and never disturbs the other slots.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchSlots:
    """Per-forward routing shared by every :class:`LoRALinear` of one model.

    The engine sets it before each forward; the layers only read it. Not thread-safe by
    design: one engine thread runs all forwards.

    Attributes:
        rows: ``int64 [n]`` indices of batch rows that use an adapter (``None``: no row does).
        slots: ``int64 [n]`` the slot of each of those rows.
        all_rows: every row of the batch uses an adapter (skip the scatter).
        present: the distinct slots in this batch, for the per-layer "anything here?" test.
    """

    def __init__(self, n_slots: int) -> None:
        self.rows: torch.Tensor | None = None
        self.slots: torch.Tensor | None = None
        self.all_rows = False
        self.present: frozenset[int] = frozenset()
        self.rank = 0
        # largest rank held by each slot, kept by the slot manager; the batch computes only
        # up to the largest rank present, not r_max (zero columns beyond it add nothing)
        self.slot_rank = [0] * n_slots

    def set(self, slot_ids: list[int]) -> None:
        """Route the next forward: ``slot_ids[i]`` is the slot of batch row ``i`` (0 = base)."""
        idx = [i for i, s in enumerate(slot_ids) if s]
        if not idx:
            self.clear()
            return
        self.rows = torch.tensor(idx, dtype=torch.long)
        self.slots = torch.tensor([slot_ids[i] for i in idx], dtype=torch.long)
        self.all_rows = len(idx) == len(slot_ids)
        self.present = frozenset(slot_ids[i] for i in idx)
        self.rank = max(self.slot_rank[s] for s in self.present)

    def clear(self) -> None:
        """Route the next forward through the base only."""
        self.rows = self.slots = None
        self.all_rows = False
        self.present = frozenset()
        self.rank = 0


class LoRALinear(nn.Module):
    """A frozen base ``nn.Linear`` plus ``n_slots`` LoRA slots applied per batch row.

    Args:
        base: the base layer (weight ``[out, in]``, optional bias); kept, not copied.
        n_slots: slots including slot 0 (no adapter); ``n_slots - 1`` adapters fit at once.
        r_max: the largest rank a slot can hold.
        routing: the model-wide :class:`BatchSlots`.

    Input ``x``: ``[b, T, in]`` in the base's dtype; output ``[b, T, out]``.
    """

    def __init__(self, base: nn.Linear, n_slots: int, r_max: int, routing: BatchSlots) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        w = base.weight
        out_f, in_f = w.shape
        self.in_features, self.out_features = in_f, out_f
        self.register_buffer("lora_A", torch.zeros(n_slots, r_max, in_f, dtype=w.dtype, device=w.device))
        self.register_buffer("lora_B", torch.zeros(n_slots, out_f, r_max, dtype=w.dtype, device=w.device))
        # float32 even for a bf16 base: PEFT multiplies by a Python float, and alpha/sqrt(r)
        # rounded to bf16 would shift every delta (measured: logits off by up to 11)
        self.register_buffer("scaling", torch.zeros(n_slots, dtype=torch.float32, device=w.device))
        # slots holding non-zero weights for this module; an adapter that does not target
        # this module leaves its slot empty here and the layer skips the LoRA path
        self.occupied: set[int] = set()

    @property
    def r_max(self) -> int:
        """Largest rank a slot holds (the stacks' rank dimension)."""
        return self.lora_A.shape[1]

    def write_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None, scaling: float) -> None:
        """Copy one adapter's weights for this module into ``slot`` (or clear it).

        Args:
            slot: 1..S-1.
            a: ``[r, in]`` LoRA A, ``r <= r_max``; ``None`` clears the slot.
            b: ``[out, r]`` LoRA B.
            scaling: ``lora_alpha / r`` (or ``/ sqrt(r)`` for rsLoRA).

        Raises:
            ValueError: slot 0, a shape that does not fit, or rank above ``r_max``.
        """
        if slot <= 0 or slot >= self.lora_A.shape[0]:
            raise ValueError(f"slot {slot} out of range 1..{self.lora_A.shape[0] - 1}")
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.scaling[slot] = 0.0
        self.occupied.discard(slot)
        if a is None:
            return
        r = a.shape[0]
        if r > self.r_max:
            raise ValueError(f"rank {r} exceeds this node's max LoRA rank {self.r_max}")
        if a.shape != (r, self.in_features) or b is None or b.shape != (self.out_features, r):
            raise ValueError(
                f"LoRA shapes A{tuple(a.shape)} B{tuple(b.shape) if b is not None else None} do not fit "
                f"[r, {self.in_features}] / [{self.out_features}, r]"
            )
        self.lora_A[slot, :r].copy_(a)
        self.lora_B[slot, :, :r].copy_(b)
        self.scaling[slot] = scaling
        self.occupied.add(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        route = self.routing
        if route.rows is None or self.occupied.isdisjoint(route.present):
            return y
        slots, r = route.slots, route.rank
        xs = x if route.all_rows else x.index_select(0, route.rows)
        a = self.lora_A[:, :r].index_select(0, slots)  # [n, r, in]
        b = self.lora_B[:, :, :r].index_select(0, slots)  # [n, out, r]
        delta = torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2))
        delta = (delta * self.scaling.index_select(0, slots).view(-1, 1, 1)).to(y.dtype)
        if route.all_rows:
            return y + delta
        return y.index_add(0, route.rows, delta)


def inject_lora(model: nn.Module, n_slots: int, r_max: int) -> tuple[BatchSlots, dict[str, LoRALinear]]:
    """Wrap every ``nn.Linear`` inside the decoder layers with a :class:`LoRALinear`.

    The output head and embeddings are left alone (adapters that target them are refused at
    load). Module names are the base model's own (``model.layers.0.self_attn.q_proj``), the
    names PEFT uses in ``adapter_model.safetensors`` after its ``base_model.model.`` prefix.

    Returns:
        The shared routing object and ``{module name: LoRALinear}``.
    """
    routing = BatchSlots(n_slots)
    layers: dict[str, LoRALinear] = {}
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and ".layers." in f".{name}" and not name.endswith("lm_head")
    ]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapped = LoRALinear(mod, n_slots, r_max, routing)
        setattr(parent, child, wrapped)
        layers[name] = wrapped
    return routing, layers
