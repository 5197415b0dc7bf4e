"""Wire formats of the GossipSub topics: compact JSON documents with strict schemas (and one protobuf).

    /openlora/1/adapters   Announcement {"v":1, "cid":"bafk…", "manifest":"<base64 of the manifest>"}
                           the manifest travels with its CID, so a receiver checks
                           CID == sha2-256(manifest) and the manifest itself without a fetch
    /openlora/1/nodes      NodeStatus {"v":1, "peer_id", "addrs", "grpc_address", "base_name",
                           "base_fingerprint", "resident", "node_fee_per_1k_wei", "load", "ts_ms",
                           "node_address",   (the account that signs the node's receipts and records)
                           "features"}       (PEFT features its engine serves; absent: plain LoRA only)
    /openlora/1/evidence   an ``openlora.v1.Evidence`` message, serialized (≤ MAX_EVIDENCE_BYTES): a served
                           call that fails verification, signed by its verifier (``proof.evidence``)
    /openlora/catalog/1.0.0  CatalogRequest {"v":1, "limit":N} ──► CatalogResponse {"v":1,
                           "entries":[{"cid", "manifest", "have"}]}   (a stream protocol)

Who sent a message is not part of these documents: libp2p signs every pubsub message with the
origin's peer key (``strict_signing``), and the origin peer ID (``from_id``) is what counts as
the adapter's provider or the status's owner. A status must name that same peer ID, so a peer
cannot publish a status for another.

Sizes are bounded before parsing (``MAX_*_BYTES``); every field is bounded by the schema.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..adapters.manifest import MAX_MANIFEST_BYTES, PrintableName
from .errors import MessageRejected

TOPIC_ADAPTERS = "/openlora/1/adapters"
TOPIC_NODES = "/openlora/1/nodes"
TOPIC_EVIDENCE = "/openlora/1/evidence"
TOPICS = (TOPIC_ADAPTERS, TOPIC_NODES, TOPIC_EVIDENCE)

# Base64 of the largest manifest plus the envelope; larger announcements are refused unread.
MAX_ANNOUNCEMENT_BYTES = 4 * ((MAX_MANIFEST_BYTES + 2) // 3) + 512
MAX_STATUS_BYTES = 32 * 1024
MAX_EVIDENCE_BYTES = 512 * 1024  # a record, up to ~5k prompt + completion token ids, and signatures
MAX_RESIDENT = 256  # adapter CIDs listed in one status
MAX_ADDRS = 8  # multiaddrs listed in one status
MAX_FEATURES = 16  # PEFT feature names listed in one status (adapters.peft_format.FEATURES has 5)
MAX_REFRESH_S = 600  # the longest status period a node may claim (it keeps its own entry alive 3× that)
MAX_CATALOG_ENTRIES = 4096  # adapters in one catalog-sync answer
MAX_CATALOG_BYTES = 16 * 1024 * 1024  # one catalog-sync answer
_FINGERPRINT = r"^sha256:[0-9a-f]{64}$"
_ADDRESS = r"^(0x[0-9a-fA-F]{40})?$"
_CID = Annotated[str, Field(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _CarriesManifest(_Strict):
    cid: _CID
    manifest: Annotated[str, Field(min_length=1, max_length=MAX_ANNOUNCEMENT_BYTES)]

    def manifest_bytes(self) -> bytes:
        """The manifest bytes (the ``manifest`` field is base64, standard alphabet, padded).

        Raises:
            MessageRejected: ``malformed`` when the field is not valid base64.
        """
        try:
            return base64.b64decode(self.manifest, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MessageRejected("malformed", f"manifest is not valid base64: {e}") from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class Announcement(_CarriesManifest):
    """An adapter announcement: the manifest CID and the manifest bytes."""

    v: Literal[1]

    @classmethod
    def of(cls, cid: str, manifest: bytes) -> Announcement:
        """The announcement of ``manifest`` under ``cid`` (not checked; see ``validate``)."""
        return cls(v=1, cid=cid, manifest=_b64(manifest))


class CatalogItem(_CarriesManifest):
    """One catalog-sync entry: an adapter the answering peer knows, and whether it holds the
    adapter's blocks (then it counts as a provider)."""

    have: bool

    @classmethod
    def of(cls, cid: str, manifest: bytes, have: bool) -> CatalogItem:
        """The entry for ``manifest`` under ``cid``."""
        return cls(cid=cid, manifest=_b64(manifest), have=have)


class CatalogRequest(_Strict):
    """``/openlora/catalog/1.0.0`` request: up to ``limit`` most recently learned adapters."""

    v: Literal[1]
    limit: Annotated[int, Field(ge=1, le=MAX_CATALOG_ENTRIES)]


class CatalogResponse(_Strict):
    """``/openlora/catalog/1.0.0`` response."""

    v: Literal[1]
    entries: Annotated[list[CatalogItem], Field(max_length=MAX_CATALOG_ENTRIES)]


class Load(_Strict):
    """How busy a node is: requests generating now, requests queued, and the batch size."""

    active: Annotated[int, Field(ge=0)]
    waiting: Annotated[int, Field(ge=0)]
    max_batch: Annotated[int, Field(ge=1)]

    @property
    def ratio(self) -> float:
        """(active + waiting) / max_batch: 0 idle, 1 full batch, above 1 queueing."""
        return (self.active + self.waiting) / self.max_batch


class NodeStatus(_Strict):
    """A node's periodic status on ``/openlora/1/nodes``.

    Attributes:
        peer_id: the publishing node's peer ID (must equal the message's signed origin).
        addrs: its full multiaddrs (``/ip4/…/tcp/N/p2p/PEERID``).
        grpc_address: ``host:port`` of its gRPC API.
        base_name / base_fingerprint: the resident base model.
        resident: adapter CIDs loaded in device slots now.
        node_fee_per_1k_wei: the node's fee per 1000 tokens, wei (publisher price comes on top).
        load: see :class:`Load`.
        ts_ms: publication time, unix milliseconds (newer replaces older).
        reach: how the node is dialled: ``direct`` (it listens) or ``relay`` (behind NAT: every
            address is a relay circuit).
        dht: its DHT mode (``server`` answers lookups; ``client`` only asks).
        relay_service: whether it relays for nodes behind NAT.
        node_address: the account that signs its receipts and serving records ("" if it names none): what
            evidence accuses, so a node and a client stop routing to it.
        features: the PEFT features beyond plain LoRA its engine serves (``adapters.peft_format.FEATURES``
            names, sorted); a status without it (an older node) serves plain LoRA only.
        refresh_s: seconds until this node's next status at the latest (its period grows with the swarm:
            ``Swarm``); a peer table keeps the entry for ``STATUS_MISSES`` periods. 0 (an older node): the
            receiver's own TTL.
    """

    v: Literal[1]
    peer_id: Annotated[str, Field(min_length=1, max_length=128)]
    addrs: Annotated[list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=MAX_ADDRS)]
    grpc_address: Annotated[str, Field(min_length=1, max_length=256)]
    base_name: Annotated[PrintableName, Field(min_length=1, max_length=200)]
    base_fingerprint: Annotated[str, Field(pattern=_FINGERPRINT)]
    resident: Annotated[list[_CID], Field(max_length=MAX_RESIDENT)]
    node_fee_per_1k_wei: Annotated[int, Field(ge=0, lt=2**256)]
    load: Load
    ts_ms: Annotated[int, Field(ge=0)]
    reach: Literal["direct", "relay"] = "direct"
    dht: Literal["server", "client", "off"] = "off"
    relay_service: bool = False
    node_address: Annotated[str, Field(pattern=_ADDRESS)] = ""
    features: Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]], Field(max_length=MAX_FEATURES)] = []
    refresh_s: Annotated[int, Field(ge=0, le=MAX_REFRESH_S)] = 0


@dataclass(frozen=True)
class LocalStatus:
    """What the node reports about itself; the swarm adds peer ID, multiaddrs and time.

    Attributes:
        grpc_address: ``host:port`` clients dial.
        base_name / base_fingerprint: the resident base (``"sha256:<64 hex>"``).
        resident: adapter CIDs in device slots now (at most 256 are published).
        node_fee_per_1k_wei: node fee per 1000 tokens, wei.
        active / waiting / max_batch: scheduler load (requests).
        node_address: the node's account (signs receipts and serving records).
        features: PEFT features beyond plain LoRA its engine serves (``EngineInfo.features``).
    """

    grpc_address: str
    base_name: str
    base_fingerprint: str
    resident: tuple[str, ...] = ()
    node_fee_per_1k_wei: int = 0
    active: int = 0
    waiting: int = 0
    max_batch: int = 1
    node_address: str = ""
    features: tuple[str, ...] = ()


def status_message(
    local: LocalStatus,
    peer_id: str,
    addrs: list[str],
    ts_ms: int,
    *,
    dht: str = "off",
    relay_service: bool = False,
    refresh_s: int = 0,
) -> NodeStatus:
    """The ``/openlora/1/nodes`` document for this node's ``local`` status (``reach`` is
    ``relay`` when every address is a relay circuit).

    Raises:
        pydantic.ValidationError: a field out of its bounds.
    """
    return NodeStatus(
        v=1,
        peer_id=peer_id,
        addrs=addrs,
        grpc_address=local.grpc_address,
        base_name=local.base_name,
        base_fingerprint=local.base_fingerprint,
        resident=list(local.resident)[:MAX_RESIDENT],
        node_fee_per_1k_wei=local.node_fee_per_1k_wei,
        load=Load(active=local.active, waiting=local.waiting, max_batch=local.max_batch),
        ts_ms=ts_ms,
        reach="relay" if addrs and all("/p2p-circuit" in a for a in addrs) else "direct",
        dht=dht,
        relay_service=relay_service,
        node_address=local.node_address,
        features=sorted(local.features),
        refresh_s=refresh_s,
    )


def encode(message: BaseModel) -> bytes:
    """Compact JSON bytes of a message."""
    return message.model_dump_json().encode("utf-8")


def _decode(model: type[_Strict], data: bytes, limit: int) -> _Strict:
    if len(data) > limit:
        raise MessageRejected("too_large", f"{len(data)} bytes; the limit is {limit}")
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise MessageRejected("malformed", f"{where}: {first['msg']}") from None


def decode_catalog_response(data: bytes) -> CatalogResponse:
    """Parse a catalog-sync answer (schema only; each entry is then verified like an
    announcement).

    Raises:
        MessageRejected: ``too_large`` over ``MAX_CATALOG_BYTES``, ``malformed`` otherwise.
    """
    return _decode(CatalogResponse, data, MAX_CATALOG_BYTES)  # type: ignore[return-value]


def decode_announcement(data: bytes) -> Announcement:
    """Parse an ``/openlora/1/adapters`` message (schema only; see ``validate``).

    Raises:
        MessageRejected: ``too_large`` over ``MAX_ANNOUNCEMENT_BYTES``, ``malformed`` otherwise.
    """
    return _decode(Announcement, data, MAX_ANNOUNCEMENT_BYTES)  # type: ignore[return-value]


def decode_status(data: bytes) -> NodeStatus:
    """Parse an ``/openlora/1/nodes`` message (schema only; see ``validate``).

    Raises:
        MessageRejected: ``too_large`` over ``MAX_STATUS_BYTES``, ``malformed`` otherwise.
    """
    return _decode(NodeStatus, data, MAX_STATUS_BYTES)  # type: ignore[return-value]
