"""The swarm's Kademlia DHT with real in-process libp2p hosts on 127.0.0.1 (openlora.p2p.dht).

    A (base FP) ── B (another base: relays gossip, keeps none of FP's adapters) ── C (joins late)

A announces an adapter before C exists; C's only peer is B, so neither gossip nor catalog sync
can tell C about it: C finds A through the DHT provider record B holds, dials A at the address
the record gives, and fetches every block verified. Every host listens on 127.0.0.1 and dials only
hosts started here; all are stopped at the end of each test.
"""

from __future__ import annotations

import time

import pytest
from libp2p.kad_dht.common import PROTOCOL_ID as IPFS_KAD_PROTOCOL
from openlora.content import BlockStore
from openlora.p2p import SwarmError
from openlora.p2p.dht import KAD_PROTOCOL, adapter_key, base_key
from openlora.p2p.host import parse_peer_multiaddr
from openlora.p2p.messages import LocalStatus
from openlora.p2p.swarm import SwarmConfig
from p2p_helpers import raw_peers  # noqa: F401  (fixture)
from test_p2p_swarm import FAST, FP, OTHER_FP, cids, make_adapter, spawn, wait_until  # noqa: F401  (fixture)


def status_of(fingerprint: str):  # type: ignore[no-untyped-def]
    return lambda: LocalStatus(grpc_address="127.0.0.1:1", base_name="base", base_fingerprint=fingerprint)


def test_the_dht_speaks_only_our_protocol_id(spawn, raw_peers) -> None:
    a = spawn("a")
    probe = raw_peers()
    probe.connect(a.multiaddr)
    peer = parse_peer_multiaddr(a.multiaddr).peer_id

    async def protocols() -> list[str]:
        return probe.host.get_peerstore().get_protocols(peer)

    wait_until(lambda: probe.thread.call(protocols, timeout=5), "identify of A")
    listed = probe.thread.call(protocols, timeout=5)
    assert KAD_PROTOCOL in listed and IPFS_KAD_PROTOCOL not in listed


def test_keys_are_the_cid_multihash_and_a_hash_of_the_base() -> None:
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    assert adapter_key(cid)[:2] == bytes([0x12, 0x20]) and len(adapter_key(cid)) == 34
    assert base_key(FP) != base_key(OTHER_FP) and len(base_key(FP)) == 34


def test_a_cid_gossip_never_told_a_node_is_found_in_the_dht_and_fetched(spawn, tmp_path) -> None:
    # A runs the DHT as a client (as a node behind NAT does): it is in no routing table, so C's
    # DHT join never connects C to A, and only A's provider record (held by B) leads C to A.
    a = spawn("a", dht="client")
    b = spawn("b", bootstrap=(a,), base=OTHER_FP)
    wait_until(lambda: b.dht_info().providing == 1, "B joined the DHT through A")
    cid, weights = make_adapter(a.store, 600_000)
    a.announce(cid).result(15)
    assert cid not in cids(b)  # another base: relayed, never kept, so catalog sync cannot pass it on
    # ADD_PROVIDER is fire and forget: the record lands at B a moment after announce returns
    wait_until(lambda: b.find_providers(cid).result(15).providers == (a.peer_id,), "B holds A's provider record")
    # GossipSub offers a newcomer the messages of its last 5 heartbeats (IHAVE): wait them out
    time.sleep(10 * FAST["heartbeat_s"])

    c = spawn("c", bootstrap=(b,))
    wait_until(lambda: c.dht_info().routing_table >= 1, "C joined the DHT through B")
    assert cid not in cids(c) and a.peer_id not in c.connected_peers()
    fetched = c.fetch_adapter(cid, timeout_s=20).result(25)
    assert c.store.cat(fetched.manifest.files[1].cid) == weights  # every block verified on arrival
    assert a.peer_id in c.connected_peers()  # dialled at the address A's provider record gave
    assert c.catalog.get(cid).local
    assert a.dht_info().mode == "client" and b.dht_info().mode == "server"
    assert b.dht_info().routing_table == 1  # C only: A answers no DHT queries, so it is no one's routing peer


def test_nodes_of_a_base_are_found_through_the_dht_and_checked_like_gossip(spawn) -> None:
    a = spawn("a", status=status_of(FP), status_interval_s=30.0)
    b = spawn("b", bootstrap=(a,), base=OTHER_FP, status=status_of(OTHER_FP), status_interval_s=30.0)
    wait_until(lambda: b.dht_info().providing >= 1 and a.dht_info().providing >= 1, "both provided their base")
    c = spawn("c", bootstrap=(b,), base=OTHER_FP)
    wait_until(lambda: c.dht_info().routing_table >= 1, "C joined the DHT")
    entries = c.find_nodes(FP).result(20)
    assert [e.peer_id for e in entries] == [a.peer_id]
    assert entries[0].base_fingerprint == FP and entries[0].addrs == (a.multiaddr,)


def test_with_the_dht_off_lookups_say_so(spawn, tmp_path) -> None:
    a = spawn("a", dht="off")
    assert a.dht_info() is None
    with pytest.raises(SwarmError, match="DHT is off"):
        a.find_providers("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy").result(5)
    with pytest.raises(ValueError, match="SwarmConfig.dht"):
        SwarmConfig(dht="public")


def test_a_restarted_node_provides_what_it_holds_again(spawn, tmp_path) -> None:
    a = spawn("a")
    cid, _ = make_adapter(a.store, 1000)
    a.announce(cid).result(15)
    a.stop()
    again = spawn("a2", store_cls=lambda path: BlockStore(tmp_path / "a" / "blocks"))  # same blocks, new identity
    again.catalog.add(cid, again.store.get(cid), FP, "t", local=True)
    b = spawn("b", bootstrap=(again,))
    wait_until(lambda: again.dht_info().providing >= 2, "A2 provided its base and the adapter on joining")
    wait_until(lambda: b.find_providers(cid).result(15).providers == (again.peer_id,), "B finds A2")
