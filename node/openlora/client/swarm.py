"""Routing a call through the swarm: ask any node which nodes it knows and pick one (``p2p.peers.pick_node``).

libp2p is imported only here and only when called, so clients that dial a node directly never load it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..p2p.peers import PeerEntry


def route(swarm: str, adapter: str | None = None, base_fingerprint: str | None = None) -> PeerEntry:
    """Pick the node to call through the swarm: ask the node at ``swarm`` (a libp2p multiaddr)
    which nodes it knows, keep those with the adapter's base, prefer one with the adapter
    resident, then the least loaded (``p2p.peers.pick_node``).

    Args:
        swarm: ``/ip4/…/tcp/N/p2p/PEERID`` of any node (as its ready line prints).
        adapter: the adapter CID the call will use, if any.
        base_fingerprint: the base to require; default: the adapter's base as that node knows
            it, else that node's own base.

    Returns:
        The chosen ``p2p.peers.PeerEntry`` (``.grpc_address`` is what to dial).

    Raises:
        openlora.p2p.errors.SwarmError: the node cannot be reached.
        openlora.p2p.peers.NoNodeAvailable: no known node serves that base.
    """
    from ..p2p.directory import query_nodes
    from ..p2p.peers import pick_node

    entries, adapter_base = query_nodes(swarm, adapter)
    base = base_fingerprint or adapter_base or (entries[0].base_fingerprint if entries else "")
    return pick_node(entries, base, adapter)


async def aroute(swarm: str, adapter: str | None = None, base_fingerprint: str | None = None) -> PeerEntry:
    """:func:`route` for asyncio code: the libp2p query runs in a worker thread (it runs its own trio loop).

    Raises: as :func:`route`.
    """
    return await asyncio.to_thread(route, swarm, adapter, base_fingerprint)
