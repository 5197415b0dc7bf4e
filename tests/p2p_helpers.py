"""Swarm test helpers: a misbehaving libp2p peer built from the swarm's own parts (minus its validators),
and the polling and address helpers of the multi-node tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import trio
from libp2p.bitswap import BitswapClient, MemoryBlockStore
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.tools.anyio_service import background_trio_service

from libp2p.request_response import RequestResponse

from openlora.content import cid_text, parse_cid
from openlora.p2p.blocks import Presence, request_blocks, request_presence
from openlora.p2p.gossip import build_pubsub
from openlora.p2p.host import build_host, listen_multiaddr, parse_peer_multiaddr
from openlora.p2p.messages import TOPIC_ADAPTERS, TOPIC_EVIDENCE
from openlora.p2p.runner import TrioThread

WAIT_S = 5.0


def wait_until(condition: Callable[[], object], what: str, timeout_s: float):
    """Poll ``condition`` every 0.1 s until it returns a true value; return it (fails the test on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def multiaddr_of(node) -> str:
    """The full libp2p multiaddr an ``openlora.local.NodeProcess`` printed in its ready line."""
    return node.ready_line.split("p2p=")[1].split()[0]


class RawPeer:
    """A bare libp2p peer built from the same parts as a Swarm but without its validators and
    protocols: it publishes whatever it is told to, and speaks py-libp2p's stock bitswap (serving
    ``blocks`` if given)."""

    def __init__(self, blocks: dict[str, bytes] | None = None) -> None:
        self.blocks = blocks
        self.thread = TrioThread("raw-peer")
        self.multiaddr = ""

    def start(self) -> None:
        self.multiaddr = self.thread.start(self._service, 10)

    async def _service(self, *, task_status: trio.TaskStatus) -> None:
        listen = listen_multiaddr("127.0.0.1", 0)
        self.host = build_host(create_new_key_pair(), listen)
        self.pubsub, self.router = build_pubsub(self.host, 0.2, -30.0, 1000.0)
        try:
            async with (
                self.host.run([listen]),
                background_trio_service(self.pubsub),
                background_trio_service(self.router),
            ):
                await self.pubsub.wait_until_ready()
                await self.pubsub.subscribe(TOPIC_ADAPTERS)
                await self.pubsub.subscribe(TOPIC_EVIDENCE)
                async with trio.open_nursery() as nursery:
                    store = MemoryBlockStore()
                    for cid, block in (self.blocks or {}).items():
                        await store.put_block(bytes(parse_cid(cid)), block)
                    self.bitswap = BitswapClient(self.host, store)  # py-libp2p's, unchanged
                    self.bitswap.set_nursery(nursery)
                    await self.bitswap.start()
                    task_status.started(str(self.host.get_addrs()[0]))
                    try:
                        await trio.sleep_forever()
                    finally:
                        with trio.move_on_after(2, shield=True):
                            await self.bitswap.stop()
        finally:
            self.pubsub.seen_messages.stop()

    def connect(self, addr: str) -> None:
        async def go() -> None:
            await self.host.connect(parse_peer_multiaddr(addr))

        self.thread.call(go, timeout=10)

    def publish(self, *messages: bytes, wait_mesh_with: str, topic: str = TOPIC_ADAPTERS) -> None:
        async def go() -> None:
            peer = parse_peer_multiaddr(wait_mesh_with).peer_id
            await self.pubsub.wait_for_mesh(peer, topic, timeout=WAIT_S)
            for data in messages:
                await self.pubsub.publish(topic, data)

        self.thread.call(go, timeout=10)

    def fetch_over_bitswap(self, addr: str, cids: list[str]) -> dict[str, bytes]:
        async def go() -> dict[str, bytes]:
            session = self.bitswap.new_session()
            peer = parse_peer_multiaddr(addr).peer_id
            got = await session.get_blocks_batch([bytes(parse_cid(c)) for c in cids], peer_id=peer, timeout=10)
            return {cid_text(k): v for k, v in got.items()}

        return self.thread.call(go, timeout=30)

    def request_blocks(self, addr: str, cids: list[str]) -> dict[str, bytes]:
        """Ask the peer of ``addr`` for ``cids`` on ``/openlora/blocks`` (as any stranger may)."""
        return self._request(request_blocks, addr, cids)

    def request_presence(self, addr: str, cids: list[str]) -> Presence:
        """Ask the peer of ``addr`` on ``/openlora/have`` what it holds of ``cids``."""
        return self._request(request_presence, addr, cids)

    def _request(self, ask: Callable, addr: str, cids: list[str]):  # type: ignore[no-untyped-def]
        async def go():  # type: ignore[no-untyped-def]
            return await ask(RequestResponse(self.host), parse_peer_multiaddr(addr).peer_id, cids, 10.0)

        return self.thread.call(go, timeout=30)

    def stop(self) -> None:
        self.thread.stop(10)

    def connected_to(self, addr: str) -> bool:
        """Whether this peer holds a connection to the peer of ``addr``."""
        peer = parse_peer_multiaddr(addr).peer_id

        async def go() -> bool:
            return bool(self.host.get_network().get_connections(peer))

        return self.thread.call(go, timeout=10)


@pytest.fixture
def raw_peers() -> Iterator[Callable[..., RawPeer]]:
    """Start RawPeers; all are stopped at the end of the test."""
    started: list[RawPeer] = []

    def make(blocks: dict[str, bytes] | None = None) -> RawPeer:
        peer = RawPeer(blocks)
        peer.start()
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.stop()
