"""The API's link to the swarm: fetch adapters on demand, announce the ones published here.

    Generate / GetAdapter(cid) on a CID that is unknown or only AVAILABLE (announced)
      ─► one fetch per CID at a time (concurrent requests share it)
      ─► swarm.fetch_adapter: manifest + every block from peers, each block hash-checked
      ─► store.admit_fetched: the full verification pipeline, catalog VERIFYING → READY
      ─► engine host cache (so the first request does not parse it twice)

A fetch that finds no peer with the blocks leaves an AVAILABLE adapter AVAILABLE (peers may come
back) and an unknown CID unknown.
"""

from __future__ import annotations

import asyncio
import logging

from ..adapters.catalog import AdapterState
from ..adapters.reasons import AdapterRejected
from ..adapters.store import AdapterStore
from ..engine.slots import HostCache

log = logging.getLogger(__name__)


class AdapterUnavailable(LookupError):
    """No reachable peer has the adapter's blocks (the message says what was tried)."""


class SwarmLink:
    """Fetches and announces adapters through a :class:`~openlora.p2p.swarm.Swarm`.

    Args:
        swarm: the running swarm.
        store: the node's adapter store.
        host_cache: the engine's host tier.
        timeout_s: one whole fetch, seconds.
    """

    def __init__(self, swarm, store: AdapterStore, host_cache: HostCache, timeout_s: float = 60.0) -> None:
        self.swarm = swarm
        self.store = store
        self.host_cache = host_cache
        self.timeout_s = timeout_s
        self._inflight: dict[str, asyncio.Future] = {}

    async def fetch(self, cid: str) -> None:
        """Make ``cid`` READY on this node.

        Raises:
            AdapterUnavailable: no peer could provide it within the timeout.
            AdapterRejected: it arrived and failed verification (recorded in the catalog).
        """
        pending = self._inflight.get(cid)
        if pending is None:
            pending = self._inflight[cid] = asyncio.ensure_future(self._fetch(cid))
            pending.add_done_callback(lambda _: self._inflight.pop(cid, None))
        await asyncio.shield(pending)

    async def _fetch(self, cid: str) -> None:
        from ..p2p.errors import SwarmError

        catalog = self.store.catalog
        known = catalog.get(cid)
        if known is not None:
            catalog.set_state(cid, AdapterState.FETCHING)
        try:
            await asyncio.wrap_future(self.swarm.fetch_adapter(cid, self.timeout_s))
        except AdapterRejected as e:
            catalog.set_state(cid, AdapterState.REJECTED, reason=e.reason.value, detail=e.detail)
            raise
        except SwarmError as e:
            if known is not None:
                catalog.set_state(cid, AdapterState.AVAILABLE)
            raise AdapterUnavailable(f"adapter {cid} is not known to this node and no peer provided it ({e})") from None
        adapter = await asyncio.to_thread(self.store.admit_fetched, cid)
        self.host_cache.put(cid, adapter)
        log.info("adapter %s fetched from the swarm and verified", cid)

    def announce(self, cid: str) -> None:
        """Gossip ``cid`` to the swarm (fire and forget; a failure is logged)."""

        def done(fut) -> None:
            if fut.exception() is not None:
                log.warning("announcing %s failed: %s", cid, fut.exception())

        self.swarm.announce(cid).add_done_callback(done)
