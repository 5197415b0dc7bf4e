"""Gossip wire formats and the checks every message passes before it is used or relayed
(openlora.p2p.messages, openlora.p2p.validate)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openlora.adapters.reasons import AdapterRejected, RejectReason
from openlora.content import DAG_PB, RAW, BlockStore, cid_text, make_cid
from openlora.p2p import MessageRejected
from openlora.p2p.messages import (
    MAX_ANNOUNCEMENT_BYTES,
    MAX_STATUS_BYTES,
    Announcement,
    CatalogItem,
    Load,
    NodeStatus,
    decode_announcement,
    decode_catalog_response,
    decode_status,
    encode,
)
from openlora.p2p.validate import MAX_CLOCK_SKEW_MS, check_announcement, check_status, verify_adapter
from test_p2p_swarm import FP, make_adapter, validate

PEER = "16Uiu2HAmSA5Zmc8fBxD3ovNWtSiE3MoYaR2Cmsyes4H1tj2V5c9Z"
OTHER_PEER = "16Uiu2HAm8hRhMPEYfb9MnmwBDmvZdzXfFUsjopsCv74WGDrVUfVu"
NOW_MS = 1_800_000_000_000


@pytest.fixture
def adapter(tmp_path: Path) -> tuple[str, bytes]:
    store = BlockStore(tmp_path)
    cid, _ = make_adapter(store, 1000)
    return cid, store.get(cid)


def rejected(reason: str):  # type: ignore[no-untyped-def]
    return pytest.raises(MessageRejected, match=f"^{reason}:")


def test_a_valid_announcement_round_trips(adapter) -> None:
    cid, raw = adapter
    verified = check_announcement(encode(Announcement.of(cid, raw)), validate)
    assert verified.cid == cid and verified.manifest_bytes == raw
    assert verified.manifest.base.fingerprint == FP


def test_a_manifest_under_another_cid_is_forged(adapter, tmp_path: Path) -> None:
    cid, raw = adapter
    other_cid, _ = make_adapter(BlockStore(tmp_path / "o"), 1000, seed=5)
    with rejected("forged_cid"):
        check_announcement(encode(Announcement.of(other_cid, raw)), validate)


def test_a_manifest_the_validator_refuses_is_a_bad_manifest(adapter) -> None:
    _, raw = adapter
    pretty = json.dumps(json.loads(raw), indent=2).encode()  # right hash, not canonical
    with rejected("bad_manifest") as err:
        check_announcement(encode(Announcement.of(cid_text(make_cid(pretty, RAW)), pretty)), validate)
    assert "canonical" in err.value.detail


def test_a_manifest_not_signed_by_its_publisher_is_refused(tmp_path: Path) -> None:
    from eth_account import Account

    store = BlockStore(tmp_path)
    cid, _ = make_adapter(store, 100, signer=Account.from_key(b"\x33" * 32))
    with rejected("wrong_signer"):
        verify_adapter(cid, store.get(cid), validate)


@pytest.mark.parametrize("reason", [RejectReason.BASE_MISMATCH, RejectReason.SIZE_LIMIT])
def test_refusals_about_this_node_decline_without_rejecting(adapter, reason: RejectReason) -> None:
    cid, raw = adapter

    def node_hook(data: bytes):  # type: ignore[no-untyped-def]
        validate(data)
        raise AdapterRejected(reason, "not for this node")

    verified = verify_adapter(cid, raw, node_hook)
    assert verified.manifest is None and verified.declined.reason is reason


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v":2,"cid":"bafk","manifest":"AA=="}',
        b'{"v":1,"cid":"bafk"}',
        b'{"v":1,"cid":"bafk","manifest":"AA==","extra":1}',
        b'{"v":"1","cid":"bafk","manifest":"AA=="}',
    ],
)
def test_malformed_announcements(data: bytes) -> None:
    with rejected("malformed"):
        check_announcement(data, validate)


def test_bad_base64_is_malformed(adapter) -> None:
    cid, _ = adapter
    with rejected("malformed"):
        check_announcement(json.dumps({"v": 1, "cid": cid, "manifest": "@@@@"}).encode(), validate)


def test_oversized_messages_are_refused_unparsed() -> None:
    with rejected("too_large"):
        decode_announcement(b" " * (MAX_ANNOUNCEMENT_BYTES + 1))
    with rejected("too_large"):
        decode_status(b" " * (MAX_STATUS_BYTES + 1))


@pytest.mark.parametrize("version,codec", [(0, DAG_PB), (1, DAG_PB)])
def test_adapter_ids_must_be_cidv1_raw(adapter, version: int, codec: int) -> None:
    _, raw = adapter
    with rejected("malformed"):
        verify_adapter(cid_text(make_cid(raw, codec, version)), raw, validate)


def test_catalog_items_carry_the_same_checks(adapter) -> None:
    cid, raw = adapter
    item = CatalogItem.of(cid, raw, have=True)
    response = decode_catalog_response(encode_catalog([item]))
    assert verify_adapter(response.entries[0].cid, response.entries[0].manifest_bytes(), validate).cid == cid


def encode_catalog(items: list[CatalogItem]) -> bytes:
    return json.dumps({"v": 1, "entries": [i.model_dump() for i in items]}).encode()


def status(**changes: object) -> bytes:
    fields = dict(
        v=1,
        peer_id=PEER,
        addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"],
        grpc_address="127.0.0.1:50051",
        base_name="SmolLM2-135M-Instruct",
        base_fingerprint=FP,
        resident=[],
        node_fee_per_1k_wei=10**15,
        load={"active": 1, "waiting": 2, "max_batch": 8},
        ts_ms=NOW_MS,
    )
    fields.update(changes)
    return json.dumps(fields).encode()


def test_a_valid_status() -> None:
    s = check_status(status(), PEER, NOW_MS)
    assert s.load == Load(active=1, waiting=2, max_batch=8) and s.load.ratio == 3 / 8


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({"peer_id": OTHER_PEER}, "wrong_origin"),  # a status for another peer
        ({"addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{OTHER_PEER}"]}, "wrong_origin"),
        ({"addrs": ["/ip4/127.0.0.1/tcp/4001"]}, "wrong_origin"),
        ({"addrs": ["127.0.0.1:4001"]}, "malformed"),
        ({"addrs": []}, "malformed"),
        ({"ts_ms": NOW_MS + MAX_CLOCK_SKEW_MS + 1}, "from_future"),
        ({"base_fingerprint": "sha256:xyz"}, "malformed"),
        ({"node_fee_per_1k_wei": -1}, "malformed"),
        ({"load": {"active": 0, "waiting": 0, "max_batch": 0}}, "malformed"),
        ({"resident": ["bafk"] * 257}, "malformed"),
        ({"base_name": "SmolLM2\n\x1b[2Jforged"}, "malformed"),  # printable text only: it reaches logs and terminals
    ],
)
def test_bad_statuses(changes: dict, reason: str) -> None:
    with rejected(reason):
        check_status(status(**changes), PEER, NOW_MS)


def test_status_schema_matches_what_the_swarm_builds() -> None:
    built = NodeStatus.model_validate_json(status())
    assert check_status(encode(built), PEER, NOW_MS) == built


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_message_rejected(data: bytes) -> None:
    for check in (
        lambda: check_announcement(data, validate),
        lambda: check_status(data, PEER, NOW_MS),
        lambda: decode_catalog_response(data),
    ):
        with pytest.raises(MessageRejected):
            check()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_base64_fields_only_ever_raise_message_rejected(text: str) -> None:
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    data = json.dumps({"v": 1, "cid": cid, "manifest": text or "A"}).encode()
    with pytest.raises(MessageRejected):
        check_announcement(data, validate)


def test_announcement_manifest_is_standard_padded_base64(adapter) -> None:
    cid, raw = adapter
    assert Announcement.of(cid, raw).manifest == base64.b64encode(raw).decode()
