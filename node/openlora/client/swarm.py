"""Routing a call through the swarm: ask any node which nodes it knows and pick one (``p2p.peers.pick_node``).

Nodes with evidence against them are never picked: the ones the asked node holds evidence against (its
directory leaves them out and lists their accounts) and the ones the client's own spot checks caught
(``accused``). A node is recognised by the account it signs with, which its server reports (``GetNodeInfo``):
a status that hides or misstates its account does not get past :func:`answers_as`.

libp2p is imported only here and only when called, so clients that dial a node directly never load it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..p2p.peers import PeerEntry


def route(
    swarm: str, adapter: str | None = None, base_fingerprint: str | None = None, accused: Collection[str] = ()
) -> PeerEntry:
    """Pick the node to call through the swarm: ask the node at ``swarm`` (a libp2p multiaddr)
    which nodes it knows, keep those with the adapter's base, no evidence against them and an engine that
    serves the PEFT features the adapter needs (as that node read them from its config), prefer one
    with the adapter resident, then the least loaded (``p2p.peers.pick_node``), and use it only once the
    server at its gRPC address confirms it is that peer and not an accused account (:func:`pick_verified`).

    Args:
        swarm: ``/ip4/…/tcp/N/p2p/PEERID`` of any node (as its ready line prints).
        adapter: the adapter CID the call will use, if any.
        base_fingerprint: the base to require; default: the adapter's base as that node knows
            it, else that node's own base.
        accused: node accounts the client itself holds evidence against (its failed spot checks); the ones
            the asked node holds evidence against are added.

    Returns:
        The chosen ``p2p.peers.PeerEntry`` (``.grpc_address`` is what to dial).

    Raises:
        openlora.p2p.errors.SwarmError: the node cannot be reached.
        openlora.p2p.peers.NoNodeAvailable: no known node serves that base (at an address it proves).
    """
    from ..p2p.directory import query_nodes

    directory = query_nodes(swarm, adapter)
    entries = directory.entries
    base = base_fingerprint or directory.adapter_base or (entries[0].base_fingerprint if entries else "")
    bad = frozenset(accused) | directory.accused
    verify = functools.partial(answers_as, accused=bad)
    return pick_verified(entries, base, adapter, verify, bad, directory.adapter_features)


def pick_verified(
    entries: list[PeerEntry],
    base: str,
    adapter: str | None,
    verify: Callable[[PeerEntry], bool],
    accused: Collection[str] = frozenset(),
    features: Collection[str] = (),
) -> PeerEntry:
    """``p2p.peers.pick_node`` over the entries whose gRPC address ``verify`` confirms, best first.

    A status is signed by its peer, but the gRPC address in it is only that peer's claim: a peer could
    name someone else's server and send every client there. An entry is used only once the server at
    its address says it is that peer (and, with :func:`answers_as`, signs with an account not accused);
    one that does not is dropped and the next best is tried. Entries whose status names an ``accused``
    account are not considered at all.

    Raises:
        openlora.p2p.peers.NoNodeAvailable: no entry with that base (serving ``features``) is confirmed.
    """
    from ..p2p.peers import NoNodeAvailable, pick_node

    left = list(entries)
    refused: list[str] = []
    while True:
        try:
            entry = pick_node(left, base, adapter, accused, features)
        except NoNodeAvailable as e:
            if refused:
                raise NoNodeAvailable(
                    f"{e}; refused for naming a gRPC address that is not theirs, or for signing with an accused "
                    f"account: {', '.join(refused)}"
                ) from None
            raise
        if verify(entry):
            return entry
        refused.append(f"{entry.peer_id} ({entry.grpc_address})")
        left = [e for e in left if e.peer_id != entry.peer_id]


def answers_as(entry: PeerEntry, timeout_s: float = 10.0, accused: Collection[str] = ()) -> bool:
    """Whether the gRPC server at ``entry.grpc_address`` reports ``entry.peer_id`` as its own (GetNodeInfo), and
    an account (``chain.node_address``, the key its records are signed with) that is not ``accused``."""
    import grpc

    from ..v1 import node_pb2 as pb
    from ..v1 import node_pb2_grpc

    try:
        with grpc.insecure_channel(entry.grpc_address) as ch:
            info = node_pb2_grpc.NodeStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout_s)
    except (grpc.RpcError, ValueError):
        return False
    return info.p2p.peer_id == entry.peer_id and info.chain.node_address not in accused


async def aroute(
    swarm: str, adapter: str | None = None, base_fingerprint: str | None = None, accused: Collection[str] = ()
) -> PeerEntry:
    """:func:`route` for asyncio code: the libp2p query runs in a worker thread (it runs its own trio loop).

    Raises: as :func:`route`.
    """
    return await asyncio.to_thread(route, swarm, adapter, base_fingerprint, accused)
