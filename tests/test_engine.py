"""The engine loop on the real base and the trained demo adapters (float32, greedy).

Continuous batching must not change what a request computes: every request here is also run
alone, and the texts must be equal whatever joined or left the batch around it.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import DEMO_ADAPTERS, DOMAINS
from openlora.adapters.peft_format import load_adapter
from openlora.adapters.reasons import AdapterRejected, RejectReason
from openlora.engine.model import load_resident
from openlora.engine.sampling import SamplingParams
from openlora.engine.interface import Failed, FinishReason, Finished, GenerationRequest, QueueFull, TextDelta
from openlora.engine.scheduler import TorchEngine
from openlora.engine.slots import HostCache, SlotManager

QUESTIONS = [
    "What are the early signs of Lyme disease?",
    "Can a landlord raise the rent in the middle of a lease?",
    "What is a target-date fund?",
    "How should I prepare for an important meeting?",
]


@pytest.fixture(scope="module")
def rm(base_source):
    return load_resident(base_source, "float32", n_slots=2, max_rank=16)


class Loader:
    """The engine's adapter loader over the fixture folders, with an optional delay per CID."""

    def __init__(self, rm) -> None:
        self.rm = rm
        self.delay: dict[str, float] = {}
        self.calls: list[str] = []

    def __call__(self, cid: str):
        self.calls.append(cid)
        time.sleep(self.delay.get(cid, 0.0))
        if cid == "broken":
            raise AdapterRejected(RejectReason.BAD_SAFETENSORS, "adapter_model.safetensors cannot be read")
        folder = DEMO_ADAPTERS / cid
        return load_adapter(
            (folder / "adapter_config.json").read_bytes(),
            (folder / "adapter_model.safetensors").read_bytes(),
            self.rm.base_modules,
            self.rm.max_rank,
        )


@pytest.fixture
def engine(rm):
    loader = Loader(rm)
    eng = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, 2), HostCache(8), loader, max_batch=8, max_waiting=16)
    eng.loader = loader
    eng.start()
    yield eng
    eng.stop()


class Call:
    """Collects one request's events; ``wait()`` returns (text, final event)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.stamps: list[float] = []
        self.final = None
        self.request_id = ""
        self._done = threading.Event()

    def __call__(self, ev) -> None:
        if isinstance(ev, TextDelta):
            self.parts.append(ev.text)
            self.stamps.append(time.perf_counter())
        else:
            self.final = ev
            self._done.set()

    def wait(self, timeout: float = 120.0):
        assert self._done.wait(timeout), "request did not finish"
        return "".join(self.parts), self.final


def submit(engine, question, adapter=None, **sampling) -> Call:
    call = Call()
    params = SamplingParams(**{"max_new_tokens": 16, "temperature": 0.0, **sampling})
    req = GenerationRequest(engine.codec.encode_chat([{"role": "user", "content": question}]), params, call, adapter)
    call.request_id = req.request_id
    engine.submit(req)
    return call


def solo(engine, question, adapter=None, **sampling) -> str:
    text, final = submit(engine, question, adapter, **sampling).wait()
    assert isinstance(final, Finished), final
    return text


def test_staggered_mixed_batch_equals_solo_runs(engine):
    plan = [(q, a) for q, a in zip(QUESTIONS, [None, "medical", "legal", "finance"])] + [(QUESTIONS[0], "finance")]
    alone = {(q, a): solo(engine, q, a) for q, a in plan}
    assert len({alone[(QUESTIONS[0], None)], alone[(QUESTIONS[0], "finance")]}) == 2  # adapters matter
    calls = {}
    for i, (q, a) in enumerate(plan):  # join while the others decode
        calls[(q, a)] = submit(engine, q, a)
        time.sleep(0.15 * i)
    for key, call in calls.items():
        text, final = call.wait()
        assert final.reason in (FinishReason.STOP, FinishReason.LENGTH)
        assert text == alone[key], key


def test_three_adapters_through_two_slots(engine):
    """max_loras=2: the third adapter waits for a slot held by a running row, then runs correctly."""
    alone = {d: solo(engine, QUESTIONS[3], d) for d in DOMAINS}
    calls = {d: submit(engine, QUESTIONS[3], d) for d in DOMAINS}
    for d, call in calls.items():
        text, final = call.wait()
        assert isinstance(final, Finished)
        assert text == alone[d]
    assert len(set(alone.values())) == 3
    assert len(engine.slots.resident()) == 2


def test_loading_adapter_waits_while_batch_keeps_decoding(engine):
    engine.loader.delay["legal"] = 1.5
    base = submit(engine, QUESTIONS[0], None, max_new_tokens=40)
    time.sleep(0.3)
    t_load = time.perf_counter()
    legal = submit(engine, QUESTIONS[1], "legal")
    base_text, _ = base.wait()
    legal_text, legal_final = legal.wait()
    assert isinstance(legal_final, Finished)
    tokens_during_load = [t for t in base.stamps if t_load < t < t_load + 1.4]
    assert len(tokens_during_load) >= 3, "the running row stalled while an adapter loaded"
    assert legal_text == solo(engine, QUESTIONS[1], "legal")


def test_failed_load_fails_only_its_requests(engine):
    good = submit(engine, QUESTIONS[0], "medical")
    bad = [submit(engine, QUESTIONS[1], "broken") for _ in range(2)]
    base = submit(engine, QUESTIONS[2])
    for call in bad:
        _, final = call.wait()
        assert isinstance(final, Failed) and isinstance(final.error, AdapterRejected)
    for call in (good, base):
        text, final = call.wait()
        assert isinstance(final, Finished) and text


def test_cancel_frees_the_row_and_the_slot(engine):
    call = submit(engine, QUESTIONS[0], "medical", max_new_tokens=500)
    while not call.parts:
        time.sleep(0.01)
    req_slot = engine.slots.slot_of("medical")
    engine.cancel(call.request_id)
    _, final = call.wait(10)
    assert final.reason is FinishReason.CANCELLED
    assert final.completion_tokens < 500
    assert engine.stats()["running"] == 0
    # the slot has no reference left: it can be evicted
    assert req_slot is not None and engine.slots.evict("medical")


def test_bounded_queue_answers_queue_full(rm):
    eng = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, 2), HostCache(2), Loader(rm), max_waiting=2)
    # not started: nothing drains the queue
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    ids = rm.codec.encode_prompt("hello")
    for _ in range(2):
        eng.submit(GenerationRequest(ids, params, lambda ev: None))
    with pytest.raises(QueueFull):
        eng.submit(GenerationRequest(ids, params, lambda ev: None))


def test_prompt_beyond_context_is_refused(engine):
    with pytest.raises(ValueError, match="context"):
        engine.submit(GenerationRequest([1] * 10, SamplingParams(max_new_tokens=engine.codec.max_context), lambda ev: None))


def test_stop_string_and_length(engine):
    full = solo(engine, QUESTIONS[0], "medical", max_new_tokens=24)
    assert full.startswith("Clinical note:")
    text, final = submit(engine, QUESTIONS[0], "medical", max_new_tokens=24, stop=("note",)).wait()
    assert text == "Clinical " and final.reason is FinishReason.STOP
    text, final = submit(engine, QUESTIONS[0], "medical", max_new_tokens=3).wait()
    assert final.reason is FinishReason.LENGTH and final.completion_tokens == 3


def test_seeded_sampling_is_reproducible_inside_any_batch(engine):
    kw = dict(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_new_tokens=12)
    alone = solo(engine, QUESTIONS[3], "finance", **kw)
    others = [submit(engine, q, None, max_new_tokens=20) for q in QUESTIONS]
    text, _ = submit(engine, QUESTIONS[3], "finance", **kw).wait()
    for o in others:
        o.wait()
    assert text == alone
    different = solo(engine, QUESTIONS[3], "finance", **{**kw, "seed": 99})
    assert different != alone


def test_evict_then_reload_serves_fresh_weights(engine):
    first = solo(engine, QUESTIONS[2], "finance")
    solo(engine, QUESTIONS[2], "legal")
    assert engine.slots.evict("finance")
    engine.host.drop("finance")
    solo(engine, QUESTIONS[2], "medical")  # takes the freed slot
    assert solo(engine, QUESTIONS[2], "finance") == first
    assert engine.loader.calls.count("finance") == 2


def test_slot_zero_rows_are_untouched_by_resident_adapters(engine, rm):
    """A base row in a batch full of adapter rows equals the base model alone (plain HF forward)."""
    ids = rm.codec.encode_chat([{"role": "user", "content": QUESTIONS[1]}])
    with torch.inference_mode():
        rm.routing.clear()
        want = rm.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):]
    want_text = rm.codec.tokenizer.decode(want, skip_special_tokens=True)
    calls = [submit(engine, QUESTIONS[1], d) for d in DOMAINS[:2]]
    base = submit(engine, QUESTIONS[1], None)
    assert base.wait()[0] == want_text
    for c in calls:
        c.wait()
