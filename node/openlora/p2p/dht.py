"""Kademlia DHT under our own protocol id: who provides an adapter CID, which nodes run a base.

    /openlora/kad/1.0.0        py-libp2p's KadDHT (messages, routing table, lookups), renamed
    keys      adapter CID ──► the CID's multihash (how IPFS keys a CID)
              base fingerprint ──► sha2-256 multihash of "openlora/base/" + fingerprint
    provide   ADD_PROVIDER to the k = 20 peers closest to the key; a receiver keeps the record
              only if the sender is the provider itself (the connection is Noise-authenticated)
              and with the addresses the provider advertises (direct, or through its relay)
    refresh   py-libp2p re-provides every key this node provides every 22 h; holders drop a
              record after 48 h (Kubo's Reprovider.Interval and record expiry)
    find      GET_PROVIDERS to the ALPHA = 10 closest peers of the routing table, then to the
              closer peers their answers name, ending at the first answer that names providers;
              the record held locally answers at once
    server    answers /openlora/kad/1.0.0 and sits in other nodes' routing tables (a node
              reachable directly); client: asks, never answers (a node behind NAT)

Why a renamed view of the host (``KadHost``): py-libp2p 0.8.1 hard-codes ``/ipfs/kad/1.0.0``
in five of its modules. KadDHT gets a view of the host that opens and answers its streams under
``KAD_PROTOCOL`` instead, and whose peerstore reports a peer that speaks ``KAD_PROTOCOL`` as a
DHT server (its routing table admits only those). So an openlora swarm never joins, answers or
pollutes the public IPFS DHT, even when a node is connected to a Kubo peer, and no module of the
library is patched. The view also gives the DHT the addresses this node advertises (its relay
circuits when it is behind NAT), so provider records name addresses that work.

Nothing from the DHT is trusted: a provider is only a peer to ask; every block it sends is
verified like any other (``fetch``), and a node found under a base key enters the peer table
only through its own status, checked like gossip (``directory.query_status``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.common import ALPHA, BUCKET_SIZE, QUERY_TIMEOUT
from libp2p.kad_dht.common import PROTOCOL_ID as IPFS_KAD_PROTOCOL
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr
from multiformats import multihash

from ..content.cid import parse_cid

log = logging.getLogger(__name__)

KAD_PROTOCOL = TProtocol("/openlora/kad/1.0.0")
BASE_KEY_PREFIX = b"openlora/base/"
FIND_PROVIDERS = 8  # providers a lookup stops at

# py-libp2p logs a WARNING for every fire-and-forget ADD_PROVIDER stream it receives (the sender
# closes without waiting for the echo, as Kubo does): normal traffic, not a fault.
logging.getLogger("libp2p.kad_dht.kad_dht").setLevel(logging.ERROR)


def adapter_key(cid: str) -> bytes:
    """The DHT key of an adapter (or any block): its CID's multihash, as IPFS keys a CID.

    Raises:
        InvalidCID: ``cid`` does not parse.
    """
    return bytes(parse_cid(cid).digest)


def base_key(fingerprint: str) -> bytes:
    """The DHT key under which nodes running base ``fingerprint`` provide themselves: the
    sha2-256 multihash of ``b"openlora/base/" + fingerprint`` (not a CID of any block)."""
    return bytes(multihash.wrap(hashlib.sha256(BASE_KEY_PREFIX + fingerprint.encode()).digest(), "sha2-256"))


class _KadPeerstore:
    """The host's peerstore, except that a peer speaking ``KAD_PROTOCOL`` is reported as speaking
    py-libp2p's hard-coded id (and one speaking only the public id as not speaking it)."""

    def __init__(self, peerstore: object) -> None:
        self._peerstore = peerstore

    def __getattr__(self, name: str) -> object:
        return getattr(self._peerstore, name)

    def get_protocols(self, peer_id: ID) -> list[str]:
        """The peer's protocols with ours renamed (see the class docstring)."""
        protocols = self._peerstore.get_protocols(peer_id)  # type: ignore[attr-defined]
        return [IPFS_KAD_PROTOCOL if p == KAD_PROTOCOL else p for p in protocols if p != IPFS_KAD_PROTOCOL]


class KadHost:
    """The view of a libp2p host that KadDHT is given (see the module docstring).

    Args:
        host: the node's host; everything but what is listed here passes through.
        advertised: the multiaddrs this node advertises (provider records, signed peer records).

    Attributes:
        streams_opened: DHT streams this node opened (one per RPC; lookups are measured by it).
    """

    def __init__(self, host: IHost, advertised: Callable[[], list[Multiaddr]]) -> None:
        self._host = host
        self._advertised = advertised
        self.streams_opened = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._host, name)

    @staticmethod
    def _ours(protocol: TProtocol) -> TProtocol:
        return KAD_PROTOCOL if protocol == IPFS_KAD_PROTOCOL else protocol

    def set_stream_handler(self, protocol: TProtocol, handler: Callable) -> None:
        """Answer the DHT under ``KAD_PROTOCOL``."""
        self._host.set_stream_handler(self._ours(protocol), handler)

    def remove_stream_handler(self, protocol: TProtocol) -> None:
        """Stop answering ``KAD_PROTOCOL``."""
        self._host.remove_stream_handler(self._ours(protocol))

    async def new_stream(self, peer_id: ID, protocols: Sequence[TProtocol]) -> INetStream:
        """Open a DHT stream under ``KAD_PROTOCOL`` (other protocols, e.g. ping, unchanged)."""
        self.streams_opened += 1
        return await self._host.new_stream(peer_id, [self._ours(p) for p in protocols])

    def get_peerstore(self) -> _KadPeerstore:
        """The peerstore view (see :class:`_KadPeerstore`)."""
        return _KadPeerstore(self._host.get_peerstore())

    def get_addrs(self) -> list[Multiaddr]:
        """The addresses this node advertises (direct ones, or its relay circuits)."""
        return self._advertised()


class _ServersOnlyKadDHT(KadDHT):
    """KadDHT whose routing table admits only DHT servers, as the Kademlia spec says.

    py-libp2p 0.8.1 also admits every peer that opens a DHT stream to us ("it must be a
    server"), but clients (nodes behind NAT) open streams too: they would be handed out as
    routing peers that cannot answer, and dialled by every lookup.
    """

    async def add_peer(self, peer_id: ID, *, skip_server_mode_check: bool = False) -> bool:
        """Admit ``peer_id`` if its identify answer lists ``KAD_PROTOCOL`` (the check is never
        skipped)."""
        return await super().add_peer(peer_id)


@dataclass(frozen=True)
class DhtInfo:
    """The DHT as this node runs it.

    Attributes:
        mode: ``"server"`` (answers queries, reachable directly) or ``"client"`` (asks only).
        routing_table: peers in the routing table.
        providing: keys this node provides (adapters held + its base).
    """

    mode: str
    routing_table: int
    providing: int


class Dht:
    """This node's DHT: KadDHT over a :class:`KadHost`, started with :meth:`run`.

    Args:
        host: the node's host.
        server: answer queries (True for a node others can dial directly).
        advertised: the multiaddrs put in provider records.
        timeout_s: one lookup or provide, seconds.

    Attributes:
        rounds: GET_PROVIDERS rounds this node's lookups took so far (a lookup's hops: the rounds it
            added; 0 when a record held here answered).
    """

    def __init__(
        self, host: IHost, server: bool, advertised: Callable[[], list[Multiaddr]], timeout_s: float
    ) -> None:
        self.view = KadHost(host, advertised)
        self.timeout_s = timeout_s
        self.rounds = 0
        self.kad = _ServersOnlyKadDHT(self.view, DHTMode.SERVER if server else DHTMode.CLIENT)  # type: ignore[arg-type]

    @property
    def info(self) -> DhtInfo:
        """Mode, routing-table size and keys provided, now."""
        return DhtInfo(
            mode=self.kad.mode.value.lower(),
            routing_table=self.kad.get_routing_table_size(),
            providing=len(self.kad.provider_store.providing_keys),
        )

    # The DHT is best effort: its calls run inside the swarm's nursery, where an exception from a
    # peer's odd answer or a connection torn down mid-walk would stop the whole swarm. Each
    # method below logs what went wrong and answers as if nothing was found.

    async def add_peer(self, peer: ID) -> bool:
        """Admit a connected peer to the routing table if it is a DHT server (its identify
        answer lists ``KAD_PROTOCOL``); returns whether it is in the table."""
        try:
            return await self.kad.add_peer(peer)
        except Exception as e:
            log.info("DHT: could not consider %s for the routing table: %s: %s", peer, type(e).__name__, e)
            return False

    async def refresh(self) -> None:
        """Look ourselves (and a random key per bucket) up: fills the routing table from the
        peers connected so far and puts this node in their tables (Kademlia's join)."""
        try:
            with trio.move_on_after(self.timeout_s):
                await self.kad.refresh_routing_table()
        except Exception as e:
            log.info("DHT: routing table refresh failed: %s: %s", type(e).__name__, e)

    async def provide(self, key: bytes) -> bool:
        """Tell the peers closest to ``key`` that this node provides it (re-provided every 22 h
        by py-libp2p). Returns whether at least one peer took the record (False: no peer, an
        error, or not within ``timeout_s``)."""
        try:
            with trio.move_on_after(self.timeout_s):
                return await self.kad.provider_store.provide(key)
        except Exception as e:
            log.info("DHT: providing %s failed: %s: %s", key.hex(), type(e).__name__, e)
            return False
        log.info("DHT: providing %s timed out after %s s", key.hex(), self.timeout_s)
        return False

    async def find_providers(self, key: bytes, count: int = FIND_PROVIDERS) -> list[PeerInfo]:
        """Peers that provide ``key`` (this node excluded), at most ``count``; empty when none is
        found within ``timeout_s`` (or the lookup failed: logged). Their addresses are added to
        the peerstore."""
        found: list[PeerInfo] = []
        try:
            with trio.move_on_after(self.timeout_s):
                found = await self._get_providers(key, count)
        except Exception as e:
            log.info("DHT: looking up %s failed: %s: %s", key.hex(), type(e).__name__, e)
        me = self.view.get_id()
        others = [p for p in found if p.peer_id != me]
        peerstore = self.view._host.get_peerstore()
        for info in others:
            if info.addrs:
                peerstore.add_addrs(info.peer_id, info.addrs, 3600)
        return others

    async def _get_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        # py-libp2p 0.8.1's ProviderStore.find_providers first walks FIND_NODE to the key, then asks
        # GET_PROVIDERS of candidate after candidate, ALPHA at a time, until ``count`` providers are in
        # hand: for an adapter with one provider that is every peer near the key, each batch waiting
        # for its slowest peer (lookup p99 4.3 s in one 40-peer swarm_sim run before this). As Kubo
        # does, this asks GET_PROVIDERS from the start (answers name closer peers, so the walk comes
        # with it), and it ends as soon as one answer names providers.
        store = self.kad.provider_store
        held = store.get_providers(key)
        if held:
            return held[:count]
        me = self.view.get_id()
        candidates = [p for p in self.kad.routing_table.find_local_closest_peers(key, BUCKET_SIZE) if p != me]
        asked: set[ID] = set()
        found: list[PeerInfo] = []
        closer: set[ID] = set()

        async def ask(peer: ID, done: trio.CancelScope) -> None:
            with trio.move_on_after(QUERY_TIMEOUT):
                try:
                    providers, nearer = await store._get_providers_from_peer_with_closers(peer, key)
                except Exception as e:  # one peer's failure leaves the others to answer
                    log.info("DHT: GET_PROVIDERS to %s failed: %s: %s", peer, type(e).__name__, e)
                    return
                closer.update(nearer)
                found.extend(p for p in providers if p.peer_id != me)
                if found:
                    done.cancel()

        while candidates and not found:
            batch, candidates = candidates[:ALPHA], candidates[ALPHA:]
            asked.update(batch)
            self.rounds += 1
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(ask, peer, nursery.cancel_scope)
            fresh = {p for p in closer if p not in asked and p != me}
            candidates = sort_peer_ids_by_distance(key, list(fresh.union(candidates)))
        unique = list({info.peer_id: info for info in found}.values())
        for info in unique:
            store.add_provider(key, info)  # held here from now on, as py-libp2p's lookup does
        return unique[:count]
