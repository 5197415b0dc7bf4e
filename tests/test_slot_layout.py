"""Device slots by rank (``--rank-buckets``): the layout, the pool each layer allocates, and which slot
an adapter of a given rank takes (``engine.slot_layout``, ``engine.lora``, ``engine.slots``).

The numerics of a bucketed model against the one-bucket layout are pinned in
``tests/test_lora_numerics.py``; here the bookkeeping runs on small ``nn.Linear`` layers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from openlora.adapters.peft_format import LoraAdapter, ModuleLoRA
from openlora.config import NodeSettings
from openlora.engine.interface import NoFreeSlot
from openlora.engine.lora import BatchSlots, LoRALinear
from openlora.engine.slot_layout import SlotLayout
from openlora.engine.slots import SlotManager

IN, OUT = 12, 10


def _manager(text: str) -> tuple[SlotManager, dict[str, LoRALinear]]:
    layout = SlotLayout.parse(text)
    routing = BatchSlots(layout)
    layers = {f"m{i}": LoRALinear(nn.Linear(IN, OUT, bias=False), routing) for i in range(2)}
    return SlotManager(layers, routing, layout.n_adapters), layers


def _adapter(rank: int, seed: int = 0) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    mod = ModuleLoRA(torch.randn(rank, IN, generator=g), torch.randn(OUT, rank, generator=g), 2.0)
    return LoraAdapter({}, {"m0": mod, "m1": mod})


@pytest.mark.parametrize(
    "text, ranks, rows",
    [
        ("64:8", [64] * 8, 1 + 8 * 64),
        ("256:2, 8:24,64:6", [8] * 24 + [64] * 6 + [256] * 2, 1 + 24 * 8 + 6 * 64 + 2 * 256),
        ("1:1", [1], 2),
    ],
)
def test_layout_gives_each_slot_its_bucket_rank_and_the_pool_only_their_rows(text, ranks, rows):
    layout = SlotLayout.parse(text)
    assert layout.capacity() == [0] + ranks
    assert layout.rows == rows and layout.n_adapters == len(ranks) and layout.r_max == max(ranks)
    offsets = layout.offset()
    # contiguous, non-overlapping rows after the padding row 0, in slot order
    assert offsets[1] == 1
    assert all(offsets[s + 1] == offsets[s] + ranks[s - 1] for s in range(1, len(ranks)))
    layer = LoRALinear(nn.Linear(IN, OUT, bias=False), BatchSlots(layout))
    assert layer.lora_A.shape == (rows, IN) and layer.lora_Bt.shape == (rows, OUT)


@pytest.mark.parametrize("text", ["8", "8:0", "0:4", "8:2,8:3", "8:2;64:1", ""])
def test_a_malformed_bucket_list_is_refused_naming_the_form(text):
    with pytest.raises(ValueError, match="RANK:SLOTS|rank ≥ 1|twice"):
        SlotLayout.parse(text)


def test_settings_derive_slots_and_rank_from_buckets_and_refuse_a_contradiction():
    s = NodeSettings(rank_buckets="8:24,64:6,256:2")
    assert (s.max_loras, s.max_lora_rank) == (32, 256)
    assert s.slot_layout() == SlotLayout(((8, 24), (64, 6), (256, 2)))
    assert NodeSettings().slot_layout() == SlotLayout.uniform(8, 64)
    with pytest.raises(ValueError, match="max_lora_rank 256; drop max_lora_rank 64"):
        NodeSettings(rank_buckets="8:24,256:2", max_lora_rank=64)
    with pytest.raises(ValueError, match="torch-engine setting"):
        NodeSettings(rank_buckets="8:24,256:2", engine="vllm")


def test_an_adapter_takes_the_smallest_free_slot_that_holds_its_rank_then_a_larger_one():
    slots, _ = _manager("8:2,64:1")
    assert slots.install("a", _adapter(4)) == 1
    assert slots.install("b", _adapter(8)) == 2
    assert slots.install("c", _adapter(8)) == 3  # both rank-8 slots held: the free rank-64 slot
    with pytest.raises(NoFreeSlot, match="all 3 adapter slots are in use"):
        slots.install("d", _adapter(2))
    with pytest.raises(ValueError, match="rank 65 is above every slot's"):
        slots.install("e", _adapter(65))


def test_eviction_frees_the_smallest_bucket_first_and_never_puts_a_big_adapter_in_a_small_slot():
    slots, _ = _manager("8:2,64:1")
    for cid in ("a", "b", "c"):
        slots.release(slots.install(cid, _adapter(8)))
    # all idle: a rank-8 adapter evicts the least recently used rank-8 slot, keeping the big slot
    assert slots.install("d", _adapter(8)) == 1 and slots.resident() == ["d", "b", "c"]
    slots.release(1)
    # a rank-32 adapter only fits the rank-64 slot, whoever is least recently used elsewhere
    big = slots.install("big", _adapter(32))
    assert big == 3 and "c" not in slots.resident()
    # with the big slot held, a second big adapter waits although two small slots are idle
    with pytest.raises(NoFreeSlot, match="all 1 adapter slots of rank ≥ 40 are in use"):
        slots.install("big2", _adapter(40))


def test_a_slot_rewritten_with_a_smaller_rank_keeps_no_rows_of_its_previous_tenant():
    slots, layers = _manager("8:1,64:1")
    slots.release(slots.install("big", _adapter(48, seed=1)))
    assert slots.evict("big")
    slots.release(slots.install("small", _adapter(4, seed=2)))  # lands in slot 1, the rank-8 slot
    slots.release(slots.install("mid", _adapter(16, seed=3)))  # slot 2, which held rank 48
    layer, off = layers["m0"], SlotLayout.parse("8:1,64:1").offset()[2]
    assert layer.lora_A[off + 16 : off + 64].abs().sum() == 0 and layer.lora_Bt[off + 16 : off + 64].abs().sum() == 0
    assert layer.lora_A[0].abs().sum() == 0  # the padding row stays zeros


@pytest.mark.parametrize("grouped", [False, True], ids=["exact", "grouped"])
def test_rows_of_different_buckets_in_one_batch_each_get_their_own_delta(grouped):
    """Every row's output equals base(x) + (x·Aᵀ)·Bᵀ·scaling of its own adapter, whatever bucket holds it."""
    from openlora.engine.cpu_kernels import available

    if grouped and not available():
        pytest.fail("the CPU kernels do not build here; the grouped path cannot be checked")
    slots, layers = _manager("4:2,16:1")
    adapters = {"small": _adapter(3, seed=4), "mid": _adapter(4, seed=5), "big": _adapter(16, seed=6)}
    slot_of = {cid: slots.install(cid, a) for cid, a in adapters.items()}
    layer = layers["m0"]
    dtype = torch.bfloat16 if grouped else torch.float32
    layer.base.to(dtype)
    layer.routing.grouped = grouped
    order = ["big", None, "small", "mid", "small"]
    x = torch.randn(len(order), 3, IN, generator=torch.Generator().manual_seed(9)).to(dtype)
    layer.routing.set([slot_of[c] if c else 0 for c in order])
    with torch.inference_mode():
        got = layer(x).float()
        for i, cid in enumerate(order):
            want = layer.base(x[i : i + 1]).float()
            if cid:
                m = adapters[cid].modules["m0"]
                want = (want + (x[i : i + 1].float() @ m.a.t()) @ m.b.t() * m.scaling).to(dtype).float()
            # float32: only the summation order of the padded products differs; bf16: one rounding apart
            tol = (1e-5 if not grouped else 2**-6) * want.abs().max().item()
            assert (got[i : i + 1] - want).abs().max().item() <= tol, (cid, i)
