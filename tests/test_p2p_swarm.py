"""The swarm with real in-process libp2p hosts on 127.0.0.1: connect, gossip, catalog sync,
verified block exchange, penalties and bans, node status and routing (openlora.p2p.swarm).

Every host listens on 127.0.0.1 and dials only hosts started here; every one is stopped at the
end of its test. Misbehaving peers are real libp2p peers too: a Swarm whose block store lies,
and bare hosts (``RawPeer``) that publish without validating or speak only bitswap.
"""

from __future__ import annotations

import dataclasses
import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock
from eth_account import Account
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.utils.varint import encode_varint_prefixed
from openlora.adapters.manifest import (
    MANIFEST_VERSION,
    BaseRef,
    FileRef,
    Manifest,
    PeftSummary,
    UnsignedManifest,
    encode_manifest,
    parse_manifest,
)
from openlora.adapters.reasons import AdapterRejected
from openlora.adapters.signing import check_signature, sign_manifest
from openlora.content import (
    RAW,
    BlockNotFound,
    BlockStore,
    cid_text,
    import_bytes,
    make_cid,
)
from openlora.content.importer import CHUNK_SIZE
from openlora.p2p import (
    FetchFailed,
    InvalidMultiaddr,
    NoNodeAvailable,
    SwarmError,
    SwarmNotRunning,
    SwarmStartError,
)
from openlora.p2p.blocks import MAX_WANTERS, PRESENCE_CODEC, UPLOAD_CHUNK, WANTERS_S, Presence, UploadLimit, Wanters
from openlora.p2p.gossip import GOSSIP_PROTOCOLS, MESH_DEGREE, MESH_HIGH, MESH_LOW, build_pubsub
from openlora.p2p.host import build_host, listen_multiaddr, parse_peer_multiaddr
from openlora.p2p.identity import IDENTITY_FILE
from openlora.p2p.peers import PeerEntry
from openlora.p2p.messages import (
    MAX_ANNOUNCEMENT_BYTES,
    TOPIC_ADAPTERS,
    Announcement,
    LocalStatus,
    encode,
)
from openlora.p2p.swarm import RESYNC_PEERS, Swarm, SwarmConfig
from p2p_helpers import RawPeer, raw_peers  # noqa: F401  (fixture)

FP = "sha256:" + "ab" * 32
OTHER_FP = "sha256:" + "cd" * 32
FAST = dict(heartbeat_s=0.2, status_interval_s=0.3, mesh_wait_s=2.0, request_timeout_s=5.0, bootstrap_retry_s=0.5)
WAIT_S = 5.0


PUBLISHER = Account.from_key(b"\x11" * 32)


def validate(raw: bytes) -> Manifest:
    """The manifest hook the tests give the swarm: schema and publisher signature (the node's
    ``Verifier.validate_manifest`` adds base and limits; see the test that uses it)."""
    manifest = parse_manifest(raw)
    check_signature(manifest)
    return manifest


def make_adapter(
    store: BlockStore,
    size: int,
    fingerprint: str = FP,
    name: str = "t",
    seed: int = 0,
    signer=PUBLISHER,  # type: ignore[no-untyped-def]
) -> tuple[str, bytes]:
    """Store a two-file adapter whose weights file has ``size`` random bytes, its manifest
    signed as PUBLISHER by ``signer``; return (adapter CID, weights bytes)."""
    weights = random.Random(seed * 7919 + size).randbytes(size)
    config = json.dumps({"r": 8, "seed": seed}).encode()
    files = [
        FileRef(name="adapter_config.json", cid=store.add_bytes(config), size=len(config)),
        FileRef(name="adapter_model.safetensors", cid=store.add_bytes(weights), size=len(weights)),
    ]
    unsigned = UnsignedManifest(
        version=MANIFEST_VERSION,
        name=name,
        base=BaseRef(name="base", fingerprint=fingerprint),
        peft=PeftSummary(r=8, lora_alpha=16, target_modules=["q_proj"], modules=1),
        files=files,
        publisher=PUBLISHER.address,
        price_per_1k_tokens="1000",
        royalty_bps=500,
        created_at=1_700_000_000 + seed,
    )
    signed = sign_manifest(unsigned, PUBLISHER)
    if signer is not PUBLISHER:  # the publisher's address, another key's signature
        other = sign_manifest(unsigned.model_copy(update={"publisher": signer.address}), signer)
        signed = signed.model_copy(update={"signature": other.signature})
    return store.add_bytes(encode_manifest(signed)), weights


def copy_adapter(src: BlockStore, dst: BlockStore, cid: str) -> None:
    """Copy every block of an adapter from one store to another."""
    manifest = parse_manifest(src.get(cid))
    dst.put(cid, src.get(cid))
    for f in manifest.files:
        import_bytes(src.cat(f.cid), cid_version=1, on_block=dst.put)


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> float:
    """Poll ``condition`` until true; return the seconds it took (fails the test on timeout)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)
    return time.perf_counter() - start


def cids(swarm: Swarm) -> set[str]:
    return {r.cid for r in swarm.catalog_records()}


class LyingStore(BlockStore):
    """A block store that flips the last byte of every large block it reads (a peer that
    serves corrupted file chunks but a genuine manifest, so it can announce the adapter)."""

    def get(self, cid):  # type: ignore[no-untyped-def]
        block = super().get(cid)
        if len(block) > 100_000:
            return block[:-1] + bytes([block[-1] ^ 1])
        return block


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Swarm]]:
    """Start Swarms in ``tmp_path``; all are stopped at the end of the test."""
    started: list[Swarm] = []

    def spawn(
        name: str,
        *,
        bootstrap: tuple[Swarm, ...] = (),
        base: str = FP,
        status: Callable[[], LocalStatus] | None = None,
        store_cls: type[BlockStore] = BlockStore,
        validate_manifest: Callable[[bytes], Manifest] = validate,
        **config: object,
    ) -> Swarm:
        swarm = Swarm(
            tmp_path / name,
            store_cls(tmp_path / name / "blocks"),
            base,
            validate_manifest,
            status=status,
            config=SwarmConfig(bootstrap=tuple(b.multiaddr for b in bootstrap), **{**FAST, **config}),  # type: ignore[arg-type]
        )
        swarm.start()
        started.append(swarm)
        return swarm

    yield spawn
    for swarm in reversed(started):
        swarm.stop()


def connected(a: Swarm, *others: Swarm) -> bool:
    peers = set(a.connected_peers())
    return all(o.peer_id in peers for o in others)


# ── host, identity, lifecycle ───────────────────────────────────────────────────────────────


def test_hosts_listen_on_loopback_and_connect_via_bootstrap(spawn) -> None:
    a = spawn("a")
    b = spawn("b", bootstrap=(a,))
    assert a.multiaddr.startswith("/ip4/127.0.0.1/tcp/")
    assert a.multiaddr.endswith(f"/p2p/{a.peer_id}")
    assert a.peer_id.startswith("16Uiu2")  # a secp256k1 identity
    took = wait_until(lambda: connected(a, b) and connected(b, a), "A and B connected")
    print(f"\nconnect via bootstrap: {took * 1000:.0f} ms")


def test_identity_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = Swarm(tmp_path, BlockStore(tmp_path / "blocks"), FP, validate)
    first.stop()
    again = Swarm(tmp_path, BlockStore(tmp_path / "blocks"), FP, validate)
    again.stop()
    assert again.peer_id == first.peer_id
    assert (tmp_path / IDENTITY_FILE).stat().st_mode & 0o777 == 0o600


def test_calls_before_start_and_after_stop_are_refused(tmp_path: Path) -> None:
    swarm = Swarm(tmp_path, BlockStore(tmp_path / "blocks"), FP, validate, config=SwarmConfig(**FAST))
    with pytest.raises(SwarmNotRunning):
        swarm.announce("bafkqaaa")
    swarm.start()
    swarm.stop()
    with pytest.raises(SwarmNotRunning):
        swarm.connected_peers()
    with pytest.raises(SwarmError, match="make a new one"):
        swarm.start()


def test_stop_releases_the_port_and_the_thread(tmp_path: Path) -> None:
    import threading

    a = Swarm(tmp_path / "a", BlockStore(tmp_path / "a" / "blocks"), FP, validate, config=SwarmConfig(**FAST))
    a.start()
    port = int(a.multiaddr.split("/")[4])
    thread_names = {t.name for t in threading.enumerate()}
    assert any(n.startswith("openlora-p2p-") for n in thread_names)
    a.stop()
    assert not any(t.name.startswith("openlora-p2p-") for t in threading.enumerate())
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again


def test_a_taken_port_fails_start_with_a_clear_error(spawn, tmp_path: Path) -> None:
    a = spawn("a")
    port = int(a.multiaddr.split("/")[4])
    b = Swarm(
        tmp_path / "b", BlockStore(tmp_path / "b" / "blocks"), FP, validate, config=SwarmConfig(port=port, **FAST)
    )
    with pytest.raises(SwarmStartError):
        b.start()
    b.stop()


@pytest.mark.parametrize(
    "addr",
    [
        "/ip4/127.0.0.1/tcp/4001",  # no /p2p/PEERID
        "127.0.0.1:4001",
        "/ip4/127.0.0.1/tcp/4001/p2p/not-a-peer-id",
        "",
    ],
)
def test_bad_bootstrap_multiaddrs_are_refused(addr: str) -> None:
    with pytest.raises(InvalidMultiaddr, match="multiaddr"):
        SwarmConfig(bootstrap=(addr,))


@pytest.mark.parametrize(
    "field,value",
    [
        ("heartbeat_s", 0),
        ("ban_threshold", 5.0),
        ("port", 70000),
        ("listen_host", "localhost"),
        ("ipfs_api", "ftp://x"),
        ("max_upload_bytes_per_s", 0),
    ],
)
def test_bad_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        SwarmConfig(**{field: value})  # type: ignore[arg-type]


# ── gossip and catalog ──────────────────────────────────────────────────────────────────────


def test_announcement_is_relayed_along_a_chain_and_a_late_node_learns_the_catalog(spawn) -> None:
    a = spawn("a")
    b = spawn("b", bootstrap=(a,))
    c = spawn("c", bootstrap=(b,))  # C reaches A only through B: B must relay
    wait_until(lambda: connected(b, a, c), "B connected to A and C")
    cid, _ = make_adapter(a.store, 3000)
    start = time.perf_counter()
    a.announce(cid).result(WAIT_S)
    wait_until(lambda: cid in cids(b) and cid in cids(c), "the announcement reached B and C")
    print(f"\nannouncement A -> B -> C: {(time.perf_counter() - start) * 1000:.0f} ms")
    assert a.peer_id in b.catalog.get(cid).providers  # the signed origin is the provider
    assert a.catalog.get(cid).local and not c.catalog.get(cid).local

    d = spawn("d", bootstrap=(c,))  # joins after the announcement, knows only C
    took = wait_until(lambda: cid in cids(d), "late node D learned the catalog from C")
    print(f"late node catalog sync: {took * 1000:.0f} ms")
    assert d.catalog.get(cid).manifest == a.store.get(cid)


def test_a_catalog_entry_gossip_missed_is_repaired_by_resync_with_a_few_random_peers(spawn) -> None:
    """E holds one unannounced entry when it meets A: A learns it from the connect-time pull. Then E adds
    another, which only a later pull of E (resync) can bring; A has four peers and pulls three a round."""

    def hold(swarm: Swarm, seed: int) -> str:
        cid, _ = make_adapter(swarm.store, 100, seed=seed)
        swarm.catalog.add(cid, swarm.store.get(cid), FP, "never-announced", local=True)
        return cid

    a = spawn("a", catalog_sync_interval_s=0.3)
    alone = spawn("e")
    first = hold(alone, seed=1)
    alone.stop()
    late = spawn("e", bootstrap=(a,))  # the same data dir: it starts with the first entry
    wait_until(lambda: first in cids(a), "A pulled E's catalog when they connected")
    others = [*(spawn(name, bootstrap=(a,)) for name in "bcd"), late]
    assert len(others) > RESYNC_PEERS  # A pulls a random few each interval, not all
    wait_until(lambda: connected(a, *others), "A connected to B..E")
    second = hold(late, seed=2)  # after every connect-time pull of A's
    wait_until(lambda: second in cids(a) and late.peer_id in a.catalog.get(second).providers, "A pulled E's catalog again")


def test_catalog_survives_a_restart(spawn, tmp_path: Path) -> None:
    a = spawn("a")
    cid, _ = make_adapter(a.store, 100)
    a.announce(cid).result(WAIT_S)
    a.stop()
    again = spawn("a")  # same data dir
    assert cid in cids(again) and again.catalog.get(cid).local


def test_announcements_for_another_base_are_relayed_but_not_kept(spawn) -> None:
    from openlora.adapters.verify import BaseProfile, Verifier

    def node_hook(fingerprint: str) -> Callable[[bytes], Manifest]:  # the node's real check
        return Verifier(BaseProfile("base", fingerprint, {}, 64)).validate_manifest

    other = spawn("other", base=OTHER_FP, validate_manifest=node_hook(OTHER_FP))
    a = spawn("a", bootstrap=(other,), validate_manifest=node_hook(FP))
    b = spawn("b", bootstrap=(a,), validate_manifest=node_hook(FP))
    wait_until(lambda: connected(a, other, b), "A connected to both")
    cid, _ = make_adapter(other.store, 100, fingerprint=OTHER_FP)
    other.announce(cid).result(WAIT_S)
    wait_until(lambda: b.stats().declined >= 1, "B saw the other base's announcement through A")
    assert cid in cids(other) and cid not in cids(a) and cid not in cids(b)
    assert a.stats().rejected == {} and a.score(other.peer_id) >= 0


def test_announce_refuses_an_adapter_not_held_completely(spawn, tmp_path: Path) -> None:
    a = spawn("a")
    elsewhere = BlockStore(tmp_path / "elsewhere")
    cid, _ = make_adapter(elsewhere, 2 * CHUNK_SIZE)
    a.store.put(cid, elsewhere.get(cid))  # the manifest only, none of the files
    with pytest.raises(BlockNotFound, match="publish or fetch"):
        a.announce(cid).result(WAIT_S)
    assert cid not in cids(a)


def test_announce_refuses_an_adapter_for_another_base(spawn) -> None:
    a = spawn("a")
    cid, _ = make_adapter(a.store, 100, fingerprint=OTHER_FP)
    with pytest.raises(AdapterRejected, match="base_mismatch"):
        a.announce(cid).result(WAIT_S)


# ── forged and malformed gossip ─────────────────────────────────────────────────────────────


def forged_messages(store: BlockStore) -> dict[str, bytes]:
    cid_x, _ = make_adapter(store, 100, seed=1)
    cid_y, _ = make_adapter(store, 100, seed=2)
    non_canonical = json.dumps(json.loads(store.get(cid_x)), indent=1).encode()
    cid_z, _ = make_adapter(store, 100, seed=3, signer=Account.from_key(b"\x22" * 32))
    return {
        "forged_cid": encode(Announcement.of(cid_x, store.get(cid_y))),  # Y's manifest under X's CID
        "wrong_signer": encode(Announcement.of(cid_z, store.get(cid_z))),  # not signed by its publisher
        "too_large": b"x" * (MAX_ANNOUNCEMENT_BYTES + 1),
        "malformed": b'{"v":1,"cid":"bafk",',
        "bad_manifest": encode(Announcement.of(cid_text(make_cid(non_canonical, RAW)), non_canonical)),
    }


@pytest.mark.parametrize("kind", ["forged_cid", "wrong_signer", "too_large", "malformed", "bad_manifest"])
def test_bad_gossip_is_dropped_not_relayed_and_costs_the_sender(spawn, raw_peers, kind: str) -> None:
    a = spawn("a")
    b = spawn("b", bootstrap=(a,))
    attacker = raw_peers()
    attacker.connect(a.multiaddr)
    wait_until(lambda: connected(a, b) and len(a.connected_peers()) == 2, "A connected to B and the attacker")
    attacker_id = parse_peer_multiaddr(attacker.multiaddr).peer_id.to_base58()

    attacker.publish(forged_messages(a.store)[kind], wait_mesh_with=a.multiaddr)
    wait_until(lambda: a.stats().rejected.get(kind, 0) >= 1, f"A refused the {kind} message")
    assert a.catalog_records() == []
    assert a.score(attacker_id) < 0
    # A does not relay what fails validation: a valid announcement A makes afterwards reaches
    # B over the same stream, so had the bad one been relayed, B would have seen it first.
    cid, _ = make_adapter(a.store, 100, seed=9)
    a.announce(cid).result(WAIT_S)
    wait_until(lambda: cid in cids(b), "B got A's later announcement")
    assert b.stats().rejected == {} and cids(b) == {cid}


def test_a_repeat_forger_is_banned_and_disconnected(spawn, raw_peers) -> None:
    a = spawn("a")
    attacker = raw_peers()
    attacker.connect(a.multiaddr)
    attacker_id = parse_peer_multiaddr(attacker.multiaddr).peer_id.to_base58()
    wait_until(lambda: attacker_id in a.connected_peers(), "A connected to the attacker")
    forged = forged_messages(a.store)["forged_cid"]
    # -10 each, decaying by 0.5 % per heartbeat: the fourth makes sure the -30 ban threshold
    # is reached even if a heartbeat falls between them.
    attacker.publish(forged, forged, forged, forged, wait_mesh_with=a.multiaddr)
    wait_until(lambda: attacker_id in a.stats().banned, "A banned the attacker")
    assert a.stats().rejected["forged_cid"] >= 3
    wait_until(lambda: attacker_id not in a.connected_peers(), "A dropped the attacker")
    assert a.catalog_records() == []


def test_a_spammer_is_rate_limited_and_scored_down(spawn, raw_peers, tmp_path: Path) -> None:
    a = spawn("a", max_messages_per_topic_per_second=5)
    b = spawn("b", bootstrap=(a,))
    spammer = raw_peers()
    spammer.connect(a.multiaddr)
    wait_until(lambda: connected(a, b) and len(a.connected_peers()) == 2, "A connected to B and the spammer")
    spammer_id = parse_peer_multiaddr(spammer.multiaddr).peer_id.to_base58()
    store = BlockStore(tmp_path / "spam")
    valid = [make_adapter(store, 10, seed=100 + i)[0] for i in range(20)]
    spammer.publish(*(encode(Announcement.of(c, store.get(c))) for c in valid), wait_mesh_with=a.multiaddr)
    wait_until(lambda: a.score(spammer_id) < 0 or spammer_id in a.stats().banned, "A scored the spammer down")
    # A relays at most its rate: a later announcement of its own reaches B after whatever A relayed
    own, _ = make_adapter(a.store, 100, seed=99)
    a.announce(own).result(WAIT_S)
    wait_until(lambda: own in cids(b), "B got A's own announcement")
    print(f"\nspam: B got {len(cids(b) & set(valid))} of {len(valid)}; A scores the spammer {a.score(spammer_id):.1f}")
    assert len(cids(b) & set(valid)) < len(valid)


def test_a_peer_the_heartbeat_prunes_is_backed_off_and_not_grafted_again() -> None:
    """GossipSub v1.1: the pruning side backs off too. Without it the pruner re-GRAFTs at its next heartbeat,
    the pruned peer counts a GRAFT flood per topic, and three topics reach the ban threshold."""
    host = build_host(create_new_key_pair(), listen_multiaddr("127.0.0.1", 0))
    pubsub, router = build_pubsub(host, 1.0, -30.0, 10.0)
    crowd = [ID.from_pubkey(create_new_key_pair().public_key) for _ in range(MESH_HIGH + 1)]
    newcomer = ID.from_pubkey(create_new_key_pair().public_key)
    for peer in [*crowd, newcomer]:
        router.peer_protocol[peer] = GOSSIP_PROTOCOLS[0]
    router.mesh[TOPIC_ADAPTERS] = set(crowd)
    pubsub.peer_topics[TOPIC_ADAPTERS] = set(crowd)

    _, pruned = router.mesh_heartbeat()  # D_hi + 1 peers: back to D
    assert len(pruned) == MESH_HIGH + 1 - MESH_DEGREE and len(router.mesh[TOPIC_ADAPTERS]) == MESH_DEGREE
    assert all(router._check_back_off(peer, TOPIC_ADAPTERS) for peer in pruned)

    for peer in list(router.mesh[TOPIC_ADAPTERS])[: MESH_DEGREE - MESH_LOW + 1]:  # under D_lo: it must graft
        router.mesh[TOPIC_ADAPTERS].discard(peer)
        pubsub.peer_topics[TOPIC_ADAPTERS].discard(peer)
    pubsub.peer_topics[TOPIC_ADAPTERS].add(newcomer)
    grafted, _ = router.mesh_heartbeat()
    assert set(grafted) == {newcomer}


# ── block exchange ──────────────────────────────────────────────────────────────────────────


def test_a_multi_block_adapter_is_fetched_and_verified(spawn) -> None:
    a = spawn("a")
    c = spawn("c", bootstrap=(a,))
    cid, weights = make_adapter(a.store, 5 * 2**20)
    a.announce(cid).result(WAIT_S)
    wait_until(lambda: cid in cids(c), "C learned the adapter")
    fetched = c.fetch_adapter(cid).result(30)
    stats = fetched.stats
    print(
        f"\nfetch 5 MiB adapter A -> C: {stats.blocks} blocks in {stats.seconds * 1000:.0f} ms = "
        f"{stats.bytes / stats.seconds / 1e6:.1f} MB/s ({stats.rounds} rounds)"
    )
    assert stats.blocks > 20 and stats.by_source == {a.peer_id: stats.blocks}
    weights_cid = fetched.manifest.file("adapter_model.safetensors").cid
    assert c.store.cat(weights_cid) == weights
    assert c.catalog.get(cid).local
    # C now announces itself as a provider
    wait_until(lambda: c.peer_id in a.catalog.get(cid).providers, "A learned that C holds it")
    again = c.fetch_adapter(cid).result(WAIT_S)
    assert again.stats.blocks == 0  # everything local: nothing fetched


def test_peers_fetching_one_adapter_at_once_trade_its_blocks(spawn) -> None:
    """Fan-out: on links of 1 MB/s, four peers fetching a 2 MB adapter from one provider take
    blocks from each other (the provider names them, each says what it holds). The request timeout
    outlasts the provider's queue, so no fetch falls back on other peers because the provider timed out."""
    limit = dict(max_upload_bytes_per_s=1e6, request_timeout_s=30.0)
    a = spawn("a", **limit)
    fetchers: list[Swarm] = []
    for name in "bcde":  # each dials the provider and the fetchers before it
        fetchers.append(spawn(name, bootstrap=(a, *fetchers), **limit))
    wait_until(lambda: all(connected(f, a, *(g for g in fetchers if g is not f)) for f in fetchers), "all connected")
    cid, weights = make_adapter(a.store, 2_000_000)
    a.announce(cid).result(WAIT_S)
    wait_until(lambda: all(cid in cids(f) for f in fetchers), "every fetcher learned the adapter")
    started = time.perf_counter()
    results = [f.fetch_adapter(cid) for f in fetchers]
    fetched = [r.result(60) for r in results]
    wall = time.perf_counter() - started
    from_peers = sum(n for f in fetched for source, n in f.stats.by_source.items() if source != a.peer_id)
    blocks = sum(f.stats.blocks for f in fetched)
    copies = a.stats().bytes_served / 2_000_000
    print(f"\n4 fetchers of 2 MB on 1 MB/s links: {wall:.1f} s; {from_peers} of {blocks} blocks from other fetchers; provider uploaded {copies:.2f} copies")
    weights_cid = fetched[0].manifest.file("adapter_model.safetensors").cid
    assert all(f.store.cat(weights_cid) == weights for f in fetchers)
    assert from_peers > 0 and not any(f.stats.dropped for f in fetched)
    assert copies < 1.5  # each block from the provider about once (stop 26's fetch: 1.9 to 2.5 copies)


def test_a_fetch_that_started_alone_trades_with_fetchers_who_came_later(spawn) -> None:
    """B starts alone on the provider's 1 MB/s link; C, D and E start a second later. B's survey,
    refreshed every second, names them, and B takes blocks from them too."""
    limit = dict(max_upload_bytes_per_s=1e6, request_timeout_s=30.0)
    a = spawn("a", **limit)
    fetchers: list[Swarm] = []
    for name in "bcde":
        fetchers.append(spawn(name, bootstrap=(a, *fetchers), **limit))
    wait_until(lambda: all(connected(f, a, *(g for g in fetchers if g is not f)) for f in fetchers), "all connected")
    cid, weights = make_adapter(a.store, 6_000_000)
    a.announce(cid).result(WAIT_S)
    wait_until(lambda: all(cid in cids(f) for f in fetchers), "every fetcher learned the adapter")
    first = fetchers[0].fetch_adapter(cid)
    time.sleep(1.0)
    later = [f.fetch_adapter(cid) for f in fetchers[1:]]
    b, *_ = [r.result(60) for r in (first, *later)]
    print(f"\nB, alone for 1 s: {b.stats.seconds:.1f} s; blocks by source {sorted(b.stats.by_source.values())}")
    assert fetchers[0].store.cat(b.manifest.file("adapter_model.safetensors").cid) == weights
    assert set(b.stats.by_source) - {a.peer_id}, "B took every block from the provider"


def test_only_a_peer_that_was_sent_blocks_is_named_as_a_co_fetcher(spawn, raw_peers, tmp_path: Path) -> None:
    """A stranger that asks for blocks the node lacks is not named in presence answers (it would push real
    wanters out and be asked for blocks by fetchers); one that was sent blocks is."""
    a = spawn("a")
    held, _ = make_adapter(a.store, 1000)
    lacked, _ = make_adapter(BlockStore(tmp_path / "elsewhere"), 1000, seed=5)
    hostile, fetcher = raw_peers(), raw_peers()
    for peer in (hostile, fetcher):
        peer.connect(a.multiaddr)
    assert hostile.request_blocks(a.multiaddr, [lacked]) == {}
    answer = fetcher.request_presence(a.multiaddr, [lacked])
    assert answer.wanters == [] and answer.copies == [0] and answer.sent_to == [0]
    assert held in hostile.request_blocks(a.multiaddr, [held])
    answer = fetcher.request_presence(a.multiaddr, [held])
    assert [p.to_base58() for p in answer.wanters] == [hostile.host.get_id().to_base58()]
    assert answer.copies == [0] and answer.sent_to == [0b1]  # sent (none on its way), to the first peer named


def test_a_presence_answer_round_trips_and_a_malformed_one_is_refused() -> None:
    peers = [ID.from_pubkey(create_new_key_pair().public_key) for _ in range(MAX_WANTERS)]
    answer = Presence([True, False, True, *[False] * 6, True], [0, 3, 255, *[1] * 6, 7], [0, 5, 255, *[1] * 6, 128], peers)
    decoded = PRESENCE_CODEC.decode_response(PRESENCE_CODEC.encode_response(answer))
    assert decoded.have[:10] == answer.have and not any(decoded.have[10:]) and decoded.wanters == peers
    assert decoded.copies == answer.copies and decoded.sent_to == answer.sent_to

    def frames(*parts: bytes) -> bytes:
        return b"".join(encode_varint_prefixed(f) for f in parts)

    with pytest.raises(ValueError, match="at most"):
        PRESENCE_CODEC.decode_response(frames(b"\x01", b"\x01", b"\x00", *(p.to_bytes() for p in [*peers, peers[0]])))
    with pytest.raises(ValueError, match="beyond the 2 named"):  # bit 2 of a mask, two peers named
        PRESENCE_CODEC.decode_response(frames(b"\x01", b"\x01", b"\x04", *(p.to_bytes() for p in peers[:2])))
    with pytest.raises(ValueError, match="truncated"):
        PRESENCE_CODEC.decode_response(b"\x05\x01")


def test_an_upload_limit_shares_its_link_block_by_block_and_wanters_are_forgotten() -> None:
    """Virtual time (trio's autojump clock): a one-chunk answer that comes second waits for one chunk
    of the big answer before it, not all four; a block being sent counts as a copy on its way, is
    named as held once sent, and is forgotten after WANTERS_S seconds."""
    done: dict[str, float] = {}

    async def main() -> None:
        link = UploadLimit(UPLOAD_CHUNK)  # one chunk a second

        async def send(name: str, n: int, after: float) -> None:
            await trio.sleep(after)
            await link.send(n)
            done[name] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "big", 4 * UPLOAD_CHUNK, 0.0)
            nursery.start_soon(send, "small", UPLOAD_CHUNK, 0.5)
        wanters, me, other = Wanters(), *(ID.from_pubkey(create_new_key_pair().public_key) for _ in range(2))
        wanters.note(other, ["x", "y"])
        assert wanters.of(["y"], me) == [other] and wanters.of(["y"], other) == [] and wanters.of(["z"], me) == []
        assert wanters.count("y") == 1 and wanters.count("z") == 0
        assert wanters.masks(["x", "y"], [me, other]) == [0, 0]  # being sent: on its way, not held yet
        wanters.note(other, ["y"], sent=True)
        assert wanters.masks(["x", "y"], [me, other]) == [0, 0b10] and wanters.count("y") == 0  # held, not on its way
        await trio.sleep(WANTERS_S + 1)
        assert wanters.of(["y"], me) == [] and wanters.count("y") == 0

    trio.run(main, clock=MockClock(autojump_threshold=0))
    assert done == {"small": 2.0, "big": 5.0}


def test_a_provider_known_only_from_its_status_is_dialled(spawn) -> None:
    status_of = lambda: LocalStatus("127.0.0.1:1", "base", FP, max_batch=1)  # noqa: E731
    a = spawn("a", status=status_of)
    b = spawn("b", bootstrap=(a,))
    c = spawn("c", bootstrap=(b,))
    cid, weights = make_adapter(a.store, 300_000)
    wait_until(lambda: connected(b, a, c), "chain A - B - C connected")
    a.announce(cid).result(WAIT_S)
    wait_until(
        lambda: cid in cids(c) and any(e.peer_id == a.peer_id for e in c.peer_table()), "C knows the adapter and A"
    )
    fetched = c.fetch_adapter(cid).result(30)
    assert fetched.stats.by_source == {a.peer_id: fetched.stats.blocks}
    assert connected(c, a)


def test_a_peer_serving_corrupt_blocks_is_penalised_and_another_serves(spawn) -> None:
    honest = spawn("honest")
    liar = spawn("liar", store_cls=LyingStore)
    cid, weights = make_adapter(honest.store, 2 * 2**20)
    copy_adapter(honest.store, liar.store, cid)
    fetcher = spawn("fetcher", bootstrap=(honest, liar))
    wait_until(lambda: connected(fetcher, honest, liar), "fetcher connected to both")
    honest.announce(cid).result(WAIT_S)
    liar.announce(cid).result(WAIT_S)  # both claim it: the fetcher asks both
    wait_until(lambda: cid in cids(fetcher) and len(fetcher.catalog.get(cid).providers) == 2, "both are providers")
    fetched = fetcher.fetch_adapter(cid).result(30)
    weights_cid = fetched.manifest.file("adapter_model.safetensors").cid
    assert fetcher.store.cat(weights_cid) == weights
    assert fetched.stats.bad_blocks >= 1 and fetched.stats.dropped == [liar.peer_id]
    assert honest.peer_id in fetched.stats.by_source  # (the liar's small blocks were genuine)
    assert fetcher.stats().bad_blocks >= 1
    assert liar.peer_id in fetcher.stats().banned  # many bad blocks at -10 each


def test_fetch_fails_clearly_when_no_peer_has_the_blocks(spawn, tmp_path: Path) -> None:
    a = spawn("a")
    b = spawn("b", bootstrap=(a,))
    wait_until(lambda: connected(b, a), "B connected")
    cid, _ = make_adapter(BlockStore(tmp_path / "elsewhere"), 1000)
    with pytest.raises(FetchFailed, match="not available from any source") as err:
        b.fetch_adapter(cid).result(30)
    assert err.value.missing == [cid]


def test_a_lone_node_serves_local_adapters_and_says_why_it_cannot_fetch(spawn, tmp_path: Path) -> None:
    a = spawn("a")
    cid, _ = make_adapter(a.store, 300_000)
    assert a.fetch_adapter(cid).result(WAIT_S).stats.blocks == 0  # all local: no peer needed
    elsewhere, _ = make_adapter(BlockStore(tmp_path / "elsewhere"), 100, seed=4)
    with pytest.raises(FetchFailed, match="no source to ask"):
        a.fetch_adapter(elsewhere).result(WAIT_S)


def test_a_bitswap_only_peer_serves_through_bitswap(spawn, raw_peers, tmp_path: Path) -> None:
    origin = BlockStore(tmp_path / "origin")
    cid, weights = make_adapter(origin, 600_000)
    manifest = parse_manifest(origin.get(cid))
    blocks = {cid: origin.get(cid)}
    for f in manifest.files:
        import_bytes(origin.cat(f.cid), cid_version=1, on_block=lambda c, b: blocks.__setitem__(cid_text(c), b))
    bitswap_peer = raw_peers(blocks)
    c = spawn("c")
    c.connect(bitswap_peer.multiaddr).result(WAIT_S)
    fetched = c.fetch_adapter(cid).result(30)
    assert c.store.cat(manifest.files[1].cid) == weights
    assert fetched.stats.blocks == len(blocks)


def test_our_bitswap_server_serves_a_stock_py_libp2p_client(spawn, raw_peers) -> None:
    a = spawn("a")
    _, weights = make_adapter(a.store, 700_000)
    blocks: dict[str, bytes] = {}
    import_bytes(weights, cid_version=1, on_block=lambda c, b: blocks.__setitem__(cid_text(c), b))
    client = raw_peers()
    client.connect(a.multiaddr)
    got = client.fetch_over_bitswap(a.multiaddr, sorted(blocks))
    assert got == blocks  # answers on a stream of our own (the Kubo fix) still reach py-libp2p


# ── node status and routing ─────────────────────────────────────────────────────────────────


def test_a_status_goes_out_when_routing_changes_and_otherwise_once_per_period(spawn) -> None:
    """The status period grows with the swarm (``swarm_status_per_s``): here 1 status per 100 s swarm-wide, so
    each node's period is ≥ 100 s. A load change waits for it; a new resident adapter goes out at the next check."""
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    local = {"a": LocalStatus("127.0.0.1:5001", "base", FP, max_batch=4)}
    a = spawn("a", status=lambda: local["a"], swarm_status_per_s=0.01)
    c = spawn("c", bootstrap=(a,), swarm_status_per_s=0.01)

    def seen() -> PeerEntry | None:
        return {e.peer_id: e for e in c.peer_table()}.get(a.peer_id)

    wait_until(lambda: seen() is not None, "C holds A's status")
    first = seen()
    assert first.refresh_s >= 100
    local["a"] = dataclasses.replace(local["a"], active=3)
    time.sleep(1.0)  # three checks (status_interval_s 0.3): the load alone is not worth a status
    assert seen().ts_ms == first.ts_ms
    local["a"] = dataclasses.replace(local["a"], resident=(cid,))
    wait_until(lambda: seen().resident == (cid,), "the new resident adapter reaches C at A's next check")
    assert seen().active == 3


def test_node_status_fills_the_peer_table_and_pick_node_prefers_resident(spawn) -> None:
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    statuses = {
        "a": LocalStatus("127.0.0.1:5001", "base", FP, resident=(cid,), active=3, max_batch=4),
        "b": LocalStatus("127.0.0.1:5002", "base", FP, active=0, max_batch=4),
        "z": LocalStatus("127.0.0.1:5003", "other", OTHER_FP, max_batch=4),
    }
    a = spawn("a", status=lambda: statuses["a"])
    b = spawn("b", bootstrap=(a,), status=lambda: statuses["b"])
    z = spawn("z", bootstrap=(a,), status=lambda: statuses["z"])
    c = spawn("c", bootstrap=(b,))
    took = wait_until(lambda: len(c.peer_table()) == 3, "C's peer table holds A, B and Z")
    print(f"\nstatus of 3 nodes in C's table: {took * 1000:.0f} ms")
    table = {e.peer_id: e for e in c.peer_table()}
    assert table[a.peer_id].grpc_address == "127.0.0.1:5001" and table[a.peer_id].resident == (cid,)
    assert table[a.peer_id].addrs == (a.multiaddr,)
    assert c.pick(FP, cid).peer_id == a.peer_id  # resident wins over load
    assert c.pick(FP, None).peer_id == b.peer_id  # otherwise the least loaded
    assert c.pick(OTHER_FP).peer_id == z.peer_id
    with pytest.raises(NoNodeAvailable, match="bases seen"):
        c.pick("sha256:" + "00" * 32)
    # a node's own status puts it in its own table
    wait_until(lambda: a.peer_id in {e.peer_id for e in a.peer_table()}, "A lists itself")
