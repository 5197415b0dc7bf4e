"""What one HTTP client may hold: a body cap, a deadline to send a request's head and body, and a connection cap.

    TCP accept ─► over MAX_CONNECTIONS open? ─► 503, closed at once (the descriptor is freed)
               ─► request head not complete within HEAD_TIMEOUT_S (after connect or after the last response)
                   ─► closed
               ─► Content-Length over MAX_BODY_BYTES ─► 413 before a byte of the body is read
               ─► body over MAX_BODY_BYTES as it arrives (chunked) ─► 413; not complete within
                   BODY_TIMEOUT_S ─► 408

A slow client that opens sockets and sends nothing (or a byte a minute) would otherwise keep each
one for ever, and past the process's descriptor limit the node can no longer accept anything, its
gRPC health checks included. The body cap equals gRPC's message cap (``api.server.MAX_MESSAGE_BYTES``).
h11 already bounds a request head to 16 KiB (``h11_max_incomplete_event_size``).
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..server import MAX_MESSAGE_BYTES
from .wire import error_body

MAX_BODY_BYTES = MAX_MESSAGE_BYTES
MAX_CONNECTIONS = 256  # open HTTP connections at most, idle keep-alive ones included
HEAD_TIMEOUT_S = 10.0  # to send a whole request head, seconds
BODY_TIMEOUT_S = 30.0  # to send a whole request body, seconds
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with :data:`MAX_CONNECTIONS` and :data:`HEAD_TIMEOUT_S` (pass as ``http=``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.write(_BUSY)
            transport.close()
            return
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()  # the next request's head has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        old = getattr(self, "_head_timer", None)
        if old is not None:
            old.cancel()
        cycle = self.cycle  # a new request head makes a new cycle

        def expire() -> None:
            if self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, expire)


class BodyLimit:
    """ASGI middleware: a request body over :data:`MAX_BODY_BYTES` is 413, one slower than
    :data:`BODY_TIMEOUT_S` is 408 (both as OpenAI error objects, before the body is parsed).

    Args:
        app: the ASGI app it wraps.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            what = f"{int(length)} bytes" if length.isdigit() else f"Content-Length {length[:32]!r}"
            response = JSONResponse(error_body(413, f"request body is {what}; this node accepts up to {MAX_BODY_BYTES}", "too_large"), 413)
            await response(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BODY_TIMEOUT_S
        received = 0
        body_done = False

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body: the app only waits for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPException(408, f"request body not received within {BODY_TIMEOUT_S:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise HTTPException(413, f"request body is over {MAX_BODY_BYTES} bytes; this node accepts up to {MAX_BODY_BYTES}")
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, limited, send)
