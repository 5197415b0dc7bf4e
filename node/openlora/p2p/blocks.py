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

``/openlora/have/2.0.0``: which of these blocks do you hold, and whom did you send them lately?

    request   as above (varint-prefixed binary CIDs, at most MAX_PRESENCE_CIDS)
    response  varint-prefixed bitmap (bit i, LSB first: holds CID i), then a varint-prefixed
              byte per CID: to how many peers this node is sending it now (at most 255), then a
              varint-prefixed byte per CID: which of the peers named next it sent it to (bit k:
              the k-th), then up to MAX_WANTERS varint-prefixed peer IDs it sent or is sending
              any of them to in the last WANTERS_S seconds (the asker left out), latest first

This is what lets ten peers fetching one adapter at once from one provider feed each other: the
provider names the others and which block went to whom (BitTorrent's peer exchange), and each
says what it holds so far (bitswap's HAVE) and whom it passed blocks on to, so a fetcher knows
where each copy is and takes from the provider only blocks nobody has (``fetch``). A node may cap
the bytes per second it serves blocks at (``UploadLimit``), as operators cap an uplink.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

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
HAVE_PROTOCOL = TProtocol("/openlora/have/2.0.0")
MAX_PRESENCE_CIDS = 1024  # a 256 MiB file's blocks in one question
MAX_PRESENCE_REQUEST_BYTES = MAX_PRESENCE_CIDS * (_MAX_CID_BYTES + 2)
MAX_WANTERS = 8  # peers named per presence answer
_MAX_PEER_ID_BYTES = 64
MAX_PRESENCE_RESPONSE_BYTES = MAX_PRESENCE_CIDS // 8 + 2 * MAX_PRESENCE_CIDS + 12 + MAX_WANTERS * (_MAX_PEER_ID_BYTES + 2)
WANTERS_S = 60.0  # how long a node remembers whom it sent a block
_WANTED_CIDS = 4096  # CIDs remembered (the oldest forgotten first)
UPLOAD_CHUNK = 256 * 1024  # bytes an answer sends before the next answer's turn on a limited link (one default block)


class BlockCodec:
    """``request_response`` codec: request = list of canonical CID strings, response = list of
    ``bytes | None`` (``None``: the peer does not have that block)."""

    def encode_request(self, cids: list[str]) -> bytes:
        """Binary CIDs, each varint-prefixed."""
        return b"".join(encode_varint_prefixed(bytes(parse_cid(c))) for c in cids)

    def decode_request(self, payload: bytes) -> list[str]:
        """Raises ValueError (bad framing, bad CID, too many CIDs)."""
        return _decode_cids(payload, MAX_BLOCKS_PER_REQUEST)

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


def _decode_cids(payload: bytes, limit: int) -> list[str]:
    frames = _frames(payload, _MAX_CID_BYTES)
    if len(frames) > limit:
        raise ValueError(f"{len(frames)} CIDs in one request; the limit is {limit}")
    return [cid_text(f) for f in frames]


def _frames(payload: bytes, max_frame: int) -> list[bytes]:
    buf, frames = io.BytesIO(payload), []
    while buf.tell() < len(payload):
        try:
            frames.append(read_varint_prefixed_bytes_sync(buf, max_frame))
        except EOFError as e:
            raise ValueError(f"truncated frame: {e}") from None
    return frames


CODEC = BlockCodec()


@dataclass(frozen=True)
class Presence:
    """One peer's answer on ``/openlora/have/2.0.0``.

    Attributes:
        have: per CID asked, in order: whether the peer holds the block.
        copies: per CID asked, in order: to how many peers that peer is sending it now (at most 255).
        sent_to: per CID asked, in order: a bitmask over ``wanters`` (bit k: ``wanters[k]`` was sent it).
        wanters: peers that peer sent or is sending any of those blocks (latest first).
    """

    have: list[bool]
    copies: list[int]
    sent_to: list[int]
    wanters: list[ID]


class PresenceCodec:
    """``request_response`` codec for ``/openlora/have/2.0.0`` (see the module docstring)."""

    def encode_request(self, cids: list[str]) -> bytes:
        """Binary CIDs, each varint-prefixed."""
        return CODEC.encode_request(cids)

    def decode_request(self, payload: bytes) -> list[str]:
        """Raises ValueError (bad framing, bad CID, too many CIDs)."""
        return _decode_cids(payload, MAX_PRESENCE_CIDS)

    def encode_response(self, presence: Presence) -> bytes:
        """The bitmap frame, the counts frame, the masks frame, then one frame per wanter."""
        bitmap = bytearray((len(presence.have) + 7) // 8)
        for i, held in enumerate(presence.have):
            if held:
                bitmap[i // 8] |= 1 << (i % 8)
        counts = bytes(min(n, 255) for n in presence.copies)
        masks = bytes(presence.sent_to)
        frames = [bytes(bitmap), counts, masks, *(p.to_bytes() for p in presence.wanters[:MAX_WANTERS])]
        return b"".join(encode_varint_prefixed(f) for f in frames)

    def decode_response(self, payload: bytes) -> Presence:
        """Raises ValueError (bad framing, too many wanters, a mask naming a peer beyond those named);
        the bitmap's, counts' and masks' lengths are checked by the asker, who knows how many CIDs it
        asked about."""
        frames = _frames(payload, MAX_PRESENCE_CIDS)
        if not 3 <= len(frames) <= 3 + MAX_WANTERS:
            raise ValueError(
                f"a presence answer has a bitmap, counts, masks and at most {MAX_WANTERS} peers, got {len(frames)} frames"
            )
        bitmap, counts, masks, wanters = frames[0], frames[1], frames[2], frames[3:]
        if any(m >> len(wanters) for m in masks):
            raise ValueError(f"a presence mask names a peer beyond the {len(wanters)} named")
        have = [bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(8 * len(bitmap))]
        return Presence(have, list(counts), list(masks), [ID(f) for f in wanters])


PRESENCE_CODEC = PresenceCodec()


class Wanters:
    """Whom this node is sending or sent which blocks in the last ``keep_s`` seconds (trio clock),
    for at most ``_WANTED_CIDS`` CIDs: the co-fetchers a presence answer names, the copies on their
    way into the swarm, and where the copies already went."""

    def __init__(self, keep_s: float = WANTERS_S) -> None:
        self.keep_s = keep_s
        self._asked: OrderedDict[str, dict[ID, tuple[float, bool]]] = OrderedDict()  # cid → peer → (when, sent)

    def note(self, peer: ID, cids: list[str], sent: bool = False) -> None:
        """``peer`` is being sent ``cids`` now, or (``sent``) their answer has passed the upload
        limit (at once without one) and is being written: from then on presence answers name
        ``peer`` as holding them, a little early on a slow link."""
        now = trio.current_time()
        for cid in cids:
            peers = self._asked.setdefault(cid, {})
            peers[peer] = (now, sent)
            for old in [p for p, (at, _) in peers.items() if at < now - self.keep_s]:
                del peers[old]  # a block asked for all the time stays, so its peers are pruned here
            self._asked.move_to_end(cid)
        while len(self._asked) > _WANTED_CIDS:
            self._asked.popitem(last=False)

    def count(self, cid: str) -> int:
        """Peers being sent ``cid`` now (copies on their way; those sent are named in ``masks``)."""
        return sum(1 for _, sent in self._recent(cid).values() if not sent)

    def of(self, cids: list[str], asker: ID) -> list[ID]:
        """Peers other than ``asker`` sent (or being sent) any of ``cids`` lately, latest first, at
        most MAX_WANTERS."""
        latest: dict[ID, float] = {}
        for cid in cids:
            for peer, (at, _) in self._recent(cid).items():
                if peer != asker:
                    latest[peer] = max(at, latest.get(peer, at))
        return sorted(latest, key=latest.__getitem__, reverse=True)[:MAX_WANTERS]

    def masks(self, cids: list[str], named: list[ID]) -> list[int]:
        """Per CID: bit k set when ``named[k]`` holds it (it left the link to them lately)."""
        out = []
        for cid in cids:
            recent = self._recent(cid)
            out.append(sum(1 << k for k, peer in enumerate(named) if recent.get(peer, (0.0, False))[1]))
        return out

    def _recent(self, cid: str) -> dict[ID, tuple[float, bool]]:
        since = trio.current_time() - self.keep_s
        return {peer: entry for peer, entry in self._asked.get(cid, {}).items() if entry[0] >= since}


class UploadLimit:
    """A link of ``bytes_per_s`` for the blocks this node serves, shared by the answers in flight
    the way an uplink is: each takes the link for one ``UPLOAD_CHUNK`` at a time, in turn, so a
    one-block answer is not stuck behind a sixteen-block one.

    Raises:
        ValueError: ``bytes_per_s`` is not positive.
    """

    def __init__(self, bytes_per_s: float) -> None:
        if not bytes_per_s > 0:
            raise ValueError(f"an upload limit must be positive, got {bytes_per_s!r} bytes/s")
        self.bytes_per_s = bytes_per_s
        self._free_at = 0.0

    async def send(self, n: int) -> None:
        """Wait until ``n`` bytes would have left the link."""
        while n > 0:
            chunk = min(n, UPLOAD_CHUNK)
            self._free_at = max(self._free_at, trio.current_time()) + chunk / self.bytes_per_s
            await trio.sleep_until(self._free_at)
            n -= chunk


@dataclass
class Served:
    """What this node's block answers carried since it started serving.

    Attributes:
        blocks: blocks sent.
        bytes: their bytes.
    """

    blocks: int = 0
    bytes: int = 0


def serve_blocks(
    rr: RequestResponse,
    store: BlockStore,
    is_banned: Callable[[ID], bool],
    timeout_s: float,
    upload: UploadLimit | None = None,
) -> Served:
    """Answer ``/openlora/blocks/1.0.0`` and ``/openlora/have/2.0.0`` requests from ``store`` on
    ``rr``'s host, block answers through ``upload`` when given.

    Banned peers get their stream reset. Reads run in worker threads (disk + sha2-256). A peer is
    noted as a wanter (a co-fetcher that presence answers name) only for blocks it is being sent,
    and as holding them once they have left the link: asking for blocks this node lacks names
    nobody.

    Returns:
        The counters of what is served, updated as answers go out.
    """
    wanters = Wanters()
    served = Served()

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
        blocks = await trio.to_thread.run_sync(read, cids)
        sent = [(c, len(b)) for c, b in zip(cids, blocks, strict=True) if b is not None]
        wanters.note(ctx.peer_id, [c for c, _ in sent])
        if upload is not None:
            await upload.send(sum(n for _, n in sent))
        wanters.note(ctx.peer_id, [c for c, _ in sent], sent=True)
        served.blocks += len(sent)
        served.bytes += sum(n for _, n in sent)
        return blocks

    async def presence(cids: list[str], ctx: RequestContext) -> Presence:
        if is_banned(ctx.peer_id):
            raise RequestResponseError(f"peer {ctx.peer_id} is banned")
        held = await trio.to_thread.run_sync(lambda: [store.has(c) for c in cids])
        named = wanters.of(cids, ctx.peer_id)
        return Presence(held, [wanters.count(c) for c in cids], wanters.masks(cids, named), named)

    rr.set_handler(BLOCKS_PROTOCOL, handle, CODEC, _config(BLOCKS_PROTOCOL, timeout_s))
    rr.set_handler(HAVE_PROTOCOL, presence, PRESENCE_CODEC, _config(HAVE_PROTOCOL, timeout_s))
    return served


#: protocol → (its CIDs per request at most, request bytes at most, answer bytes at most)
_LIMITS = {
    BLOCKS_PROTOCOL: (MAX_BLOCKS_PER_REQUEST, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES),
    HAVE_PROTOCOL: (MAX_PRESENCE_CIDS, MAX_PRESENCE_REQUEST_BYTES, MAX_PRESENCE_RESPONSE_BYTES),
}


def _config(protocol: TProtocol, timeout_s: float) -> RequestResponseConfig:
    # max_concurrent_inbound bounds the answers this node serves at once; a request's config does not use it
    _, request_bytes, response_bytes = _LIMITS[protocol]
    return RequestResponseConfig(
        timeout=timeout_s,
        max_request_size=request_bytes,
        max_response_size=response_bytes,
        max_concurrent_inbound=MAX_CONCURRENT_INBOUND,
    )


async def _ask(rr: RequestResponse, peer: ID, protocol: TProtocol, codec: object, cids: list[str], timeout_s: float):  # type: ignore[no-untyped-def]
    """One request of ``cids`` on ``protocol``, its answer decoded by ``codec`` (see the public callers)."""
    limit = _LIMITS[protocol][0]
    if len(cids) > limit:
        raise ValueError(f"at most {limit} CIDs per {protocol} request, got {len(cids)}")
    try:
        return await rr.send_request(peer, [protocol], cids, codec, _config(protocol, timeout_s))
    except ProtocolNotSupportedError:
        raise
    except (RequestResponseError, ContentError, ValueError) as e:
        raise SourceUnavailable(f"{protocol} request to {peer} failed: {e}") from e


async def request_blocks(rr: RequestResponse, peer: ID, cids: list[str], timeout_s: float) -> dict[str, bytes]:
    """Ask ``peer`` for ``cids`` (at most ``MAX_BLOCKS_PER_REQUEST``); nothing is verified here.

    Returns:
        Requested CID → the bytes the peer sent for it (blocks it lacks are absent).

    Raises:
        ProtocolNotSupportedError: the peer does not speak ``/openlora/blocks/1.0.0``.
        SourceUnavailable: timeout, transport failure, or a malformed answer.
        ValueError: more than ``MAX_BLOCKS_PER_REQUEST`` CIDs.
    """
    blocks = await _ask(rr, peer, BLOCKS_PROTOCOL, CODEC, cids, timeout_s)
    if len(blocks) != len(cids):
        raise SourceUnavailable(f"peer {peer} answered {len(blocks)} frames for {len(cids)} CIDs")
    return {c: b for c, b in zip(cids, blocks, strict=True) if b is not None}


async def request_presence(rr: RequestResponse, peer: ID, cids: list[str], timeout_s: float) -> Presence:
    """Ask ``peer`` which of ``cids`` (at most ``MAX_PRESENCE_CIDS``) it holds and whom it sent them.

    Raises:
        ProtocolNotSupportedError: the peer does not speak ``/openlora/have/2.0.0``.
        SourceUnavailable: timeout, transport failure, or a malformed answer.
        ValueError: more than ``MAX_PRESENCE_CIDS`` CIDs.
    """
    answer: Presence = await _ask(rr, peer, HAVE_PROTOCOL, PRESENCE_CODEC, cids, timeout_s)
    if len(answer.have) != 8 * ((len(cids) + 7) // 8) or not len(answer.copies) == len(answer.sent_to) == len(cids):
        raise SourceUnavailable(
            f"peer {peer} answered {len(answer.have)} bits, {len(answer.copies)} counts and {len(answer.sent_to)} masks "
            f"for {len(cids)} CIDs"
        )
    return Presence(answer.have[: len(cids)], answer.copies, answer.sent_to, answer.wanters)
