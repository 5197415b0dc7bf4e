"""Import bytes into a UnixFS file DAG exactly as Kubo's ``ipfs add`` does by default.

Reference: go-unixfs/boxo ``importer/balanced`` (fixed-size splitter, ``DefaultLinksPerBlock``
= 174) and ``helpers.DagBuilderHelper``; cross-checked against Kubo 0.22 and against
ipfs-unixfs-importer (see scripts/kubo_vectors.py for the vectors and how they were made).

    file ──► 256 KiB chunks ──► leaves ──► balanced tree, ≤ 174 links per node

    cid_version 0: leaves are dag-pb UnixFS File nodes, every CID v0 (base58btc "Qm…")
    cid_version 1: leaves are raw blocks (codec 0x55), internal nodes dag-pb, CIDs v1 base32

Balanced layout (Go's shape, which a naive "group each level by 174" differs from only in one
detail): a node at height h holds up to 174 children of height h-1, filled left to right; the
root is the lowest node that covers every leaf. A partial last child is still wrapped at every
height — with 175 leaves the root has two children: a node of 174 leaves and a node of ONE
leaf. Only a file of a single chunk is reduced to that leaf itself (and an empty file to one
empty leaf).

Streaming: chunks are read and hashed one at a time; a node is emitted as soon as it is full,
so memory holds at most 174 pending links per level, never the file.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from multiformats import CID

from .cid import DAG_PB, RAW, cid_text, make_cid
from .unixfs import Link, encode_internal, encode_leaf

CHUNK_SIZE = 262144  # bytes; Kubo's default "size-262144" splitter
MAX_CHUNK_SIZE = 1 << 20  # bytes; go-unixfs BlockSizeLimit (larger blocks do not travel)
MAX_LINKS = 174  # children per internal node; go-unixfs helpers.DefaultLinksPerBlock

BlockSink = Callable[[CID, bytes], None]
"""Receives each new block as ``(cid, block_bytes)``, children before their parents."""


@dataclass(frozen=True)
class ImportResult:
    """What an import produced.

    Attributes:
        root: the file's CID (what ``ipfs add -Q`` prints).
        size: file bytes imported.
        blocks: blocks emitted (leaves and internal nodes).
    """

    root: CID
    size: int
    blocks: int


class _BalancedBuilder:
    """Go's balanced layout, built bottom-up as leaves arrive.

    ``levels[h]`` holds the finished children (links of height h) of the node of height h+1
    that is being filled; a level is closed into one node the moment it has max_links entries.
    """

    def __init__(self, cid_version: int, max_links: int, sink: BlockSink | None) -> None:
        self.version = cid_version
        self.max_links = max_links
        self.sink = sink
        self.levels: list[list[Link]] = [[]]
        self.blocks = 0

    def _emit(self, block: bytes, codec: int) -> CID:
        cid = make_cid(block, codec, self.version)
        self.blocks += 1
        if self.sink is not None:
            self.sink(cid, block)
        return cid

    def add_chunk(self, chunk: bytes) -> None:
        if self.version == 1:
            link = Link(self._emit(chunk, RAW), tsize=len(chunk), filesize=len(chunk))
        else:
            block = encode_leaf(chunk)
            link = Link(self._emit(block, DAG_PB), tsize=len(block), filesize=len(chunk))
        self._push(0, link)

    def _push(self, height: int, link: Link) -> None:
        level = self.levels[height]
        level.append(link)
        if len(level) == self.max_links:
            self._close(height)

    def _close(self, height: int) -> None:
        children = self.levels[height]
        self.levels[height] = []
        if height + 1 == len(self.levels):
            self.levels.append([])
        block = encode_internal(children)
        cid = self._emit(block, DAG_PB)
        tsize = len(block) + sum(c.tsize for c in children)
        self._push(height + 1, Link(cid, tsize, sum(c.filesize for c in children)))

    def finish(self) -> CID:
        """Close the partial nodes bottom-up and return the root's CID."""
        height = 0
        while True:  # each pass closes one level; closing may open the level above
            pending = self.levels[height]
            if len(pending) == 1 and not any(self.levels[height + 1 :]):
                return pending[0].cid  # the lowest node covering everything is the root
            if pending:
                self._close(height)
            height += 1


def import_stream(
    stream: BinaryIO,
    *,
    cid_version: int = 1,
    on_block: BlockSink | None = None,
    chunk_size: int = CHUNK_SIZE,
    max_links: int = MAX_LINKS,
) -> ImportResult:
    """Chunk and hash a byte stream into a Kubo-compatible UnixFS file DAG.

    Args:
        stream: binary stream, read to its end in 256 KiB chunks (short reads are completed,
            so pipes and sockets chunk the same as files).
        cid_version: 0 (dag-pb leaves, ``Qm…``) or 1 (raw leaves, ``bafy…``/``bafk…``), as
            ``ipfs add --cid-version``.
        on_block: called with every new block, children before parents; ``None`` only hashes
            (``ipfs add --only-hash``).
        chunk_size: bytes per leaf (Kubo ``--chunker=size-N``); keep the default for Kubo's CIDs.
        max_links: children per internal node; keep the default for Kubo's CIDs.

    Returns:
        The root CID, the byte count and the number of blocks.

    Raises:
        ValueError: ``cid_version`` not 0/1, ``chunk_size`` outside 1..1 MiB, ``max_links`` < 2.
        Whatever ``stream.read`` or ``on_block`` raise.
    """
    if cid_version not in (0, 1):
        raise ValueError(f"cid_version must be 0 or 1, got {cid_version!r}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE} bytes, got {chunk_size!r}")
    if max_links < 2:
        raise ValueError(f"max_links must be at least 2, got {max_links!r}")
    builder = _BalancedBuilder(cid_version, max_links, on_block)
    size = 0
    while True:
        chunk = _read_full(stream, chunk_size)
        # An empty stream still yields one (empty) leaf, like Go's NewLeafNode(nil).
        if chunk or size == 0:
            builder.add_chunk(chunk)
            size += len(chunk)
        if len(chunk) < chunk_size:
            break
    return ImportResult(root=builder.finish(), size=size, blocks=builder.blocks)


def _read_full(stream: BinaryIO, n: int) -> bytes:
    # Like Go's io.ReadFull: a chunk boundary must not depend on how reads happen to split.
    buf = stream.read(n)
    while buf is not None and 0 < len(buf) < n:
        more = stream.read(n - len(buf))
        if not more:
            break
        buf += more
    return buf or b""


def import_bytes(data: bytes, **options: Any) -> ImportResult:
    """:func:`import_stream` over an in-memory buffer (same keyword arguments and errors)."""
    return import_stream(io.BytesIO(data), **options)


def import_path(path: str | Path, **options: Any) -> ImportResult:
    """:func:`import_stream` over a file, streamed from disk (same keyword arguments and errors).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the path cannot be read as a file.
    """
    with open(path, "rb") as stream:
        return import_stream(stream, **options)


def file_cid(path: str | Path, cid_version: int = 1) -> str:
    """The CID that ``ipfs add -Q --cid-version=N PATH`` prints, computed without storing.

    Kubo's own default is ``--cid-version=0``; the node uses CIDv1 throughout, hence the default
    here. Backs ``openlora-node cid PATH [--cid-version 0|1]``.

    Raises:
        ValueError: ``cid_version`` is not 0 or 1.
        FileNotFoundError, IsADirectoryError, PermissionError: the path cannot be read as a file.
    """
    return cid_text(import_path(path, cid_version=cid_version).root)
