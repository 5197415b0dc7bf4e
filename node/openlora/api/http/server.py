"""uvicorn in the node's asyncio loop: the HTTP API starts and stops with gRPC, in the same process and loop."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext, suppress

import uvicorn
from fastapi import FastAPI

from .limits import GuardedH11Protocol


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the node (which drains gRPC and HTTP together)."""

    def capture_signals(self):
        return nullcontext()


class HttpServer:
    """uvicorn serving ``app`` as a task of the running asyncio loop (the same loop as grpc.aio).

    Args:
        app: the ASGI app.
        host: interface (the node's ``host``, loopback by default).
        port: TCP port; 0 picks a free one (:attr:`port` is the bound one after :meth:`start`).
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _QuietServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            RuntimeError: the address cannot be bound.
        """
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, lifespan="off", log_config=None, access_log=False, ws="none",
            timeout_graceful_shutdown=5, http=GuardedH11Protocol,  # connection cap and head deadline (limits.py)
        )  # fmt: skip
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                self._task = None
                raise RuntimeError(f"cannot listen for HTTP on {self.host}:{self.port} (in use?); set --http-port")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def _serve(self) -> None:
        with suppress(SystemExit):  # uvicorn logs why (e.g. the port is taken) and exits; a task must not raise it
            await self._server.serve()

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (503), let streams finish for ``grace_s`` seconds, then close."""
        self.app.state.ready = False
        if self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = grace_s
        self._server.should_exit = True
        await self._task
