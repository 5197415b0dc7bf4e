"""Verification numerics on the real base and the trained demo adapters (issue 15).

The torch engine serves in bfloat16 (the node's default) with a proof collector on every request; the records
are signed as the node signs them (``proof.attest``) and checked as a verifier checks them (``proof.verify``,
float32 reference). An honest engine passes, greedy and sampled; an engine that claims one adapter and computes
something else fails on the commitment; a node that commits honestly but emits other tokens fails on sampling.
The full matrix (≥ 100 calls per condition, vLLM, thread counts, batch shapes, int8 base) is
``scripts/bench_proof.py``; this pins the mechanism on a few short calls.
"""

from __future__ import annotations

import sys
import threading

import torch

import pytest
import torch
from eth_account import Account

from conftest import DEMO_ADAPTERS, DOMAINS, ROOT
from openlora.adapters.peft_format import LoraAdapter, ModuleLoRA, load_adapter
from openlora.engine.interface import Finished, GenerationRequest
from openlora.engine.lora import adaptable_shapes
from openlora.engine.model import load_resident
from openlora.engine.sampling import SamplingParams
from openlora.engine.scheduler import TorchEngine
from openlora.engine.slots import HostCache, SlotManager
from openlora.proof.attest import Attestor
from openlora.proof.encoding import decode
from openlora.proof.reference import Reference
from openlora.proof.tolerance import PROJECTION_BETA_LIMIT
from openlora.proof.topk import TopLogprobs
from openlora.proof.verify import verify_call
from openlora.proof.wire import record_from_pb, record_to_pb
from openlora.v1 import node_pb2 as pb

sys.path.insert(0, str(ROOT / "scripts"))  # the cheats the benchmark measures
from proof_cheats import drop_module, half_scale, random_adapter, truncate_rank  # noqa: E402

NODE = Account.from_key(b"\x41" * 32)
QUESTIONS = ["What are the early signs of Lyme disease?", "Can a landlord raise the rent in the middle of a lease?"]
TOKENS = 24


@pytest.fixture(scope="module")
def demo(demo_adapters, base_source):
    """The trained demo adapters and one random adapter at their scale (the benchmark's ``random0``)."""
    return {**demo_adapters, "random": random_adapter(adaptable_shapes(base_source.path), seed=100)}


@pytest.fixture(scope="module")
def featured(base_source, demo) -> dict[str, LoraAdapter]:
    """``medical`` with every PEFT feature the torch engine serves beyond plain LoRA, under the key ``featured``:
    DoRA magnitudes (the norms of ``W + s·B·A`` moved by ±2 %) and ``lora_B`` biases on its modules, and LoRA on
    ``embed_tokens`` and ``lm_head`` (seeded)."""
    from safetensors import safe_open

    g = torch.Generator().manual_seed(5)
    modules = {}
    with safe_open(str(base_source.path / "model.safetensors"), "pt") as f:
        for name, m in demo["medical"].modules.items():
            w = f.get_tensor(f"{name}.weight").float()
            norm = torch.linalg.norm(w + m.scaling * (m.b.float() @ m.a.float()), dim=1)
            magnitude = norm * (1 + 0.02 * torch.randn(norm.shape, generator=g))
            modules[name] = ModuleLoRA(m.a, m.b, m.scaling, 0.01 * torch.randn(norm.shape, generator=g), magnitude)
        vocab, hidden = f.get_tensor("model.embed_tokens.weight").shape
    small = lambda *shape: 0.02 * torch.randn(*shape, generator=g)  # noqa: E731
    modules["model.embed_tokens"] = ModuleLoRA(small(8, vocab), small(hidden, 8), 2.0)
    modules["lm_head"] = ModuleLoRA(small(8, hidden), small(vocab, 8), 2.0)
    return {"featured": LoraAdapter({**demo["medical"].config, "use_dora": True, "lora_bias": True}, modules)}


@pytest.fixture(scope="module")
def served(base_source, demo, featured):
    """The engine (bf16) and what it serves under each key: the honest adapters and the cheats."""
    variants = dict(demo) | featured
    variants.update({f"{d}#half": half_scale(a) for d, a in demo.items()})
    variants.update({f"{d}#drop_v": drop_module(a) for d, a in demo.items()})
    variants.update({f"{d}#rank_half": truncate_rank(a) for d, a in demo.items()})
    rm = load_resident(base_source, "bfloat16", n_slots=4, max_rank=16)
    engine = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, 4), HostCache(16), variants.__getitem__, max_batch=4)
    engine.start()
    yield engine, Attestor(NODE, base_source.fingerprint, "torch/bfloat16", rm.model.config.vocab_size)
    engine.stop()


@pytest.fixture(scope="module")
def reference(base_source):
    return Reference(base_source, max_rank=16)


def run(served, question: str, claimed: str | None, computed: str | None, **sampling) -> pb.ServedCall:
    """One call the engine computes with ``computed`` and whose record claims ``claimed``."""
    engine, attestor = served
    done = threading.Event()
    params = SamplingParams(**{"max_new_tokens": TOKENS, "temperature": 0.0, "ignore_eos": True, **sampling})
    ids = engine.codec.encode_chat([{"role": "user", "content": question}])
    proof = attestor.collector()
    events: list = []
    engine.submit(GenerationRequest(ids, params, lambda ev: (events.append(ev), isinstance(ev, Finished) and done.set()), computed, proof=proof))
    assert done.wait(300), events[-1:]
    record = attestor.attest(ids, proof, params, claimed)
    return pb.ServedCall(record=record_to_pb(record), prompt_ids=ids, completion_ids=proof.tokens)


CONDITIONS = [
    # (name, computed with, expected failing check ("" = valid), sampling)
    ("honest-greedy", "{a}", "", {}),
    ("honest-sampled", "{a}", "", {"temperature": 0.8, "top_p": 0.95, "seed": 11}),
    ("bare-base", None, "commitment", {}),
    ("other-adapter", "{other}", "commitment", {}),
    ("half-scale", "{a}#half", "commitment", {}),
    ("v_proj-dropped", "{a}#drop_v", "commitment", {}),
]


@pytest.mark.parametrize("name,computed,expected,sampling", CONDITIONS, ids=[c[0] for c in CONDITIONS])
def test_verification_passes_honest_engines_and_fails_the_cheats(served, reference, demo, name, computed, expected, sampling):
    for i, question in enumerate(QUESTIONS):
        claimed, other = DOMAINS[i], DOMAINS[(i + 1) % len(DOMAINS)]
        engine_key = computed.format(a=claimed, other=other) if computed else None
        verdict = verify_call(run(served, question, claimed, engine_key, **sampling), reference, demo.__getitem__)
        assert verdict.check == expected, (question, verdict)
        if expected:
            assert verdict.blames_node


def test_a_call_with_every_served_peft_feature_verifies(served, reference, featured):
    """DoRA, LoRA bias, embedding and head LoRA served in bf16 (the exact per-row path) pass the float32 reference;
    claiming the plain adapter under them fails the commitment."""
    adapter = featured["featured"]
    assert adapter.features == ("dora", "embed_tokens", "lm_head", "lora_bias")
    plain = {k: ModuleLoRA(m.a, m.b, m.scaling) for k, m in adapter.modules.items() if ".layers." in k}
    lookup = {"featured": adapter, "plain": LoraAdapter(adapter.config, plain)}
    assert verify_call(run(served, QUESTIONS[0], "featured", "featured"), reference, lookup.__getitem__).check == ""
    assert verify_call(run(served, QUESTIONS[0], "plain", "featured"), reference, lookup.__getitem__).check == "commitment"


def test_honest_commitments_but_other_tokens_fail_the_sampling_check(served, reference, demo):
    attestor = served[1]
    call = run(served, QUESTIONS[0], "medical", "medical")
    tokens = list(call.completion_ids)
    # the node emits a last token it did not pick (the last: no later position's distribution depends on it)
    tokens[-1] = (tokens[-1] + 1000) % attestor.vocab_size
    proof = TopLogprobs()
    committed = decode(record_from_pb(call.record).record.proof, attestor.vocab_size)
    for t, ids, lps in zip(tokens, committed.ids, committed.logprobs):
        proof.add(t, ids, lps)
    params = SamplingParams(max_new_tokens=TOKENS, temperature=0.0)
    forged = attestor.attest(list(call.prompt_ids), proof, params, "medical")
    verdict = verify_call(
        pb.ServedCall(record=record_to_pb(forged), prompt_ids=call.prompt_ids, completion_ids=tokens), reference, demo.__getitem__
    )
    assert verdict.check == "sampling" and verdict.misses >= 1, verdict


def test_a_tampered_call_fails_on_its_hashes_and_does_not_blame_the_node(served, reference, demo):
    call = run(served, QUESTIONS[1], "legal", "legal")
    changed = pb.ServedCall()
    changed.CopyFrom(call)
    changed.completion_ids[3] += 1
    verdict = verify_call(changed, reference, demo.__getitem__)
    assert verdict.check == "completion" and not verdict.blames_node
    changed.CopyFrom(call)
    changed.record.adapter = "finance"
    assert verify_call(changed, reference, demo.__getitem__).check == "signature"


# The cheats that keep most of the adapter, which only the projection on the adapter's effect tells from rounding.
# A trained adapter and a random one whose effect on the output is ~40 % of it (proof_cheats.random_adapter).
# Halving a trained adapter's rank keeps ~98 % of its update and moves the output about as much as bf16 rounding
# (the benchmark reports it); halving a random adapter's rank removes about half of its effect.
WEAK = [
    # (name, computed with, expected failing check ("" = valid), claimed adapters)
    ("honest-batched", "{a}", "", ("medical", "random")),
    ("honest-1-thread", "{a}", "", ("medical", "random")),
    ("half-scale", "{a}#half", "commitment", ("medical", "random")),
    ("v_proj-dropped", "{a}#drop_v", "commitment", ("medical", "random")),
    ("rank-halved", "{a}#rank_half", "commitment", ("random",)),
]


@pytest.fixture(scope="module")
def weak_calls(served):
    """Every call of ``WEAK`` but the 1-thread ones in flight at once (honest calls batched beside cheats: another
    batch composition than the solo calls above), then the honest calls again one at a time on 1 torch thread."""
    engine, attestor = served
    question = QUESTIONS[0]
    ids = engine.codec.encode_chat([{"role": "user", "content": question}])
    params = SamplingParams(max_new_tokens=TOKENS, temperature=0.0, ignore_eos=True)

    def submit(name: str, claimed: str, computed: str) -> tuple[str, TopLogprobs, threading.Event]:
        proof, done = attestor.collector(), threading.Event()
        engine.submit(GenerationRequest(ids, params, lambda ev: isinstance(ev, Finished) and done.set(), computed, proof=proof))
        return name, proof, done

    def attest(name: str, claimed: str, proof: TopLogprobs) -> tuple[str, pb.ServedCall]:
        record = attestor.attest(ids, proof, params, claimed)
        return name, pb.ServedCall(record=record_to_pb(record), prompt_ids=ids, completion_ids=proof.tokens)

    pending = [
        (claimed, *submit(name, claimed, computed.format(a=claimed)))
        for name, computed, _, adapters in WEAK if name != "honest-1-thread" for claimed in adapters
    ]  # fmt: skip
    out: dict[str, list[pb.ServedCall]] = {name: [] for name, *_ in WEAK}
    for claimed, name, proof, done in pending:
        assert done.wait(300), name
        out[name].append(attest(name, claimed, proof)[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for claimed in WEAK[1][3]:
            _, proof, done = submit("honest-1-thread", claimed, claimed)
            assert done.wait(300)
            out["honest-1-thread"].append(attest("honest-1-thread", claimed, proof)[1])
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name,expected", [(n, e) for n, _, e, _ in WEAK], ids=[w[0] for w in WEAK])
def test_the_adapter_projection_fails_the_weak_cheats_and_passes_honest_variation(weak_calls, reference, demo, name, expected):
    for call in weak_calls[name]:
        verdict = verify_call(call, reference, demo.__getitem__)
        assert verdict.check == expected, (record_from_pb(call.record).record.adapter, verdict)
        if expected:
            assert verdict.blames_node, verdict
        else:  # the honest error does not point along the adapter's effect (0 when a shortcut spared the probe)
            assert abs(verdict.beta) < PROJECTION_BETA_LIMIT, verdict
