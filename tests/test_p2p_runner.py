"""The trio-thread bridge the swarm is built on (openlora.p2p.runner)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
from openlora.p2p import SwarmNotRunning, SwarmStartError
from openlora.p2p.runner import TrioThread


async def idle_service(*, task_status: trio.TaskStatus) -> None:
    task_status.started("ready")
    await trio.sleep_forever()


@pytest.fixture
def loop() -> TrioThread:
    thread = TrioThread("test-loop")
    assert thread.start(idle_service, timeout=5) == "ready"
    yield thread
    thread.stop(5)


def test_results_and_errors_cross_threads(loop: TrioThread) -> None:
    async def add(a: int, b: int) -> tuple[int, str]:
        await trio.sleep(0)
        return a + b, threading.current_thread().name

    async def fail() -> None:
        raise KeyError("boom")

    assert loop.call(add, 2, 3, timeout=5) == (5, "test-loop")
    with pytest.raises(KeyError, match="boom"):
        loop.call(fail, timeout=5)
    assert loop.running  # a failing call does not take the loop down


def test_asyncio_can_await_calls(loop: TrioThread) -> None:
    async def double(x: int) -> int:
        return 2 * x

    async def main() -> list[int]:
        return list(await asyncio.gather(*(asyncio.wrap_future(loop.submit(double, i)) for i in range(5))))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


def test_stopping_fails_calls_in_flight_and_refuses_new_ones() -> None:
    thread = TrioThread("test-stop")
    thread.start(idle_service, timeout=5)
    pending = thread.submit(trio.sleep_forever)
    thread.stop(5)
    with pytest.raises(SwarmNotRunning):
        pending.result(5)
    with pytest.raises(SwarmNotRunning):
        thread.submit(trio.sleep, 0)
    assert not thread.running
    thread.stop(5)  # idempotent


def test_a_service_that_fails_to_start_raises_its_error() -> None:
    async def broken(*, task_status: trio.TaskStatus) -> None:
        raise OSError("port taken")

    thread = TrioThread("test-broken")
    with pytest.raises(SwarmStartError, match="port taken") as err:
        thread.start(broken, timeout=5)
    assert isinstance(err.value.__cause__, OSError)
    assert not thread.running
