"""A trio event loop in its own thread, callable from any other thread or from asyncio.

    caller thread / asyncio                      runner thread (trio.run)
    ─────────────────────────                    ───────────────────────────────────────
    start(service) ───────────────────────────►  root nursery ── service(task_status) …
        ◄── blocks until task_status.started(v)     (a crash before that is raised here)
    submit(fn, *args) -> concurrent Future ───►  run_sync_soon: nursery.start_soon(fn)
        await asyncio.wrap_future(fut)              result / exception set on the Future
    stop() ───────────────────────────────────►  cancel the root nursery, service unwinds,
        joins the thread                            pending Futures fail with SwarmNotRunning

py-libp2p is trio-only; the node's gRPC side is asyncio. Nothing crosses between the two loops
but ``concurrent.futures.Future`` objects and trio's thread-safe ``run_sync_soon``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .errors import SwarmNotRunning, SwarmStartError

log = logging.getLogger(__name__)

Service = Callable[..., Awaitable[None]]
"""``async def service(*, task_status)``: set up, call ``task_status.started(value)``, then run
until cancelled."""


class TrioThread:
    """Runs one trio service in a daemon thread and executes submitted coroutines in its loop.

    Args:
        name: thread name (shows in debuggers and thread dumps).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether the loop thread is alive and accepting work."""
        return self._thread is not None and self._thread.is_alive() and self._token is not None

    def start(self, service: Service, timeout: float) -> Any:
        """Start the thread and the service; return what the service passed to ``started``.

        Raises:
            SwarmStartError: the service failed before starting (its error is chained) or did
                not start within ``timeout`` seconds.
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already started")
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(service, ready), name=self.name, daemon=True)
        self._thread.start()
        try:
            return ready.result(timeout)
        except concurrent.futures.TimeoutError:
            self.stop(timeout)
            raise SwarmStartError(f"{self.name} did not start within {timeout} s") from None
        except Exception as e:
            self._thread.join(timeout)
            self._thread = None
            raise SwarmStartError(f"{self.name} failed to start: {e}") from e

    def _run(self, service: Service, ready: concurrent.futures.Future) -> None:
        try:
            trio.run(self._root, service, ready)
        except BaseException as e:
            while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                e = e.exceptions[0]  # trio wraps nursery errors; show the real one
            if not ready.done():  # a start-up failure: start() raises it
                ready.set_exception(e)
            else:
                log.exception("%s crashed", self.name)

    async def _root(self, service: Service, ready: concurrent.futures.Future) -> None:
        self._stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                value = await nursery.start(service)
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                ready.set_result(value)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._token = None
            self._nursery = None

    def submit(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> concurrent.futures.Future:
        """Run ``await fn(*args)`` in the loop; its outcome lands on the returned Future.

        The Future fails with ``SwarmNotRunning`` when the loop stops before ``fn`` finishes.

        Raises:
            SwarmNotRunning: the loop is not running.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        token = self._token
        if token is None:
            raise SwarmNotRunning(f"{self.name} is not running; call start() first")

        def spawn() -> None:
            if self._nursery is None:
                fut.set_exception(SwarmNotRunning(f"{self.name} stopped"))
            else:
                self._nursery.start_soon(self._settle, fut, fn, args)

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise SwarmNotRunning(f"{self.name} stopped") from None
        return fut

    async def _settle(self, fut: concurrent.futures.Future, fn: Callable, args: tuple) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(await fn(*args))
        except trio.Cancelled:
            fut.set_exception(SwarmNotRunning(f"{self.name} stopped while the call ran"))
            raise
        except Exception as e:
            fut.set_exception(e)

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float | None = None) -> Any:
        """``submit(fn, *args).result(timeout)``: run in the loop and wait for the result.

        Raises:
            SwarmNotRunning: the loop is not running or stopped meanwhile.
            concurrent.futures.TimeoutError: no result within ``timeout`` seconds.
            Whatever ``fn`` raises.
        """
        return self.submit(fn, *args).result(timeout)

    def stop(self, timeout: float) -> None:
        """Cancel everything running in the loop and join the thread (idempotent).

        Raises:
            TimeoutError: the thread did not end within ``timeout`` seconds.
        """
        thread, token, stop = self._thread, self._token, self._stop
        if thread is None:
            return
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):  # already ending on its own
                token.run_sync_soon(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{self.name} did not stop within {timeout} s")
        self._thread = None
