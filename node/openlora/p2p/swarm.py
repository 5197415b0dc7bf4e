"""The node's swarm: one libp2p host in its own trio thread, with a thread-safe API.

    Swarm(data_dir, store, base_fingerprint, validate_manifest, status=…, on_adapter=…)
      .start()            host on /ip4/127.0.0.1/tcp/<port>, dials the bootstrap peers (and
                          keeps redialling them), returns once listening; .multiaddr is the
                          full /ip4/127.0.0.1/tcp/N/p2p/PEERID
      .announce(cid)      ─► Future: adapter gossiped on /openlora/1/adapters
      .fetch_adapter(cid) ─► Future[FetchedAdapter]: manifest + files from connected peers
                          (providers first, then other openlora peers, then bitswap-only
                          peers and the Kubo RPC if configured; a provider we are not
                          connected to is dialled at the address its signed status gave;
                          a CID no gossip or catalog named is looked up in the DHT),
                          every block verified, liars penalised
      .find_providers(cid) / .find_nodes(base) ─► Future: DHT lookups (``dht``)
      .connect(addr)      ─► Future: dial one more peer
      .publish_evidence(raw) ─► Future: evidence gossiped on /openlora/1/evidence
      .catalog_records() / .peer_table() / .pick(base, cid): read-only views, any thread
                          (pick and the directory skip nodes whose account is accused)
      .stop()             cancels everything, closes the host and the catalog

Futures are ``concurrent.futures.Future``: block on ``.result(timeout)`` from a thread, or
``await asyncio.wrap_future(fut)`` from the gRPC side. Callbacks the node passes in
(``status``, ``on_adapter``) run in worker threads, never in the libp2p loop.

What runs inside (all in the trio thread): GossipSub + validators (``gossip``), peer scores and
bans (``scoring``), ``/openlora/blocks/1.0.0`` and ``/openlora/have/2.0.0`` servers (``blocks``; a
fetch asks the second who else fetches the adapter and what they hold: ``_Survey``), bitswap client
and server (``bitswap``, for Kubo and other IPFS peers), ``/openlora/catalog/1.0.0`` pulled from
every peer on connect and from RESYNC_PEERS random peers every sync interval (``catalog_sync``),
``/openlora/nodes/1.0.0`` answered for clients that route by swarm (``directory``), the status
loop, and the Kademlia DHT ``/openlora/kad/1.0.0`` (``dht``): once a first peer is connected the
node joins it and provides its base and every adapter it holds; each adapter announced or fetched
is provided too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.request_response import ProtocolNotSupportedError, RequestResponse
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from ..adapters.manifest import Manifest
from ..adapters.reasons import AdapterRejected, RejectReason
from ..content.blockstore import BlockStore
from ..content.errors import BlockNotFound
from .bitswap import BitswapFetcher, BitswapStore, ReplyingBitswapClient
from .blocks import (
    BLOCKS_PROTOCOL,
    MAX_PRESENCE_CIDS,
    Served,
    UploadLimit,
    request_blocks,
    request_presence,
    serve_blocks,
)
from .catalog import CatalogRecord, SwarmCatalog
from .catalog_sync import CatalogSync
from .dht import Dht, DhtInfo, adapter_key, base_key
from .directory import request_status, serve_directory
from .errors import SourceUnavailable, SwarmError, SwarmStartError
from .fetch import TIER_FALLBACK, TIER_PEER, TIER_PROVIDER, BlockSource, Census, FetchedAdapter, fetch_adapter
from .gossip import CountingPubsub, EvidenceCheck, Gossip, build_pubsub
from .host import HIGH_WATER, LOW_WATER, build_host, check_port_free, listen_multiaddr, parse_peer_multiaddr
from .identity import load_or_create_identity
from .kubo_rpc import KuboRpcSource
from .messages import MAX_REFRESH_S, TOPIC_ADAPTERS, TOPIC_EVIDENCE, Announcement, LocalStatus, NodeStatus, encode, status_message
from .peers import PeerEntry, PeerTable, pick_node
from .relay import Relay, RelayInfo, is_circuit
from .runner import TrioThread
from .scoring import BAD_BLOCK_PENALTY, PeerGuard
from .validate import ManifestValidator, VerifiedAdapter, verify_adapter

log = logging.getLogger(__name__)

CATALOG_FILE = "swarm.sqlite"
IDENTIFY_WAIT_S = 2.0  # how long to wait for a new peer's protocol list (identify: ~0.1 s here)
DHT_MODES = ("auto", "server", "client", "off")
JOIN_POLL_S = 0.1  # how often a node with no peer yet looks for its first one (DHT join)
PROVIDE_PARALLEL = 8  # keys provided at once when joining the DHT
# Anti-entropy: peers pulled again each sync interval. A few random ones repair what gossip missed as surely as
# all of them, in a few intervals, and the cost per node no longer grows with its connections: pulling every
# connected peer put 40 x 39 catalog exchanges every 120 s through a 40-peer swarm_sim on 2 cores.
RESYNC_PEERS = 3
SURVEY_PEERS = 4  # co-fetchers asked what they hold per survey (fetch.SURVEY_S)


@dataclass(frozen=True)
class SwarmConfig:
    """Swarm settings (times in seconds).

    Attributes:
        listen_host: IPv4 address to listen on (loopback unless the operator opens it).
        port: TCP port (0: a free port; read ``Swarm.multiaddr``).
        bootstrap: full multiaddrs of peers to dial (``/ip4/…/tcp/N/p2p/PEERID``). Besides
            these, the node dials only a provider it fetches from, at the address the
            provider's own signed status gave (and libp2p redials peers it was connected to).
        heartbeat_s: GossipSub heartbeat.
        status_interval_s: how often this node checks its status: published at once when what peers route by
            changed (resident adapters, addresses, …), else every status period.
        swarm_status_per_s: statuses per second the whole swarm publishes, at most: every node receives
            every node's status, so each slows its period to max(status_interval_s, nodes in its table /
            this rate) and says so in the status (``refresh_s``), which keeps its entry alive in peer tables
            3 periods. Per-node status traffic then stays flat as the swarm grows (it grew with the swarm:
            40 peers at a fixed 10 s saturated 2 cores).
        peer_ttl_s: a peer-table entry not refreshed for this long is dropped.
        catalog_sync_interval_s: how often the catalog is pulled again, from ``RESYNC_PEERS`` random connected peers
            (every peer is pulled once when it connects).
        low_water / high_water: connections kept: py-libp2p's connection manager dials peers it knows
            up to midway between the two and prunes above ``high_water`` (Kubo's ConnMgr defaults).
        bootstrap_retry_s: how often unconnected bootstrap peers are redialled.
        request_timeout_s: one dial, block request or catalog exchange.
        fetch_timeout_s: one whole adapter fetch.
        mesh_wait_s: how long a publication waits for a GossipSub mesh.
        max_messages_per_topic_per_second: per peer, before GossipSub drops and penalises
            (each node relays every node's status: keep it above ``swarm_status_per_s``).
        ban_threshold: score at or below which a peer is banned (negative).
        ban_s: ban duration.
        bitswap: serve our blocks over bitswap and fetch from bitswap-only peers (Kubo).
        ipfs_api: a Kubo RPC URL tried after the peers (``--ipfs-api``).
        announce_fetched: announce adapters after fetching them (so peers learn another
            provider).
        dht: ``"auto"`` (server unless the node is reachable only through relays), ``"server"``,
            ``"client"`` or ``"off"`` (see ``dht``).
        dht_timeout_s: one DHT lookup or provide.
        listen: accept direct connections; False: listen on nothing (a node behind NAT that
            only dials out), reachable only through ``relays``.
        relays: full multiaddrs of relay peers to hold a slot at (a node behind NAT); the
            node advertises ``<relay>/p2p-circuit/p2p/<self>`` (see ``relay``).
        relay_service: relay for nodes behind NAT (off unless the operator opts in).
        relay_max_reservations / relay_max_circuits / relay_max_circuit_bytes /
            relay_max_circuit_s: the relay service's limits: slots, relayed connections per
            reserved peer, bytes and seconds per relayed connection.
        max_upload_bytes_per_s: the rate this node serves blocks at, bytes per second, as an uplink
            of that speed would (``None``: as fast as it can).
    """

    listen_host: str = "127.0.0.1"
    port: int = 0
    bootstrap: tuple[str, ...] = ()
    heartbeat_s: float = 1.0
    status_interval_s: float = 10.0
    swarm_status_per_s: float = 1.0
    peer_ttl_s: float = 60.0
    catalog_sync_interval_s: float = 120.0
    low_water: int = LOW_WATER
    high_water: int = HIGH_WATER
    bootstrap_retry_s: float = 5.0
    request_timeout_s: float = 10.0
    fetch_timeout_s: float = 300.0
    mesh_wait_s: float = 3.0
    max_messages_per_topic_per_second: float = 20.0
    ban_threshold: float = -30.0
    ban_s: float = 600.0
    bitswap: bool = True
    ipfs_api: str | None = None
    announce_fetched: bool = True
    dht: str = "auto"
    dht_timeout_s: float = 10.0
    listen: bool = True
    relays: tuple[str, ...] = ()
    relay_service: bool = False
    relay_max_reservations: int = 16
    relay_max_circuits: int = 4
    relay_max_circuit_bytes: int = 256 * 2**20
    relay_max_circuit_s: float = 600.0
    max_upload_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        """Raises InvalidMultiaddr (listen address, bootstrap) or ValueError (a bound)."""
        listen_multiaddr(self.listen_host, self.port)
        for addr in (*self.bootstrap, *self.relays):
            parse_peer_multiaddr(addr)
        for name in (
            "heartbeat_s",
            "status_interval_s",
            "swarm_status_per_s",
            "peer_ttl_s",
            "catalog_sync_interval_s",
            "bootstrap_retry_s",
            "request_timeout_s",
            "fetch_timeout_s",
            "mesh_wait_s",
            "max_messages_per_topic_per_second",
            "ban_s",
            "dht_timeout_s",
            "relay_max_reservations",
            "relay_max_circuits",
            "relay_max_circuit_bytes",
            "relay_max_circuit_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"SwarmConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_upload_bytes_per_s is not None and not self.max_upload_bytes_per_s > 0:
            raise ValueError(f"SwarmConfig.max_upload_bytes_per_s must be positive, got {self.max_upload_bytes_per_s!r}")
        if not self.ban_threshold < 0:
            raise ValueError(f"SwarmConfig.ban_threshold must be negative, got {self.ban_threshold!r}")
        if not 0 <= self.low_water <= self.high_water:
            raise ValueError(f"SwarmConfig needs 0 <= low_water <= high_water, got {self.low_water} and {self.high_water}")
        if self.ipfs_api is not None:
            KuboRpcSource(self.ipfs_api)  # raises ValueError for a bad URL
        if self.dht not in DHT_MODES:
            raise ValueError(f"SwarmConfig.dht must be one of {', '.join(DHT_MODES)}, got {self.dht!r}")

        if not self.listen and not self.relays:
            raise ValueError("SwarmConfig.listen=False needs relays: nobody could reach this node otherwise")

    @property
    def dht_server(self) -> bool:
        """Whether the DHT answers queries (``auto``: when the node is dialled directly, i.e. it
        listens and holds no relay slot)."""
        return self.dht == "server" or (self.dht == "auto" and self.listen and not self.relays)


@dataclass(frozen=True)
class SwarmStats:
    """Counters since start.

    Attributes:
        rejected: gossip refusals by reason (``malformed``, ``forged_cid``, …).
        adapters_learned: new adapters for our base taken into the catalog.
        declined: valid announcements/entries this node does not keep (another base, over its
            size limit: relayed all the same).
        bad_blocks: blocks refused during fetches.
        blocks_served: blocks this node sent on ``/openlora/blocks`` (bitswap not counted).
        bytes_served: their bytes.
        banned: peers banned now.
        gossip_received: pubsub messages peers pushed to this node, by topic (duplicates included).
    """

    rejected: dict[str, int] = field(default_factory=dict)
    adapters_learned: int = 0
    declined: int = 0
    bad_blocks: int = 0
    blocks_served: int = 0
    bytes_served: int = 0
    banned: tuple[str, ...] = ()
    gossip_received: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DhtLookup:
    """One DHT lookup of an adapter's providers.

    Attributes:
        providers: base58 peer IDs that provide it (this node excluded).
        seconds: wall time of the lookup.
        queries: DHT requests this node sent for it (0: the record was held here).
        hops: GET_PROVIDERS rounds it took (0: the record was held here).
    """

    providers: tuple[str, ...]
    seconds: float
    queries: int
    hops: int


class _PeerSource:
    """Blocks from one peer: ``/openlora/blocks``, or bitswap if the peer does not speak it."""

    def __init__(self, swarm: _Running, peer: ID, tier: int) -> None:
        self.swarm = swarm
        self.peer = peer
        self.name = peer.to_base58()
        self.tier = tier

    async def get_blocks(self, cids: list[str]) -> dict[str, bytes]:
        running = self.swarm
        if await running.speaks_openlora(self.peer):
            try:
                return await request_blocks(running.rr, self.peer, cids, running.config.request_timeout_s)
            except ProtocolNotSupportedError:
                running.bitswap_only.add(self.peer)
        if running.bitswap is None:
            raise SourceUnavailable(f"peer {self.peer} speaks neither /openlora/blocks nor bitswap here")
        return await running.bitswap.get(self.peer, cids)


class _Survey:
    """Who else is fetching a DAG and which of its missing blocks each holds (``fetch.Survey``): the
    providers name the peers they sent those blocks lately and which went to whom, and those peers,
    once known, say what they hold and whom they passed blocks on to (``/openlora/have/2.0.0``),
    SURVEY_PEERS per survey, those asked longest ago first. A co-fetcher known to hold a block stays
    known for the fetch (it keeps its blocks; one that then fails or says no is dropped or skipped by
    the fetch). Only openlora peers connected when the fetch started count."""

    def __init__(self, running: _Running, sources: list[BlockSource]) -> None:
        self.running = running
        self.peers = {s.name: s for s in sources if isinstance(s, _PeerSource) and s.tier != TIER_FALLBACK}
        self.cofetchers: dict[str, float] = {}  # name → when last asked (trio clock)
        self.holders: dict[str, set[str]] = defaultdict(set)  # a holder stays one while the fetch runs

    async def __call__(self, root: str, missing: list[str]) -> Census:
        asked = [root, *missing][:MAX_PRESENCE_CIDS]
        providers = {n for n, s in self.peers.items() if s.tier == TIER_PROVIDER}
        sent: dict[str, int] = {}

        async def ask(name: str) -> None:
            try:
                answer = await request_presence(
                    self.running.rr, self.peers[name].peer, asked, self.running.config.request_timeout_s
                )
            except Exception as e:  # a peer that cannot say is only not asked for blocks by name
                log.debug("presence request to %s failed: %s: %s", name, type(e).__name__, e)
                return
            named = [p.to_base58() for p in answer.wanters]
            for n in named:
                if n in self.peers and n not in providers:
                    self.cofetchers.setdefault(n, -math.inf)
            for cid, held, copies, mask in zip(asked, answer.have, answer.copies, answer.sent_to, strict=True):
                if name in providers:
                    sent[cid] = max(copies, sent.get(cid, 0))
                elif held:
                    self.holders[cid].add(name)
                self.holders[cid].update(n for k, n in enumerate(named) if mask >> k & 1 and n in self.cofetchers)

        # every survey asks the providers (who name new co-fetchers) and the few co-fetchers asked longest ago:
        # ten fetchers asking each other every second would spend the CPU the blocks need
        oldest = sorted(self.cofetchers, key=lambda n: (self.cofetchers[n], random.random()))[:SURVEY_PEERS]
        for name in oldest:
            self.cofetchers[name] = trio.current_time()
        async with trio.open_nursery() as nursery:
            for name in providers.union(oldest):
                nursery.start_soon(ask, name)
        held = {c: set(self.holders[c]) for c in missing if self.holders.get(c)}
        return Census(held, sent, tuple(self.cofetchers), self.running.host.get_id().to_base58())


class _Running:
    """The parts that exist while the trio loop runs (all used from that loop only)."""

    def __init__(
        self,
        swarm: Swarm,
        host: IHost,
        gossip: Gossip,
        guard: PeerGuard,
        rr: RequestResponse,
        sync: CatalogSync,
        served: Served,
    ) -> None:
        self.swarm = swarm
        self.config = swarm.config
        self.host = host
        self.gossip = gossip
        self.guard = guard
        self.rr = rr
        self.sync = sync
        self.bitswap: BitswapFetcher | None = None
        self.dht: Dht | None = None
        self.relay: Relay  # set right after construction
        self.nursery: trio.Nursery | None = None
        self.bitswap_only: set[ID] = set()
        self.bad_blocks = 0
        self.served = served

    async def speaks_openlora(self, peer: ID) -> bool:
        """Whether ``peer`` lists ``/openlora/blocks`` in its identify answer (waited for up to
        IDENTIFY_WAIT_S after connecting); True while unknown, so the caller tries and sees."""
        if peer in self.bitswap_only:
            return False
        with trio.move_on_after(IDENTIFY_WAIT_S):
            while True:
                try:
                    protocols = self.host.get_peerstore().get_protocols(peer)
                except PeerStoreError:
                    protocols = []
                if protocols:
                    if BLOCKS_PROTOCOL in protocols:
                        return True
                    self.bitswap_only.add(peer)  # e.g. Kubo: bitswap only, no catalog
                    return False
                await trio.sleep(0.02)
        return True

    def connected(self) -> list[ID]:
        return [p for p in self.host.get_network().connections if not self.guard.is_banned(p)]

    async def sources(self, providers: tuple[str, ...]) -> list[BlockSource]:
        """Every connected peer as a source, tiered: providers, other openlora peers, then
        bitswap-only peers and the Kubo RPC."""
        connected = self.connected()
        speaks: dict[ID, bool] = {}

        async def learn(peer: ID) -> None:
            speaks[peer] = await self.speaks_openlora(peer)

        async with trio.open_nursery() as nursery:
            for peer in connected:
                nursery.start_soon(learn, peer)
        sources: list[BlockSource] = []
        for peer in connected:
            if not speaks[peer]:
                tier = TIER_FALLBACK
            else:
                tier = TIER_PROVIDER if peer.to_base58() in providers else TIER_PEER
            sources.append(_PeerSource(self, peer, tier))
        if self.config.ipfs_api is not None:
            sources.append(KuboRpcSource(self.config.ipfs_api, self.config.request_timeout_s))
        return sources

    def bad_block(self, source: BlockSource, cid: str, error: Exception) -> None:
        self.bad_blocks += 1
        if isinstance(source, _PeerSource):
            self.guard.penalise(source.peer, BAD_BLOCK_PENALTY, f"sent a bad block for {cid}: {error}")
        else:
            log.warning("source %s sent a bad block for %s: %s", source.name, cid, error)


class _ConnectionEvents(INotifee):
    """Pulls the catalog of every peer that connects (inbound or outbound)."""

    def __init__(self, nursery: trio.Nursery, on_connect: Callable[[ID], object]) -> None:
        self.nursery = nursery
        self.on_connect = on_connect

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        """Schedule the catalog pull (never block the network's notification)."""
        self.nursery.start_soon(self.on_connect, conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        """Nothing to do."""

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        """Nothing to do."""

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        """Nothing to do."""

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        """Nothing to do."""

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        """Nothing to do."""


class Swarm:
    """This node's place in the swarm (see the module docstring).

    Args:
        data_dir: the node's data folder: identity key and swarm catalog live there.
        store: the node's block store (served to peers, filled by fetches).
        base_fingerprint: the resident base; only adapters for it are kept and fetched.
        validate_manifest: parses and checks manifest bytes, raising on bad input (the hook
            where the publisher's signature check goes).
        status: returns this node's current status; ``None`` publishes no status.
        on_adapter: told about each adapter for our base newly added to the catalog.
        config: see :class:`SwarmConfig`.
        check_evidence: re-checks gossiped evidence (``proof.service.ProofService.check``); ``None``: evidence
            is not relayed by this node.
        accused: the account addresses of nodes this node holds evidence against (left out of its
            directory answers and of :meth:`pick`).
        adapter_features: the PEFT features an adapter needs, from its config in this node's store
            (``AdapterStore.features``), or ``None``: what directory answers tell clients to route by.

    Raises:
        IdentityError: the identity key file is unreadable.
        sqlite3.Error: the catalog database cannot be opened.
    """

    def __init__(
        self,
        data_dir: str | Path,
        store: BlockStore,
        base_fingerprint: str,
        validate_manifest: ManifestValidator,
        *,
        status: Callable[[], LocalStatus] | None = None,
        on_adapter: Callable[[CatalogRecord], None] | None = None,
        config: SwarmConfig = SwarmConfig(),
        check_evidence: EvidenceCheck | None = None,
        accused: Callable[[], Collection[str]] = frozenset,
        adapter_features: Callable[[str], tuple[str, ...] | None] = lambda cid: None,
    ) -> None:
        data_dir = Path(data_dir)
        self.config = config
        self.store = store
        self.base_fingerprint = base_fingerprint
        self.validate_manifest = validate_manifest
        self._status = status
        self._on_adapter = on_adapter
        self._check_evidence = check_evidence
        self._accused = accused
        self._adapter_features = adapter_features
        self._key_pair = load_or_create_identity(data_dir)
        self.peer_id = ID.from_pubkey(self._key_pair.public_key).to_base58()
        self.catalog = SwarmCatalog(data_dir / CATALOG_FILE)
        self.peers = PeerTable(config.peer_ttl_s)
        self.multiaddr = ""
        self._thread = TrioThread(f"openlora-p2p-{self.peer_id[-6:]}")
        self._running: _Running | None = None
        self._learned = 0
        self._declined = 0
        self._stopped = False

    # ── lifecycle ────────────────────────────────────────────────────────────────────────

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the host and wait until it listens; bootstrap dials continue in background.

        Raises:
            SwarmStartError: the host could not start (e.g. the port is taken).
            SwarmError: already started, or stopped (a stopped Swarm is not restarted: make a
                new one on the same data dir).
        """
        if self._stopped or self._thread.running:
            raise SwarmError("this Swarm was already started; make a new one on the same data dir to restart")
        self.multiaddr = self._thread.start(self._service, timeout_s)
        log.info("p2p listening on %s", self.multiaddr)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the host and close the catalog (idempotent).

        Raises:
            TimeoutError: the libp2p thread did not end in time.
        """
        self._stopped = True
        self._thread.stop(timeout_s)
        self.catalog.close()

    async def _service(self, *, task_status: trio.TaskStatus) -> None:
        cfg = self.config
        listen = listen_multiaddr(cfg.listen_host, cfg.port)
        if cfg.listen:
            check_port_free(cfg.listen_host, cfg.port)
        host = build_host(self._key_pair, listen, self.config.low_water, self.config.high_water)
        pubsub, router = build_pubsub(host, cfg.heartbeat_s, cfg.ban_threshold, cfg.max_messages_per_topic_per_second)
        try:
            await self._serve(host, [listen] if cfg.listen else [], pubsub, router, task_status)
        finally:
            # py-libp2p's Pubsub starts a sweeper thread for its seen-messages cache and never
            # stops it.
            pubsub.seen_messages.stop()

    async def _serve(
        self, host: IHost, listen: list[Multiaddr], pubsub: CountingPubsub, router: GossipSub, task_status: trio.TaskStatus
    ) -> None:
        cfg = self.config
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(host.run(listen))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await pubsub.wait_until_ready()
            relay = Relay(
                host, cfg.relay_service, cfg.relay_max_reservations, cfg.relay_max_circuits,
                cfg.relay_max_circuit_bytes, cfg.relay_max_circuit_s,
            )  # fmt: skip
            await stack.enter_async_context(background_trio_service(relay.protocol))
            dht = None
            if cfg.dht != "off":
                dht = Dht(host, cfg.dht_server, lambda: [*host.get_addrs(), *relay.circuit_addrs()], cfg.dht_timeout_s)
                await stack.enter_async_context(background_trio_service(dht.kad))
            await self._run_parts(host, pubsub, router, relay, dht, task_status)

    async def _run_parts(
        self,
        host: IHost,
        pubsub: CountingPubsub,
        router: GossipSub,
        relay: Relay,
        dht: Dht | None,
        task_status: trio.TaskStatus,
    ) -> None:
        cfg = self.config
        async with trio.open_nursery() as nursery:
            guard = PeerGuard(host, pubsub, router, cfg.ban_threshold, cfg.ban_s)
            await nursery.start(guard.run, cfg.heartbeat_s)
            rr = RequestResponse(host)
            upload = UploadLimit(cfg.max_upload_bytes_per_s) if cfg.max_upload_bytes_per_s is not None else None
            served = serve_blocks(rr, self.store, guard.is_banned, cfg.request_timeout_s, upload)
            sync = CatalogSync(rr, self.catalog, guard, self.validate_manifest, self._ingest, cfg.request_timeout_s)
            gossip = Gossip(
                pubsub, router, guard, self.validate_manifest, self._ingest, self.peers, cfg.mesh_wait_s,
                self._check_evidence,
            )  # fmt: skip
            await nursery.start(gossip.run)
            running = _Running(self, host, gossip, guard, rr, sync, served)
            running.relay, running.dht, running.nursery = relay, dht, nursery
            if cfg.bitswap:
                bitswap_store = BitswapStore(self.store)
                client = ReplyingBitswapClient(host, bitswap_store)
                client.set_nursery(nursery)
                await client.start()
                running.bitswap = BitswapFetcher(client, bitswap_store, cfg.request_timeout_s)
            host.get_network().register_notifee(_ConnectionEvents(nursery, self._pull_catalog))
            serve_directory(
                rr, self._own_status, self.peers.statuses, self._adapter_base, guard.is_banned,
                cfg.request_timeout_s, self._find_nodes if dht is not None else None, self._accused,
                self._adapter_features,
            )  # fmt: skip
            if cfg.relays:
                await self._reserve_relays(running)
                if not cfg.listen and not relay.circuit_addrs():
                    raise SwarmStartError(
                        f"this node listens on nothing and no relay granted it a slot (tried {', '.join(cfg.relays)}): "
                        f"no peer could reach it; check that a relay runs with --relay-service"
                    )
                nursery.start_soon(self._keep_relays, running)
            self._running = running
            nursery.start_soon(self._keep_bootstrap)
            nursery.start_soon(self._resync)
            if dht is not None:
                nursery.start_soon(self._join_dht, dht)
            if self._status is not None:
                nursery.start_soon(gossip.publish_statuses, self._own_status, cfg.status_interval_s, self._status_period)
            task_status.started(self.advertised()[0])
            try:
                await trio.sleep_forever()
            finally:
                self._running = None
                if cfg.bitswap:
                    with trio.move_on_after(2, shield=True):
                        await client.stop()

    def advertised(self) -> list[str]:
        """The full multiaddrs this node gives peers: where it listens, then its relay circuits
        (a node that listens on nothing has only those). Empty when not running."""
        running = self._running
        if running is None:
            return []
        return [str(a) for a in running.host.get_addrs()] + [str(a) for a in running.relay.circuit_addrs()]

    def _own_status(self) -> NodeStatus | None:
        running = self._running
        if self._status is None or running is None:
            return None
        dht = "off" if running.dht is None else running.dht.info.mode
        return status_message(
            self._status(), self.peer_id, self.advertised(), int(time.time() * 1000),
            dht=dht, relay_service=self.config.relay_service, refresh_s=math.ceil(self._status_period()),
        )  # fmt: skip

    def _status_period(self) -> float:
        """Seconds between this node's statuses when nothing peers route by changed (``SwarmConfig``:
        ``swarm_status_per_s``), at most ``MAX_REFRESH_S``."""
        cfg = self.config
        nodes = max(len(self.peers), 1)  # its own status is in its table too
        return min(MAX_REFRESH_S, max(cfg.status_interval_s, nodes / cfg.swarm_status_per_s))

    def _adapter_base(self, cid: str) -> str | None:
        record = self.catalog.get(cid)
        return record.base_fingerprint if record is not None else None

    def _live(self) -> _Running:
        if self._running is None:
            raise SwarmError("the swarm is not running")
        return self._running

    # ── background tasks (trio thread) ───────────────────────────────────────────────────

    async def _keep_bootstrap(self) -> None:
        infos = [parse_peer_multiaddr(a) for a in self.config.bootstrap]
        while infos:
            running = self._live()
            async with trio.open_nursery() as nursery:
                for info in infos:
                    if info.peer_id not in running.host.get_network().connections:
                        nursery.start_soon(self._dial, info)
            await trio.sleep(self.config.bootstrap_retry_s)

    async def _dial(self, info: PeerInfo) -> None:
        try:
            with trio.fail_after(self.config.request_timeout_s):
                await self._connect_info(info)
        except Exception as e:  # a bootstrap peer may be down; it is retried
            log.info("could not dial %s: %s", info.peer_id, e)

    async def _connect_info(self, info: PeerInfo) -> None:
        """Dial ``info``: its direct addresses first, then its relay circuits (py-libp2p's own
        dialler skips circuit addresses)."""
        running = self._live()
        circuits = [a for a in info.addrs if is_circuit(a)]
        if not circuits:
            await running.host.connect(info)
            return
        direct = [a for a in info.addrs if not is_circuit(a)]
        if direct:
            with contextlib.suppress(Exception):
                await running.host.connect(PeerInfo(info.peer_id, direct))
                return
        failure: Exception | None = None
        for addr in circuits:
            full = addr if addr.get_peer_id() == info.peer_id.to_base58() else addr.encapsulate(f"/p2p/{info.peer_id}")
            try:
                await running.relay.dial(full)
                return
            except Exception as e:  # the next circuit may work
                failure = e
        raise SwarmError(f"could not reach {info.peer_id} through any relay: {failure}")

    async def _reserve_relays(self, running: _Running) -> None:
        async with trio.open_nursery() as nursery:
            for addr in self.config.relays:
                if not running.relay.holds_slot(parse_peer_multiaddr(addr).peer_id):
                    nursery.start_soon(running.relay.reserve, addr, running.nursery, self.config.request_timeout_s)

    async def _keep_relays(self, running: _Running) -> None:
        # A relay that restarts forgets our slot; py-libp2p refreshes live ones before they expire.
        while True:
            await trio.sleep(self.config.bootstrap_retry_s)
            await self._reserve_relays(running)

    async def _resync(self) -> None:
        while True:
            await trio.sleep(self.config.catalog_sync_interval_s)
            connected = self._live().connected()
            for peer in random.sample(connected, min(RESYNC_PEERS, len(connected))):
                await self._pull_catalog(peer)

    async def _pull_catalog(self, peer: ID) -> None:
        running = self._running
        if running is None or running.guard.is_banned(peer) or not await running.speaks_openlora(peer):
            return
        if running.dht is not None:
            await running.dht.add_peer(peer)
        try:
            await running.sync.pull(peer)
        except Exception as e:  # a peer that vanishes mid-answer (churn) must not stop the swarm
            log.info("catalog sync with %s failed: %s: %s", peer, type(e).__name__, e)

    async def _join_dht(self, dht: Dht) -> None:
        # Kademlia's join needs a first peer (a bootstrap peer, or one that dials us); records
        # provided into an empty swarm reach no one, so providing waits for it too.
        running = self._live()
        while not running.connected():
            await trio.sleep(JOIN_POLL_S)
        await trio.sleep(IDENTIFY_WAIT_S / 4)  # identify tells which peers are DHT servers
        await dht.refresh()
        local = [r.cid for r in await trio.to_thread.run_sync(self.catalog.records) if r.local]
        limiter = trio.CapacityLimiter(PROVIDE_PARALLEL)

        async def provide(key: bytes) -> None:
            async with limiter:
                await dht.provide(key)

        async with trio.open_nursery() as nursery:
            for key in [base_key(self.base_fingerprint), *map(adapter_key, local)]:
                nursery.start_soon(provide, key)
        log.info("joined the DHT: %d peer(s) in the routing table, %d key(s) provided", dht.info.routing_table, 1 + len(local))

    async def _ingest(self, adapter: VerifiedAdapter, provider: str | None) -> None:
        manifest = adapter.manifest
        if manifest is None or manifest.base.fingerprint != self.base_fingerprint:
            self._declined += 1
            return
        new = await trio.to_thread.run_sync(
            self.catalog.add, adapter.cid, adapter.manifest_bytes, manifest.base.fingerprint, manifest.name, provider
        )
        if new:
            self._learned += 1
            if self._on_adapter is not None:
                await trio.to_thread.run_sync(self._notify, adapter.cid)

    def _notify(self, cid: str) -> None:
        try:
            self._on_adapter(self.catalog.get(cid))  # type: ignore[misc,arg-type]
        except Exception:
            log.exception("on_adapter callback failed for %s", cid)

    # ── operations (trio thread) ─────────────────────────────────────────────────────────

    async def _local_adapter(self, cid: str) -> tuple[VerifiedAdapter, Manifest]:
        raw = await trio.to_thread.run_sync(self.store.get, cid)
        adapter = verify_adapter(cid, raw, self.validate_manifest)
        manifest = adapter.manifest
        if manifest is None:  # declined: another base, or over this node's limits
            raise adapter.declined  # type: ignore[misc]
        if manifest.base.fingerprint != self.base_fingerprint:
            raise AdapterRejected(
                RejectReason.BASE_MISMATCH,
                f"adapter {cid} is for base {manifest.base.fingerprint}; this node serves {self.base_fingerprint}",
            )
        for f in manifest.files:
            missing = await trio.to_thread.run_sync(self.store.missing, f.cid)
            if missing:
                raise BlockNotFound(
                    f"cannot announce {cid}: {len(missing)} block(s) of {f.name} are not in the store "
                    f"(publish or fetch the adapter first)",
                    cid=missing[0],
                )
        return adapter, manifest

    async def _announce(self, cid: str) -> None:
        adapter, m = await self._local_adapter(cid)
        await trio.to_thread.run_sync(
            lambda: self.catalog.add(
                adapter.cid, adapter.manifest_bytes, m.base.fingerprint, m.name, self.peer_id, local=True
            )
        )
        running = self._live()
        await running.gossip.publish(TOPIC_ADAPTERS, encode(Announcement.of(adapter.cid, adapter.manifest_bytes)))
        if running.dht is not None:
            await running.dht.provide(adapter_key(adapter.cid))

    async def _reach(self, providers: tuple[str, ...], found: dict[str, PeerInfo]) -> None:
        # A provider we are not connected to is dialled at the addresses its own signed
        # status gave (peer table), or its DHT provider record gave; others cannot be reached.
        running = self._live()
        connected = {p.to_base58() for p in running.connected()}
        async with trio.open_nursery() as nursery:
            for peer in providers:
                if peer == self.peer_id or peer in connected:
                    continue
                entry = self.peers.get(peer)
                if entry is not None and entry.addrs:
                    infos = [parse_peer_multiaddr(a) for a in entry.addrs]
                    nursery.start_soon(self._dial, PeerInfo(infos[0].peer_id, [a for i in infos for a in i.addrs]))
                elif peer in found:
                    nursery.start_soon(self._dial, found[peer])

    async def _providers(self, cid: str, known: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, PeerInfo]]:
        """Providers from the catalog (gossip, catalog sync); from the DHT too when none of those can be dialled:
        in a sparse swarm gossip names providers this node is not connected to and holds no status of (statuses
        come once per period), and only their DHT provider records carry addresses."""
        running = self._live()
        if running.dht is None:
            return known, {}
        connected = {p.to_base58() for p in running.connected()}
        if any(p == self.peer_id or p in connected or ((e := self.peers.get(p)) is not None and e.addrs) for p in known):
            return known, {}
        found = {p.peer_id.to_base58(): p for p in await running.dht.find_providers(adapter_key(cid))}
        log.info("DHT: %d provider(s) of %s", len(found), cid)
        return tuple(dict.fromkeys((*known, *found))), found

    async def _fetch(self, cid: str, timeout_s: float | None) -> FetchedAdapter:
        running = self._live()
        record = await trio.to_thread.run_sync(self.catalog.get, cid)
        providers, found = await self._providers(cid, record.providers if record is not None else ())
        await self._reach(providers, found)
        sources = await running.sources(providers)
        fetched = await fetch_adapter(
            self.store,
            cid,
            sources,
            self.validate_manifest,
            self.base_fingerprint,
            on_bad_block=running.bad_block,
            timeout_s=self.config.fetch_timeout_s if timeout_s is None else timeout_s,
            survey=_Survey(running, sources),
        )
        m = fetched.manifest
        await trio.to_thread.run_sync(
            lambda: self.catalog.add(
                fetched.cid, fetched.manifest_bytes, m.base.fingerprint, m.name, self.peer_id, local=True
            )
        )
        if self.config.announce_fetched and not (record is not None and record.local):
            await running.gossip.publish(TOPIC_ADAPTERS, encode(Announcement.of(fetched.cid, fetched.manifest_bytes)))
            if running.dht is not None and running.nursery is not None:
                running.nursery.start_soon(running.dht.provide, adapter_key(fetched.cid))
        return fetched

    async def _connect(self, addr: str) -> None:
        info = parse_peer_multiaddr(addr)
        try:
            with trio.fail_after(self.config.request_timeout_s):
                await self._connect_info(info)
        except trio.TooSlowError:
            raise SwarmError(f"connecting to {addr} timed out after {self.config.request_timeout_s} s") from None
        except Exception as e:
            raise SwarmError(f"cannot connect to {addr}: {e}") from e

    async def _snapshot(self) -> tuple[list[str], SwarmStats]:
        running = self._live()
        stats = SwarmStats(
            rejected=dict(running.gossip.rejected),
            adapters_learned=self._learned,
            declined=self._declined,
            bad_blocks=running.bad_blocks,
            blocks_served=running.served.blocks,
            bytes_served=running.served.bytes,
            banned=tuple(sorted(p.to_base58() for p in running.guard.banned())),
            gossip_received=dict(running.gossip.pubsub.received),
        )
        return [p.to_base58() for p in running.connected()], stats

    async def _find_providers(self, cid: str) -> DhtLookup:
        dht = self._live().dht
        if dht is None:
            raise SwarmError("the DHT is off on this node (SwarmConfig.dht='off')")
        queries, rounds = dht.view.streams_opened, dht.rounds
        started = time.perf_counter()
        found = await dht.find_providers(adapter_key(cid))
        return DhtLookup(
            tuple(p.peer_id.to_base58() for p in found),
            time.perf_counter() - started,
            dht.view.streams_opened - queries,
            dht.rounds - rounds,
        )

    async def _find_nodes(self, base_fingerprint: str) -> list[PeerEntry]:
        running = self._live()
        if running.dht is None:
            raise SwarmError("the DHT is off on this node (SwarmConfig.dht='off')")
        found = await running.dht.find_providers(base_key(base_fingerprint))

        async def learn(info: PeerInfo) -> None:
            try:
                with trio.fail_after(self.config.request_timeout_s):
                    await self._connect_info(info)
                    status = await request_status(running.rr, info.peer_id, self.config.request_timeout_s)
            except Exception as e:  # an unreachable or lying provider is skipped
                log.info("DHT: node %s of base %s not taken: %s", info.peer_id, base_fingerprint, e)
                return
            if status.base_fingerprint == base_fingerprint:
                self.peers.update(status)

        async with trio.open_nursery() as nursery:
            for info in found:
                if not running.guard.is_banned(info.peer_id):
                    nursery.start_soon(learn, info)
        return [e for e in self.peers.entries() if e.base_fingerprint == base_fingerprint]

    async def _relay_info(self) -> RelayInfo:
        return self._live().relay.info()

    async def _dht_info(self) -> DhtInfo | None:
        dht = self._live().dht
        return None if dht is None else dht.info

    async def _publish_evidence(self, data: bytes) -> None:
        await self._live().gossip.publish(TOPIC_EVIDENCE, data)

    async def _score(self, peer_id: str) -> float:
        return self._live().guard.score(ID.from_base58(peer_id))

    # ── public API (any thread) ──────────────────────────────────────────────────────────

    def announce(self, cid: str) -> concurrent.futures.Future:
        """Gossip an adapter this node holds completely; it is also recorded as local.

        The Future fails with ``BlockNotFound`` (manifest or file blocks missing),
        ``MessageRejected`` (the manifest does not pass ``validate_manifest``) or
        ``AdapterRejected`` (BASE_MISMATCH).

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.submit(self._announce, cid)

    def fetch_adapter(self, cid: str, timeout_s: float | None = None) -> concurrent.futures.Future:
        """Fetch an adapter this node lacks from the swarm (see ``fetch.fetch_adapter``).

        The Future's result is a :class:`FetchedAdapter`; it fails with ``InvalidCID``,
        ``AdapterRejected`` (BAD_MANIFEST, BASE_MISMATCH), ``FetchFailed`` or ``FetchTimeout``.
        ``timeout_s`` defaults to ``config.fetch_timeout_s``.

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.submit(self._fetch, cid, timeout_s)

    def find_providers(self, cid: str) -> concurrent.futures.Future:
        """Look ``cid`` up in the DHT only (not the catalog): the Future's result is a
        :class:`DhtLookup`; it fails with ``InvalidCID``, or ``SwarmError`` when the DHT is off.

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.submit(self._find_providers, cid)

    def find_nodes(self, base_fingerprint: str) -> concurrent.futures.Future:
        """Look up the nodes that provide ``base_fingerprint`` in the DHT and ask each for its own
        status (checked like gossip: signed origin, addresses, clock) into the peer table. The
        Future's result is every live peer-table entry of that base; it fails with
        ``SwarmError`` when the DHT is off.

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.submit(self._find_nodes, base_fingerprint)

    def dht_info(self, timeout_s: float = 5.0) -> DhtInfo | None:
        """The DHT's mode, routing table and keys provided (``None``: the DHT is off).

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.call(self._dht_info, timeout=timeout_s)

    def relay_info(self, timeout_s: float = 5.0) -> RelayInfo:
        """Relay state: service on or off, slots and circuits it holds for others, and the relay
        circuits this node is reached through.

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.call(self._relay_info, timeout=timeout_s)

    def connect(self, addr: str) -> concurrent.futures.Future:
        """Dial a peer by full multiaddr; the Future fails with ``InvalidMultiaddr`` or
        ``SwarmError`` (unreachable, timed out).

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.submit(self._connect, addr)

    def publish_evidence(self, data: bytes) -> concurrent.futures.Future:
        """Gossip serialized evidence (``openlora.v1.Evidence``) on ``/openlora/1/evidence``; this node's own
        validator sees it first (``check_evidence``: it knows its own evidence).

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.submit(self._publish_evidence, data)

    def connected_peers(self, timeout_s: float = 5.0) -> list[str]:
        """Peer IDs connected now (banned ones excluded).

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.call(self._snapshot, timeout=timeout_s)[0]

    def stats(self, timeout_s: float = 5.0) -> SwarmStats:
        """Counters since start (see :class:`SwarmStats`).

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.call(self._snapshot, timeout=timeout_s)[1]

    def score(self, peer_id: str, timeout_s: float = 5.0) -> float:
        """GossipSub score of a peer as this node sees it (0 if unknown; forgotten on
        disconnect, bans are not).

        Raises:
            SwarmNotRunning: not started.
        """
        return self._thread.call(self._score, peer_id, timeout=timeout_s)

    def catalog_records(self) -> list[CatalogRecord]:
        """Every adapter for our base this node knows, most recently learned first."""
        return self.catalog.records()

    def peer_table(self) -> list[PeerEntry]:
        """Live node statuses (this node's own included once it published one)."""
        return self.peers.entries()

    def pick(self, base_fingerprint: str, adapter_cid: str | None = None) -> PeerEntry:
        """``pick_node`` over this node's peer table, without the nodes it holds evidence against and, for an
        adapter whose config this node holds, only among nodes whose engine serves the features it needs.

        Raises:
            NoNodeAvailable: no known node serves ``base_fingerprint`` (and those features).
        """
        features = (self._adapter_features(adapter_cid) or ()) if adapter_cid else ()
        return pick_node(self.peer_table(), base_fingerprint, adapter_cid, self._accused(), features)
