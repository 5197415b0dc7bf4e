"""CID parsing, canonical text, construction and block verification (openlora.content.cid)."""

from __future__ import annotations

import hashlib

import pytest
from multiformats import CID, multihash

from openlora.content import (
    DAG_PB,
    RAW,
    BlockHashMismatch,
    InvalidCID,
    UnsupportedCID,
    cid_text,
    make_cid,
    parse_cid,
    verify_block,
)

HELLO = b"hello world\n"
# What `ipfs add -Q` and `ipfs add -Q --cid-version=1` print for HELLO.
HELLO_V0 = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
HELLO_V1 = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
HELLO_DIGEST = hashlib.sha256(HELLO).digest()


@pytest.mark.parametrize(
    "text, canonical",
    [
        (HELLO_V0, HELLO_V0),
        (HELLO_V1, HELLO_V1),
        (HELLO_V1.upper(), HELLO_V1),  # base32 upper case: multibase prefix "B"
        ("f01551220" + HELLO_DIGEST.hex(), HELLO_V1),  # base16
        ("zb2rhi36Gc9GJWijLEL6zW45MBux5FcFv5gJmjXA7VAMozEXY", HELLO_V1),  # base58btc CIDv1
    ],
)
def test_parse_any_multibase_and_print_canonical(text: str, canonical: str) -> None:
    cid = parse_cid(text)
    assert cid_text(cid) == canonical
    assert cid == parse_cid(canonical)


@pytest.mark.parametrize("text", [HELLO_V0, HELLO_V1])
def test_binary_form_round_trips(text: str) -> None:
    cid = parse_cid(text)
    binary = bytes(cid)
    # CIDv0 in binary is the bare multihash; CIDv1 carries version and codec.
    assert binary[0] == (0x12 if cid.version == 0 else 0x01)
    assert cid_text(parse_cid(binary)) == text


UNDECODABLE = "does not decode as a CID; expected a CIDv0 ('Qm…', 46 base58btc characters)"


@pytest.mark.parametrize(
    "bad, says",
    [
        ("", "empty"),
        (" " + HELLO_V1, "whitespace"),
        (HELLO_V0[:-1], "46 characters"),
        (HELLO_V0[:-1] + "O", UNDECODABLE),  # not in the base58btc alphabet
        ("hello", UNDECODABLE),
        (HELLO_V1[:-3], UNDECODABLE),  # truncated base32
        ("Xabc", UNDECODABLE),  # unknown multibase prefix
        (b"\x01", UNDECODABLE),
        (b"", "invalid CID"),
        (12345, "type int"),
    ],
)
def test_bad_cids_are_rejected_with_a_reason(bad: object, says: str) -> None:
    with pytest.raises(InvalidCID) as err:
        parse_cid(bad)  # type: ignore[arg-type]
    assert says in str(err.value)
    assert isinstance(err.value, ValueError)
    # the decoding library's own words mean nothing to the person who typed the CID
    assert not any(w in str(err.value) for w in ("Pad bits", "Invalid character", "Varint", "Unknown"))


def test_make_cid_matches_kubo_for_a_raw_block() -> None:
    assert cid_text(make_cid(HELLO, RAW, 1)) == HELLO_V1
    assert make_cid(HELLO, DAG_PB, 0).version == 0


@pytest.mark.parametrize(
    "version, codec, says", [(2, RAW, "0 or 1"), (0, RAW, "dag-pb"), (-1, DAG_PB, "0 or 1")]
)
def test_make_cid_refuses_impossible_combinations(version: int, codec: int, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        make_cid(HELLO, codec, version)


def test_verify_block_accepts_the_right_bytes_and_names_the_cid_otherwise() -> None:
    assert verify_block(HELLO_V1, HELLO) == parse_cid(HELLO_V1)
    with pytest.raises(BlockHashMismatch) as err:
        verify_block(HELLO_V1, b"hello world!")
    assert err.value.cid == HELLO_V1
    assert HELLO_V1 in str(err.value)


@pytest.mark.parametrize(
    "cid, says",
    [
        (CID("base32", 1, "raw", multihash.digest(HELLO, "blake2b-256")), "blake2b-256"),
        # identity "hashes" carry the data itself: they would verify anything they contain.
        (CID("base32", 1, "raw", multihash.digest(HELLO, "identity")), "identity"),
        (CID("base32", 1, "raw", multihash.wrap(HELLO_DIGEST[:20], "sha2-256")), "20-byte"),
        (CID("base32", 1, "dag-cbor", multihash.wrap(HELLO_DIGEST, "sha2-256")), "dag-cbor"),
    ],
)
def test_verify_block_refuses_unsupported_cids(cid: CID, says: str) -> None:
    with pytest.raises(UnsupportedCID, match=says):
        verify_block(cid, HELLO)
