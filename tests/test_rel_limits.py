"""Hostile input, limits: request size limits and the per-client rate limit (api/ratelimit.py).

The token bucket is tested alone with a clock of our own (no sleeps, no timing asserts); then one
real node subprocess with small limits shows each limit as a client sees it: a prompt over
``--max-prompt-tokens`` and ``max_new_tokens`` over ``--max-new-tokens`` are INVALID_ARGUMENT
naming the limit, a message over 8 MiB is RESOURCE_EXHAUSTED from gRPC itself, and a client over
``--client-rate-limit`` gets RESOURCE_EXHAUSTED on Generate / GetQuote / PublishAdapter while
other clients, and the cheap calls (node info, health), are unaffected. The node's refill rate is
0.01 requests/s, so a bucket emptied in a test stays empty for the test's length whatever the
machine's speed.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from openlora.api.calls import CHAT_MESSAGE_OVERHEAD_CHARS, MAX_CHAT_MESSAGES
from openlora.api.ratelimit import CLIENT_KEY_HEADER, MAX_CLIENT_KEY_CHARS, RateLimited, RateLimiter, client_key
from openlora.api.server import MAX_MESSAGE_BYTES
from openlora.local import NodeProcess
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc

# ── the token bucket ────────────────────────────────────────────────────────────────────────


class Clock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drain(limiter: RateLimiter, key: str) -> int:
    """Calls ``key`` gets before the first refusal (clock standing still)."""
    n = 0
    while True:
        try:
            limiter.check(key)
        except RateLimited:
            return n
        n += 1


def test_a_bucket_gives_its_burst_then_refuses_until_it_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=5, clock=clock)
    assert drain(limiter, "a") == 5
    with pytest.raises(RateLimited) as e:
        limiter.check("a")
    assert str(e.value).startswith("rate limit: 2 requests/s per client (--client-rate-limit)")
    assert e.value.retry_after_s == pytest.approx(0.5)
    clock.now += 0.5  # one token back
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    clock.now += 3600  # a long pause refills to the burst, not beyond
    assert drain(limiter, "a") == 5


def test_clients_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, clock=Clock())
    assert drain(limiter, "a") == 2
    assert drain(limiter, "b") == 2


def test_memory_is_bounded_by_forgetting_the_least_recently_seen_client() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=100, clock=Clock())
    limiter.check("first")
    for i in range(10_000):
        limiter.check(f"flood-{i}")
    assert len(limiter) == 100
    limiter.check("first")  # forgotten, so a full bucket again; the flood cost bounded memory


@pytest.mark.parametrize("rate, burst, max_clients", [(0, 1, 1), (-1, 1, 1), (float("nan"), 1, 1), (1, 0, 1), (1, 1, 0)])
def test_bad_limiter_settings_are_refused(rate: float, burst: int, max_clients: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(rate, burst, max_clients)


@pytest.mark.parametrize(
    "metadata, peer, key",
    [
        ((), "ipv4:127.0.0.1:5555", "ip:127.0.0.1"),
        ((), "ipv6:[::1]:5555", "ip:::1"),
        ((), "unix:/tmp/sock", "ip:/tmp/sock"),
        (((CLIENT_KEY_HEADER, "alice"),), "ipv4:127.0.0.1:5555", "client:alice"),
        (((CLIENT_KEY_HEADER, ""),), "ipv4:10.0.0.1:1", "ip:10.0.0.1"),
        ((("other", "x"), (CLIENT_KEY_HEADER, b"bob")), "ipv4:127.0.0.1:1", "client:bob"),
        (((CLIENT_KEY_HEADER, "z" * 10_000),), "ipv4:127.0.0.1:1", "client:" + "z" * MAX_CLIENT_KEY_CHARS),
    ],
)
def test_client_keys(metadata, peer: str, key: str) -> None:
    assert client_key(metadata, peer) == key


# ── a node with small limits ────────────────────────────────────────────────────────────────

MAX_PROMPT_TOKENS, MAX_NEW_TOKENS, BURST = 16, 8, 3


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(
        tmp_path_factory.mktemp("limits-node"), "--no-p2p", "--no-http", "--threads", "1",
        "--max-prompt-tokens", str(MAX_PROMPT_TOKENS), "--max-new-tokens", str(MAX_NEW_TOKENS),
        "--client-rate-limit", "0.01", "--client-rate-limit-burst", str(BURST),
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def channel(node):
    with grpc.insecure_channel(node.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return node_pb2_grpc.NodeStub(channel)


def as_client(name: str) -> tuple[tuple[str, str], ...]:
    return ((CLIENT_KEY_HEADER, name),)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def generate(stub, client: str, prompt: str = "Hi", max_new_tokens: int = 2) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=0))
    return list(stub.Generate(request, metadata=as_client(client), timeout=120))


def quote(stub, client: str) -> pb.Quote:
    return stub.GetQuote(pb.GetQuoteRequest(prompt="Hi", max_new_tokens=1), metadata=as_client(client), timeout=60)


def publish(stub, client: str) -> pb.PublishAdapterResponse:
    return stub.PublishAdapter(iter([pb.PublishAdapterRequest(header=pb.PublishHeader())]), metadata=as_client(client), timeout=60)


def test_a_prompt_over_the_limit_is_invalid_argument_naming_the_limit(stub) -> None:
    e = refusal(lambda: generate(stub, "long-prompt", prompt="word " * (MAX_PROMPT_TOKENS * 2)))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"up to {MAX_PROMPT_TOKENS}" in e.details()


def test_max_new_tokens_over_the_limit_is_invalid_argument_naming_the_limit(stub) -> None:
    e = refusal(lambda: generate(stub, "many-tokens", max_new_tokens=MAX_NEW_TOKENS + 1))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"up to {MAX_NEW_TOKENS}" in e.details()
    assert generate(stub, "many-tokens-ok", max_new_tokens=MAX_NEW_TOKENS)[-1].done.usage.completion_tokens <= MAX_NEW_TOKENS


def test_the_default_max_new_tokens_never_exceeds_the_limit(stub) -> None:
    # 0 asks for the node's default (128), which a node with a smaller limit must cap, not refuse
    done = generate(stub, "default-tokens", max_new_tokens=0)[-1].done
    assert 1 <= done.usage.completion_tokens <= MAX_NEW_TOKENS


@pytest.mark.parametrize("which", ["prompt", "new_tokens"])
def test_limit_messages_name_the_flag(stub, which: str) -> None:
    if which == "prompt":
        e = refusal(lambda: generate(stub, "flag-prompt", prompt="word " * (MAX_PROMPT_TOKENS * 2)))
        assert "--max-prompt-tokens" in e.details()
    else:
        e = refusal(lambda: generate(stub, "flag-new", max_new_tokens=MAX_NEW_TOKENS + 1))
        assert "--max-new-tokens" in e.details()


@pytest.mark.parametrize("field", ["prompt", "chunk"])
def test_a_message_over_8_mib_is_resource_exhausted_by_grpc(stub, field: str) -> None:
    big = "x" * (MAX_MESSAGE_BYTES + 1)
    if field == "prompt":
        e = refusal(lambda: list(stub.Generate(pb.GenerateRequest(prompt=big), metadata=as_client("big"), timeout=60)))
    else:
        chunk = pb.PublishAdapterRequest(chunk=pb.FileChunk(path="adapter_model.safetensors", data=big.encode()))
        e = refusal(lambda: stub.PublishAdapter(iter([chunk]), metadata=as_client("big-chunk"), timeout=60))
    assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_MESSAGE_BYTES) in e.details()


@pytest.mark.parametrize("method", ["generate", "quote", "publish"])
def test_a_client_over_the_rate_limit_is_resource_exhausted(stub, method: str) -> None:
    call = {"generate": generate, "quote": quote, "publish": publish}[method]
    client = f"rate-{method}"
    for _ in range(BURST):  # the burst is served (a publish without a manifest is refused, but served)
        try:
            call(stub, client)
        except grpc.RpcError as e:
            assert e.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
    e = refusal(lambda: call(stub, client))
    assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.details().startswith("rate limit: 0.01 requests/s per client (--client-rate-limit)")
    assert quote(stub, f"{client}-other").prompt_tokens > 0  # another client is not affected


def test_an_exhausted_client_still_gets_health_and_node_info(stub, channel) -> None:
    for _ in range(BURST):
        quote(stub, "cheap-calls")
    assert refusal(lambda: quote(stub, "cheap-calls")).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.GetNodeInfo(pb.GetNodeInfoRequest(), metadata=as_client("cheap-calls"), timeout=30).base_model
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="openlora.v1.Node"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_without_a_client_header_the_caller_address_is_the_key(stub) -> None:
    request = pb.GetQuoteRequest(prompt="Hi", max_new_tokens=1)
    for _ in range(BURST):  # every call without the header in this module comes from 127.0.0.1
        stub.GetQuote(request, timeout=60)
    e = refusal(lambda: stub.GetQuote(request, timeout=60))
    assert e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def chat(n: int, content: str = "") -> pb.GenerateRequest:
    messages = [pb.ChatMessage(role="user", content=content)] * n
    return pb.GenerateRequest(chat=pb.ChatMessages(messages=messages), sampling=pb.SamplingParams(max_new_tokens=1, temperature=0))


def test_a_million_empty_chat_messages_are_refused_by_count_before_templating(stub) -> None:
    request = chat(1_000_000)
    assert request.ByteSize() < MAX_MESSAGE_BYTES  # grpc lets it through: the node's own limit must refuse it
    e = refusal(lambda: list(stub.Generate(request, metadata=as_client("many-messages"), timeout=120)))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"chat has 1000000 messages; this node accepts up to {MAX_CHAT_MESSAGES}" in e.details()
    assert stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=30).base_model


def test_chat_messages_count_their_template_overhead_in_the_character_limit(stub) -> None:
    # --max-prompt-tokens 16: 256 characters; 5 empty messages count 5 × 64 for their markers
    limit = MAX_PROMPT_TOKENS * 16
    assert 5 * CHAT_MESSAGE_OVERHEAD_CHARS > limit
    e = refusal(lambda: list(stub.Generate(chat(5), metadata=as_client("overhead"), timeout=120)))
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"chat is longer than {limit} characters" in e.details() and "template markers" in e.details()
