"""The openlora adapter manifest v1: a small signed canonical-JSON document whose CID is the adapter ID.

    {"base":{"fingerprint":"sha256:…","name":"SmolLM2-135M-Instruct"},
     "created_at":1764400000,
     "files":[{"cid":"bafkrei…","name":"adapter_config.json","size":1127},
              {"cid":"bafybei…","name":"adapter_model.safetensors","size":3717656}],
     "name":"medical",
     "peft":{"alpha_pattern":{},"layers_to_transform":null,"lora_alpha":16,"modules":120,"r":8,
             "rank_pattern":{},"target_modules":["k_proj","o_proj","q_proj","v_proj"],"use_rslora":false},
     "price_per_1k_tokens":"250000000000000",
     "publisher":"0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
     "royalty_bps":500,
     "signature":"0x…130 hex…",
     "version":1}

Fields (all required, no others allowed):

    version              1
    name                 publisher's adapter name, ≤ 200 printable characters (may be empty; no
                         newlines, ANSI escapes or other control characters)
    base                 {name, fingerprint "sha256:<64 hex>"} of the base model (engine/base.py)
    peft                 summary of adapter_config.json + the weights (r, lora_alpha, sorted
                         target_modules or a regex string, rank/alpha patterns, use_rslora,
                         layers_to_transform, modules = number of adapted modules); the node
                         recomputes it from the files and refuses a manifest that differs
    files                [{name, cid, size}]: each file's UnixFS CIDv1 (Kubo's `ipfs add
                         --cid-version=1` layout, canonical base32 text) and size in bytes
    publisher            EIP-55 checksummed address of the key that signs
    price_per_1k_tokens  wei per 1000 tokens, a decimal STRING (wei exceeds 2^53, JSON numbers
                         do not survive every parser), fits uint256
    royalty_bps          publisher's share of the price in basis points, 0..10000
    created_at           unix seconds, fits uint64
    signature            "0x" + 130 lowercase hex: the 65-byte EIP-712 signature (r ‖ s ‖ v) by
                         ``publisher`` over the manifest without this field (see signing.py)

Canonical form: UTF-8 JSON with keys sorted at every level, no insignificant whitespace, no
NaN/Infinity (``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``; RFC 8785
JCS for every value this schema allows except a float ``lora_alpha``, which Python prints as
``repr``). A manifest that is not byte-for-byte canonical is refused, so one manifest has one
adapter ID: the CIDv1 (raw codec, sha2-256) of the whole canonical document, signature
included — the CID Kubo's ``ipfs add --cid-version=1`` prints for the manifest file. Because the
manifest lists each file's CID, that one CID pins every byte of the adapter.

This module checks the schema only; :mod:`.signing` checks the signature and :mod:`.verify`
runs every check in order.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from eth_utils import is_checksum_address
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..content.cid import check_supported, cid_text, parse_cid
from ..content.errors import InvalidCID
from .reasons import AdapterRejected, RejectReason

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024
UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1
MAX_ROYALTY_BPS = 10_000
_FINGERPRINT = r"^sha256:[0-9a-f]{64}$"
_WEI = r"^(0|[1-9][0-9]{0,77})$"
_SIGNATURE = r"^0x[0-9a-f]{130}$"
_BAD_FILE_NAME = re.compile(r"[/\\\x00]|^\.\.?$")


def _printable(v: str) -> str:
    """Names end up in logs, terminals and UIs: no newlines, ANSI escapes, bidi overrides or other
    control or format characters (``str.isprintable``; spaces are fine)."""
    if not v.isprintable():
        bad = next(c for c in v if not c.isprintable())
        raise ValueError(f"must be printable text (found {bad!r})")
    return v


PrintableName = Annotated[str, AfterValidator(_printable)]
"""A name shown to people: printable text only (see :func:`_printable`); length is bounded where it is used."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BaseRef(_Strict):
    """The base model an adapter was trained on: its name and fingerprint (``"sha256:<hex>"``)."""

    name: Annotated[PrintableName, Field(min_length=1, max_length=200)]
    fingerprint: Annotated[str, Field(pattern=_FINGERPRINT)]


class FileRef(_Strict):
    """One file of the adapter: its plain name, its UnixFS CIDv1 (canonical text), its size in bytes."""

    name: Annotated[str, Field(min_length=1, max_length=255)]
    cid: Annotated[str, Field(min_length=1, max_length=128)]
    size: Annotated[int, Field(ge=0)]

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if _BAD_FILE_NAME.search(v):
            raise ValueError("must be a plain file name (no /, \\, NUL, . or ..)")
        return v

    @field_validator("cid")
    @classmethod
    def _canonical_cid_v1(cls, v: str) -> str:
        try:
            c = parse_cid(v)
            check_supported(c)
        except InvalidCID as e:
            raise ValueError(str(e)) from None
        if c.version != 1 or cid_text(c) != v:
            raise ValueError("must be a CIDv1 in canonical base32 text (what `ipfs add --cid-version=1` prints)")
        return v


class PeftSummary(_Strict):
    """What the adapter does to the base, for catalogs and routing (the config file is authoritative)."""

    r: Annotated[int, Field(ge=1)]
    lora_alpha: int | float
    target_modules: list[str] | str
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, int | float] = {}
    use_rslora: bool = False
    layers_to_transform: list[int] | int | None = None
    modules: Annotated[int, Field(ge=1)]


class UnsignedManifest(_Strict):
    """Manifest schema v1 without its signature: exactly what the publisher signs (module docstring)."""

    version: int
    name: Annotated[PrintableName, Field(max_length=200)]
    base: BaseRef
    peft: PeftSummary
    files: Annotated[list[FileRef], Field(min_length=1, max_length=16)]
    publisher: str
    price_per_1k_tokens: Annotated[str, Field(pattern=_WEI)]
    royalty_bps: Annotated[int, Field(ge=0, le=MAX_ROYALTY_BPS)]
    created_at: Annotated[int, Field(ge=0, le=UINT64_MAX)]

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != MANIFEST_VERSION:
            raise ValueError(f"must be {MANIFEST_VERSION}")
        return v

    @field_validator("publisher")
    @classmethod
    def _checksummed(cls, v: str) -> str:
        if not is_checksum_address(v):
            raise ValueError("must be an EIP-55 checksummed address (0x + 40 hex, mixed case)")
        return v

    @field_validator("price_per_1k_tokens")
    @classmethod
    def _uint256(cls, v: str) -> str:
        if int(v) > UINT256_MAX:
            raise ValueError("must fit uint256")
        return v

    @field_validator("files")
    @classmethod
    def _unique_names(cls, v: list[FileRef]) -> list[FileRef]:
        names = [f.name for f in v]
        if len(set(names)) != len(names):
            raise ValueError("file names must be unique")
        return v

    @property
    def price_wei(self) -> int:
        """``price_per_1k_tokens`` as an integer, wei per 1000 tokens."""
        return int(self.price_per_1k_tokens)

    def file(self, name: str) -> FileRef | None:
        """The entry for file ``name``, or ``None``."""
        return next((f for f in self.files if f.name == name), None)


class Manifest(UnsignedManifest):
    """A signed manifest v1 (module docstring); its canonical bytes are the adapter's content."""

    signature: Annotated[str, Field(pattern=_SIGNATURE)]

    def unsigned(self) -> UnsignedManifest:
        """The manifest without its signature (what was signed)."""
        return UnsignedManifest.model_validate(self.model_dump(exclude={"signature"}))


def canonical_json(obj: dict) -> bytes:
    """Canonical bytes of a JSON object (sorted keys, compact, UTF-8, no NaN).

    Raises:
        ValueError: NaN or Infinity in the object.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode_manifest(manifest: UnsignedManifest) -> bytes:
    """Canonical bytes of a manifest, signed or not (signed: what gets hashed into the adapter CID)."""
    return canonical_json(manifest.model_dump(mode="json"))


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate signed-manifest bytes against the schema; they must be canonical.

    Checks the schema only — not the signature, not the base (see :mod:`.verify`).

    Raises:
        AdapterRejected: BAD_MANIFEST (too big, not JSON, schema violation, wrong version,
            or not canonical — two encodings of one manifest would give two adapter IDs).
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise AdapterRejected(RejectReason.BAD_MANIFEST, f"manifest is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:  # also a number over Python's 4300 digits, or nesting too deep
        raise AdapterRejected(RejectReason.BAD_MANIFEST, f"manifest is not JSON this node reads: {e}") from None
    if not isinstance(obj, dict):
        raise AdapterRejected(RejectReason.BAD_MANIFEST, "manifest must be a JSON object")
    try:
        m = Manifest.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise AdapterRejected(RejectReason.BAD_MANIFEST, f"manifest field {where}: {first['msg']}") from None
    try:
        canonical = encode_manifest(m)
    except ValueError:
        raise AdapterRejected(RejectReason.BAD_MANIFEST, "manifest holds NaN or Infinity") from None
    if canonical != raw:
        raise AdapterRejected(RejectReason.BAD_MANIFEST, "manifest is not in canonical JSON form (sorted keys, compact, UTF-8)")
    return m
