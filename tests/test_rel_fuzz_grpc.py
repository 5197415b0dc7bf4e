"""Hostile input, gRPC: hypothesis-generated requests against a real node subprocess.

One node (no swarm, no HTTP) with one priced adapter published (calls to it reach the voucher
checks) takes random ``Generate`` requests (NaN / infinite / negative / huge sampling
values, empty and oversized prompts, unknown chat roles, random CIDs, random vouchers, some with
the right addresses and a random signature), random ``GetQuote`` requests, and ``PublishAdapter``
streams of random headers and chunks. Every call must end with a status that names the caller's
mistake (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED,
RESOURCE_EXHAUSTED) or succeed — never UNKNOWN or INTERNAL (an unhandled exception in the node).
Paid calls with random but in-range sampling run to the end through the engine. Afterwards the
node still reports SERVING and answers a normal paid request.
"""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openlora.chain.wire import voucher_to_pb
from openlora.client import NodeClient, PaidSession
from openlora.engine.sampling import SamplingParams, sample_next
from openlora.local import NodeProcess
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc
from pay_fixtures import CLIENT, MEDICAL, keys, voucher  # noqa: F401  (keys: fixture)
from test_pay_node import PRICE, ROYALTY, publish
from test_rel_fuzz_parsers import VALID_MANIFEST, mutate

CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
MAX_PROMPT_TOKENS, MAX_NEW_TOKENS = 64, 4
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CALL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(
        tmp_path_factory.mktemp("fuzz-node"), "--no-p2p", "--no-http", "--threads", "1",
        "--max-prompt-tokens", str(MAX_PROMPT_TOKENS), "--max-new-tokens", str(MAX_NEW_TOKENS),
        "--client-rate-limit", "0",
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def stub(node):
    with grpc.insecure_channel(node.address) as channel:
        yield node_pb2_grpc.NodeStub(channel)


@pytest.fixture(scope="module")
def client(node):
    with NodeClient(node.address, timeout=CALL_TIMEOUT_S) as c:
        yield c


@pytest.fixture(scope="module")
def info(client):
    return client.node_info()


@pytest.fixture(scope="module")
def priced(node, keys):  # noqa: F811
    """The medical demo adapter, published at a price: calls to it must carry a voucher."""
    return publish(node, keys, MEDICAL, PRICE, ROYALTY)


@pytest.fixture(scope="module")
def session(client, priced):
    """CLIENT's paid session, with a channel deposit that covers every call of the module."""
    s = PaidSession(client, CLIENT)
    s.open_channel(10**15)
    return s


SEEN: Counter[str] = Counter()  # status codes met, printed at the end (pytest -s)


def status_of(call) -> grpc.StatusCode:
    """Run ``call`` (which drains any stream) and return its status code."""
    try:
        call()
    except grpc.RpcError as e:
        SEEN[e.code().name] += 1
        assert e.code() in CLEAN, (e.code(), e.details())
        assert e.details(), "a refusal must say why"
        return e.code()
    SEEN["OK"] += 1
    return grpc.StatusCode.OK


# ── strategies ──────────────────────────────────────────────────────────────────────────────

FLOATS = st.floats(width=32) | st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-45, 3.4e38])
UINT32 = st.integers(0, 2**32 - 1)
OTHER_CIDS = st.sampled_from(
    [
        "",
        "not-a-cid",
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",  # well-formed, unknown
        "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",  # CIDv0
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
    ]
) | st.text(max_size=80)
ROLES = st.sampled_from(["user", "system", "assistant", "", "tool", "USER", "user\x00"]) | st.text(max_size=10)
TEXT = st.text(min_size=1, max_size=200) | st.sampled_from(["", "x" * (MAX_PROMPT_TOKENS * 16 + 1), "hello " * (MAX_PROMPT_TOKENS + 5)])


@st.composite
def sampling(draw) -> pb.SamplingParams:
    """In-range values, except (most often) one field drawn from anything its type holds."""
    hostile = draw(st.none() | st.sampled_from(["max_new_tokens", "temperature", "top_p", "seed", "stop"]))
    pick = lambda field, valid, anything: draw(anything if field == hostile else valid)  # noqa: E731
    s = pb.SamplingParams(
        max_new_tokens=pick("max_new_tokens", st.integers(1, MAX_NEW_TOKENS), UINT32),
        top_k=draw(UINT32),  # any uint32 is valid
    )
    s.stop.extend(pick("stop", st.lists(st.text(min_size=1, max_size=20), max_size=3), st.lists(st.text(max_size=150), max_size=10)))
    if draw(st.booleans()) or hostile == "temperature":
        s.temperature = pick("temperature", st.floats(0, 10, width=32), FLOATS)
    if draw(st.booleans()) or hostile == "top_p":
        s.top_p = pick("top_p", st.floats(0, 1, exclude_min=True, width=32), FLOATS)
    if draw(st.booleans()) or hostile == "seed":
        s.seed = pick("seed", st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1))
    return s


@st.composite
def vouchers(draw, info, priced: str) -> pb.Voucher | None:
    kind = draw(st.sampled_from(["none", "random", "right_addresses"]))
    if kind == "none":
        return None
    if kind == "random":
        return pb.Voucher(
            client=draw(st.text(max_size=50)),
            node=draw(st.text(max_size=50)),
            epoch=draw(st.integers(0, 2**64 - 1)),
            cumulative_amount=draw(st.text(max_size=90) | st.integers(-(2**300), 2**300).map(str)),
            signature=draw(st.binary(max_size=80)),
        )
    amount = draw(st.integers(0, 2**256 + 5))
    v = voucher_to_pb(voucher(info, CLIENT, min(amount, 2**256 - 1), cid=priced, price=PRICE))
    v.cumulative_amount = str(amount)
    if draw(st.booleans()):
        v.signature = draw(st.binary(min_size=65, max_size=65))
    v.epoch = draw(st.sampled_from([0, 1, 2**64 - 1]))
    return v


@st.composite
def generate_requests(draw, info, priced: str) -> pb.GenerateRequest:
    adapter = draw(st.just(priced) | OTHER_CIDS)
    req = pb.GenerateRequest(adapter=adapter, sampling=draw(sampling()))
    if draw(st.booleans()):
        req.prompt = draw(TEXT)
    elif draw(st.booleans()):
        req.chat.messages.extend(
            pb.ChatMessage(role=draw(ROLES), content=draw(TEXT)) for _ in range(draw(st.integers(0, 4)))
        )
    v = draw(vouchers(info, priced))
    if v is not None:
        req.voucher.CopyFrom(v)
    return req


# ── the properties ──────────────────────────────────────────────────────────────────────────


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_random_generate_requests_end_in_clean_statuses(stub, info, priced, data) -> None:
    request = data.draw(generate_requests(info, priced))
    status_of(lambda: list(stub.Generate(request, timeout=CALL_TIMEOUT_S)))


@FUZZ
@given(data=st.data())
def test_random_quote_requests_end_in_clean_statuses(stub, info, priced, data) -> None:
    g = data.draw(generate_requests(info, priced))
    request = pb.GetQuoteRequest(adapter=g.adapter, max_new_tokens=g.sampling.max_new_tokens)
    if g.WhichOneof("input") == "prompt":
        request.prompt = g.prompt
    elif g.WhichOneof("input") == "chat":
        request.chat.CopyFrom(g.chat)
    request.client = data.draw(st.sampled_from(["", CLIENT.address, CLIENT.address.lower()]) | st.text(max_size=50))
    status_of(lambda: stub.GetQuote(request, timeout=CALL_TIMEOUT_S))


@st.composite
def publish_streams(draw) -> list[pb.PublishAdapterRequest]:
    parts = []
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["empty", "valid", "edited", "random"]))
        manifest = {
            "empty": lambda: b"",
            "valid": lambda: VALID_MANIFEST,  # signed for another base: refused as base_mismatch
            "edited": lambda: mutate(VALID_MANIFEST, SimpleNamespace(draw=draw)),
            "random": lambda: draw(st.binary(max_size=200)),
        }[kind]()
        parts.append(pb.PublishAdapterRequest(header=pb.PublishHeader(manifest=manifest, name=draw(st.text(max_size=20)))))
    names = st.sampled_from(["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "../x", ".", ""]) | st.text(max_size=30)
    for _ in range(draw(st.integers(0, 4))):
        parts.append(pb.PublishAdapterRequest(chunk=pb.FileChunk(path=draw(names), data=draw(st.binary(max_size=4096)))))
    if draw(st.booleans()) and parts:  # a second header, anywhere
        parts.insert(draw(st.integers(0, len(parts))), pb.PublishAdapterRequest(header=pb.PublishHeader(manifest=VALID_MANIFEST)))
    return parts


@FUZZ
@given(parts=publish_streams())
def test_random_publish_streams_end_in_clean_statuses(stub, parts) -> None:
    code = status_of(lambda: stub.PublishAdapter(iter(parts), timeout=CALL_TIMEOUT_S))
    assert code is not grpc.StatusCode.OK  # nothing here is a whole, correctly signed adapter for this base


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.text(min_size=1, max_size=100).map(lambda t: "Q" + t),  # one kept token: see the test below
    temperature=st.just(0.0) | st.floats(2.0**-90, 10, width=32),
    top_p=st.floats(0, 1, exclude_min=True, width=32),
    top_k=UINT32,
    seed=st.integers(0, 2**63 - 1),
    stop=st.lists(st.text(min_size=1, max_size=20), max_size=8),
)
def test_paid_calls_with_any_valid_sampling_run_to_the_end(session, priced, prompt, temperature, top_p, top_k, seed, stop) -> None:
    stream = session.generate(
        prompt, raw=True, adapter=priced, max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
        stop=tuple(stop),
    )  # fmt: skip
    stream.text()
    assert stream.done.usage.completion_tokens <= MAX_NEW_TOKENS
    assert stream.done.receipt.signature  # paid, and receipted


@pytest.mark.parametrize("rpc", ["Generate", "GetQuote"])
def test_a_prompt_the_tokenizer_drops_whole_is_invalid_argument(stub, rpc: str) -> None:
    """Hypothesis found "\x16": one character, no token; the quote priced 0 prompt tokens and failed UNKNOWN."""
    if rpc == "Generate":
        call = lambda: list(stub.Generate(pb.GenerateRequest(prompt="\x16", sampling=pb.SamplingParams(max_new_tokens=1)), timeout=CALL_TIMEOUT_S))  # noqa: E731
    else:
        call = lambda: stub.GetQuote(pb.GetQuoteRequest(prompt="\x16"), timeout=CALL_TIMEOUT_S)  # noqa: E731
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "empty once tokenized" in e.value.details()


def test_a_composition_of_a_hundred_thousand_parts_is_refused_by_its_count(stub) -> None:
    """The parts are counted before they are joined, parsed or their vouchers read."""
    part = pb.AdapterPart(cid="bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", weight=0.5)
    request = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_new_tokens=1), adapters=[part] * 100_000)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(request, timeout=CALL_TIMEOUT_S))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "got 100000 in adapters" in e.value.details()


@pytest.mark.parametrize("cid", ["b", "z", "0"])
def test_a_lone_multibase_prefix_as_adapter_is_invalid_argument(stub, cid: str) -> None:
    request = pb.GenerateRequest(adapter=cid, prompt="hi", sampling=pb.SamplingParams(max_new_tokens=1))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Generate(request, timeout=CALL_TIMEOUT_S))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


def test_a_tiny_temperature_is_sampled_not_raised() -> None:
    logits = torch.tensor([[30.0, 10.0, -5.0]])
    params = SamplingParams(max_new_tokens=1, temperature=1e-45)
    params.validate(MAX_NEW_TOKENS)  # accepted by the request checks
    assert sample_next(logits, [params], [params.generator()]) == [0]


def test_after_the_fuzzing_the_node_is_serving_and_answers_a_normal_call(node, session, priced) -> None:
    with grpc.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="openlora.v1.Node"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stream = session.generate("What is 2 + 2?", adapter=priced, max_new_tokens=MAX_NEW_TOKENS, temperature=0)
    assert stream.text() and stream.done.usage.completion_tokens == MAX_NEW_TOKENS
    assert stream.done.receipt.signature  # paid, and receipted
    assert node.proc.poll() is None
    print(f"\nfuzzed calls by status: {dict(SEEN.most_common())}")
