"""Hostile input, routing: a status's gRPC address is only its peer's claim, so a client checks it.

A peer's signed status may name any gRPC address (someone else's server, to send every client
there) and claim any adapter resident (to win the choice). One real node subprocess with its swarm
is the honest server; the liar is a status entry naming that server's address under another peer
ID, with the adapter "resident" and no load so that ``pick_node`` prefers it.
"""

from __future__ import annotations

import grpc
import pytest

from openlora.client.swarm import answers_as, pick_verified
from openlora.local import NodeProcess
from openlora.p2p.peers import NoNodeAvailable, PeerEntry
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc

ADAPTER = "bafkreiadapter"
LIAR = "16Uiu2HAmLiarLiarLiarLiarLiarLiarLiarLiarLiarLiarLia"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(tmp_path_factory.mktemp("routing"), "--no-http", "--threads", "1")
    with grpc.insecure_channel(proc.address) as ch:
        proc.info = node_pb2_grpc.NodeStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=60)
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


def entry(peer_id: str, grpc_address: str, base: str, resident: tuple[str, ...] = (), active: int = 0) -> PeerEntry:
    return PeerEntry(peer_id, (), grpc_address, "base", base, resident, 0, active, 0, 8, 1, 0.0)


def test_a_status_naming_another_peers_server_is_not_routed_to(node) -> None:
    base, honest_id = node.info.base_fingerprint, node.info.p2p.peer_id
    assert honest_id
    liar = entry(LIAR, node.address, base, resident=(ADAPTER,))
    honest = entry(honest_id, node.address, base, active=5)
    assert not answers_as(liar) and answers_as(honest)
    chosen = pick_verified([liar, honest], base, ADAPTER, answers_as)
    assert chosen.peer_id == honest_id  # the liar ranked first (resident, idle) and was refused


def test_when_only_liars_are_left_no_node_is_picked_and_the_error_names_them(node) -> None:
    base = node.info.base_fingerprint
    liar = entry(LIAR, node.address, base, resident=(ADAPTER,))
    nobody = entry(LIAR[:-1] + "b", "127.0.0.1:9", base)  # nothing listens there
    with pytest.raises(NoNodeAvailable) as e:
        pick_verified([liar, nobody], base, ADAPTER, answers_as)
    assert "not theirs" in str(e.value) and LIAR in str(e.value) and "127.0.0.1:9" in str(e.value)
