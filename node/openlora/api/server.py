"""The node's gRPC server: ``openlora.v1.Node`` plus ``grpc.health.v1`` and server reflection.

    request ──► grpc core: messages over MAX_MESSAGE_BYTES refused (RESOURCE_EXHAUSTED); at most
                MAX_CONCURRENT_STREAMS calls at once per connection; handshake and idle deadlines
            ──► RateLimitInterceptor (Generate / PublishAdapter / GetQuote / Verify, per client; ratelimit.py)
            ──► NodeServicer (servicer.py: per-request limits, payment, engine)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..v1 import node_pb2, node_pb2_grpc
from .ratelimit import RateLimiter, RateLimitInterceptor
from .servicer import NodeServicer

log = logging.getLogger(__name__)

SERVICE = node_pb2.DESCRIPTOR.services_by_name["Node"].full_name
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 64  # calls in flight on one client connection
HANDSHAKE_TIMEOUT_MS = 10_000  # from TCP accept to a complete HTTP/2 handshake
MAX_CONNECTION_IDLE_MS = 300_000  # a connection with no call for this long is closed (GOAWAY)


async def start_server(
    servicer: NodeServicer, host: str, port: int, limiter: RateLimiter | None = None
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Bind and start the server.

    Args:
        servicer: the Node implementation.
        host: interface to listen on (the node defaults to 127.0.0.1).
        port: TCP port; 0 picks a free one.
        limiter: per-client buckets for Generate / PublishAdapter / GetQuote / Verify (``None``: no limit);
            pass the same one to the HTTP API so a client has one budget across both.

    Returns:
        ``(server, bound port, health servicer)``; health reports SERVING for the Node service.

    Raises:
        RuntimeError: the address cannot be bound.
    """
    server = grpc.aio.server(
        interceptors=[RateLimitInterceptor(limiter)] if limiter is not None else [],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # a connection may carry MAX_CONCURRENT_STREAMS calls at once (more wait client-side); one
            # that never completes its HTTP/2 handshake, or stays idle, is closed (descriptors are finite)
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
            ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
            ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ]
    )
    node_pb2_grpc.add_NodeServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot listen on {host}:{port} (in use?)")
    await server.start()
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer


def not_serving_on(on_exit: Callable[[Callable[[], None]], None], health: health.aio.HealthServicer) -> None:
    """Turn health to NOT_SERVING (the Node service and the server as a whole) when the engine thread ends.

    Args:
        on_exit: the engine's ``on_exit`` (the listener runs on the engine thread).
        health: the servicer :func:`start_server` returned; updated on the running loop.
    """
    loop = asyncio.get_running_loop()

    async def mark() -> None:
        for service in (SERVICE, ""):
            await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    def exited() -> None:
        log.warning("the engine thread has ended: health is NOT_SERVING")
        asyncio.run_coroutine_threadsafe(mark(), loop)

    on_exit(exited)
