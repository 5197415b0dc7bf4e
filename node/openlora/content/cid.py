"""Content identifiers: parse, print, make and verify CIDs (https://github.com/multiformats/cid).

    CIDv0   "Qm…"   base58btc( multihash )                       codec implied: dag-pb
    CIDv1   "b…"    multibase( varint 1 | varint codec | multihash )
    multihash       varint fn | varint len | digest              we accept fn = sha2-256 (0x12),
                                                                  len = 32, and nothing else

Objects are ``multiformats.CID`` (immutable, hashable, equal across bases). Text is *canonical*
as Kubo prints it: CIDv0 in base58btc, CIDv1 in lower-case base32 (``bafy…`` / ``bafk…``).
Parsing accepts any multibase (as Kubo does) but everything this package returns is canonical,
so a CID string can be compared and used as a key.

A block is trusted only after :func:`verify_block`: the sha2-256 of its bytes must equal the
digest inside the CID. Other hash functions (including ``identity``, which would let a CID carry
arbitrary "verified" bytes) are refused, so nothing else can slip past the check.
"""

from __future__ import annotations

import functools
import hashlib

from multiformats import CID, multihash

from .errors import BlockHashMismatch, InvalidCID, UnsupportedCID

RAW = 0x55  # multicodec "raw": the block is the bytes themselves (CIDv1 file leaves)
DAG_PB = 0x70  # multicodec "dag-pb": a PBNode (UnixFS nodes; every CIDv0)
SHA2_256 = 0x12  # multicodec "sha2-256"
SHA2_256_SIZE = 32  # bytes

PARSED_CIDS = 16384  # CIDs parse_cid and cid_text remember (a few MB)
_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb"}
_HINT = "expected a CIDv0 ('Qm…', 46 base58btc characters) or a multibase CIDv1 such as 'bafy…'"


def parse_cid(value: str | bytes | CID) -> CID:
    """Parse a CID from its text form, its binary form, or pass a ``CID`` through.

    The last PARSED_CIDS text and binary forms parsed are remembered: parsing one takes about
    0.3 ms in ``multiformats`` (its type checks), and a block transfer parses each CID several
    times (request, store, answer).

    Args:
        value: text (``"Qm…"``, ``"bafy…"``, any multibase), binary (a dag-pb link's ``Hash``:
            the bare multihash for CIDv0, ``0x01 | codec | multihash`` for CIDv1), or a CID.

    Returns:
        The ``multiformats.CID``; any hash function and codec are accepted here (see
        :func:`verify_block` for what a block may use).

    Raises:
        InvalidCID: the value is empty, not a string/bytes, or does not decode as a CID; the
            message says which part is wrong.
    """
    if isinstance(value, CID):
        return value
    if type(value) in (str, bytes):
        return _parse_remembered(value)
    return _parse(value)


@functools.lru_cache(maxsize=PARSED_CIDS)
def _parse_remembered(value: str | bytes) -> CID:
    return _parse(value)


def _parse(value: object) -> CID:
    if isinstance(value, (bytes, bytearray, memoryview)):
        shown = bytes(value[:48]).hex()
    elif isinstance(value, str):
        shown = value if len(value) <= 80 else value[:77] + "..."
        if not value:
            raise InvalidCID(f"invalid CID '': the string is empty; {_HINT}")
        if value != value.strip():
            raise InvalidCID(f"invalid CID {shown!r}: remove the surrounding whitespace")
        if value.startswith("Qm") and len(value) != 46:
            raise InvalidCID(
                f"invalid CID {shown!r}: a CIDv0 ('Qm…') has 46 characters, this has {len(value)}"
            )
    else:
        raise InvalidCID(f"invalid CID of type {type(value).__name__}: {_HINT}")
    try:
        return CID.decode(value)
    except (ValueError, KeyError, IndexError) as exc:  # multiformats/bases raise all three (a lone "b": IndexError)
        # The decoder's own words ("Pad bits must be zero") tell a person nothing; what a CID looks like does.
        raise InvalidCID(f"invalid CID {shown!r}: it does not decode as a CID; {_HINT}") from exc


def cid_text(cid: str | bytes | CID) -> str:
    """Canonical text of a CID, as Kubo prints it: base58btc for v0, base32 for v1.

    Raises:
        InvalidCID: ``cid`` does not parse (see :func:`parse_cid`).
    """
    return _text(parse_cid(cid))


@functools.lru_cache(maxsize=PARSED_CIDS)
def _text(cid: CID) -> str:
    return str(cid) if cid.version == 0 else cid.encode("base32")


def make_cid(block: bytes, codec: int, version: int = 1) -> CID:
    """The sha2-256 CID of ``block`` under ``codec`` (``RAW`` or ``DAG_PB``).

    Args:
        block: the exact block bytes.
        codec: multicodec code of the block's format.
        version: 0 (only with ``DAG_PB``; base58btc) or 1 (base32).

    Raises:
        ValueError: version not 0/1, or version 0 with a codec other than dag-pb.
    """
    if version not in (0, 1):
        raise ValueError(f"CID version must be 0 or 1, got {version!r}")
    if version == 0 and codec != DAG_PB:
        raise ValueError(f"a CIDv0 always means dag-pb (0x70); got codec {codec:#x}")
    digest = multihash.wrap(hashlib.sha256(block).digest(), SHA2_256)
    return CID("base58btc" if version == 0 else "base32", version, codec, digest)


def check_supported(cid: CID) -> None:
    """Refuse CIDs whose blocks this node cannot verify or interpret.

    Raises:
        UnsupportedCID: hash function other than full-length sha2-256, or a codec other than
            raw (0x55) / dag-pb (0x70).
    """
    # multiformats checks that the multihash's length field matches its digest, so with the
    # one-byte code 0x12 a 34-byte multihash is exactly <0x12 0x20 digest[32]>.
    if cid.hashfun.code != SHA2_256 or len(cid.digest) != 2 + SHA2_256_SIZE:
        raise UnsupportedCID(
            f"CID {cid_text(cid)} uses hash {cid.hashfun.name} with a {len(cid.raw_digest)}-byte "
            f"digest; only sha2-256 with 32 bytes is accepted (re-add the content with Kubo's "
            f"defaults)",
            cid=cid_text(cid),
        )
    if cid.codec.code not in _CODEC_NAMES:
        raise UnsupportedCID(
            f"CID {cid_text(cid)} has codec {cid.codec.name} ({cid.codec.code:#x}); only raw "
            f"(0x55) and dag-pb (0x70) blocks are accepted",
            cid=cid_text(cid),
        )


def verify_block(cid: str | bytes | CID, block: bytes) -> CID:
    """Check that ``block`` is the content ``cid`` names.

    Args:
        cid: the CID the block was requested or offered under.
        block: the block bytes.

    Returns:
        The parsed CID.

    Raises:
        InvalidCID: ``cid`` does not parse.
        UnsupportedCID: see :func:`check_supported`.
        BlockHashMismatch: the sha2-256 of ``block`` differs from the CID's digest.
    """
    cid = parse_cid(cid)
    check_supported(cid)
    if hashlib.sha256(block).digest() != cid.digest[2:]:  # raw digest (see check_supported)
        raise BlockHashMismatch(
            f"block of {len(block)} bytes does not hash to {cid_text(cid)}", cid=cid_text(cid)
        )
    return cid
