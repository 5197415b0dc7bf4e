"""The CPU fast paths of the torch engine, exercised on any CPU.

- ``engine.cpu_compute``: a bf16 base on a CPU without native bf16 kernels computes in float32. The
  machine running the suite may have those kernels (then the node never takes this path), so the
  path is forced here and held to what bf16 must give: its error against the float32 truth no
  larger than native bf16's own, and greedy tokens equal to the float32 truth's or a near-tie.
- ``engine.cpu_compute``'s decode attention (one query per row, every CPU, half-precision bases): equal
  to attention computed in float64 within one rounding to the output's dtype, for grouped and plain
  heads, with padding masks as transformers builds them.
- ``engine.kv.HeadroomLayer``: keys/values equal to transformers' concatenating ``DynamicLayer``
  bit for bit, across buffer growth and after a join/leave replaced the tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

import openlora.engine.model as model_mod
from openlora.engine.cpu_compute import ATTENTION_FLOAT32, Float32Linear, PackedLinear, _attention, can_pack
from openlora.engine.kv import HEADROOM, HeadroomLayer
from openlora.engine.model import load_resident

from test_lora_numerics import _fresh_base, bf16_tolerance


@pytest.fixture(scope="module")
def forced_float32(base_source):
    """A bf16 resident base loaded as on a CPU without native bf16 kernels."""
    mp = pytest.MonkeyPatch()
    mp.setattr(model_mod, "wants_float32", lambda dtype, device: True)
    try:
        return load_resident(base_source, "bfloat16", n_slots=2, max_rank=8)
    finally:
        mp.undo()


def test_forced_float32_holds_float32_weights_and_cache(forced_float32):
    rm = forced_float32
    linears = [m for m in rm.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is Float32Linear and m.weight.dtype == torch.float32 for m in linears)
    assert rm.model.get_input_embeddings().weight.dtype == torch.bfloat16  # the tied head was copied
    assert rm.model.config._attn_implementation == ATTENTION_FLOAT32
    assert rm.dtype == torch.bfloat16 and rm.kv_dtype == torch.float32


def test_forced_float32_is_as_close_to_the_truth_as_native_bf16(forced_float32, base_source):
    rm = forced_float32
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, rm.codec.tokenizer.vocab_size, (8, 24), generator=g)
    with torch.inference_mode():
        truth = _fresh_base(base_source, torch.float32)(input_ids=ids).logits.float()
        native = _fresh_base(base_source, torch.bfloat16)(input_ids=ids).logits.float()
        got = rm.model(input_ids=ids).logits
    assert got.dtype == torch.bfloat16  # values handed on stay bf16
    ours_err, native_err = (got.float() - truth).abs(), (native - truth).abs()
    assert ours_err.mean() <= 1.5 * native_err.mean() + 0.02, (ours_err.mean().item(), native_err.mean().item())
    assert ours_err.max() <= 2.0 * native_err.max() + 0.1, (ours_err.max().item(), native_err.max().item())
    last, want = got[:, -1].float(), truth[:, -1]
    for i in torch.nonzero(last.argmax(-1) != want.argmax(-1)).flatten().tolist():
        gap = (want[i].max() - want[i, last[i].argmax()]).item()
        assert gap <= bf16_tolerance(want[i]), (i, gap)


@pytest.mark.parametrize("path", ["kernel", "plain torch"])
@pytest.mark.parametrize("dtype,cache", [(torch.bfloat16, None), (torch.float16, None), (torch.bfloat16, torch.float32)], ids=str)
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4)])
@pytest.mark.parametrize("mask", ["padding", "additive", "none"])
def test_decode_attention_equals_float64_within_one_rounding(path, dtype, cache, heads, kv_heads, mask, monkeypatch):
    """One query per row against attention in float64 (keys and values repeated per query head), on the
    cache's strided views into buffers with spare columns, stored in the model's dtype or float32."""
    import openlora.engine.cpu_compute as cpu_compute

    monkeypatch.setattr(cpu_compute, "kernels_available", lambda: path == "kernel")
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    rows, length, d = 5, 37, 64
    q = torch.randn(rows, heads, 1, d, generator=g).to(dtype)
    k, v = (torch.randn(rows, kv_heads, length + HEADROOM, d, generator=g).to(dtype).to(cache or dtype)[:, :, :length] for _ in range(2))
    keep = torch.ones(rows, 1, 1, length, dtype=torch.bool)
    keep[1, ..., :11] = keep[3, ..., :30] = False  # left padding, as transformers' sdpa_mask builds it
    attn_mask = {"padding": keep, "additive": torch.zeros(keep.shape).masked_fill(~keep, float("-inf")), "none": None}[mask]
    got, _ = _attention(nn.Module(), q, k, v, attn_mask, scaling=d**-0.5, float32=False)
    group = heads // kv_heads
    kk, vv = (t.double().repeat_interleave(group, 1) for t in (k, v))
    scores = (q.double() @ kk.transpose(-1, -2)) * d**-0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    want = (scores.softmax(-1) @ vv).transpose(1, 2)  # [rows, 1, heads, d]
    assert got.dtype == dtype and got.shape == (rows, 1, heads, d)
    half_ulp = {torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]  # relative: one rounding of the output
    assert ((got.double() - want).abs() <= half_ulp * want.abs() + 1e-5).all()  # + float32 sums


def test_decode_attention_kernel_refuses_what_does_not_fit():
    from openlora.engine.cpu_kernels import decode_attention

    q, kv = torch.zeros(2, 4, 8), torch.zeros(2, 3, 5, 8)
    with pytest.raises(RuntimeError, match="multiple of the key/value heads"):
        decode_attention()(torch.zeros_like(q), q, kv, kv, None, 1.0)
    kv = torch.zeros(2, 2, 5, 8)
    with pytest.raises(RuntimeError, match="mask is bool"):
        decode_attention()(torch.zeros_like(q), q, kv, kv, torch.ones(2, 4, dtype=torch.bool), 1.0)
    with pytest.raises(RuntimeError, match="theirs or float32"):
        decode_attention()(torch.zeros_like(q), q, kv.bfloat16(), kv.bfloat16(), None, 1.0)


def _appends(seed: int, rows: int, steps: int, prefill: int = 5):
    """``[rows, 3, t, 4]`` bf16 key/value pairs: one of ``prefill`` columns (none if 0), then ``steps`` of one."""
    g = torch.Generator().manual_seed(seed)
    for t in ([prefill] if prefill else []) + [1] * steps:
        yield torch.randn(rows, 3, t, 4, generator=g).bfloat16(), torch.randn(rows, 3, t, 4, generator=g).bfloat16()


def _update_both(ours: HeadroomLayer, ref: DynamicLayer, k: torch.Tensor, v: torch.Tensor, store) -> None:
    got_k, got_v = ours.update(k, v)
    want_k, want_v = ref.update(k, v)
    assert got_k.dtype == (store or torch.bfloat16)
    assert torch.equal(got_k.to(want_k.dtype), want_k) and torch.equal(got_v.to(want_v.dtype), want_v)


@pytest.mark.parametrize("store", [None, torch.float32], ids=["model-dtype", "float32"])
def test_headroom_layer_equals_concatenation_across_growth_and_rebuilds(store):
    ours, ref = HeadroomLayer(store), DynamicLayer()
    for k, v in _appends(0, 2, 2 * HEADROOM + 3):  # the buffer grows twice
        _update_both(ours, ref, k, v, store)
    # a row joins: the batch replaces the tensors with wider ones
    extra_k, extra_v = torch.zeros_like(ours.keys[:1]), torch.ones_like(ours.values[:1])
    ours.keys, ours.values = torch.cat([ours.keys, extra_k]), torch.cat([ours.values, extra_v])
    ref.keys = torch.cat([ref.keys, extra_k.to(ref.keys.dtype)])
    ref.values = torch.cat([ref.values, extra_v.to(ref.values.dtype)])
    for k, v in _appends(1, 3, HEADROOM + 2, prefill=0):
        _update_both(ours, ref, k, v, store)
    ours.keys, ours.values = ours.keys[1:], ours.values[1:]  # a row leaves
    ref.keys, ref.values = ref.keys[1:], ref.values[1:]
    for k, v in _appends(2, 2, 3, prefill=0):
        _update_both(ours, ref, k, v, store)


@pytest.mark.parametrize("bias", [False, True])
def test_a_packed_linear_computes_as_f_linear_and_gives_its_weight_back(bias):
    """The prepacked bf16 linear equals ``F.linear`` on the same weights, and ``dense_weight`` reads back exactly the
    weight that was packed (what DoRA's norms and the saved-base-weight check read at install)."""
    if not can_pack(torch.bfloat16, torch.device("cpu")):
        pytest.skip("oneDNN has no native bf16 kernels on this CPU: the engine does not pack linears here")
    g = torch.Generator().manual_seed(3)
    linear = nn.Linear(48, 40, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 48, generator=g))
        if bias:
            linear.bias.copy_(torch.randn(40, generator=g))
    packed = PackedLinear(linear)
    x = torch.randn(5, 48, generator=g).to(torch.bfloat16)
    assert torch.equal(packed(x), torch.nn.functional.linear(x, linear.weight, linear.bias))
    assert torch.equal(packed.dense_weight(), linear.weight)
