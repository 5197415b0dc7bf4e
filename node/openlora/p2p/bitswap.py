"""Bitswap (py-libp2p's client), for peers that do not speak ``/openlora/blocks`` — e.g. Kubo.

    ReplyingBitswapClient(host, BitswapStore(our BlockStore))
      serving:   a peer's WANT ──► BitswapStore.get_block ──► BlockStore.get (re-verified)
      fetching:  BitswapFetcher.get(peer, cids) ──► session.get_blocks_batch(peer)
                   arriving block ──► BitswapStore.put_block: kept in memory only if wanted
                 ──► returned to the fetcher, which verifies and stores it like any block

Received blocks never reach the disk from here: the fetcher verifies every block against the
CID it asked for and stores it through ``BlockStore.put``, the same path as every other source.
Unsolicited blocks are dropped. Measured limits (see docs/INTEROP.md): a second session for a
CID fetched earlier stalls ~1 s (the session's retry interval), and a peer that lacks a block
costs the full timeout (the batch loop does not act on DONT_HAVE).

One fix to py-libp2p 0.8.1 (``ReplyingBitswapClient``): it writes the blocks a peer asked for
back on the stream the wantlist arrived on, but go-bitswap (Kubo) only reads from streams it
accepts — each side sends on streams it opens — so Kubo never saw them (its download hung).
Answers go out on a new stream instead; py-libp2p peers read those too.
"""

from __future__ import annotations

import trio
from libp2p.abc import INetStream
from libp2p.bitswap import BitswapClient
from libp2p.bitswap import BlockStore as BitswapBlockStore
from libp2p.bitswap.cid import CIDInput, cid_to_bytes
from libp2p.bitswap.cid import parse_cid as bitswap_cid
from libp2p.peer.id import ID

from ..content.blockstore import BlockStore
from ..content.cid import cid_text, parse_cid
from ..content.errors import BlockNotFound, CorruptBlock


def _key(cid: CIDInput) -> str:
    return cid_text(cid_to_bytes(cid))


class BitswapStore(BitswapBlockStore):
    """py-libp2p bitswap's block-store interface over our :class:`BlockStore`.

    Reads come from the store (verified); writes are held in memory for CIDs a fetch wants.
    """

    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self._wanted: set[str] = set()
        self._inbox: dict[str, bytes] = {}

    def want(self, cids: list[str]) -> None:
        """Accept arriving blocks for ``cids`` (canonical text)."""
        self._wanted.update(cids)

    def take(self, cids: list[str]) -> dict[str, bytes]:
        """Stop wanting ``cids``; return the blocks that arrived for them (unverified)."""
        self._wanted.difference_update(cids)
        return {c: self._inbox.pop(c) for c in cids if c in self._inbox}

    async def get_block(self, cid: CIDInput) -> bytes | None:
        """The block for a peer (or for a running session), ``None`` if we lack it."""
        key = _key(cid)
        if key in self._inbox:
            return self._inbox[key]
        try:
            return await trio.to_thread.run_sync(self.store.get, key)
        except (BlockNotFound, CorruptBlock):
            return None

    async def put_block(self, cid: CIDInput, data: bytes) -> None:
        """Hold a received block if a fetch wants it; drop it otherwise."""
        key = _key(cid)
        if key in self._wanted:
            self._inbox[key] = data

    async def has_block(self, cid: CIDInput) -> bool:
        """Whether the block is held or stored (stored blocks are verified when read)."""
        key = _key(cid)
        return key in self._inbox or self.store.has(key)

    async def delete_block(self, cid: CIDInput) -> None:
        """Forget a held block (stored blocks are the node's, never deleted by bitswap)."""
        self._inbox.pop(_key(cid), None)

    def get_all_cids(self) -> list[bytes]:
        """Nothing: the node does not advertise its whole store over bitswap."""
        return []


class ReplyingBitswapClient(BitswapClient):
    """py-libp2p's ``BitswapClient``, answering each wantlist on a stream of its own (see the
    module docstring; measured with Kubo 0.22: stock, Kubo's download of a 3.7 MB file from us
    times out; with this, 0.3 s)."""

    async def _send_wantlist_responses_inline(  # type: ignore[override]
        self,
        stream: INetStream,
        peer_id: ID,
        blocks_v100: list[bytes],
        blocks_v110: list[tuple[bytes, bytes]],
        presences: list[tuple[CIDInput, bool]],
    ) -> None:
        protocol = stream.get_protocol()
        if protocol is None:  # not negotiated: nothing a reply could be framed for
            return
        out = await self.host.new_stream(peer_id, [protocol])
        try:
            await super()._send_wantlist_responses_inline(out, peer_id, blocks_v100, blocks_v110, presences)
        finally:
            await out.close()


class BitswapFetcher:
    """Fetch blocks from one peer over bitswap.

    Args:
        client: a started (``Replying``)``BitswapClient`` using ``store``.
        store: its :class:`BitswapStore`.
        timeout_s: how long one batch may wait for blocks, seconds.
    """

    def __init__(self, client: BitswapClient, store: BitswapStore, timeout_s: float) -> None:
        self.client = client
        self.store = store
        self.timeout_s = timeout_s

    async def get(self, peer: ID, cids: list[str]) -> dict[str, bytes]:
        """Requested CID → block bytes as received (absent: not received in time)."""
        self.store.want(cids)
        try:
            session = self.client.new_session()
            await session.get_blocks_batch(
                [bitswap_cid(bytes(parse_cid(c))) for c in cids], peer_id=peer, timeout=self.timeout_s
            )
        finally:
            blocks = self.store.take(cids)
        return blocks
