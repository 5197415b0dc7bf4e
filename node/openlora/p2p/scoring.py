"""Peer scores and bans: py-libp2p's GossipSub peer scoring, plus a ban below a threshold.

    score(peer) = − INVALID_MESSAGE_WEIGHT × invalid adapter / node messages it forwarded   (P4, per topic)
                − behaviour penalties:  BAD_BLOCK_PENALTY per block that failed its hash,
                                        BAD_ENTRY_PENALTY per invalid catalog-sync entry,
                                        BAD_EVIDENCE_PENALTY per forged or false evidence message,
                                        5 per message over the per-topic rate limit (GossipSub)
                  (all decay by DECAY per heartbeat, so an old mistake is forgiven)
    score <= gossip_threshold   no IHAVE gossip to/from it         (GossipSub)
    score <  publish_threshold  its messages are dropped unread    (GossipSub)
    score <= ban_threshold      PeerGuard bans it: pubsub blacklist, connection closed, our
                                protocols refuse it, reconnections are closed, for ban_s

GossipSub's scorer is used as is (P4 invalid messages, P5 behaviour penalty: the GossipSub v1.1
spec's terms, linear here as py-libp2p implements them). It forgets a peer's counters when the
peer disconnects, which is why the ban lives here and outlasts the connection. The evidence topic is
left out of P4 here: evidence a node cannot re-check (another base) is refused without blame, so only the
explicit BAD_EVIDENCE_PENALTY counts for it. The ban threshold
equals the publish threshold: below it GossipSub stops reading the peer's messages, so the score
would never fall further.
"""

from __future__ import annotations

import logging
import math

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from multiaddr import Multiaddr

from .messages import TOPIC_ADAPTERS, TOPIC_NODES

log = logging.getLogger(__name__)

INVALID_MESSAGE_WEIGHT = 10.0
BAD_BLOCK_PENALTY = 10.0
BAD_ENTRY_PENALTY = 10.0
# One forged or false accusation costs score, a second within ~140 heartbeats (before the first decayed to half)
# bans the peer: two must exceed the default ban threshold of 30 with room for decay between them.
BAD_EVIDENCE_PENALTY = 20.0
SCORED_TOPICS = [TOPIC_ADAPTERS, TOPIC_NODES]
DECAY = 0.995  # per heartbeat: ~140 heartbeats to halve


def score_params(ban_threshold: float) -> ScoreParams:
    """GossipSub score parameters for a swarm that bans at ``ban_threshold`` (< 0).

    Raises:
        ValueError: ``ban_threshold`` is not negative.
    """
    if not ban_threshold < 0:
        raise ValueError(f"ban_threshold must be negative, got {ban_threshold!r}")
    return ScoreParams(
        p4_invalid_messages=TopicScoreParams(weight=INVALID_MESSAGE_WEIGHT, cap=math.inf, decay=DECAY),
        p5_behavior_penalty_weight=1.0,
        p5_behavior_penalty_decay=DECAY,
        p5_behavior_penalty_threshold=0.0,
        gossip_threshold=ban_threshold / 3,
        publish_threshold=ban_threshold,
        graylist_threshold=ban_threshold,
        accept_px_threshold=0.0,
    )


class PeerGuard(INotifee):
    """Keeps the ban list; runs in the libp2p thread.

    Args:
        host / pubsub / router: the running libp2p parts.
        ban_threshold: score at or below which a peer is banned (negative).
        ban_s: how long a ban lasts, seconds.
    """

    def __init__(self, host: IHost, pubsub: Pubsub, router: GossipSub, ban_threshold: float, ban_s: float) -> None:
        self.host = host
        self.pubsub = pubsub
        self.router = router
        self.ban_threshold = ban_threshold
        self.ban_s = ban_s
        self._banned: dict[ID, float] = {}  # peer → trio time the ban ends
        self._nursery: trio.Nursery | None = None

    async def run(self, interval_s: float, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Watch scores every ``interval_s`` seconds (GossipSub also penalises on its own, e.g.
        rate limits) and lift expired bans; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.host.get_network().register_notifee(self)
            task_status.started()
            while True:
                for peer in list(self.host.get_network().connections):
                    self.check(peer)
                now = trio.current_time()
                for peer in [p for p, until in self._banned.items() if until <= now]:
                    del self._banned[peer]
                    self.pubsub.remove_from_blacklist(peer)
                await trio.sleep(interval_s)

    def score(self, peer: ID) -> float:
        """The peer's current score over the swarm's topics (0 for unknown peers)."""
        return self.router.scorer.score(peer, SCORED_TOPICS)

    def penalise(self, peer: ID, amount: float, reason: str) -> None:
        """Lower ``peer``'s score by ``amount`` for ``reason`` and ban it if it fell too low."""
        log.info("penalising peer %s by %s: %s", peer, amount, reason)
        self.router.scorer.penalize_behavior(peer, amount)
        self.check(peer)

    def check(self, peer: ID) -> None:
        """Ban ``peer`` if its score is at or below the threshold."""
        if peer not in self._banned and self.score(peer) <= self.ban_threshold:
            self.ban(peer)

    def ban(self, peer: ID) -> None:
        """Ban ``peer`` for ``ban_s`` seconds and close its connection."""
        log.warning("banning peer %s for %s s (score %.1f)", peer, self.ban_s, self.score(peer))
        self._banned[peer] = trio.current_time() + self.ban_s
        self.pubsub.add_to_blacklist(peer)
        self._disconnect_soon(peer)

    def banned(self) -> list[ID]:
        """Peers banned now."""
        now = trio.current_time()
        return [p for p, until in self._banned.items() if until > now]

    def is_banned(self, peer: ID) -> bool:
        """Whether ``peer`` is banned now."""
        until = self._banned.get(peer)
        return until is not None and until > trio.current_time()

    def _disconnect_soon(self, peer: ID) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.host.disconnect, peer)

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        """Close connections from banned peers as soon as they open."""
        peer = conn.muxed_conn.peer_id
        if self.is_banned(peer):
            self._disconnect_soon(peer)

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
