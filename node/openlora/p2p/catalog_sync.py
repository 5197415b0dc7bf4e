"""``/openlora/catalog/1.0.0``: a peer that connects learns the catalog that exists, not only
the announcements made after it joined.

    on every new connection each side pulls from the other (and every sync interval a node pulls
    again from a few random peers: ``swarm.RESYNC_PEERS``):
      CatalogRequest{limit} ──► CatalogResponse{entries: [{cid, manifest, have}]}
                                 (most recently learned first, cut at MAX_CATALOG_BYTES)
      each entry ──validate.verify_adapter──► ingest (kept unless declined or for another
                                               base; the answering peer is a provider if have)
                 (one whose bytes the catalog holds already is not verified again: only
                  the provider is recorded)
      each invalid entry ──► BAD_ENTRY_PENALTY on the answering peer

The answering peer is authenticated by the connection (Noise), so ``have`` is its own claim
about itself; it is never trusted for third parties.
"""

from __future__ import annotations

import logging

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.request_response import RequestContext, RequestResponse, RequestResponseConfig, RequestResponseError

from .catalog import CatalogRecord, SwarmCatalog
from .errors import MessageRejected
from .messages import (
    MAX_CATALOG_BYTES,
    MAX_CATALOG_ENTRIES,
    CatalogItem,
    CatalogRequest,
    CatalogResponse,
    decode_catalog_response,
    encode,
)
from .scoring import BAD_ENTRY_PENALTY, PeerGuard
from .validate import Ingest, ManifestValidator, VerifiedAdapter, verify_adapter

log = logging.getLogger(__name__)

CATALOG_PROTOCOL = TProtocol("/openlora/catalog/1.0.0")
_REQUEST_BYTES = 256


class CatalogCodec:
    """``request_response`` codec for :class:`CatalogRequest` / :class:`CatalogResponse`."""

    def encode_request(self, request: CatalogRequest) -> bytes:
        """Compact JSON."""
        return encode(request)

    def decode_request(self, payload: bytes) -> CatalogRequest:
        """Raises pydantic.ValidationError on a bad request."""
        return CatalogRequest.model_validate_json(payload)

    def encode_response(self, response: CatalogResponse) -> bytes:
        """Compact JSON."""
        return encode(response)

    def decode_response(self, payload: bytes) -> CatalogResponse:
        """Raises MessageRejected on a bad answer."""
        return decode_catalog_response(payload)


CODEC = CatalogCodec()


class CatalogSync:
    """Serves this node's catalog and pulls peers' catalogs into it.

    Args:
        rr: the host's request/response helper.
        catalog: this node's swarm catalog.
        guard: penalises peers that send invalid entries.
        validate_manifest: the node's manifest check.
        ingest: where verified entries go.
        timeout_s: per exchange, seconds.
    """

    def __init__(
        self,
        rr: RequestResponse,
        catalog: SwarmCatalog,
        guard: PeerGuard,
        validate_manifest: ManifestValidator,
        ingest: Ingest,
        timeout_s: float,
    ) -> None:
        self.rr = rr
        self.catalog = catalog
        self.guard = guard
        self.validate_manifest = validate_manifest
        self.ingest = ingest
        self.config = RequestResponseConfig(
            timeout=timeout_s, max_request_size=_REQUEST_BYTES, max_response_size=MAX_CATALOG_BYTES
        )
        rr.set_handler(CATALOG_PROTOCOL, self._answer, CODEC, self.config)

    async def _answer(self, request: CatalogRequest, ctx: RequestContext) -> CatalogResponse:
        if self.guard.is_banned(ctx.peer_id):
            raise RequestResponseError(f"peer {ctx.peer_id} is banned")
        records = await trio.to_thread.run_sync(self.catalog.records, request.limit)
        entries, size = [], 64
        for r in records:
            item = CatalogItem.of(r.cid, r.manifest, r.local)
            size += len(item.manifest) + len(item.cid) + 48
            if size > MAX_CATALOG_BYTES:
                break
            entries.append(item)
        return CatalogResponse(v=1, entries=entries)

    async def pull(self, peer: ID) -> int:
        """Fetch ``peer``'s catalog and ingest every valid entry.

        Returns:
            Entries accepted (valid, whatever their base); 0 when the peer does not speak the
            protocol or the exchange failed (logged).
        """
        try:
            response = await self.rr.send_request(
                peer, [CATALOG_PROTOCOL], CatalogRequest(v=1, limit=MAX_CATALOG_ENTRIES), CODEC, self.config
            )
        except RequestResponseError as e:
            if isinstance(e.__cause__, MessageRejected):
                self.guard.penalise(peer, BAD_ENTRY_PENALTY, f"malformed catalog answer: {e.__cause__}")
            log.info("catalog sync with %s failed: %s", peer, e)
            return 0
        results = await trio.to_thread.run_sync(self._verify_all, response.entries)
        accepted = 0
        for item, result in zip(response.entries, results, strict=True):
            if isinstance(result, MessageRejected):
                self.guard.penalise(peer, BAD_ENTRY_PENALTY, f"invalid catalog entry {item.cid}: {result}")
                continue
            accepted += 1
            if isinstance(result, CatalogRecord):  # known already: only the provider is news
                if item.have:
                    await trio.to_thread.run_sync(
                        self.catalog.add, result.cid, result.manifest, result.base_fingerprint, result.name, str(peer)
                    )
                continue
            await self.ingest(result, str(peer) if item.have else None)
        return accepted

    def _verify_all(self, items: list[CatalogItem]) -> list[VerifiedAdapter | CatalogRecord | MessageRejected]:
        # One worker-thread hop for the whole answer: thousands of manifests would otherwise
        # hold the libp2p loop for a second or more. An entry whose bytes this node's catalog
        # already holds under that CID was verified when it was taken in (the CID names the
        # bytes): it is not verified again, since every connected peer is pulled every sync
        # interval and a publisher signature check costs milliseconds.
        out: list[VerifiedAdapter | CatalogRecord | MessageRejected] = []
        for item in items:
            try:
                raw = item.manifest_bytes()
                known = self.catalog.get(item.cid)
                if known is not None and known.manifest == raw:
                    out.append(known)
                else:
                    out.append(verify_adapter(item.cid, raw, self.validate_manifest))
            except MessageRejected as e:
                out.append(e)
        return out
