"""Hostile input, gossip: property-based fuzzing of the two topics' decoders and checks, and a replay.

Every message a peer sends must end in a verified value or a ``MessageRejected`` with a reason
(that reason is what costs the sender score in GossipSub), never another exception: an exception
in a topic validator would be py-libp2p's to handle, not ours. Inputs: random bytes and JSON,
valid messages with one byte edited, announcements whose manifest has a random signature (CID
recomputed, so only the signature check can refuse it), statuses with random multiaddrs, and
messages over the size limits. The last test replays one valid announcement between two real
swarms: accepted once, relayed, never counted against the sender.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openlora.content import RAW, BlockStore, cid_text, make_cid
from openlora.p2p import MessageRejected
from openlora.p2p.host import parse_peer_multiaddr
from openlora.p2p.messages import (
    MAX_ANNOUNCEMENT_BYTES,
    MAX_CATALOG_BYTES,
    MAX_STATUS_BYTES,
    Announcement,
    decode_catalog_response,
    encode,
)
from openlora.p2p.validate import check_announcement, check_status
from test_p2p_messages import NOW_MS, PEER, status
from test_p2p_swarm import cids, make_adapter, spawn, validate, wait_until  # noqa: F401  (spawn: fixture)
from p2p_helpers import raw_peers  # noqa: F401  (fixture)
from test_rel_fuzz_parsers import JSON, mutate

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def announced(tmp_path_factory) -> tuple[str, bytes]:
    """A valid adapter CID and its signed manifest bytes."""
    store = BlockStore(tmp_path_factory.mktemp("ann"))
    cid, _ = make_adapter(store, 100)
    return cid, store.get(cid)


def outcome(check, data: bytes):
    """``check(data)``, or the rejection's reason; any other exception fails the test."""
    try:
        return check(data)
    except MessageRejected as e:
        return e.reason


def announcement_check(data: bytes):
    return check_announcement(data, validate)


def status_check(data: bytes):
    return check_status(data, PEER, NOW_MS)


@FUZZ
@given(st.binary(max_size=1024))
def test_random_bytes_on_every_decoder(data: bytes) -> None:
    for check in (announcement_check, status_check, decode_catalog_response):
        assert isinstance(outcome(check, data), str)


@FUZZ
@given(JSON)
def test_random_json_on_every_decoder(obj) -> None:
    data = json.dumps(obj).encode()
    for check in (announcement_check, status_check, decode_catalog_response):
        assert isinstance(outcome(check, data), str)


@FUZZ
@given(st.data())
def test_valid_announcement_with_one_byte_edited(announced, data) -> None:
    cid, raw = announced
    valid = encode(Announcement.of(cid, raw))
    message = mutate(valid, data)
    result = outcome(announcement_check, message)
    assert isinstance(result, str) or result.cid == cid  # an edit in JSON whitespace can leave it valid


@FUZZ
@given(st.text("0123456789abcdef", min_size=130, max_size=130))
def test_announcement_with_a_random_signature(announced, sig: str) -> None:
    _, raw = announced
    obj = json.loads(raw)
    obj["signature"] = "0x" + sig
    manifest = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    forged = encode(Announcement.of(cid_text(make_cid(manifest, RAW)), manifest))
    assert outcome(announcement_check, forged) in ("bad_signature", "wrong_signer")


@FUZZ
@given(st.data())
def test_valid_status_with_one_byte_edited(data) -> None:
    result = outcome(status_check, mutate(status(), data))
    assert isinstance(result, str) or result.peer_id == PEER


@FUZZ
@given(st.lists(st.text(max_size=60) | st.sampled_from(["/ip4/127.0.0.1/tcp/1/p2p/", "/p2p/" + PEER, "/ip6/::1/udp/9/quic"]), min_size=1, max_size=8))
def test_status_with_random_multiaddrs(addrs: list[str]) -> None:
    result = outcome(status_check, status(addrs=addrs))
    assert isinstance(result, str) or all(a.endswith(PEER) for a in addrs)


@pytest.mark.parametrize(
    "check, limit",
    [(announcement_check, MAX_ANNOUNCEMENT_BYTES), (status_check, MAX_STATUS_BYTES), (decode_catalog_response, MAX_CATALOG_BYTES)],
)
def test_oversized_messages_are_refused_before_parsing(check, limit: int) -> None:
    data = b"[" * (limit + 1)  # would be deep nesting if parsed
    tracemalloc.start()
    try:
        assert outcome(check, data) == "too_large"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # bytes


@pytest.mark.parametrize("depth", [150, 5_000])
def test_deeply_nested_messages_are_malformed(depth: int) -> None:
    manifest = base64.b64encode(b"{}").decode()
    data = b'{"v":1,"cid":"bafk","manifest":"' + manifest.encode() + b'","x":' + b"[" * depth + b"]" * depth + b"}"
    for check in (announcement_check, status_check):
        assert outcome(check, data) == "malformed"


def test_a_replayed_announcement_is_taken_once_and_never_costs_the_sender(spawn, raw_peers, tmp_path: Path) -> None:  # noqa: F811
    a = spawn("a")
    b = spawn("b", bootstrap=(a,))
    replayer = raw_peers()
    replayer.connect(a.multiaddr)
    replayer_id = parse_peer_multiaddr(replayer.multiaddr).peer_id.to_base58()
    wait_until(lambda: replayer_id in a.connected_peers() and b.peer_id in a.connected_peers(), "A connected to B and the replayer")
    store = BlockStore(tmp_path / "r")
    cid, _ = make_adapter(store, 100, seed=42)
    message = encode(Announcement.of(cid, store.get(cid)))
    # Each publish is a new pubsub message (new seqno), so GossipSub's seen-cache does not drop it:
    # the replay reaches the validator every time.
    replayer.publish(message, message, message, message, wait_mesh_with=a.multiaddr)
    wait_until(lambda: cid in cids(b), "B got the announcement through A")
    assert [r.cid for r in a.catalog_records()] == [cid]
    assert [r.cid for r in b.catalog_records()] == [cid]
    assert a.stats().rejected == {} and b.stats().rejected == {}
    assert a.score(replayer_id) >= 0 and replayer_id not in a.stats().banned
