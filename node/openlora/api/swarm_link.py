"""The API's link to the swarm: fetch adapters on demand, announce the ones published here.

    Generate / GetAdapter(cid) on a CID that is unknown or only AVAILABLE (announced)
      ─► one fetch per CID at a time (concurrent requests share it)
      ─► swarm.fetch_adapter: manifest + every block from peers, each block hash-checked
      ─► store.admit_fetched: the full verification pipeline, catalog VERIFYING → READY
      ─► engine host cache (so the first request does not parse it twice)

Each fetch logs a line when it starts (cid, connected peers) and one when its blocks are in (bytes,
blocks, sources, seconds, MB/s), as ``extra`` fields too for JSON logs.

A fetch that finds no peer with the blocks, or no room on disk for them, leaves an AVAILABLE
adapter AVAILABLE (peers may come back, disk may be freed) and an unknown CID unknown; an adapter
published here meanwhile stays READY.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..adapters.catalog import AdapterState
from ..adapters.reasons import AdapterRejected
from ..adapters.peft_format import LoraAdapter
from ..adapters.store import AdapterStore

if TYPE_CHECKING:
    from ..p2p.fetch import FetchStats

log = logging.getLogger(__name__)


class AdapterUnavailable(LookupError):
    """No reachable peer has the adapter's blocks (the message says what was tried)."""


class SwarmLink:
    """Fetches and announces adapters through a :class:`~openlora.p2p.swarm.Swarm`.

    Args:
        swarm: the running swarm.
        store: the node's adapter store.
        warm: the engine's ``warm(cid, adapter)``: a fetched adapter is kept ready for its first request.
        timeout_s: one whole fetch, seconds.
    """

    def __init__(
        self, swarm, store: AdapterStore, warm: Callable[[str, LoraAdapter], None], timeout_s: float = 60.0
    ) -> None:
        self.swarm = swarm
        self.store = store
        self.warm = warm
        self.timeout_s = timeout_s
        self._inflight: dict[str, asyncio.Future] = {}

    async def fetch(self, cid: str) -> None:
        """Make ``cid`` READY on this node.

        Raises:
            AdapterUnavailable: no peer could provide it within the timeout.
            AdapterRejected: it arrived and failed verification (recorded in the catalog).
            content.StoreFull: the blockstore could not write its blocks (disk full or a file
                size limit); the blocks already verified stay, the rest is retried next time.
        """
        pending = self._inflight.get(cid)
        if pending is None:
            pending = self._inflight[cid] = asyncio.ensure_future(self._fetch(cid))
            pending.add_done_callback(lambda _: self._inflight.pop(cid, None))
        await asyncio.shield(pending)

    async def _fetch(self, cid: str) -> None:
        from ..content import StoreFull
        from ..p2p.errors import SwarmError

        catalog = self.store.catalog
        known = catalog.get(cid)
        if known is not None:
            catalog.set_state(cid, AdapterState.FETCHING)
        try:
            peers = len(await asyncio.to_thread(self.swarm.connected_peers))
            log.info("fetching adapter %s from %d peer(s)", cid, peers, extra={"cid": cid, "peers": peers})
            fetched = await asyncio.wrap_future(self.swarm.fetch_adapter(cid, self.timeout_s))
        except AdapterRejected as e:
            log.warning("fetched adapter %s rejected: %s", cid, e, extra={"cid": cid, "reason": e.reason.value})
            catalog.set_state(cid, AdapterState.REJECTED, reason=e.reason.value, detail=e.detail)
            raise
        except (SwarmError, StoreFull) as e:
            log.warning("fetching adapter %s failed: %s", cid, e, extra={"cid": cid})
            if known is not None:
                catalog.set_state(cid, AdapterState.AVAILABLE, unless=frozenset({AdapterState.READY}))
            if isinstance(e, StoreFull):
                raise
            raise AdapterUnavailable(f"adapter {cid} is not known to this node and no peer provided it ({e})") from None
        _log_fetched(cid, fetched.stats)
        adapter = await asyncio.to_thread(self.store.admit_fetched, cid)
        self.warm(cid, adapter)
        log.info("adapter %s fetched from the swarm and verified", cid, extra={"cid": cid})

    def announce(self, cid: str) -> None:
        """Gossip ``cid`` to the swarm (fire and forget; a failure is logged)."""

        def done(fut) -> None:
            if fut.exception() is not None:
                log.warning("announcing %s failed: %s", cid, fut.exception())

        self.swarm.announce(cid).add_done_callback(done)


def _log_fetched(cid: str, stats: FetchStats) -> None:
    """One line for a finished fetch (:class:`~openlora.p2p.fetch.FetchStats`: bytes, blocks, seconds)."""
    mb_s = stats.bytes / 1e6 / stats.seconds if stats.seconds > 0 else 0.0
    log.info(
        "fetched adapter %s: %d bytes in %d blocks from %s in %.2f s (%.1f MB/s)",
        cid, stats.bytes, stats.blocks, ", ".join(stats.by_source) or "the local store", stats.seconds, mb_s,
        extra={"cid": cid, "bytes": stats.bytes, "blocks": stats.blocks, "seconds": round(stats.seconds, 3), "mb_per_s": round(mb_s, 2)},
    )  # fmt: skip
