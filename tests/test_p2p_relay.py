"""Circuit relay v2 with real in-process libp2p hosts on 127.0.0.1 (openlora.p2p.relay).

    A ──► R (--relay-service) ◄── B      A and B listen on nothing (nodes behind NAT) and hold a
                                          slot at R; R is the only node either can dial

A reaches B only through R's circuit, fetches B's adapter over that relayed connection (Noise end
to end, every block verified), and A's node table says how B is reached. Every host listens on 127.0.0.1 (B on nothing) and dials only hosts started
here; all are stopped at the end of each test.
"""

from __future__ import annotations

import pytest
from openlora.p2p import SwarmStartError
from openlora.p2p.swarm import SwarmConfig
from test_p2p_dht import status_of
from test_p2p_swarm import FP, make_adapter, spawn, wait_until  # noqa: F401  (fixture)


def test_a_node_behind_nat_is_reached_through_a_relay_and_serves_an_adapter(spawn) -> None:
    r = spawn("r", relay_service=True, status=status_of(FP))
    b = spawn("b", listen=False, relays=(r.multiaddr,), bootstrap=(r,), status=status_of(FP))
    a = spawn("a", listen=False, relays=(r.multiaddr,), bootstrap=(r,), status=status_of(FP))
    circuit = f"{r.multiaddr}/p2p-circuit/p2p/{b.peer_id}"
    assert b.multiaddr == circuit and b.advertised() == [circuit]  # no address of its own
    assert b.relay_info().reached_through == (circuit,)
    assert r.relay_info().service and r.relay_info().reservations == 2
    assert b.dht_info().mode == "client" and r.dht_info().mode == "server"

    cid, weights = make_adapter(b.store, 700_000)
    b.announce(cid).result(15)
    wait_until(lambda: a.catalog.get(cid) is not None, "A learned B's adapter through R's gossip")
    wait_until(lambda: any(e.peer_id == b.peer_id for e in a.peer_table()), "B's status at A", 10.0)
    entry = next(e for e in a.peer_table() if e.peer_id == b.peer_id)
    assert entry.reach == "relay" and entry.addrs == (circuit,) and entry.dht == "client"
    assert next(e for e in a.peer_table() if e.peer_id == r.peer_id).relay_service

    fetched = a.fetch_adapter(cid, timeout_s=30).result(40)
    assert a.store.cat(fetched.manifest.files[1].cid) == weights
    assert fetched.stats.by_source == {b.peer_id: fetched.stats.blocks}  # every block from B, relayed by R
    assert r.relay_info().circuits >= 1  # the A–B connection runs through R


def test_a_node_can_be_dialled_at_its_circuit_address(spawn) -> None:
    r = spawn("r", relay_service=True, dht="off")
    b = spawn("b", listen=False, relays=(r.multiaddr,), dht="off")
    a = spawn("a", dht="off")
    assert r.relay_info().circuits == 0
    a.connect(b.multiaddr).result(15)
    wait_until(lambda: b.peer_id in a.connected_peers() and a.peer_id in b.connected_peers(), "A and B connected via R")
    assert r.relay_info().circuits == 1


def test_relaying_is_off_unless_the_operator_opts_in(spawn) -> None:
    plain = spawn("plain")
    assert not plain.relay_info().service
    with pytest.raises(SwarmStartError, match="no relay granted it a slot"):
        spawn("b", listen=False, relays=(plain.multiaddr,))


def test_a_relay_holds_no_more_slots_than_its_limit(spawn) -> None:
    r = spawn("r", relay_service=True, relay_max_reservations=1)
    spawn("b1", listen=False, relays=(r.multiaddr,))
    with pytest.raises(SwarmStartError, match="no relay granted it a slot"):
        spawn("b2", listen=False, relays=(r.multiaddr,))
    assert r.relay_info().reservations == 1


def test_a_node_that_listens_on_nothing_needs_a_relay() -> None:
    with pytest.raises(ValueError, match="needs relays"):
        SwarmConfig(listen=False)
