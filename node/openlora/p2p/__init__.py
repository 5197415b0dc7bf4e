"""The swarm layer: nodes find adapters and each other over libp2p and fetch blocks by CID.

    node A                                                  node B
    ┌────────────────────────────┐   /openlora/1/adapters   ┌────────────────────────────┐
    │ announce(cid) ─────────────┼── {cid, manifest} ──────►│ validate: CID==hash,       │
    │                            │   (signed by A's key)    │ manifest ─► catalog (+A)   │
    │ status every N s ──────────┼── /openlora/1/nodes ────►│ peer table ─► pick_node    │
    │                            │◄─ /openlora/catalog ─────┤ on connect: pull catalog   │
    │ BlockStore ◄── serve ──────┼── /openlora/blocks ─────►│ fetch_adapter(cid): every  │
    │   (and bitswap, for Kubo)  │                          │ block verified, liars      │
    └────────────────────────────┘                          │ penalised and banned       │
                                                            └────────────────────────────┘
    beyond the gossip mesh: /openlora/kad/1.0.0 (DHT) ── who provides CID X, who runs base F
    behind NAT:             R/p2p-circuit/p2p/B (relay R holds a slot for B; B dials out only)
    py-libp2p runs in its own trio thread (``runner``); the node talks to it through
    ``swarm.Swarm``, whose methods return ``concurrent.futures.Future`` objects.

Modules: ``swarm`` (the Swarm and its config), ``host`` (libp2p host: TCP, Noise, Yamux),
``identity`` (secp256k1 key file), ``runner`` (trio thread bridge), ``gossip`` (topics,
validators, status), ``messages`` (wire formats), ``validate`` (checks), ``scoring`` (scores,
bans), ``catalog`` (persisted swarm catalog), ``catalog_sync`` (catalog on connect), ``blocks``
(block request protocol), ``bitswap`` (py-libp2p bitswap adapter), ``kubo_rpc`` (Kubo RPC
source), ``fetch`` (verified DAG fetcher), ``peers`` (peer table, ``pick_node``), ``dht``
(Kademlia under /openlora/kad/1.0.0: providers of CIDs and bases), ``relay`` (circuit relay v2
for nodes behind NAT), ``directory`` (the node list a client asks for).

Importing this package loads only the errors and ``peers`` (what a client needs to pick a
node); the node side imports ``swarm`` (and ``messages.LocalStatus`` for its status callable).
"""

from .errors import (
    FetchFailed,
    FetchTimeout,
    IdentityError,
    InvalidMultiaddr,
    MessageRejected,
    SourceUnavailable,
    SwarmError,
    SwarmNotRunning,
    SwarmStartError,
)
from .peers import NoNodeAvailable, PeerEntry, PeerTable, pick_node

__all__ = [
    "FetchFailed",
    "FetchTimeout",
    "IdentityError",
    "InvalidMultiaddr",
    "MessageRejected",
    "NoNodeAvailable",
    "PeerEntry",
    "PeerTable",
    "SourceUnavailable",
    "SwarmError",
    "SwarmNotRunning",
    "SwarmStartError",
    "pick_node",
]
