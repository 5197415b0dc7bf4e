"""``/openlora/blocks/1.0.0``: ask one peer for a list of blocks, get them back in one answer.

    request   varint-prefixed binary CIDs, at most MAX_BLOCKS_PER_REQUEST
    response  one frame per requested CID, in request order:
                varint-prefixed ( 0x00 | block bytes )   the block
                varint-prefixed ( 0x01 )                 "I do not have it"

One request/response exchange per stream (libp2p ``request_response``: varint-framed, size
limited, timed out, concurrency limited). The answer is keyed by the CIDs the *requester* asked
for, so a block that does not hash to its CID is pinned on the peer that sent it: the fetcher
penalises that peer and asks another (bitswap 1.1+ recomputes each block's CID from the bytes
it receives, so there a wrong block is just an unsolicited one and its sender stays unknown).
The server reads through ``BlockStore.get``, which re-verifies, so it never serves a corrupt
block from its own disk.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.request_response import (
    ProtocolNotSupportedError,
    RequestContext,
    RequestResponse,
    RequestResponseConfig,
    RequestResponseError,
)
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_sync

from ..content.blockstore import BlockStore
from ..content.cid import cid_text, parse_cid
from ..content.errors import BlockNotFound, ContentError, CorruptBlock
from ..content.reader import MAX_BLOCK_SIZE
from .errors import SourceUnavailable

log = logging.getLogger(__name__)

BLOCKS_PROTOCOL = TProtocol("/openlora/blocks/1.0.0")
MAX_BLOCKS_PER_REQUEST = 16
_HAVE, _DONT_HAVE = b"\x00", b"\x01"
_MAX_CID_BYTES = 128
MAX_REQUEST_BYTES = MAX_BLOCKS_PER_REQUEST * (_MAX_CID_BYTES + 2)
MAX_RESPONSE_BYTES = MAX_BLOCKS_PER_REQUEST * (MAX_BLOCK_SIZE + 8)
MAX_CONCURRENT_INBOUND = 16  # requests served at once (all peers); bounds memory to 16 answers


class BlockCodec:
    """``request_response`` codec: request = list of canonical CID strings, response = list of
    ``bytes | None`` (``None``: the peer does not have that block)."""

    def encode_request(self, cids: list[str]) -> bytes:
        """Binary CIDs, each varint-prefixed."""
        return b"".join(encode_varint_prefixed(bytes(parse_cid(c))) for c in cids)

    def decode_request(self, payload: bytes) -> list[str]:
        """Raises ValueError (bad framing, bad CID, too many CIDs)."""
        frames = _frames(payload, _MAX_CID_BYTES)
        if len(frames) > MAX_BLOCKS_PER_REQUEST:
            raise ValueError(f"{len(frames)} CIDs requested; the limit is {MAX_BLOCKS_PER_REQUEST}")
        return [cid_text(f) for f in frames]

    def encode_response(self, blocks: list[bytes | None]) -> bytes:
        """One frame per block (see the module docstring)."""
        return b"".join(encode_varint_prefixed(_DONT_HAVE if b is None else _HAVE + b) for b in blocks)

    def decode_response(self, payload: bytes) -> list[bytes | None]:
        """Raises ValueError (bad framing or status byte)."""
        out: list[bytes | None] = []
        for frame in _frames(payload, MAX_BLOCK_SIZE + 1):
            if frame[:1] == _HAVE:
                out.append(frame[1:])
            elif frame == _DONT_HAVE:
                out.append(None)
            else:
                raise ValueError(f"bad block frame status {frame[:1].hex() or 'empty'}")
        return out


def _frames(payload: bytes, max_frame: int) -> list[bytes]:
    buf, frames = io.BytesIO(payload), []
    while buf.tell() < len(payload):
        try:
            frames.append(read_varint_prefixed_bytes_sync(buf, max_frame))
        except EOFError as e:
            raise ValueError(f"truncated frame: {e}") from None
    return frames


CODEC = BlockCodec()


def serve_blocks(rr: RequestResponse, store: BlockStore, is_banned: Callable[[ID], bool], timeout_s: float) -> None:
    """Answer ``/openlora/blocks/1.0.0`` requests from ``store`` on ``rr``'s host.

    Banned peers get their stream reset. Reads run in worker threads (disk + sha2-256).
    """

    def read(cids: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for c in cids:
            try:
                out.append(store.get(c))
            except (BlockNotFound, CorruptBlock):
                out.append(None)
        return out

    async def handle(cids: list[str], ctx: RequestContext) -> list[bytes | None]:
        if is_banned(ctx.peer_id):
            raise RequestResponseError(f"peer {ctx.peer_id} is banned")
        return await trio.to_thread.run_sync(read, cids)

    rr.set_handler(
        BLOCKS_PROTOCOL,
        handle,
        CODEC,
        RequestResponseConfig(
            timeout=timeout_s,
            max_request_size=MAX_REQUEST_BYTES,
            max_response_size=MAX_RESPONSE_BYTES,
            max_concurrent_inbound=MAX_CONCURRENT_INBOUND,
        ),
    )


async def request_blocks(rr: RequestResponse, peer: ID, cids: list[str], timeout_s: float) -> dict[str, bytes]:
    """Ask ``peer`` for ``cids`` (at most ``MAX_BLOCKS_PER_REQUEST``); nothing is verified here.

    Returns:
        Requested CID → the bytes the peer sent for it (blocks it lacks are absent).

    Raises:
        ProtocolNotSupportedError: the peer does not speak ``/openlora/blocks/1.0.0``.
        SourceUnavailable: timeout, transport failure, or a malformed answer.
        ValueError: more than ``MAX_BLOCKS_PER_REQUEST`` CIDs.
    """
    if len(cids) > MAX_BLOCKS_PER_REQUEST:
        raise ValueError(f"at most {MAX_BLOCKS_PER_REQUEST} CIDs per request, got {len(cids)}")
    config = RequestResponseConfig(
        timeout=timeout_s, max_request_size=MAX_REQUEST_BYTES, max_response_size=MAX_RESPONSE_BYTES
    )
    try:
        blocks = await rr.send_request(peer, [BLOCKS_PROTOCOL], cids, CODEC, config)
    except ProtocolNotSupportedError:
        raise
    except (RequestResponseError, ContentError, ValueError) as e:
        raise SourceUnavailable(f"block request to {peer} failed: {e}") from e
    if len(blocks) != len(cids):
        raise SourceUnavailable(f"peer {peer} answered {len(blocks)} frames for {len(cids)} CIDs")
    return {c: b for c, b in zip(cids, blocks, strict=True) if b is not None}
