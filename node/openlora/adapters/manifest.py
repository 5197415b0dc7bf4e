"""The openlora adapter manifest: a small canonical JSON document whose CID is the adapter ID.

    {"base":{"fingerprint":"sha256:…","name":"SmolLM2-135M-Instruct"},
     "created_at":1764400000,
     "files":[{"cid":"bafkrei…","name":"adapter_config.json","size":812},
              {"cid":"bafybei…","name":"adapter_model.safetensors","size":3702248}],
     "name":"medical",
     "peft":{"lora_alpha":16,"r":8,"target_modules":["k_proj",…],…},
     "version":1}

Canonical form: UTF-8 JSON with keys sorted at every level, no insignificant whitespace, no
NaN/Infinity, integers as integers (``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``; a subset of RFC 8785 JCS since the schema has no floats other than
``lora_alpha``). The adapter ID is the CIDv1 of those bytes stored as one raw block — the same
CID Kubo's ``ipfs add --cid-version=1`` prints for the manifest file. Because the manifest
lists each file's CID, the one adapter CID pins every byte of the adapter.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .reasons import AdapterRejected, RejectReason

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024
_FINGERPRINT = r"^sha256:[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BaseRef(_Strict):
    """The base model an adapter was trained on."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    fingerprint: Annotated[str, Field(pattern=_FINGERPRINT)]


class FileRef(_Strict):
    """One file of the adapter: its name in the folder, its UnixFS CID, its size in bytes."""

    name: Annotated[str, Field(min_length=1, max_length=255)]
    cid: Annotated[str, Field(min_length=1, max_length=128)]
    size: Annotated[int, Field(ge=0)]


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


class Manifest(_Strict):
    """Manifest schema v1 (see module docstring)."""

    version: int
    name: Annotated[str, Field(max_length=200)]
    base: BaseRef
    peft: PeftSummary
    files: Annotated[list[FileRef], Field(min_length=1, max_length=16)]
    created_at: Annotated[int, Field(ge=0)]

    def file(self, name: str) -> FileRef | None:
        """The entry for file ``name``, or ``None``."""
        return next((f for f in self.files if f.name == name), None)


def canonical_json(obj: dict) -> bytes:
    """Canonical bytes of a JSON object (sorted keys, compact, UTF-8, no NaN).

    Raises:
        ValueError: NaN or Infinity in the object.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode_manifest(manifest: Manifest) -> bytes:
    """Canonical bytes of a manifest (what gets hashed into the adapter CID)."""
    return canonical_json(manifest.model_dump(mode="json"))


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes; they must already be in canonical form.

    Raises:
        AdapterRejected: BAD_MANIFEST (too big, not JSON, schema violation, wrong version,
            or not canonical — two encodings of one manifest would give two adapter IDs).
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise AdapterRejected(RejectReason.BAD_MANIFEST, f"manifest is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterRejected(RejectReason.BAD_MANIFEST, f"manifest is not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("version") != MANIFEST_VERSION:
        raise AdapterRejected(RejectReason.BAD_MANIFEST, f"manifest version must be {MANIFEST_VERSION}")
    try:
        m = Manifest.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AdapterRejected(RejectReason.BAD_MANIFEST, f"manifest field {where}: {first['msg']}") from None
    if encode_manifest(m) != raw:
        raise AdapterRejected(RejectReason.BAD_MANIFEST, "manifest is not in canonical JSON form (sorted keys, compact)")
    names = [f.name for f in m.files]
    if len(set(names)) != len(names) or any(re.search(r"[/\\\x00]|^\.\.?$", n) for n in names):
        raise AdapterRejected(RejectReason.BAD_MANIFEST, "manifest file names must be unique plain names")
    return m
