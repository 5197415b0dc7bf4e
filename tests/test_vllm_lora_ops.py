"""Our multi-LoRA op for vLLM's CPU platform, pinned against vLLM's own CPU LoRA ops.

``engine/vllm_punica.py`` replaces the math of vLLM's ``PunicaWrapperCPU.add_lora_linear`` (its
torch ops) with one pass of ``engine/cpu_kernels.bgmv``; everything else is vLLM's. Reference: the
stock wrapper on the same stacked weights and the same ``LoRAMapping`` (float32: equal within
float32 summation-order error; bfloat16: within one bf16 rounding of the output's magnitude, since
we skip one of vLLM's intermediate roundings) on every row with an adapter. Rows without one
must come back bit for bit: there vLLM 0.32's CPU ops are wrong (a base row's slot index −1 wraps
to the LAST slot, so in a batch that mixes base rows and adapters a base row gets the adapter in
slot ``max_loras − 1`` whenever that slot is occupied; pinned below). The kernel alone is pinned against an einsum of
the same roundings. The greedy text of the whole engine against PEFT is ``test_vllm_numerics.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from openlora.engine import vllm_punica
from openlora.engine.cpu_kernels import bgmv
from openlora.engine.vllm_engine import LORA_OPS_ENV, VllmOptions, _environment
from openlora.engine.vllm_punica import PunicaWrapperGrouped

SLOTS, RANK, IN = 6, 8, 96
QKV = (96, 32, 32)  # q, k, v widths of a small GQA layer


def _stacked(slices, dtype, g, empty=(), only_last=()):
    """vLLM's stacked A (L, 1, R, in) / B (L, 1, out_i, R) per slice; slots in ``empty`` hold no
    weights (an adapter without this module); slots in ``only_last`` only the last slice's."""
    a, b = [], []
    for i, width in enumerate(slices):
        ai = torch.randn(SLOTS, 1, RANK, IN, generator=g) * 0.2
        bi = torch.randn(SLOTS, 1, width, RANK, generator=g) * 0.2
        for s in empty:
            ai[s], bi[s] = 0, 0
        if i < len(slices) - 1:
            for s in only_last:
                ai[s], bi[s] = 0, 0
        a.append(ai.to(dtype))
        b.append(bi.to(dtype))
    return a, b


def _apply(wrapper_cls, tokens: list[int], x, y, a, b, slices):
    """One step through a punica wrapper: tokens are LoRA ids per row (0: base row; id i in slot i−1)."""
    w = wrapper_cls(max_num_batched_tokens=len(tokens), max_batches=len(tokens), device="cpu")
    w.update_metadata(LoRAMapping(tokens, tokens, is_prefill=True), list(range(1, SLOTS + 1)), SLOTS, 32000)
    out = y.clone()
    w.add_lora_linear(out, x, tuple(a), tuple(b), 1.0, slices)
    return out


STEPS = {
    "decode, mixed + base rows": [1, 0, 3, 3, 6, 2, 0, 5],
    "decode, every row one adapter": [4] * 5,
    "decode, base rows only": [0] * 7,
    "prefill, requests of 9/1/23 tokens": [2] * 9 + [0] + [5] * 23,
    "adapter without this module": [1, 2, 2, 3],  # slot 1 (id 2) empty
    "adapter with only the v slice": [4, 4, 1],  # slot 3 (id 4) only v
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(STEPS))
def test_lora_linear_equals_vllm_torch_ops(name, dtype):
    g = torch.Generator().manual_seed(len(name))
    tokens = STEPS[name]
    a, b = _stacked(QKV, dtype, g, empty=(1,), only_last=(3,))
    x = torch.randn(len(tokens), IN, generator=g).to(dtype)
    y = torch.randn(len(tokens), sum(QKV), generator=g).to(dtype)
    ours = _apply(PunicaWrapperGrouped, tokens, x, y, a, b, QKV)
    ref = _apply(PunicaWrapperCPU, tokens, x, y, a, b, QKV)
    lora_rows = [i for i, t in enumerate(tokens) if t != 0]
    base_rows = [i for i, t in enumerate(tokens) if t == 0]
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7 * ref.float().abs().max().item()
    if lora_rows:
        assert (ours[lora_rows].float() - ref[lora_rows].float()).abs().max().item() <= tol
    assert torch.equal(ours[base_rows], y[base_rows])  # rows without adapter untouched, bit for bit
    if name == "adapter without this module":
        assert not torch.equal(ours[0], y[0]) and torch.equal(ours[1:3], y[1:3])  # slot 1 skipped, others served


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_lm_head_and_embedding_lora_equal_vllm_torch_ops(dtype):
    """``lm_head`` (logits) and ``embed_tokens`` LoRA through our wrapper vs vLLM's ops, adapter rows;
    slot 1 holds none for either module, so its rows are left alone."""
    g = torch.Generator().manual_seed(7)
    tokens, vocab = [3, 0, 2, 5, 3], 50
    a, b = _stacked((vocab,), dtype, g, empty=(1,))
    h, logits = torch.randn(len(tokens), IN, generator=g).to(dtype), torch.randn(len(tokens), vocab, generator=g).to(dtype)
    emb_a = torch.randn(len(tokens), RANK, generator=g).to(dtype)
    emb_b = (torch.randn(SLOTS, 1, IN, RANK, generator=g) * 0.2).to(dtype)
    emb_b[1] = 0
    base = torch.randn(len(tokens), IN, generator=g).to(dtype)
    results = {}
    for cls in (PunicaWrapperGrouped, PunicaWrapperCPU):
        w = cls(max_num_batched_tokens=len(tokens), max_batches=len(tokens), device="cpu")
        w.update_metadata(LoRAMapping(tokens, tokens, is_prefill=True), list(range(1, SLOTS + 1)), SLOTS, vocab)
        out_logits, out_emb = logits.clone(), base.clone()
        w.add_lora_logits(out_logits, h, a[0], b[0], 1.0)
        w.add_lora_embedding(out_emb, emb_a, emb_b, add_inputs=True)
        results[cls] = out_logits, out_emb
    lora_rows = [0, 3, 4]  # ids 3, 5, 3; row 2 (id 2 → slot 1) has neither module
    tol = 1e-5 if dtype == torch.float32 else 2**-6
    for ours, ref, before in zip(results[PunicaWrapperGrouped], results[PunicaWrapperCPU], (logits, base)):
        assert (ours[lora_rows].float() - ref[lora_rows].float()).abs().max().item() <= tol * max(1.0, ref.float().abs().max().item())
        assert torch.equal(ours[[1, 2]], before[[1, 2]])


def test_vllm_torch_ops_give_base_rows_the_last_slot():
    """Why base rows are not compared with vLLM's ops: in a mixed batch vLLM 0.32's CPU ops add the
    last slot's adapter to rows that asked for none (index −1 wraps); ours leave them as they were."""
    g = torch.Generator().manual_seed(1)
    a, b = _stacked(QKV, torch.float32, g)
    x, y = torch.randn(2, IN, generator=g), torch.zeros(2, sum(QKV))
    stock = _apply(PunicaWrapperCPU, [1, 0], x, y, a, b, QKV)
    last_slot = _apply(PunicaWrapperCPU, [1, SLOTS], x, y, a, b, QKV)
    assert torch.allclose(stock[1], last_slot[1]) and stock[1].abs().max() > 0
    assert torch.equal(_apply(PunicaWrapperGrouped, [1, 0], x, y, a, b, QKV)[1], y[1])


def test_weights_written_into_a_slot_are_used_at_once():
    """vLLM loads an adapter by copying into its slot; our transposed B follows (version check)."""
    g = torch.Generator().manual_seed(3)
    a, b = _stacked((IN,), torch.float32, g)
    x, y = torch.randn(2, IN, generator=g), torch.zeros(2, IN)
    first = _apply(PunicaWrapperGrouped, [2, 2], x, y, a, b, (IN,))
    b[0][1].copy_(torch.randn(1, IN, RANK, generator=g))  # a new adapter in slot 1
    second = _apply(PunicaWrapperGrouped, [2, 2], x, y, a, b, (IN,))
    ref = _apply(PunicaWrapperCPU, [2, 2], x, y, a, b, (IN,))
    assert not torch.allclose(first, second)
    assert torch.allclose(second, ref, atol=1e-5)



def test_a_new_stack_never_reads_a_freed_ones_packing():
    """Packed copies follow the stack object, not its ``id()``: a freed stack's id (and ``_version``
    0) comes back with the next one of its size, which must not be served the old weights."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, IN, generator=g), torch.zeros(3, sum(QKV))
    for _ in range(12):
        a, b = _stacked(QKV, torch.float32, g)
        ours = _apply(PunicaWrapperGrouped, [1, 3, 6], x, y, a, b, QKV)
        ref = _apply(PunicaWrapperCPU, [1, 3, 6], x, y, a, b, QKV)
        assert torch.allclose(ours, ref, atol=1e-5)
        del a, b

KERNEL_CASES = {  # activations' dtype, weights' dtype, scaling per slot
    "float32": (torch.float32, torch.float32, False),
    "bfloat16 (vLLM)": (torch.bfloat16, torch.bfloat16, False),
    "float16 (vLLM)": (torch.float16, torch.float16, False),
    "bfloat16 over float32 weights, scaled (torch engine)": (torch.bfloat16, torch.float32, True),
}


@pytest.mark.parametrize("case", list(KERNEL_CASES))
@pytest.mark.parametrize("rank,slices", [(1, (7,)), (8, (96,)), (16, (200,)), (8, (96, 32, 32)), (4, (0, 40))])
def test_bgmv_kernel_matches_its_roundings_in_float64(case, rank, slices):
    """out[t, slice p] += W(W(W(x[t] @ A[s]ᵀ)[p·R:(p+1)·R] @ Bt[s]) · scaling[s]), rounded to out's dtype, on
    a column slice of a wider tensor, listed rows only (the formula in ``csrc/lora_cpu.cpp``)."""
    act, wt, scaled = KERNEL_CASES[case]
    width, n = sum(slices), len(slices)
    g = torch.Generator().manual_seed(rank * width + n)
    A = (torch.randn(SLOTS, n * rank, IN, generator=g) * 0.2).to(wt)
    Bt = (torch.randn(SLOTS, rank, width, generator=g) * 0.2).to(wt)
    scaling = torch.rand(SLOTS, generator=g) * 4 if scaled else None
    x = torch.randn(10, IN, generator=g).to(act)
    wide = torch.randn(10, width + 5, generator=g).to(act)
    rows, slots = torch.tensor([0, 3, 4, 9]), torch.tensor([5, 0, 5, 2])
    out = wide.clone()
    bgmv()(out[:, 2 : 2 + width], x, A, Bt, rows, slots, scaling, list(slices) if n > 1 else None)
    ref = wide.clone().double()
    for t, s in zip(rows.tolist(), slots.tolist()):
        h = (x[t].double() @ A[s].double().T).to(wt).double()
        off = 0
        for p, w in enumerate(slices):
            d = (h[p * rank : (p + 1) * rank] @ Bt[s, :, off : off + w].double()).to(wt).double()
            if scaled:
                d = (d * scaling[s].item()).to(wt).double()
            ref[t, 2 + off : 2 + off + w] = (ref[t, 2 + off : 2 + off + w] + d).to(act).double()
            off += w
    ulp = {torch.float32: 2**-20, torch.bfloat16: 2**-7, torch.float16: 2**-10}[act]
    assert (out.double() - ref).abs().max().item() <= ulp * ref.abs().max().item()
    others = [t for t in range(10) if t not in rows.tolist()]
    assert torch.equal(out[others], wide[others]) and torch.equal(out[:, :2], wide[:, :2])


def test_bgmv_refuses_mismatched_shapes_and_dtypes():
    A, Bt = torch.zeros(2, 4, 8), torch.zeros(2, 4, 6)
    rows = torch.tensor([0])
    with pytest.raises(RuntimeError, match="do not chain"):
        bgmv()(torch.zeros(1, 6), torch.zeros(1, 9), A, Bt, rows, rows)
    with pytest.raises(RuntimeError, match="share one dtype"):
        bgmv()(torch.zeros(1, 6), torch.zeros(1, 8, dtype=torch.bfloat16), A, Bt, rows, rows)
    with pytest.raises(RuntimeError, match="do not chain"):  # two slices need A of rank 2·4
        bgmv()(torch.zeros(1, 6), torch.zeros(1, 8), A, Bt, rows, rows, None, [3, 3])
    with pytest.raises(RuntimeError, match="theirs or float32"):
        bgmv()(torch.zeros(1, 6), torch.zeros(1, 8), A.bfloat16(), Bt.bfloat16(), rows, rows)


def test_step_metadata_once_per_step():
    step = vllm_punica._step_of([-1, 2, 2, -1, 0])
    assert step.rows.tolist() == [1, 2, 4] and step.slots.tolist() == [2, 2, 0] and step.present == {0, 2}
    assert vllm_punica._step_of([-1, -1]).present == frozenset()


PLATFORM_PROBE = """
import sys
from vllm.engine.arg_utils import EngineArgs
from vllm.platforms import current_platform
config = EngineArgs(model=sys.argv[1], enable_lora=True, max_lora_rank=8, dtype="float32", max_model_len=256).create_engine_config()
print(type(current_platform).__name__, current_platform.get_punica_wrapper().rsplit(".", 1)[1], config.compilation_config.mode.name)
"""


@pytest.mark.parametrize(
    "ops,wrapper,compiled",
    [("grouped", "PunicaWrapperGrouped", True), ("vllm", "PunicaWrapperCPU", False), ("", "PunicaWrapperCPU", False)],
)
def test_vllm_selects_our_platform_through_its_plugin_entry_point(ops, wrapper, compiled, base_source):
    """A fresh process (as vLLM's spawned engine core is) finds our platform through the entry point;
    the ops follow the environment the node sets (unset: vLLM's own), and with ours the LoRA model
    stays compiled where vLLM's CPU platform would turn compilation off."""
    env = {**os.environ, LORA_OPS_ENV: ops, "VLLM_LOGGING_LEVEL": "ERROR"}
    probe = [sys.executable, "-c", PLATFORM_PROBE, str(base_source.path)]
    out = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    platform, selected, mode = out.stdout.split()[-3:]
    assert (platform, selected) == ("OpenLoraCpuPlatform", wrapper)
    assert (mode != "NONE") == compiled, mode


def test_unknown_lora_ops_refused_before_vllm_starts():
    with pytest.raises(ValueError, match="expected one of grouped, vllm"):
        _environment(VllmOptions(lora_ops="triton"))
