"""Our stacked-slot LoRA equals PEFT's LoRA on the real base model.

Reference: ``peft.PeftModel`` (0.21) loading the same saved adapter onto a base loaded the way
the node loads it, in the same dtype, with PEFT's defaults (``autocast_adapter_dtype=True``:
adapter weights and the LoRA delta in float32 on a bfloat16 base, as we do).

What is guaranteed, and so what is pinned:

- **float32**: max |ours - PEFT| on logits (O(10) in size) ≤ 1e-4, and greedy tokens equal. On the
  CPUs measured so far single adapters are bit-identical (0.0).
- **bfloat16**: bit-identity with PEFT holds on one CPU and not on another (oneDNN picks matmul
  blocking and kernels by CPU model and shape, and one-ulp differences grow through 30 layers: a
  fresh machine measured 0.4375 where this one measures 0.0). So bf16 is pinned by what bf16's
  rounding allows at the logits' magnitude: max |ours - PEFT| ≤ ``BF16_ULPS`` ulps of bf16 at
  max |logit| (ulp(x) = 2^(floor(log2 x) - 7)); our error against the float32 truth no larger than
  PEFT-bf16's own; and greedy agreement over ``N_GREEDY`` seeded prompts, where any disagreement
  must be a near-tie (PEFT scored our token within the same ulp bound of its own).

Every case also checks that the adapter really changes the output (max |Δ| to the base > 0.2,
2000× the float32 tolerance), so an adapter silently not applied fails the float32 case.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from lora_cases import CASES, FEATURE_CASES, save_case_adapters

from openlora.adapters.peft_format import load_adapter
from openlora.engine.model import load_resident
from openlora.engine.slot_layout import SlotLayout
from openlora.engine.slots import SlotManager

FP32_TOL = 1e-4
BF16_ULPS = 8  # measured: 0 here, 3.5 on another CPU
N_GREEDY = 32
PROMPTS = ["The three most important habits for good sleep are", "In contract law, consideration means"]


@pytest.fixture(scope="module")
def base_fp32(base_source):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base_source.path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(base_fp32, tmp_path_factory):
    return save_case_adapters(base_fp32, tmp_path_factory.mktemp) | save_case_adapters(
        base_fp32, tmp_path_factory.mktemp, cases=FEATURE_CASES
    )


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def engine_model(request, base_source):
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[request.param]
    rm = load_resident(base_source, dtype, n_slots=8, max_rank=64)
    return rm, SlotManager(rm.lora_layers, rm.routing, 8)


def _inputs(tokenizer):
    return [torch.tensor([tokenizer(p)["input_ids"]]) for p in PROMPTS]


def _ours(rm, slot_ids, ids):
    """Our logits ``[B, T, V]`` with row i routed to ``slot_ids[i]``."""
    rm.routing.set(slot_ids)
    try:
        with torch.inference_mode():
            return rm.model(input_ids=ids).logits
    finally:
        rm.routing.clear()


def _fresh_base(source, dtype):
    """A base loaded the way the node loads it (``.to(dtype)`` on an fp32 model would also
    cast the rotary ``inv_freq`` buffer and change the numbers)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype).eval()


def _reference(source, folder, dtype):
    from peft import PeftModel

    return PeftModel.from_pretrained(_fresh_base(source, dtype), str(folder)).eval()


def _install(rm, slots, cid, folder):
    adapter = load_adapter(
        (folder / "adapter_config.json").read_bytes(),
        (folder / "adapter_model.safetensors").read_bytes(),
        rm.base_modules,
        rm.max_rank,
    )
    slot = slots.install(cid, adapter)
    slots.release(slot)
    return slot, adapter


def bf16_ulp(x: float) -> float:
    """One unit in the last place of bfloat16 (8 significant bits) at magnitude ``x`` > 0."""
    return 2.0 ** (math.floor(math.log2(x)) - 7)


def bf16_tolerance(logits: torch.Tensor) -> float:
    """``BF16_ULPS`` bf16 ulps at the largest |logit| of ``logits`` (any shape, float)."""
    return BF16_ULPS * bf16_ulp(logits.abs().max().item())


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_match_peft(case, engine_model, adapters, base_source):
    _assert_matches_peft(case, engine_model, adapters[case], base_source)


@pytest.mark.parametrize("engine_model", [torch.float32], ids=["fp32"], indirect=True)
@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_feature_logits_and_greedy_match_peft(case, engine_model, adapters, base_source):
    """Each PEFT feature beyond plain LoRA, served alone in float32, equals PEFT (logits within ``FP32_TOL``,
    bit-identical on the CPUs measured; greedy tokens equal) on one prompt (PEFT's DoRA reference is slow).
    bfloat16 rows of these adapters are pinned to their own single requests in a mixed batch below."""
    _assert_matches_peft(case, engine_model, adapters[case], base_source, prompts=1)


def _assert_matches_peft(case, engine_model, folder, base_source, prompts=len(PROMPTS)):
    rm, slots = engine_model
    slot, adapter = _install(rm, slots, case, folder)
    ref = _reference(base_source, folder, rm.dtype)
    truth = _reference(base_source, folder, torch.float32) if rm.dtype == torch.bfloat16 else ref
    for ids in _inputs(rm.codec.tokenizer)[:prompts]:
        with torch.inference_mode():
            want = ref(input_ids=ids).logits.float()
            exact = truth(input_ids=ids).logits.float()
        got = _ours(rm, [slot], ids).float()
        base = _ours(rm, [0], ids).float()
        # the adapter must matter, or the comparisons below prove nothing (0.2 is 2000× the float32
        # tolerance; in bf16 a small adapter's effect can sit inside bf16's rounding, and the float32
        # case of the same code is what pins that it is applied)
        assert (want - base).abs().max().item() > 0.2
        if rm.dtype == torch.float32:
            assert (got - want).abs().max().item() <= FP32_TOL
            continue
        assert (got - want).abs().max().item() <= bf16_tolerance(want)
        ours_err, peft_err = (got - exact).abs(), (want - exact).abs()
        assert ours_err.mean() <= 1.5 * peft_err.mean() + 0.02, (ours_err.mean().item(), peft_err.mean().item())

    ids = _inputs(rm.codec.tokenizer)[0]
    with torch.inference_mode():
        want_tokens = ref.generate(input_ids=ids, max_new_tokens=12, do_sample=False)[0].tolist()
        rm.routing.set([slot])
        try:
            got_tokens = rm.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)[0].tolist()
        finally:
            rm.routing.clear()
    if rm.dtype == torch.float32:
        assert got_tokens == want_tokens
    else:
        _assert_only_near_tie_flips(ref, got_tokens, want_tokens)
        _assert_greedy_agreement(rm, slot, ref)
    if case == "layers-to-transform":
        touched = {n.split(".")[2] for n in adapter.modules}
        assert touched == {"0", "7", "29"}
    if case == "patterns":
        assert adapter.modules["model.layers.3.self_attn.q_proj"].a.shape[0] == 4
        assert adapter.modules["model.layers.3.mlp.down_proj"].a.shape[0] == 16
        assert adapter.modules["model.layers.3.self_attn.v_proj"].scaling == pytest.approx(4 / 8)


def _assert_only_near_tie_flips(ref, got: list[int], want: list[int]) -> None:
    """bf16 greedy decoding: where the sequences first differ, PEFT itself must have scored our
    token within the bf16 tolerance of its own: a flip of a tie, not a different computation."""
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    if k is None:
        assert got == want
        return
    with torch.inference_mode():
        logits = ref(input_ids=torch.tensor([want[:k]])).logits[0, -1].float()
    assert logits[want[k]] - logits[got[k]] <= bf16_tolerance(logits), (k, logits[want[k]].item(), logits[got[k]].item())


def _assert_greedy_agreement(rm, slot, ref) -> None:
    """The next greedy token after each of ``N_GREEDY`` seeded prompts (random token ids, 16 long,
    one batched forward): equal to PEFT's, or a near-tie under PEFT's own logits."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, rm.codec.tokenizer.vocab_size, (N_GREEDY, 16), generator=g)
    with torch.inference_mode():
        want = ref(input_ids=ids).logits[:, -1].float()
    got = _ours(rm, [slot] * N_GREEDY, ids)[:, -1].float()
    ours, theirs = got.argmax(-1), want.argmax(-1)
    for i in torch.nonzero(ours != theirs).flatten().tolist():
        gap = (want[i, theirs[i]] - want[i, ours[i]]).item()
        assert gap <= bf16_tolerance(want[i]), (i, gap)


def test_mixed_batch_of_eight_adapters_and_base_rows_matches_peft(engine_model, adapters, base_source):
    """One forward with 8 different adapters and 2 base rows, row by row against PEFT.

    float32: PEFT's own mixed batch (``adapter_names``), within 1e-4.
    bfloat16: PEFT has no bit-exact counterpart for a mixed batch — its mixed path rounds the
    float32 delta to bf16 before adding it, and its single-adapter path applied to the batch
    runs other gemm kernels than our per-row bmm, and one-ulp differences grow through 30 bf16
    layers. So each row is compared with the float32 truth (PEFT mixed, float32): our error must
    be no larger than PEFT-bf16's own (each row's adapter alone, same batch) — mean within
    1.5x + 0.02, max within 2x + 0.1. Base rows are held to the same bound in bf16 (on a CPU
    without native bf16 kernels the engine computes bf16 in float32, ``engine.cpu_compute``, so
    its sums are not PEFT's) and must be exact in float32.
    """
    rm, slots = engine_model
    names = list(CASES)
    slot_of = {n: _install(rm, slots, n, adapters[n])[0] for n in names}
    assert sorted(slot_of.values()) == list(range(1, 9))
    order = names[:4] + ["__base__"] + names[4:] + ["__base__"]
    ids = _inputs(rm.codec.tokenizer)[0].repeat(len(order), 1)
    got = _ours(rm, [0 if n == "__base__" else slot_of[n] for n in order], ids).float()
    truth = _mixed_reference(base_source, adapters, names, torch.float32)(ids, order)
    if rm.dtype == torch.float32:
        per_row = (got - truth).abs().amax(dim=(1, 2))
        assert per_row.max().item() <= FP32_TOL, per_row.tolist()
        assert per_row[4].item() == 0.0 and per_row[-1].item() == 0.0
        return
    ref = _mixed_reference(base_source, adapters, names, rm.dtype)
    rows = []
    with torch.inference_mode():
        for i, n in enumerate(order):
            if n != "__base__":
                ref.model.set_adapter(n)
            with ref.model.disable_adapter() if n == "__base__" else contextlib.nullcontext():
                rows.append(ref.model(input_ids=ids).logits[i : i + 1].float())
    peft = torch.cat(rows)
    for i, n in enumerate(order):
        ours_err, peft_err = (got[i] - truth[i]).abs(), (peft[i] - truth[i]).abs()
        assert ours_err.mean() <= 1.5 * peft_err.mean() + 0.02, (n, ours_err.mean().item(), peft_err.mean().item())
        assert ours_err.max() <= 2.0 * peft_err.max() + 0.1, (n, ours_err.max().item(), peft_err.max().item())


# one slot per case, each of the case's own rank (r1; r8 ×4; r16-alpha8 and patterns' 16; r64)
BUCKETS = "1:1,8:4,16:2,64:1"


def test_rank_buckets_change_where_rows_live_not_what_a_row_computes(engine_model, adapters, base_source):
    """The mixed batch of all eight cases plus base rows on slots sized to each case's rank
    (``--rank-buckets``) equals the one-bucket model's batch, row by row: float32 within the float32
    tolerance (only the zero padding in the products differs), bf16 within the bf16 bound."""
    rm, slots = engine_model
    small = load_resident(base_source, str(rm.dtype).removeprefix("torch."), layout=SlotLayout.parse(BUCKETS))
    small_slots = SlotManager(small.lora_layers, small.routing, 8)
    names = list(CASES)
    order = names[:4] + ["__base__"] + names[4:] + ["__base__"]
    ids = _inputs(rm.codec.tokenizer)[0].repeat(len(order), 1)
    logits = []
    for model, manager in ((rm, slots), (small, small_slots)):
        slot_of = {n: _install(model, manager, n, adapters[n])[0] for n in names}
        logits.append(_ours(model, [0 if n == "__base__" else slot_of[n] for n in order], ids).float())
    assert small.lora_layers["model.layers.0.self_attn.q_proj"].lora_A.shape[0] == SlotLayout.parse(BUCKETS).rows
    one_bucket, bucketed = logits
    tol = FP32_TOL if rm.dtype == torch.float32 else bf16_tolerance(one_bucket)
    per_row = (bucketed - one_bucket).abs().amax(dim=(1, 2))
    assert per_row.max().item() <= tol, per_row.tolist()


class _mixed_reference:
    """PEFT with all cases loaded on a fresh base of ``dtype``; calling it runs a mixed batch."""

    def __init__(self, source, adapters, names, dtype) -> None:
        from peft import PeftModel

        self.model = PeftModel.from_pretrained(_fresh_base(source, dtype), str(adapters[names[0]]), adapter_name=names[0])
        for n in names[1:]:
            self.model.load_adapter(str(adapters[n]), adapter_name=n)
        self.model.eval()

    def __call__(self, ids, order):
        with torch.inference_mode():
            return self.model(input_ids=ids, adapter_names=order).logits.float()


MIXED_FEATURES = ["dora", "lora-bias", "embed", "lm-head", "save-embed", "save-lm-head"]


def test_mixed_batch_of_feature_plain_and_base_rows_matches_single_requests(engine_model, adapters):
    """One forward with an adapter per PEFT feature (DoRA, LoRA bias, embedding and head LoRA, both
    ``modules_to_save`` copies: the exact per-row path), two plain adapters (the stacks) and two base rows:
    each row equals the same request served alone (which ``test_logits_and_greedy_match_peft`` pins to PEFT).

    float32: within ``FP32_TOL``, base rows too (a batch of 10 changes the gemm's blocking against a batch of
    one, so sums round differently: 3e-5 measured). bfloat16: within ``BF16_ULPS`` ulps at the row's largest
    logit.
    """
    rm, slots = engine_model
    names = MIXED_FEATURES + ["r8", "rslora-all-linear"]
    slot_of = {n: _install(rm, slots, n, adapters[n])[0] for n in names}
    assert sorted(slot_of.values()) == list(range(1, 9))
    order = names[:3] + ["__base__"] + names[3:] + ["__base__"]
    row_slots = [0 if n == "__base__" else slot_of[n] for n in order]
    ids = _inputs(rm.codec.tokenizer)[1].repeat(len(order), 1)
    got = _ours(rm, row_slots, ids).float()
    for i, (n, slot) in enumerate(zip(order, row_slots)):
        alone = _ours(rm, [slot], ids[i : i + 1]).float()[0]
        err = (got[i] - alone).abs().max().item()
        if rm.dtype == torch.float32:
            assert err <= FP32_TOL, (n, err)
        else:
            assert err <= bf16_tolerance(alone), (n, err)
