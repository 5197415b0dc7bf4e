"""The client SDK (openlora.client): the async client against a real node, and the retry rules against real gRPC
servers.

    node subprocess (one per module) ◄── NodeClient / AsyncNodeClient: same answers, same greedy text, a paid call
    in-process gRPC server scripted to fail ◄── both clients: RESOURCE_EXHAUSTED retried, a late server reached,
                                                 RetryPolicy.none() fails at once, a stream never retried mid-way
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest
from pay_fixtures import CLIENT, MEDICAL, PUBLISHER, QUESTION, start_node

from openlora.chain.pricing import cost_wei
from openlora.client import (
    AsyncNodeClient,
    AsyncPaidSession,
    AsyncPaidStream,
    NodeClient,
    RetryPolicy,
    aroute,
    generate_request,
    never_sent,
    register_adapter,
)
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc

PRICE = 1000  # wei per 1k tokens
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


# ----- backoff arithmetic -----


@pytest.mark.parametrize(
    "policy",
    [RetryPolicy(), RetryPolicy(max_attempts=10, initial_backoff_s=0.05, max_backoff_s=0.3, multiplier=3.0)],
)
def test_backoff_is_full_jitter_under_the_capped_exponential(policy):
    rng = random.Random(7)
    for retry in range(8):
        cap = min(policy.max_backoff_s, policy.initial_backoff_s * policy.multiplier**retry)
        delays = [policy.backoff_s(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        # full jitter spans the whole range, not a band near the cap
        assert min(delays) < 0.1 * cap and max(delays) > 0.9 * cap
    # the same seed gives the same delays
    assert [policy.backoff_s(3, random.Random(1)) for _ in range(3)] == [policy.backoff_s(3, random.Random(1))] * 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"initial_backoff_s": 0}, "0 < initial_backoff_s <= max_backoff_s"),
        ({"initial_backoff_s": 3.0, "max_backoff_s": 2.0}, "0 < initial_backoff_s <= max_backoff_s"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
    ],
)
def test_retry_policy_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_client_sdk_loads_no_model_chain_or_swarm_code():
    """Clients start instantly: importing the SDK and the CLI and opening both clients loads no torch,
    transformers, peft, web3 or libp2p (those load only for paying, publishing or routing)."""
    code = (
        "import asyncio, sys, openlora.cli\n"
        "from openlora.client import AsyncNodeClient, NodeClient\n"
        "NodeClient('127.0.0.1:1').close()\n"
        "async def main():\n"
        "    await AsyncNodeClient('127.0.0.1:1').close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'web3', 'libp2p') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----- a real gRPC server scripted to fail -----


class Scripted(node_pb2_grpc.NodeServicer):
    """Answers each call of a method with the next status of ``failures[method]`` while any is left, then
    succeeds; ``Generate`` streams "a", "b" and a done message, or with ``break_after_first`` fails after "a".
    ``calls`` counts the calls per method."""

    def __init__(self, failures: dict[str, list[grpc.StatusCode]] | None = None, break_after_first: bool = False):
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.break_after_first = break_after_first
        self.calls = {"GetNodeInfo": 0, "Generate": 0}
        self._lock = threading.Lock()

    def _answer(self, method: str, context) -> None:
        with self._lock:
            self.calls[method] += 1
            queue = self.failures.get(method, [])
            code = queue.pop(0) if queue else None
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def GetNodeInfo(self, request, context):
        self._answer("GetNodeInfo", context)
        return pb.NodeInfo(base_model="scripted")

    def Generate(self, request, context):
        self._answer("Generate", context)
        yield pb.GenerateResponse(text="a")
        if self.break_after_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "scripted break mid-stream")
        yield pb.GenerateResponse(text="b")
        yield pb.GenerateResponse(done=pb.GenerateDone(finish_reason=pb.FINISH_REASON_LENGTH))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(servicer: Scripted, port: int = 0) -> tuple[grpc.Server, str]:
    """A real gRPC server for ``servicer`` on 127.0.0.1 (``port`` 0: a free one); stop it with ``stop(None)``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    node_pb2_grpc.add_NodeServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def scripted(request):
    """A started scripted server (``request.param``: its constructor kwargs) and its address; stopped after."""
    servicer = Scripted(**getattr(request, "param", {}))
    server, address = serve(servicer)
    yield servicer, address
    server.stop(None)


def sync_calls(address: str, policy: RetryPolicy) -> tuple[str, str]:
    """GetNodeInfo, then a whole Generate, through a NodeClient."""
    with NodeClient(address, timeout=10, retry=policy) as c:
        return c.node_info().base_model, c.generate("q").text()


def async_calls(address: str, policy: RetryPolicy) -> tuple[str, str]:
    """GetNodeInfo, then a whole Generate, through an AsyncNodeClient."""

    async def run():
        async with AsyncNodeClient(address, timeout=10, retry=policy) as c:
            return (await c.node_info()).base_model, await c.generate("q").text()

    return asyncio.run(run())


CLIENTS = pytest.mark.parametrize("calls", [sync_calls, async_calls], ids=["sync", "async"])
BUSY, DOWN = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE
BUSY_TWICE = {"failures": {"GetNodeInfo": [BUSY, BUSY], "Generate": [BUSY, DOWN]}}


@CLIENTS
@pytest.mark.parametrize("scripted", [BUSY_TWICE], indirect=True)
def test_busy_and_unavailable_answers_are_retried_before_the_first_token(calls, scripted):
    servicer, address = scripted
    assert calls(address, FAST) == ("scripted", "ab")
    assert servicer.calls == {"GetNodeInfo": 3, "Generate": 3}


@CLIENTS
@pytest.mark.parametrize("scripted", [BUSY_TWICE], indirect=True)
def test_retry_policy_none_fails_at_once(calls, scripted):
    servicer, address = scripted
    with pytest.raises(grpc.RpcError) as e:
        calls(address, RetryPolicy.none())
    assert e.value.code() == BUSY and servicer.calls == {"GetNodeInfo": 1, "Generate": 0}


@CLIENTS
@pytest.mark.parametrize("scripted", [{"failures": {"GetNodeInfo": [BUSY] * 9}}], indirect=True)
def test_retries_stop_after_max_attempts(calls, scripted):
    servicer, address = scripted
    with pytest.raises(grpc.RpcError) as e:
        calls(address, FAST)
    assert e.value.code() == BUSY and servicer.calls["GetNodeInfo"] == FAST.max_attempts


@CLIENTS
@pytest.mark.parametrize("scripted", [{"break_after_first": True}], indirect=True)
def test_a_stream_that_delivered_a_token_is_never_retried(calls, scripted):
    servicer, address = scripted
    with pytest.raises(grpc.RpcError) as e:
        calls(address, FAST)
    assert e.value.code() == DOWN and "mid-stream" in e.value.details()
    assert servicer.calls == {"GetNodeInfo": 1, "Generate": 1}


@CLIENTS
def test_a_node_that_starts_late_is_reached(calls):
    """UNAVAILABLE (connection refused) is retried: the server comes up ~0.5 s after the first attempt."""
    port = free_port()
    servicer = Scripted()
    started: list[grpc.Server] = []
    timer = threading.Timer(0.5, lambda: started.append(serve(servicer, port)[0]))
    timer.start()
    try:
        # enough attempts that the jittered sleeps outlast 0.5 s whatever the draws
        patient = RetryPolicy(max_attempts=40, initial_backoff_s=0.05, max_backoff_s=0.2)
        assert calls(f"127.0.0.1:{port}", patient) == ("scripted", "ab")
    finally:
        timer.join()
        for server in started:
            server.stop(None)
    assert servicer.calls == {"GetNodeInfo": 1, "Generate": 1}


def test_only_unsent_requests_count_as_retryable_for_paid_calls(scripted):
    servicer, address = scripted
    refused = free_port()
    with NodeClient(f"127.0.0.1:{refused}", retry=RetryPolicy.none()) as c, pytest.raises(grpc.RpcError) as e:
        c.node_info()
    not_sent = e.value
    servicer.failures = {"GetNodeInfo": [DOWN, BUSY, grpc.StatusCode.INVALID_ARGUMENT]}
    answered = []
    with NodeClient(address, retry=RetryPolicy.none()) as c:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as e:
                c.node_info()
            answered.append(e.value)
    unavailable, busy, invalid = answered
    policy, rng = RetryPolicy(), random.Random(0)
    assert never_sent(not_sent) and not never_sent(unavailable)
    # free calls: both retryable codes, whoever answered; never other codes, never past max_attempts
    assert all(policy.delay(err, 1, rng) is not None for err in (not_sent, unavailable, busy))
    assert policy.delay(invalid, 1, rng) is None and policy.delay(busy, policy.max_attempts, rng) is None
    # paid calls: only a request that never left this process
    assert policy.delay(not_sent, 1, rng, paid=True) is not None
    assert policy.delay(unavailable, 1, rng, paid=True) is None and policy.delay(busy, 1, rng, paid=True) is None


def test_async_routing_reports_an_unreachable_swarm_as_a_swarm_error():
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.peer.id import ID

    from openlora.p2p.errors import SwarmError

    dead = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{ID.from_pubkey(create_new_key_pair().public_key).to_base58()}"
    with pytest.raises(SwarmError, match="could not reach"):
        asyncio.run(aroute(dead))


# ----- against a real node -----


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = start_node(tmp_path_factory.mktemp("node"))
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def client(node):
    with NodeClient(node.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def medical(client):
    return client.publish(MEDICAL, PUBLISHER, name="medical").cid


def run_async(address: str, work):
    """``await work(client)`` with a fresh AsyncNodeClient on a fresh event loop."""

    async def main():
        async with AsyncNodeClient(address, timeout=120) as c:
            return await work(c)

    return asyncio.run(main())


def test_async_client_answers_as_the_sync_client(node, client, medical):
    async def work(c: AsyncNodeClient):
        return await c.node_info(), await c.list_adapters(), await c.get_adapter(medical)

    info, adapters, adapter = run_async(node.address, work)
    sync_info = client.node_info()
    assert (info.base_model, info.base_fingerprint, info.chain.node_address) == (
        sync_info.base_model, sync_info.base_fingerprint, sync_info.chain.node_address,
    )  # fmt: skip
    assert medical in {a.cid for a in adapters}
    assert adapter.cid == medical and adapter.publisher == PUBLISHER.address


@pytest.mark.parametrize("adapter", ["medical", None])
def test_async_stream_equals_sync_greedy_text(node, client, medical, adapter):
    cid = medical if adapter else None
    expected = client.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=8).text()

    async def work(c: AsyncNodeClient):
        stream = c.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=8)
        chunks = [t async for t in stream]
        return chunks, stream.done

    chunks, done = run_async(node.address, work)
    assert "".join(chunks) == expected and len(chunks) > 1  # streamed, not one message
    assert done.usage.completion_tokens == 8
    if adapter:
        assert expected.startswith("Clinical note:")


def test_async_publish_returns_the_same_cid_as_sync(node, client):
    async def work(c: AsyncNodeClient):
        return (await c.publish(MEDICAL, PUBLISHER, name="medical", created_at=1_700_000_000)).cid

    assert run_async(node.address, work) == client.publish(MEDICAL, PUBLISHER, name="medical", created_at=1_700_000_000).cid


def test_async_paid_call_carries_a_voucher_and_returns_a_checked_receipt(node, client):
    cid = client.publish(MEDICAL, PUBLISHER, name="medical-priced", price_per_1k_tokens=PRICE).cid
    register_adapter(client, cid, PUBLISHER)
    unpaid = client.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=6)

    async def work(c: AsyncNodeClient):
        session = AsyncPaidSession(c, CLIENT)
        state = await session.open_channel(10**15)
        stream = await session.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=6)
        text = await stream.text()
        channel = (await session.quote(generate_request("x", raw=True, max_new_tokens=1))).channel
        return state, stream, text, channel

    with pytest.raises(grpc.RpcError) as e:
        unpaid.text()
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    state, stream, text, channel = run_async(node.address, work)
    assert state.deposited == 10**15
    assert isinstance(stream, AsyncPaidStream) and text.startswith("Clinical note:")
    usage = stream.done.usage
    receipt = stream.receipt
    assert receipt is not None and receipt.cost == cost_wei(usage.prompt_tokens + usage.completion_tokens, PRICE)
    assert receipt.cost <= int(stream.quote.max_cost_wei) and receipt.client == CLIENT.address
    assert int(channel.charged_total) == receipt.charged_total  # the node booked what the receipt says


@pytest.mark.parametrize("stop, expected", [("seven", ["seven"]), (("a", "bc"), ["a", "bc"]), ((), [])])
def test_a_stop_string_is_one_stop_not_its_characters(stop, expected):
    assert list(generate_request("x", stop=stop).sampling.stop) == expected
