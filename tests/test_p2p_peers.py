"""The peer table kept from node statuses and the client's node choice (openlora.p2p.peers)."""

from __future__ import annotations

import pytest
from openlora.p2p import NoNodeAvailable, PeerEntry, PeerTable, pick_node
from openlora.p2p.messages import MAX_REFRESH_S, Load, NodeStatus
from pydantic import ValidationError

FP = "sha256:" + "ab" * 32
OTHER_FP = "sha256:" + "cd" * 32
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def status(peer: str, ts_ms: int = 1, **fields: object) -> NodeStatus:
    base = dict(
        v=1,
        peer_id=peer,
        addrs=[f"/ip4/127.0.0.1/tcp/1/p2p/{peer}"],
        grpc_address="127.0.0.1:1",
        base_name="b",
        base_fingerprint=FP,
        resident=[],
        node_fee_per_1k_wei=0,
        load=Load(active=0, waiting=0, max_batch=4),
        ts_ms=ts_ms,
    )
    base.update(fields)
    return NodeStatus(**base)  # type: ignore[arg-type]


def entry(peer: str, **fields: object) -> PeerEntry:
    return PeerEntry.from_status(status(peer, **fields), last_seen=0.0)


def test_newer_status_replaces_older_and_replays_are_ignored() -> None:
    table = PeerTable(ttl_s=60)
    assert table.update(status("p", ts_ms=10, grpc_address="h:1"), now=100)
    assert not table.update(status("p", ts_ms=10, grpc_address="h:2"), now=101)  # replay
    assert not table.update(status("p", ts_ms=5, grpc_address="h:3"), now=102)  # reordered
    assert table.update(status("p", ts_ms=11, grpc_address="h:4"), now=103)
    assert [e.grpc_address for e in table.entries(now=103)] == ["h:4"]


def test_entries_expire_after_ttl() -> None:
    table = PeerTable(ttl_s=30)
    table.update(status("old"), now=100)
    table.update(status("new"), now=125)
    assert [e.peer_id for e in table.entries(now=129)] == ["new", "old"]
    assert [e.peer_id for e in table.entries(now=131)] == ["new"]
    assert table.get("old") is None


def test_an_entry_lives_three_of_the_periods_its_node_announced_when_longer_than_the_ttl() -> None:
    table = PeerTable(ttl_s=30)
    table.update(status("slow", refresh_s=40), now=100)  # a node in a big swarm: a status every 40 s
    table.update(status("short", refresh_s=5), now=100)  # 3 × 5 s < the table's own 30 s
    assert [e.peer_id for e in table.entries(now=131)] == ["slow"]
    assert [e.peer_id for e in table.entries(now=219)] == ["slow"] and table.entries(now=221) == []
    with pytest.raises(ValidationError, match="refresh_s"):
        status("greedy", refresh_s=MAX_REFRESH_S + 1)  # nobody keeps its entry alive for hours


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        PeerTable(ttl_s=0)


def test_pick_prefers_same_base_then_resident_then_load_then_fee() -> None:
    busy_resident = entry("a", resident=[CID], load=Load(active=4, waiting=4, max_batch=4))
    idle = entry("b", load=Load(active=0, waiting=0, max_batch=4), node_fee_per_1k_wei=5)
    idle_cheaper = entry("c", load=Load(active=0, waiting=0, max_batch=4), node_fee_per_1k_wei=1)
    other_base = entry("z", base_fingerprint=OTHER_FP, resident=[CID])
    table = [other_base, idle, busy_resident, idle_cheaper]
    assert pick_node(table, FP, CID).peer_id == "a"
    assert pick_node(table, FP, None).peer_id == "c"
    assert pick_node(table, OTHER_FP, CID).peer_id == "z"


def test_pick_among_equals_prefers_the_freshest_then_is_deterministic() -> None:
    table = [entry("b", ts_ms=1), entry("a", ts_ms=1), entry("c", ts_ms=2)]
    assert pick_node(table, FP).peer_id == "c"
    assert pick_node(table[:2], FP).peer_id == "a"


@pytest.mark.parametrize("table", [[], [entry("z", base_fingerprint=OTHER_FP)]])
def test_no_node_for_the_base(table: list[PeerEntry]) -> None:
    with pytest.raises(NoNodeAvailable, match="no known node serves base"):
        pick_node(table, FP, CID)


def test_pick_sends_an_adapter_needing_features_only_to_nodes_that_serve_them() -> None:
    from openlora.p2p.messages import decode_status, encode

    vllm_resident = entry("a", resident=[CID])  # a status without ``features``: plain LoRA only
    torch_busy = entry("b", features=["dora", "lm_head"], load=Load(active=4, waiting=4, max_batch=4))
    torch_dora = entry("c", features=["dora"])
    table = [vllm_resident, torch_busy, torch_dora]
    assert pick_node(table, FP, CID).peer_id == "a"
    assert pick_node(table, FP, CID, features=["dora"]).peer_id == "c"
    assert pick_node(table, FP, CID, features=["dora", "lm_head"]).peer_id == "b"
    with pytest.raises(NoNodeAvailable, match="serves modules_to_save"):
        pick_node(table, FP, CID, features=["modules_to_save"])
    old = encode(status("a")).replace(b',"features":[]', b"")
    assert b"features" not in old and decode_status(old).features == []
