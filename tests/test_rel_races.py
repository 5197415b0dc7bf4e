"""Concurrency races, each against the real part: adapter load/unload/reload on the running engine, two clients
racing one payment channel, the same adapter published twice at once (and while a fetch of it is in flight).

Threads start together behind a barrier so the racing sections really overlap; each test states what must
hold whatever the interleaving.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from chain_fixtures import base_world, world  # noqa: F401
from test_engine import QUESTIONS, Loader, rm, solo, submit  # noqa: F401

from adapter_corpus import PUBLISHER, template_files
from openlora.adapters.catalog import AdapterState, Catalog
from openlora.adapters.manifest import encode_manifest
from openlora.adapters.package import build_manifest
from openlora.adapters.signing import sign_manifest
from openlora.adapters.store import AdapterStore, manifest_cid
from openlora.adapters.verify import BaseProfile
from openlora.chain.contracts import adapter_id
from openlora.chain.errors import PaymentError, StaleVoucher
from openlora.chain.ledger import Ledger
from openlora.chain.payments import NodePayments
from openlora.chain.pricing import cost_wei
from openlora.chain.records import Voucher
from openlora.chain.settlement import Settler
from openlora.chain.vouchers import sign_voucher
from openlora.content import BlockStore
from openlora.engine.interface import Finished
from openlora.engine.scheduler import TorchEngine
from openlora.engine.slots import HostCache, SlotManager

# -- load / unload / reload on the running engine ----------------------------------------------------------


def test_unload_and_reload_racing_requests_never_serve_stale_weights(rm):  # noqa: F811
    """Requests for three adapters through two device slots, while two threads keep unloading (evict from
    the device and drop from the host cache) the adapters between requests: every answer equals that
    adapter's answer alone, and unloaded adapters are loaded again."""
    loader = Loader(rm)
    engine = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, 2), HostCache(8), loader, max_batch=8, max_waiting=64)
    engine.loader = loader
    engine.start()
    domains = ("medical", "legal", "finance")
    question = QUESTIONS[0]
    try:
        alone = {d: solo(engine, question, d, max_new_tokens=6) for d in domains}
        assert len(set(alone.values())) == 3  # the adapters are told apart by this question
        stop = threading.Event()
        evicted = [0]
        start = threading.Barrier(4)

        def unloader(seed: int) -> None:
            rng = random.Random(seed)
            start.wait()
            while not stop.is_set():
                cid = rng.choice(domains)
                if engine.slots.evict(cid):  # refused while a request holds the slot
                    evicted[0] += 1
                engine.host.drop(cid)
                time.sleep(0.01)  # unload often, but leave the engine thread the GIL to serve

        def client(seed: int) -> list[tuple[str, object, str]]:
            rng = random.Random(seed)
            start.wait()
            calls = [(d, submit(engine, question, d, max_new_tokens=6)) for d in rng.choices(domains, k=6)]
            return [(d, *c.wait()) for d, c in calls]

        with ThreadPoolExecutor(4) as pool:
            unloaders = [pool.submit(unloader, s) for s in (1, 2)]
            clients = [pool.submit(client, s) for s in (3, 4)]
            results = [r for c in clients for r in c.result(timeout=300)]
            stop.set()
            for u in unloaders:
                u.result(timeout=30)
        for domain, text, final in results:
            assert isinstance(final, Finished), final
            assert text == alone[domain], f"{domain} answered with other weights"
        assert evicted[0] >= 1 and len(loader.calls) > len(domains)  # unloads happened and adapters reloaded
        assert solo(engine, question, "finance", max_new_tokens=6) == alone["finance"]
    finally:
        engine.stop()


# -- two clients racing one payment channel -----------------------------------------------------------------

NODE_FEE = 500
MAX_TOKENS = 40


def test_two_clients_racing_one_channel_cannot_double_spend(world, tmp_path):  # noqa: F811
    """Two clients hold the same channel key and send vouchers at once, the same cumulative amounts (a replay
    race) plus some of their own. The node accepts a voucher only above the latest accepted amount and only when
    it covers everything committed: accepted amounts rise strictly in acceptance order, no amount is accepted
    twice, and what is settled equals what was charged, within the last voucher."""
    cid = world.register()
    world.channels.deposit(world.client, world.node.address, 10**7)
    ledger = Ledger(tmp_path / "ledger.sqlite", world.node, world.channels.domain, world.chain.genesis_hash)
    settler = Settler(ledger, world.channels, world.node, every_calls=10**6)
    payments = NodePayments(world.registry, world.channels, ledger, NODE_FEE, settler)
    max_cost = cost_wei(MAX_TOKENS, 1000 + NODE_FEE)
    shared = [k * max_cost for k in range(1, 13)]

    def vouchers(extra_seed: int) -> list[int]:
        rng = random.Random(extra_seed)
        return sorted(shared + [rng.randrange(1, 13 * max_cost) for _ in range(4)])

    accepted: list[tuple[int, int]] = []  # (receipt id, amount)
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        signed = [
            sign_voucher(
                world.client,
                Voucher(world.client.address, world.node.address, 0, a, adapter_id(cid, world.publisher.address), 1000 + NODE_FEE, a),
                world.channels.domain,
            )
            for a in vouchers(seed)
        ]
        start.wait()
        for voucher in signed:
            try:
                auth = payments.authorize(voucher, cid, MAX_TOKENS, world.publisher.address)
            except PaymentError as e:
                with lock:
                    refused.append(type(e).__name__)
                continue
            payments.finalize(auth, rng.randint(1, MAX_TOKENS))
            with lock:
                accepted.append((auth.receipt_id, voucher.voucher.cumulative_amount))

    try:
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(client, s) for s in (1, 2)]:
                f.result(timeout=120)
        amounts = [a for _, a in sorted(accepted)]
        assert amounts == sorted(set(amounts)), "accepted amounts must rise strictly"
        assert len(accepted) + len(refused) == 32 and StaleVoucher.__name__ in refused  # the replays lost
        totals, latest = ledger.channel(world.client.address, 0)
        assert latest.voucher.cumulative_amount == amounts[-1]
        assert totals.committed == totals.charged <= latest.voucher.cumulative_amount
        result = settler.settle_now()
        assert result is not None and result.ok
        state = world.channels.channel(world.client.address, world.node.address)
        assert state.redeemed == totals.charged  # paid exactly what was charged, once
        assert world.channels.usage(adapter_id(cid, world.publisher.address)).calls == len(accepted)  # each accepted call attributed once
    finally:
        ledger.close()


# -- the same adapter published twice at once -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path, rm, base_source):  # noqa: F811
    profile = BaseProfile(base_source.name, base_source.fingerprint, rm.base_modules, rm.max_rank)
    s = AdapterStore(BlockStore(tmp_path / "blocks"), Catalog(tmp_path / "catalog.sqlite"), profile)
    yield s
    s.catalog.close()


def signed_adapter(store: AdapterStore) -> tuple[bytes, dict[str, bytes]]:
    files = template_files()
    base = store.base
    unsigned = build_manifest(
        files, base_name=base.name, base_fingerprint=base.fingerprint, publisher=PUBLISHER.address, name="medical"
    )
    return encode_manifest(sign_manifest(unsigned, PUBLISHER)), files


@pytest.mark.parametrize("publishers", [2, 4])
def test_the_same_adapter_published_at_once_gives_one_cid_and_one_catalog_row(store, publishers):
    raw, files = signed_adapter(store)
    start = threading.Barrier(publishers)

    def publish() -> str:
        start.wait()
        return store.publish(raw, files)

    with ThreadPoolExecutor(publishers) as pool:
        cids = [f.result(timeout=120) for f in [pool.submit(publish) for _ in range(publishers)]]
    assert set(cids) == {manifest_cid(raw)}
    rows = store.catalog.list()
    assert [(e.cid, e.state) for e in rows] == [(cids[0], AdapterState.READY)]
    assert not any((store.blocks.root / "tmp").iterdir())
    assert len(store.load(cids[0]).modules) == 120


def test_a_publish_while_a_fetch_of_the_same_adapter_is_in_flight_leaves_it_ready(store):
    """A peer's announcement made the adapter AVAILABLE and a fetch of it started (FETCHING) when its publisher
    uploads it here: the upload completes it, and the fetch finishing afterwards keeps it READY."""
    raw, files = signed_adapter(store)
    cid = manifest_cid(raw)
    assert store.learn(cid, raw, "medical")
    store.catalog.set_state(cid, AdapterState.FETCHING)
    assert store.publish(raw, files) == cid
    assert store.catalog.get(cid).state is AdapterState.READY
    adapter = store.admit_fetched(cid)  # the fetch's blocks are the published ones: verified again
    assert len(adapter.modules) == 120 and store.catalog.get(cid).state is AdapterState.READY
