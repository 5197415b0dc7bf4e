"""Greedy float32 text from the vLLM engine equals PEFT's, for the demo adapters and every LoRA shape
``test_lora_numerics.py`` pins for the torch engine; an adapter needing a PEFT feature vLLM does not serve is
refused at load, with the feature and the engine named.

The adapters go the node's whole way: signed manifests published into a real blockstore and catalog
(``AdapterStore``), read back and verified by ``load_verified``, written to the engine's private
folders and handed to vLLM as ``LoRARequest``s. Reference: ``peft.PeftModel.generate`` (greedy) on a
float32 base loaded the way the node loads it. Where the texts differ, the first differing token
must be a near-tie under PEFT's own logits: vLLM's CPU kernels (its attention, its LoRA ops) sum in
another order than transformers' eager forward, so a top-2 gap of a few float32 ulps of the logits
may flip; ``NEAR_TIE`` (logits) is that bound, 100× the float32 tolerance of the torch engine.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from adapter_corpus import BaseInfo, signed_manifest
from conftest import DEMO_ADAPTERS
from lora_cases import CASES, FEATURE_CASES, save_case_adapters

from openlora.adapters.catalog import Catalog
from openlora.adapters.store import AdapterStore, BaseProfile
from openlora.content.blockstore import BlockStore
from openlora.engine.interface import EngineUnsupported, Failed, Finished, GenerationRequest, TextDelta
from openlora.engine.lora import adaptable_shapes
from openlora.engine.sampling import SamplingParams
from openlora.engine.text import load_codec
from openlora.engine.vllm_engine import AdapterFolders, VllmEngine, VllmOptions

NEW_TOKENS = 12
NEAR_TIE = 1e-2
PROMPTS = ["The three most important habits for good sleep are", "What should I do about a persistent cough?"]
DEMO = ("medical", "legal", "finance")
# feature case → the word its refusal names (the node's for dora / embed_tokens / lm_head / lora_bias; vLLM's own
# for bias="all", which on this base trains nothing more than plain LoRA but vLLM refuses by the config)
REFUSED = {"dora": "dora", "lora-bias": "lora_bias", "embed": "embed_tokens", "lm-head": "lm_head", "bias-all": "bias"}


@pytest.fixture(scope="module")
def base_fp32(base_source):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base_source.path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def folders(base_fp32, tmp_path_factory) -> dict:
    # B spread ×4: every case's delta then changes some greedy text within NEW_TOKENS (checked below)
    out = save_case_adapters(base_fp32, tmp_path_factory.mktemp, b_scale=4.0)
    out.update({d: DEMO_ADAPTERS / d for d in DEMO})
    # without the 113 MB embedding copies PEFT saves by default: these are only refused
    features = {k: FEATURE_CASES[k] for k in REFUSED}
    out.update(save_case_adapters(base_fp32, tmp_path_factory.mktemp, cases=features, save_embedding_layers=False))
    return out


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def store_and_cids(base_source, folders, tmp_path_factory):
    data = tmp_path_factory.mktemp("vllm-store")
    profile = BaseProfile(base_source.name, base_source.fingerprint, adaptable_shapes(base_source.path), 64)
    store = AdapterStore(BlockStore(data / "blocks"), Catalog(data / "catalog.sqlite"), profile)
    base = BaseInfo(base_source.name, base_source.fingerprint, 64)
    cids = {}
    for name, folder in folders.items():
        files = {f: (folder / f).read_bytes() for f in ("adapter_config.json", "adapter_model.safetensors")}
        cids[name] = store.publish(signed_manifest(files, base, name=name), files)
    return store, cids, data


@pytest.fixture(scope="module")
def engine(loop, base_source, store_and_cids):
    store, _, data = store_and_cids
    codec = load_codec(base_source.path)
    options = VllmOptions(dtype="float32", max_loras=4, max_cpu_loras=16, max_lora_rank=64, max_batch=4, kv_cache_gib=1, enforce_eager=True)
    engine = loop.run_until_complete(
        VllmEngine.open(base_source, codec, options, store.load_verified, AdapterFolders(data / "vllm-adapters"))
    )
    yield engine
    engine.stop()


def _generate(loop, engine: VllmEngine, ids: list[int], cid: str | None) -> str:
    async def run() -> str:
        events: asyncio.Queue = asyncio.Queue()
        engine.submit(GenerationRequest(ids, SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0), events.put_nowait, cid))
        text = []
        while True:
            ev = await asyncio.wait_for(events.get(), 300)
            if isinstance(ev, TextDelta):
                text.append(ev.text)
            elif isinstance(ev, Finished):
                return "".join(text)
            elif isinstance(ev, Failed):
                raise ev.error

    return loop.run_until_complete(run())


@pytest.mark.parametrize("case", [*CASES, *DEMO])
def test_vllm_greedy_text_equals_peft(case, loop, engine, store_and_cids, folders, base_source):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, cids, _ = store_and_cids
    tok = engine.codec.tokenizer
    ref = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base_source.path), dtype=torch.float32), str(folders[case])
    ).eval()
    changed = False
    for ids in _prompts(engine.codec):
        got = _generate(loop, engine, ids, cids[case])
        with torch.inference_mode():
            out = ref.generate(input_ids=torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids) :]
        want_ids = [t for t in out.tolist() if t not in engine.codec.eos_ids]
        want = tok.decode(want_ids, skip_special_tokens=True)
        if got != want:
            _assert_near_tie(ref, tok, ids, want_ids, got)
        changed = changed or want != _generate(loop, engine, ids, None)
    assert changed, "the adapter changed no greedy text: the comparison proves nothing"


@pytest.mark.parametrize("case", list(REFUSED))
def test_vllm_refuses_an_adapter_needing_a_feature_it_does_not_serve(case, loop, engine, store_and_cids):
    _, cids, _ = store_and_cids
    with pytest.raises(EngineUnsupported) as e:
        _generate(loop, engine, engine.codec.encode_prompt(PROMPTS[0]), cids[case])
    assert "vllm engine" in str(e.value) and REFUSED[case] in str(e.value), str(e.value)
    assert _generate(loop, engine, engine.codec.encode_prompt(PROMPTS[0]), None)  # and the engine serves on


def _prompts(codec) -> list[list[int]]:
    """The text prompts, and one of seeded random token ids (flat next-token distributions, where even a
    rank-1 adapter moves the greedy choice)."""
    g = torch.Generator().manual_seed(3)
    return [codec.encode_prompt(p) for p in PROMPTS] + [torch.randint(100, 40000, (24,), generator=g).tolist()]


def _assert_near_tie(ref, tok, prompt_ids: list[int], want_ids: list[int], got: str) -> None:
    """The first token where vLLM's text leaves PEFT's was a near-tie in PEFT's own logits."""
    k = next(k for k in range(len(want_ids)) if not got.startswith(tok.decode(want_ids[: k + 1], skip_special_tokens=True)))
    common = tok.decode(want_ids[:k], skip_special_tokens=True)
    theirs = tok(got[len(common) :], add_special_tokens=False)["input_ids"][0]
    with torch.inference_mode():
        logits = ref(input_ids=torch.tensor([prompt_ids + want_ids[:k]])).logits[0, -1].float()
    gap = (logits[want_ids[k]] - logits[theirs]).item()
    assert gap <= NEAR_TIE, (k, tok.decode([want_ids[k]]), tok.decode([theirs]), gap)


def test_vllm_top_logprobs_commit_to_the_adapter_it_ran(loop, engine, store_and_cids, base_source):
    """The proof collector gets vLLM's top-4 raw log-probabilities of every token (proof/topk.py): they match a
    float32 recomputation with the adapter, and not one without it."""
    from openlora.proof.encoding import decode, encode
    from openlora.proof.reference import Reference
    from openlora.proof.tolerance import ABS_PASS, commitment_distance
    from openlora.proof.topk import TOP_K, TopLogprobs

    store, cids, _ = store_and_cids
    ids = engine.codec.encode_chat([{"role": "user", "content": "What are the early signs of Lyme disease?"}])
    proof = TopLogprobs()

    async def run() -> None:
        events: asyncio.Queue = asyncio.Queue()
        params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.7, seed=5)
        engine.submit(GenerationRequest(ids, params, events.put_nowait, cids["medical"], proof=proof))
        while not isinstance(ev := await asyncio.wait_for(events.get(), 300), (Finished, Failed)):
            pass
        assert isinstance(ev, Finished), ev

    loop.run_until_complete(run())
    assert len(proof.tokens) == NEW_TOKENS and all(len(row) == TOP_K for row in proof.ids)
    vocab = engine._llm.model_config.get_vocab_size()
    committed = decode(encode(proof.ids, proof.logprobs, vocab), vocab)
    reference = Reference(base_source, max_rank=64)
    adapter = (cids["medical"], store.load(cids["medical"]))
    assert commitment_distance(committed, reference.logprobs(ids, proof.tokens, adapter)) <= ABS_PASS
    assert commitment_distance(committed, reference.logprobs(ids, proof.tokens, None)) > 10 * ABS_PASS


def test_vllm_structured_outputs_validate_and_the_calls_verify(loop, engine, store_and_cids, base_source):
    """vLLM's own structured outputs honour the node's constraints (schema with and without an adapter, a regex),
    and its commitment — log-probabilities vLLM takes after the grammar's mask — verifies against the torch
    reference restricted the same way (proof/verify.py), greedy and sampled."""
    import json
    import re

    import jsonschema
    from eth_account import Account

    from openlora.engine.structured import Constraint
    from openlora.proof.attest import Attestor
    from openlora.proof.reference import Reference
    from openlora.proof.verify import verify_call
    from openlora.proof.wire import record_to_pb
    from openlora.v1 import node_pb2 as pb

    store, cids, _ = store_and_cids
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0}}}  # fmt: skip
    hour = "([01][0-9]|2[0-3]):[0-5][0-9]"
    runs = [  # (adapter, constraint, temperature)
        (None, Constraint.json_schema(schema), 0.0),
        ("medical", Constraint.json_schema(schema), 0.0),
        ("legal", Constraint.json_schema(schema), 0.8),
        ("finance", Constraint.regex(hour), 0.0),
    ]
    attestor = Attestor(Account.from_key(b"\x43" * 32), base_source.fingerprint, "vllm/float32", engine._llm.model_config.get_vocab_size())

    async def one(adapter, constraint, temperature):
        ids = engine.codec.encode_chat([{"role": "user", "content": "Give a person as JSON, or a meeting time."}])
        params = SamplingParams(max_new_tokens=40, temperature=temperature, seed=3)
        proof, events, text = attestor.collector(), asyncio.Queue(), []
        cid = cids[adapter] if adapter else None
        engine.submit(GenerationRequest(ids, params, events.put_nowait, cid, proof=proof, constraint=constraint))
        while not isinstance(ev := await asyncio.wait_for(events.get(), 300), (Finished, Failed)):
            text.append(ev.text)
        assert isinstance(ev, Finished), ev
        record = attestor.attest(ids, proof, params, cid, constraint)
        return "".join(text), pb.ServedCall(record=record_to_pb(record), prompt_ids=ids, completion_ids=proof.tokens)

    async def all_runs():
        return await asyncio.gather(*(one(*r) for r in runs))

    results = loop.run_until_complete(all_runs())
    reference = Reference(base_source, max_rank=64)
    for (adapter, constraint, _), (text, call) in zip(runs, results):
        if constraint.kind == "regex":
            assert re.fullmatch(hour, text), text
        else:
            jsonschema.validate(json.loads(text), schema)
        verdict = verify_call(call, reference, store.load)
        assert verdict.valid, (adapter, text, verdict)
