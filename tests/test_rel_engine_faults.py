"""Faults inside the engine thread: a hostile adapter's non-finite logits, out of memory joining the
KV cache, the host cache's byte bound, and health once the engine thread is gone.

The real base (float32) and the trained demo adapters run in a real :class:`Engine`. The hostile
adapter is the medical one with its scaling raised to 1e30: finite weights that overflow attention
to NaN (verification now refuses such a scaling, ``scaling_limit``; the engine must still contain
any adapter that overflows on some prompt). Out of memory is injected at the one allocation that
joins new rows to the running KV cache (``KVBatch.join`` raising ``MemoryError`` once), the way
``RLIMIT_FSIZE`` stands in for a full disk elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import DOMAINS
from openlora.engine.kv import KVBatch
from openlora.engine.sampling import SamplingParams
from openlora.engine.scheduler import Failed, Finished, GenerationRequest, NonFiniteLogits, TorchEngine
from openlora.engine.slots import HostCache, SlotManager
from test_engine import QUESTIONS, Loader, rm, solo, submit  # noqa: F401  (rm is a fixture)


class HostileLoader(Loader):
    """The demo adapters, plus ``hostile``: the medical weights at scaling 1e30."""

    def __call__(self, cid: str):
        if cid != "hostile":
            return super().__call__(cid)
        medical = super().__call__("medical")
        modules = {n: dataclasses.replace(m, scaling=1e30) for n, m in medical.modules.items()}
        return dataclasses.replace(medical, modules=modules)


@pytest.fixture
def engine(rm):  # noqa: F811
    loader = HostileLoader(rm)
    eng = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, 2), HostCache(8), loader, max_batch=8, max_waiting=16)
    eng.loader = loader
    eng.start()
    yield eng
    eng.stop()


def test_non_finite_logits_fail_only_the_rows_that_produced_them(engine):
    sampled = dict(temperature=0.7, seed=7)  # torch.multinomial raises on NaN probabilities: the old batch-wide failure
    alone = {d: solo(engine, QUESTIONS[0], d, **sampled) for d in (None, "medical")}
    calls = {d: submit(engine, QUESTIONS[0], d, **sampled) for d in (None, "hostile", "medical")}
    _, final = calls["hostile"].wait()
    assert isinstance(final, Failed) and isinstance(final.error, NonFiniteLogits), final
    assert "non-finite logits" in str(final.error)
    for d in (None, "medical"):
        text, final = calls[d].wait()
        assert isinstance(final, Finished), (d, final)
        assert text == alone[d]
    assert engine.alive and engine.stats()["running"] == 0


def test_out_of_memory_joining_the_kv_cache_fails_only_the_new_rows(engine, monkeypatch):
    alone = solo(engine, QUESTIONS[1], None, max_new_tokens=40)
    join = KVBatch.join
    failures = []

    def join_out_of_memory_once(self, other):
        if not failures:
            failures.append(1)
            raise MemoryError("injected: no memory to join the KV cache")
        return join(self, other)

    running = submit(engine, QUESTIONS[1], None, max_new_tokens=40)
    while not running.parts:  # the first row is decoding: the next request must join it
        pass
    monkeypatch.setattr(KVBatch, "join", join_out_of_memory_once)
    joining = submit(engine, QUESTIONS[2], None)
    _, final = joining.wait()
    assert isinstance(final, Failed) and isinstance(final.error, MemoryError), final
    text, final = running.wait()
    assert isinstance(final, Finished) and text == alone
    assert engine.alive
    assert isinstance(submit(engine, QUESTIONS[3], "legal").wait()[1], Finished)  # the loop goes on


def test_the_host_cache_is_bounded_in_bytes(rm):  # noqa: F811
    loader = Loader(rm)
    adapters = {d: loader(d) for d in DOMAINS}
    size = max(a.nbytes for a in adapters.values())
    cache = HostCache(64, max_bytes=2 * size)
    for d in DOMAINS:
        cache.put(d, adapters[d])
        assert cache.nbytes <= 2 * size
    assert len(cache) == 2 and cache.get(DOMAINS[0]) is None  # the least recently used went first
    tiny = HostCache(64, max_bytes=1)
    tiny.put("medical", adapters["medical"])
    assert tiny.get("medical") is not None  # the adapter just put stays (the engine installs it next)
    tiny.put("legal", adapters["legal"])
    assert len(tiny) == 1 and tiny.nbytes == adapters["legal"].nbytes
    tiny.drop("legal")
    assert tiny.nbytes == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_health_stops_saying_serving_when_the_engine_thread_dies(tmp_path, model_cache):
    from openlora.config import NodeSettings
    from openlora.node import Node

    async def scenario():
        settings = NodeSettings(
            data_dir=tmp_path, model_cache=model_cache, port=0, http_port=0, p2p=False, dtype="float32", threads=1
        )
        node = Node(settings)
        await node.start()
        try:
            async with grpc.aio.insecure_channel(node.address) as ch:
                health = health_pb2_grpc.HealthStub(ch)
                check = health_pb2.HealthCheckRequest(service="openlora.v1.Node")
                assert (await health.Check(check, timeout=30)).status == health_pb2.HealthCheckResponse.SERVING

                def die(event):  # a BaseException no engine guard catches: the thread ends
                    raise SystemExit("injected engine death")

                engine = node._engine
                engine.submit(GenerationRequest(engine.codec.encode_prompt("hi"), SamplingParams(max_new_tokens=2), die))
                await asyncio.to_thread(engine._thread.join, 60)
                assert not engine.alive
                for _ in range(100):  # the listener runs on the loop soon after the thread ended
                    status = (await health.Check(check, timeout=30)).status
                    if status != health_pb2.HealthCheckResponse.SERVING:
                        break
                    await asyncio.sleep(0.05)
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                whole = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                assert whole.status == health_pb2.HealthCheckResponse.NOT_SERVING
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"http://{node.http_address}/health", timeout=30)).status_code == 503
        finally:
            await node.stop(0.5)

    asyncio.run(scenario())
