"""The GossipSub topics: validation before relay, subscriptions, periodic node status.

    incoming message ──signature (libp2p strict signing)──► topic validator ──► relay + deliver
                                                               │ refused: not relayed, counted
                                                               │ as invalid against the peer
                                                               ▼ that forwarded it (P4 score)
    /openlora/1/adapters  validator: size, schema, CID == sha2-256(manifest), validate_manifest
                          (schema, publisher signature, …)
                          delivered ──► ingest(adapter, provider = signed origin)
    /openlora/1/nodes     validator: size, schema, peer_id == signed origin, addrs, clock
                          delivered ──► PeerTable.update (newer ts_ms wins)
    /openlora/1/evidence  validator: size, then the node's own re-check (``check_evidence``, in a worker
                          thread: signatures, then one recomputation of the accused call)
                          stands ──► relayed (the node already stopped routing to the accused)
                          forged or false ──► refused, and the forwarder penalised (BAD_EVIDENCE_PENALTY)
                          cannot be checked here (another base, adapter unavailable) ──► not relayed,
                          nobody penalised for it

Announcements for another base model (or over this node's size limit: whatever the node's
``validate_manifest`` refuses with a retryable reason) are valid and relayed; this node just
does not keep them (``VerifiedAdapter.declined``). Refusing them would make honest nodes of
different bases penalise each other, and would cut a base's announcements off wherever its
nodes are connected only through nodes of other bases (both topics have fixed names).

GossipSub notes (py-libp2p 0.8.1): a message published before a peer joined our mesh is not
sent to it (no flood publish), so ``publish`` waits briefly for a mesh when subscribed peers
exist; the per-topic subscription channel holds 32 messages, so handlers only do quick work;
our own publications come back to our subscriptions (we handle them like anyone's, which puts
this node in its own peer table); adaptive gossip is off because it can stretch the heartbeat
to 30-60 s. A peer this node prunes from a mesh is backed off here too, as the GossipSub v1.1 spec
asks of both sides (``SpecGossipSub``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import trio
from libp2p.abc import IHost, ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from .errors import MessageRejected
from .messages import MAX_EVIDENCE_BYTES, TOPIC_ADAPTERS, TOPIC_EVIDENCE, TOPIC_NODES, TOPICS, NodeStatus, encode
from .peers import PeerTable
from .scoring import BAD_EVIDENCE_PENALTY, PeerGuard, score_params
from .validate import Ingest, ManifestValidator, check_announcement, check_status

log = logging.getLogger(__name__)

GOSSIP_PROTOCOLS = [PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID]
MESH_DEGREE, MESH_LOW, MESH_HIGH = 6, 4, 12  # GossipSub v1.1 spec defaults (D, D_lo, D_hi)
# An evidence re-check loads the reference model on first use and runs a prefill: far above the 5 s
# py-libp2p gives async validators by default (a timeout counts as an invalid message).
EVIDENCE_CHECK_TIMEOUT_S = 120.0

EvidenceCheck = Callable[[bytes], bool]
"""Re-checks serialized evidence (blocking, run in a worker thread): True when it stands here, False when this
node cannot check it; raises ``MessageRejected`` when it is forged or false."""


class CountingPubsub(Pubsub):
    """py-libp2p's Pubsub, counting per topic the messages peers push to it (duplicates
    included: what the swarm costs a node, before its seen-cache and validators drop anything),
    and surviving a race when it drops a banned peer (``_teardown_if_connected``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.received: Counter[str] = Counter()

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        """Count, then handle as py-libp2p does."""
        if msg_forwarder != self.my_id:
            self.received.update(msg.topicIDs)
        await super().push_msg(msg_forwarder, msg)

    async def _teardown_if_connected(self, peer_id: ID) -> None:
        """Drop a blacklisted peer as py-libp2p does, surviving a race in py-libp2p 0.8.1: its
        stream reset lets the dead-peer handler delete ``peers[peer_id]`` first, and the
        library's own ``del`` then raises KeyError, which ends the pubsub service and with it the
        whole swarm (seen under load in swarm_sim: a ban during churn took nodes down). The
        dead-peer handler has forgotten the peer's subscriptions by then: nothing is left to do."""
        with contextlib.suppress(KeyError):
            await super()._teardown_if_connected(peer_id)


class SpecGossipSub(GossipSub):
    """py-libp2p's GossipSub router, backing off from a peer its heartbeat prunes.

    The GossipSub v1.1 spec (libp2p/specs, pubsub/gossipsub/gossipsub-v1.1.md, "Prune backoff"): *both*
    the pruned and the pruning peer add a backoff, within which they will not try to regraft. py-libp2p
    0.8.1 adds it only on the pruned side when the heartbeat prunes a mesh above ``D_hi``; the pruning
    node may then GRAFT the same peer at its next heartbeat (its mesh fell under ``D_lo``), which the
    pruned peer takes for a GRAFT flood: 10 behaviour-penalty points per topic, so 30 over our three
    topics, the ban threshold. 40 swarm_sim peers on this project's 2-core box banned each other 427 times
    while starting and the minute after (0 with this class); each ban dropped a connection the peers'
    connection managers then redialled, handshake and catalog sync included.
    """

    def mesh_heartbeat(self) -> tuple[defaultdict[ID, list[str]], defaultdict[ID, list[str]]]:
        """py-libp2p's mesh maintenance; each peer it prunes is then backed off for ``prune_back_off``
        seconds (the backoff py-libp2p's PRUNE tells it)."""
        to_graft, to_prune = super().mesh_heartbeat()
        for peer, topics in to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return to_graft, to_prune


def build_pubsub(host: IHost, heartbeat_s: float, ban_threshold: float, max_rate: float) -> tuple[CountingPubsub, SpecGossipSub]:
    """GossipSub router and pubsub service for ``host``, restricted to the swarm's topics.

    Args:
        heartbeat_s: mesh maintenance period, seconds (short, so meshes form quickly).
        ban_threshold: see ``scoring``.
        max_rate: messages per second one peer may forward per topic before GossipSub drops
            them and penalises it.
    """
    router = SpecGossipSub(
        GOSSIP_PROTOCOLS,
        degree=MESH_DEGREE,
        degree_low=MESH_LOW,
        degree_high=MESH_HIGH,
        heartbeat_interval=heartbeat_s,  # type: ignore[arg-type]  # trio.sleep takes floats
        heartbeat_initial_delay=0.1,
        score_params=score_params(ban_threshold),
        adaptive_gossip_enabled=False,
        max_messages_per_topic_per_second=max_rate,
    )
    pubsub = CountingPubsub(
        host, router, strict_signing=True, allowed_topics=TOPICS, validation_timeout=EVIDENCE_CHECK_TIMEOUT_S + 10
    )
    return pubsub, router


def origin(msg: rpc_pb2.Message) -> str:
    """Base58 peer ID of the peer that signed ``msg``."""
    return ID(msg.from_id).to_base58()


class Gossip:
    """Validators, subscription handlers and publishing for the swarm's topics.

    Args:
        pubsub / router / guard: the running libp2p parts.
        validate_manifest: the node's manifest check.
        ingest: where delivered adapters go.
        peers: the peer table to keep.
        mesh_wait_s: how long ``publish`` waits for a mesh, seconds.
        check_evidence: the node's evidence re-check (``None``: evidence is neither checked nor relayed here).
    """

    def __init__(
        self,
        pubsub: CountingPubsub,
        router: GossipSub,
        guard: PeerGuard,
        validate_manifest: ManifestValidator,
        ingest: Ingest,
        peers: PeerTable,
        mesh_wait_s: float,
        check_evidence: EvidenceCheck | None = None,
    ) -> None:
        self.pubsub = pubsub
        self.router = router
        self.guard = guard
        self.validate_manifest = validate_manifest
        self.ingest = ingest
        self.peers = peers
        self.mesh_wait_s = mesh_wait_s
        self.check_evidence = check_evidence
        self.rejected: Counter[str] = Counter()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Install validators, subscribe, and handle deliveries until cancelled."""
        self.pubsub.set_topic_validator(TOPIC_ADAPTERS, self._valid_adapter, False)
        self.pubsub.set_topic_validator(TOPIC_NODES, self._valid_status, False)
        self.pubsub.set_topic_validator(TOPIC_EVIDENCE, self._valid_evidence, True)
        adapters = await self.pubsub.subscribe(TOPIC_ADAPTERS)
        nodes = await self.pubsub.subscribe(TOPIC_NODES)
        evidence = await self.pubsub.subscribe(TOPIC_EVIDENCE)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._deliver_adapters, adapters)
            nursery.start_soon(self._deliver_statuses, nodes)
            nursery.start_soon(self._drain, evidence)
            task_status.started()

    def _refuse(self, forwarder: ID, topic: str, error: MessageRejected) -> bool:
        self.rejected[error.reason] += 1
        log.info("refused %s message forwarded by %s: %s", topic, forwarder, error)
        if self._nursery is not None:
            self._nursery.start_soon(self._check_after_count, forwarder)
        return False

    async def _check_after_count(self, peer: ID) -> None:
        # GossipSub counts the invalid message right after the validator returns; look after.
        await trio.sleep(0)
        self.guard.check(peer)

    def _valid_adapter(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        try:
            check_announcement(msg.data, self.validate_manifest)
        except MessageRejected as e:
            return self._refuse(forwarder, TOPIC_ADAPTERS, e)
        return True

    def _valid_status(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        try:
            check_status(msg.data, origin(msg), _now_ms())
        except MessageRejected as e:
            return self._refuse(forwarder, TOPIC_NODES, e)
        return True

    async def _valid_evidence(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if self.check_evidence is None:
            return False
        if len(msg.data) > MAX_EVIDENCE_BYTES:
            error = MessageRejected("too_large", f"{len(msg.data)} bytes; the limit is {MAX_EVIDENCE_BYTES}")
        else:
            try:
                with trio.fail_after(EVIDENCE_CHECK_TIMEOUT_S):
                    return await trio.to_thread.run_sync(self.check_evidence, msg.data, abandon_on_cancel=True)
            except MessageRejected as e:
                error = e
            except trio.TooSlowError:
                log.warning("re-checking evidence from %s took over %s s; not relayed", forwarder, EVIDENCE_CHECK_TIMEOUT_S)
                return False
        self.guard.penalise(forwarder, BAD_EVIDENCE_PENALTY, f"forwarded evidence that does not stand: {error}")
        return self._refuse(forwarder, TOPIC_EVIDENCE, error)

    async def _drain(self, sub: ISubscriptionAPI) -> None:
        # evidence acts when its validator accepts it (the node records the accusation there); the
        # subscription only has to be read so that it never fills up
        async for _ in sub:
            pass

    async def _deliver_adapters(self, sub: ISubscriptionAPI) -> None:
        async for msg in sub:
            try:
                # Validated before delivery; decoding again is cheaper than caching across tasks.
                adapter = check_announcement(msg.data, self.validate_manifest)
                await self.ingest(adapter, origin(msg))
            except Exception:  # one bad delivery must not stop the subscription
                log.exception("could not take in an announcement from %s", origin(msg))

    async def _deliver_statuses(self, sub: ISubscriptionAPI) -> None:
        async for msg in sub:
            try:
                self.peers.update(check_status(msg.data, origin(msg), _now_ms()))
            except Exception:  # one bad delivery must not stop the subscription
                log.exception("could not take in a status from %s", origin(msg))

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic`` once a mesh exists (or after ``mesh_wait_s``)."""
        with trio.move_on_after(self.mesh_wait_s):
            while self.pubsub.peer_topics.get(topic) and not self.router.mesh.get(topic):
                await trio.sleep(0.05)
        await self.pubsub.publish(topic, data)

    async def publish_statuses(
        self, status: Callable[[], NodeStatus | None], check_s: float, period: Callable[[], float]
    ) -> None:
        """Publish this node's status until cancelled: every ``period()`` seconds (it grows with the swarm), and at
        the next check (every ``check_s`` seconds) after what peers route by changed (resident adapters,
        addresses, fee, features, …; not the load, which changes all the time).

        ``status`` builds the whole document (in a worker thread); a status it cannot build
        (e.g. a node behind NAT before its first relay reservation has no address to give), or
        that fails the schema, is logged and skipped (the next check tries again).
        """
        published: dict | None = None
        due = 0.0
        while True:
            try:
                message = await trio.to_thread.run_sync(status)
            except Exception as e:
                log.warning("cannot build this node's status (%s); skipping one check", e)
            else:
                routed = message.model_dump(exclude=_UNROUTED) if message is not None else None
                if message is not None and (routed != published or trio.current_time() >= due):
                    await self.publish(TOPIC_NODES, encode(message))
                    published, due = routed, trio.current_time() + period()
            await trio.sleep(check_s)


#: status fields that change without changing where a call should go, so they alone never trigger a status
_UNROUTED = {"ts_ms", "load", "refresh_s"}


def _now_ms() -> int:
    return int(time.time() * 1000)
