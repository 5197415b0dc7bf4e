"""The peer table built from ``/openlora/1/nodes`` statuses, and client-side node selection.

    status (validated, signed by its peer) ──► PeerTable[peer_id] = PeerEntry   (newer ts_ms wins)
    entries not refreshed within max(ttl_s, STATUS_MISSES × the period its node announced) ──► dropped
    pick_node(entries, base_fingerprint, adapter_cid, accused):
        same base only, no accused node ─► adapter resident first ─► least loaded ─► lowest fee ─► freshest

This module imports nothing heavy (no libp2p, no pydantic models): a client (``openlora
generate --swarm``) gets the table from a node's API and calls :func:`pick_node` without
starting a peer of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # messages pulls in the content layer (and libp2p): clients need neither
    from .messages import NodeStatus


class NoNodeAvailable(LookupError):
    """No known node serves the requested base model; the message lists the bases seen."""


@dataclass(frozen=True)
class PeerEntry:
    """One node as the peer table knows it.

    Attributes:
        peer_id: base58 peer ID.
        addrs: full multiaddrs (``/ip4/…/tcp/N/p2p/PEERID``).
        grpc_address: ``host:port`` of its gRPC API.
        base_name / base_fingerprint: its resident base model.
        resident: adapter CIDs in its device slots.
        node_fee_per_1k_wei: its fee per 1000 tokens, wei.
        active / waiting / max_batch: its load, requests.
        ts_ms: when it published this status (its clock, unix ms).
        last_seen: when we received it (our clock, unix seconds).
        reach: ``direct`` or ``relay`` (behind NAT, dialled through a relay circuit).
        dht: its DHT mode (``server``, ``client`` or ``off``).
        relay_service: whether it relays for nodes behind NAT.
        node_address: the account that signs its receipts and serving records ("" if it names none).
        features: PEFT features beyond plain LoRA its engine serves (empty: plain LoRA only).
        refresh_s: seconds until its next status at the latest, as it announced (0: not announced).
    """

    peer_id: str
    addrs: tuple[str, ...]
    grpc_address: str
    base_name: str
    base_fingerprint: str
    resident: tuple[str, ...]
    node_fee_per_1k_wei: int
    active: int
    waiting: int
    max_batch: int
    ts_ms: int
    last_seen: float
    reach: str = "direct"
    dht: str = "off"
    relay_service: bool = False
    node_address: str = ""
    features: tuple[str, ...] = ()
    refresh_s: int = 0

    @classmethod
    def from_status(cls, status: NodeStatus, last_seen: float) -> PeerEntry:
        """The entry for a validated status received at ``last_seen`` (unix seconds)."""
        return cls(
            peer_id=status.peer_id,
            addrs=tuple(status.addrs),
            grpc_address=status.grpc_address,
            base_name=status.base_name,
            base_fingerprint=status.base_fingerprint,
            resident=tuple(status.resident),
            node_fee_per_1k_wei=status.node_fee_per_1k_wei,
            active=status.load.active,
            waiting=status.load.waiting,
            max_batch=status.load.max_batch,
            ts_ms=status.ts_ms,
            last_seen=last_seen,
            reach=status.reach,
            dht=status.dht,
            relay_service=status.relay_service,
            node_address=status.node_address,
            features=tuple(status.features),
            refresh_s=status.refresh_s,
        )

    @property
    def load(self) -> float:
        """(active + waiting) / max_batch."""
        return (self.active + self.waiting) / max(self.max_batch, 1)


#: statuses in a row a peer may miss before its entry is dropped (a lost message is not a departure)
STATUS_MISSES = 3


class PeerTable:
    """Latest status per peer, safe to read from any thread.

    Args:
        ttl_s: seconds after which an entry that was not refreshed is dropped (> 0), or after
            ``STATUS_MISSES`` of the periods its node announced (``refresh_s``), whichever is longer.

    Raises:
        ValueError: ``ttl_s`` is not positive.
    """

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        self.ttl_s = ttl_s
        self._entries: dict[str, PeerEntry] = {}
        self._statuses: dict[str, NodeStatus] = {}  # as received, for the directory protocol
        self._lock = threading.Lock()

    def update(self, status: NodeStatus, now: float | None = None) -> bool:
        """Record a validated status; an older or equal ``ts_ms`` than the one held is ignored
        (a replayed or reordered message).

        Returns:
            Whether the table changed.
        """
        entry = PeerEntry.from_status(status, time.time() if now is None else now)
        with self._lock:
            held = self._entries.get(status.peer_id)
            if held is not None and held.ts_ms >= status.ts_ms:
                return False
            self._entries[status.peer_id] = entry
            self._statuses[status.peer_id] = status
            return True

    def entries(self, now: float | None = None) -> list[PeerEntry]:
        """Live entries (expired ones are dropped), sorted by peer ID."""
        now = time.time() if now is None else now
        with self._lock:
            for peer in [p for p, e in self._entries.items() if e.last_seen < now - max(self.ttl_s, STATUS_MISSES * e.refresh_s)]:
                del self._entries[peer]
                del self._statuses[peer]
            return sorted(self._entries.values(), key=lambda e: e.peer_id)

    def statuses(self, now: float | None = None) -> list[NodeStatus]:
        """The live entries' statuses as received (for ``/openlora/nodes/1.0.0``)."""
        live = self.entries(now)
        with self._lock:
            return [self._statuses[e.peer_id] for e in live if e.peer_id in self._statuses]

    def __len__(self) -> int:
        """Entries held (expired ones included until :meth:`entries` drops them)."""
        with self._lock:
            return len(self._entries)

    def get(self, peer_id: str) -> PeerEntry | None:
        """The entry of ``peer_id`` if held (expiry is applied by :meth:`entries`)."""
        with self._lock:
            return self._entries.get(peer_id)


def pick_node(
    table: Iterable[PeerEntry],
    base_fingerprint: str,
    adapter_cid: str | None = None,
    accused: Collection[str] = frozenset(),
    features: Collection[str] = (),
) -> PeerEntry:
    """Choose the node a client should call for ``adapter_cid`` on ``base_fingerprint``.

    Order: nodes with the same base only, none whose account is ``accused`` (evidence against it stood:
    ``proof.accusations``), only those whose engine serves every one of ``features``; among them those with the adapter resident first, then the lowest load, the
    lowest fee, the most recent status, and the peer ID (so the choice is deterministic).

    Args:
        table: peer entries (e.g. ``PeerTable.entries()`` or a node's API answer).
        base_fingerprint: ``"sha256:<64 hex>"`` the adapter was made for.
        adapter_cid: the adapter to run; ``None`` picks for the base alone.
        accused: node account addresses not to route to.
        features: the PEFT features the adapter needs (``adapters.peft_format.config_features``).

    Raises:
        NoNodeAvailable: no entry has that base fingerprint (and is not accused), or none of those serves
            ``features``.
    """
    entries = list(table)
    same_base = [e for e in entries if e.base_fingerprint == base_fingerprint and e.node_address not in accused]
    if not same_base:
        seen = sorted({e.base_fingerprint for e in entries})
        excluded = sum(1 for e in entries if e.node_address in accused)
        raise NoNodeAvailable(
            f"no known node serves base {base_fingerprint}; bases seen: {seen or 'none'} "
            + (f"({excluded} node(s) excluded by evidence against them) " if excluded else "")
            + "(connect to more peers or wait for their status)"
        )
    serving = [e for e in same_base if set(features) <= set(e.features)]
    if not serving:
        raise NoNodeAvailable(
            f"no known node with base {base_fingerprint} serves {', '.join(sorted(features))} "
            f"({len(same_base)} node(s) serve that base with plain LoRA only; a node on the torch engine serves them)"
        )
    same_base = serving
    return min(
        same_base,
        key=lambda e: (adapter_cid not in e.resident, e.load, e.node_fee_per_1k_wei, -e.ts_ms, e.peer_id),
    )
