"""Per-client rate limits on the paid and expensive API calls: one token bucket per client key.

    call ──► key: the ``x-openlora-client`` metadata value if sent, else the caller's IP
         ──► bucket[key]: refilled at ``rate`` tokens/s up to ``burst``; a call takes one token
         ──► empty: RESOURCE_EXHAUSTED "rate limit: N requests/s per client (--client-rate-limit); retry in T s"

The buckets live in an LRU of at most ``max_clients`` keys, so a flood of distinct keys costs
bounded memory: the least recently seen key is forgotten (and would start again with a full
bucket). The key is what the caller says it is — a gateway that fronts many clients names each
one in ``x-openlora-client`` — so the limit protects the node from a client that is not trying
to hide, and from one address hammering it; a caller that invents a new key per call escapes
the per-client limit and is bounded only by the node's queue (``--max-waiting``).

:class:`RateLimiter` knows nothing about gRPC (the HTTP API calls :meth:`RateLimiter.check` too);
:class:`RateLimitInterceptor` applies it to the ``openlora.v1.Node`` methods in :data:`LIMITED`.
The algorithm is the classic token bucket (e.g. RFC 2697's single-rate meter, without colours).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import grpc

from ..config import flag_name

CLIENT_KEY_HEADER = "x-openlora-client"
MAX_CLIENT_KEY_CHARS = 128
LIMITED = frozenset(
    {
        "/openlora.v1.Node/Generate",
        "/openlora.v1.Node/PublishAdapter",
        "/openlora.v1.Node/GetQuote",
        "/openlora.v1.Node/Verify",
    }
)
RATE_FLAG = flag_name("client_rate_limit_rps")


class RateLimited(Exception):
    """A client is over its rate; the message names the limit and the setting that changes it.

    Attributes:
        key: the client key that was refused.
        retry_after_s: seconds until one token is back in the bucket.
    """

    def __init__(self, key: str, rate: float, retry_after_s: float) -> None:
        super().__init__(
            f"rate limit: {rate:g} requests/s per client ({RATE_FLAG}); retry in {retry_after_s:.2f} s"
        )
        self.key = key
        self.retry_after_s = retry_after_s


class RateLimiter:
    """Token buckets keyed by client, thread-safe, bounded to ``max_clients`` keys (LRU).

    Args:
        rate: tokens added per second per client (> 0), i.e. sustained requests/s.
        burst: bucket size (≥ 1): requests a quiet client may send at once.
        max_clients: keys remembered at most; the least recently used is dropped beyond it.
        clock: monotonic seconds (tests pass their own).

    Raises:
        ValueError: ``rate`` ≤ 0, ``burst`` < 1 or ``max_clients`` < 1.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate!r} (0 means no limiter: pass None instead)")
        if burst < 1 or max_clients < 1:
            raise ValueError(f"burst and max_clients must be ≥ 1, got burst={burst!r}, max_clients={max_clients!r}")
        self.rate = float(rate)
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, last refill)

    def check(self, key: str) -> None:
        """Take one token from ``key``'s bucket.

        Raises:
            RateLimited: the bucket is empty; ``retry_after_s`` says when one token is back.
        """
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        if not allowed:
            raise RateLimited(key, self.rate, (1.0 - tokens) / self.rate)

    def __len__(self) -> int:
        """Client keys remembered now (≤ ``max_clients``)."""
        return len(self._buckets)


def client_key(metadata, peer: str) -> str:
    """The rate-limit key of one call: ``client:<x-openlora-client>`` if sent, else ``ip:<address>``.

    Args:
        metadata: the call's invocation metadata (``(key, value)`` pairs).
        peer: ``context.peer()``: ``ipv4:127.0.0.1:5555``, ``ipv6:[::1]:5555``, ``unix:/path``.

    The header value is cut to ``MAX_CLIENT_KEY_CHARS`` so a huge value costs no more memory than
    a short one; the port is dropped from the address so one host's connections share a bucket.
    """
    for k, v in metadata or ():
        if k == CLIENT_KEY_HEADER and v:
            return "client:" + (v if isinstance(v, str) else v.decode("utf-8", "replace"))[:MAX_CLIENT_KEY_CHARS]
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        rest = rest.rsplit(":", 1)[0].strip("[]")
    return "ip:" + rest


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls to :data:`LIMITED` methods over the caller's rate with RESOURCE_EXHAUSTED.

    The caller's address is only known inside the call (``context.peer()``), so the check wraps
    the method's handler rather than running before it is chosen. Other methods (health,
    reflection, node info, listings) pass untouched: they are cheap and monitoring needs them.

    Args:
        limiter: the buckets to take from.
    """

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def _admit(self, metadata, context: grpc.aio.ServicerContext) -> None:
        try:
            self.limiter.check(client_key(metadata, context.peer()))
        except RateLimited as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in LIMITED:
            return handler
        metadata = handler_call_details.invocation_metadata
        admit = self._admit
        codec = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                await admit(metadata, context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                await admit(metadata, context)
                async for response in inner_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
        if handler.stream_unary is not None:
            inner_upload = handler.stream_unary

            async def stream_unary(request_iterator, context):
                await admit(metadata, context)
                return await inner_upload(request_iterator, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
        return handler  # stream-stream: none of the limited methods is one
