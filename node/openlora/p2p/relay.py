"""Circuit relay v2 (py-libp2p's ``libp2p.relay.circuit_v2``): reach a node behind NAT through a relay.

    relay R (--relay-service)          node B behind NAT (--relay R)            node A
    ──────────────────────────         ────────────────────────────             ──────────────────
    HOP: keeps at most N               dials R, RESERVE ──► a slot (refreshed
    reservations; per circuit at       before it expires); advertises
    most M bytes and S seconds,        R/p2p-circuit/p2p/B in its status and
    K circuits per reserved peer       DHT records (it dials out, nobody dials in)
                                                                                dials R/p2p-circuit/p2p/B:
                                       ◄── STOP CONNECT ── R ◄── HOP CONNECT ──  A
                                       Noise + Yamux run over the relayed stream: to both ends an
                                       ordinary connection (gossip, catalog, blocks, DHT)

Every node accepts relayed connections (STOP) and can dial circuit addresses; only a node started
with ``relay_service`` relays for others (HOP), within its limits (``RelayLimits``: reservations,
circuits per peer, bytes and seconds per circuit). The relay sees only ciphertext: Noise is end to
end between A and B. Hole punching (DCUtR) is not used: see README, Swarm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from multiaddr import Multiaddr

from .host import parse_peer_multiaddr

log = logging.getLogger(__name__)


def is_circuit(addr: Multiaddr) -> bool:
    """Whether ``addr`` goes through a relay (``…/p2p-circuit/…``)."""
    return any(p.name == "p2p-circuit" for p in addr.protocols())


@dataclass(frozen=True)
class RelayInfo:
    """Relay state of a node.

    Attributes:
        service: whether it relays for others (HOP).
        reservations: peers holding a slot at it now (relay side).
        circuits: relayed connections running through it now (relay side).
        reached_through: its circuit addresses (``<relay>/p2p-circuit/p2p/<self>``) with a live
            reservation: how a node behind NAT is reached.
    """

    service: bool
    reservations: int
    circuits: int
    reached_through: tuple[str, ...]


class Relay:
    """Circuit relay v2 on one host: the protocol service (run it with ``background_trio_service
    (relay.protocol)``), dialling through relays, and reservations at relays.

    Args:
        host: the node's host.
        service: relay for others (off by default at the node level: an operator opts in).
        max_reservations: peers that may hold a slot at once (service).
        max_circuits: relayed connections per reserved peer at once (service).
        max_circuit_bytes: bytes one relayed connection may carry, both ways (service).
        max_circuit_s: seconds one relayed connection may last (service).
    """

    def __init__(
        self,
        host: IHost,
        service: bool,
        max_reservations: int,
        max_circuits: int,
        max_circuit_bytes: int,
        max_circuit_s: float,
    ) -> None:
        self.host = host
        self.service = service
        limits = RelayLimits(
            duration=int(max_circuit_s),
            data=max_circuit_bytes,
            max_circuit_conns=max_circuits,
            max_reservations=max_reservations,
        )
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=service)
        # No CLIENT role: py-libp2p would then reserve a slot at every relay it merely dials through.
        roles = RelayRole.STOP | RelayRole.HOP if service else RelayRole.STOP
        self.transport = CircuitV2Transport(host, self.protocol, RelayConfig(roles=roles, limits=limits))
        self._reserved: dict[ID, Multiaddr] = {}  # relay → its address (without /p2p-circuit)

    def info(self) -> RelayInfo:
        """The relay state now (see :class:`RelayInfo`)."""
        manager = self.protocol.resource_manager
        return RelayInfo(
            service=self.service,
            reservations=sum(1 for peer in list(manager._reservations) if manager.has_reservation(peer)),
            # py-libp2p keeps an entry per end while a circuit is set up; an established one has both streams
            circuits=sum(1 for _, dst in list(self.protocol._active_relays.values()) if dst is not None),
            reached_through=tuple(str(a) for a in self.circuit_addrs()),
        )

    def circuit_addrs(self) -> list[Multiaddr]:
        """``<relay addr>/p2p-circuit/p2p/<this node>`` for every relay holding a slot for us."""
        me = self.host.get_id().to_base58()
        return [Multiaddr(f"{addr}/p2p-circuit/p2p/{me}") for addr in self._reserved.values()]

    def holds_slot(self, relay: ID) -> bool:
        """Whether ``relay`` holds a live reservation for this node."""
        return relay in self._reserved and relay in self.transport._reservations

    async def reserve(self, relay_addr: str, nursery: trio.Nursery, timeout_s: float) -> bool:
        """Connect to the relay at ``relay_addr`` (``/ip4/…/tcp/N/p2p/RELAY``) and reserve a slot;
        py-libp2p refreshes it before it expires. Returns whether the relay granted it (a
        relay that is down, refuses, or has no service answers False; logged).

        Raises:
            InvalidMultiaddr: ``relay_addr`` is malformed.
        """
        info = parse_peer_multiaddr(relay_addr)
        try:
            with trio.fail_after(timeout_s):
                await self.host.connect(info)
                stream = await self.host.new_stream(info.peer_id, [HOP_PROTOCOL])
                granted = await self.transport.reserve(stream, info.peer_id, nursery)
                await stream.close()
        except Exception as e:  # a relay may be down or refuse: the caller retries later
            log.info("no reservation at relay %s: %s: %s", relay_addr, type(e).__name__, e)
            return False
        if granted:
            self._reserved[info.peer_id] = Multiaddr(relay_addr)
            log.info("reachable through relay %s", relay_addr)
        else:
            log.info("relay %s refused a reservation (no relay service, or full)", relay_addr)
        return granted

    async def dial(self, addr: Multiaddr) -> None:
        """Connect to a peer through the relay its circuit address names.

        Raises:
            ConnectionError: the relay refused or could not reach the peer.
        """
        await self.transport.dial(addr)
