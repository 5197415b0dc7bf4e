"""Checks every announcement, catalog entry and node status passes before it is used or relayed.

    announcement ──size──schema──► CID is a CIDv1 raw sha2-256 ──► sha2-256(manifest) == CID
                 ──► validate_manifest(manifest)  (the node's hook: schema, later the signature)
    node status  ──size──schema──► peer_id == signed origin ──► every addr ends in /p2p/<origin>
                 ──► ts_ms not in the future (clock skew allowance)

The node passes ``validate_manifest(raw: bytes) -> Manifest`` (raising on bad input), e.g.
``adapters.verify.Verifier.validate_manifest``: schema, publisher signature, base, limits. Its
verdicts about the adapter (bad schema or signature) refuse the message and cost the sender;
its refusals about this node (``RejectReason.retryable``: another base, a size limit) do not:
such announcements are valid, relayed, and only not kept here (see ``gossip``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import multiaddr
from multiaddr.exceptions import Error as MultiaddrError

from ..adapters.manifest import Manifest
from ..adapters.reasons import AdapterRejected
from ..content.cid import RAW, cid_text, parse_cid, verify_block
from ..content.errors import ContentError
from .errors import MessageRejected
from .messages import NodeStatus, decode_announcement, decode_status

ManifestValidator = Callable[[bytes], Manifest]
"""Parses and checks canonical manifest bytes; raises (any exception) on bad input."""

MAX_CLOCK_SKEW_MS = 120_000  # a status may be stamped up to 2 minutes ahead of our clock


@dataclass(frozen=True)
class VerifiedAdapter:
    """An announcement or catalog entry that passed every check.

    Attributes:
        cid: canonical adapter CID (CIDv1, raw codec).
        manifest_bytes: the canonical manifest (the block the CID names).
        manifest: the parsed manifest; ``None`` when declined.
        declined: set when ``validate_manifest`` refused the adapter for a reason about this
            node, not about the adapter (``RejectReason.retryable``: another base, over this
            node's size limit). Such an announcement is valid and relayed, but not kept here.
    """

    cid: str
    manifest_bytes: bytes
    manifest: Manifest | None
    declined: AdapterRejected | None = None


Ingest = Callable[["VerifiedAdapter", str | None], Awaitable[None]]
"""Takes a verified adapter and the peer ID that holds it (``None``: unknown)."""


def verify_adapter(cid: str, raw: bytes, validate_manifest: ManifestValidator) -> VerifiedAdapter:
    """Check that ``raw`` is the block ``cid`` names and a valid manifest.

    Raises:
        MessageRejected: ``malformed`` (CID unparsable, or not a CIDv1 raw sha2-256),
            ``forged_cid`` (the manifest does not hash to the CID), or the validator's verdict
            (its ``RejectReason`` value, e.g. ``bad_manifest``, ``bad_signature``,
            ``wrong_signer``; ``bad_manifest`` for any other exception it raises).
    """
    try:
        parsed = parse_cid(cid)
    except ContentError as e:
        raise MessageRejected("malformed", str(e)) from None
    if parsed.version != 1 or parsed.codec.code != RAW:
        raise MessageRejected("malformed", f"adapter CID {cid} must be a CIDv1 with the raw codec (0x55)")
    try:
        verify_block(parsed, raw)
    except ContentError as e:
        raise MessageRejected("forged_cid", str(e)) from None
    try:
        manifest = validate_manifest(raw)
    except AdapterRejected as e:
        if e.reason.retryable:
            return VerifiedAdapter(cid_text(parsed), raw, None, declined=e)
        raise MessageRejected(e.reason.value, e.detail) from None
    except Exception as e:  # the hook may raise anything; all of it means "refuse"
        raise MessageRejected("bad_manifest", str(e)) from None
    return VerifiedAdapter(cid_text(parsed), raw, manifest)


def check_announcement(data: bytes, validate_manifest: ManifestValidator) -> VerifiedAdapter:
    """Decode and verify one ``/openlora/1/adapters`` message.

    Raises:
        MessageRejected: see :func:`messages.decode_announcement` and :func:`verify_adapter`
            (``malformed`` also for bad base64).
    """
    ann = decode_announcement(data)
    return verify_adapter(ann.cid, ann.manifest_bytes(), validate_manifest)


def check_status(data: bytes, origin: str, now_ms: int) -> NodeStatus:
    """Decode and verify one ``/openlora/1/nodes`` message from peer ``origin``.

    Args:
        data: the message payload.
        origin: base58 peer ID that signed the message.
        now_ms: our clock, unix milliseconds.

    Raises:
        MessageRejected: ``too_large``/``malformed`` (schema), ``wrong_origin`` (the status or
            one of its addresses names another peer), ``from_future`` (stamped more than
            ``MAX_CLOCK_SKEW_MS`` ahead).
    """
    status = decode_status(data)
    if status.peer_id != origin:
        raise MessageRejected("wrong_origin", f"status names peer {status.peer_id} but was signed by {origin}")
    for addr in status.addrs:
        try:
            peer = multiaddr.Multiaddr(addr).get_peer_id()
        except (MultiaddrError, ValueError) as e:
            raise MessageRejected("malformed", f"address {addr!r} does not parse: {e}") from None
        if peer != origin:
            raise MessageRejected("wrong_origin", f"address {addr!r} must end in /p2p/{origin}")
    if status.ts_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise MessageRejected("from_future", f"status stamped {status.ts_ms - now_ms} ms ahead of our clock")
    return status
