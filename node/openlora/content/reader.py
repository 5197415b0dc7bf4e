"""Read a UnixFS file DAG back from untrusted blocks, verifying as it goes, with hard bounds.

    root CID ──get_block──► bytes ──verify sha2-256──► decode ──► data, then each child in order
                                                                      │
            every child must hold exactly the bytes its parent's blocksizes entry says,
            so the output is exactly the root's declared filesize (checked before any child
            is fetched against max_file_size, or against the exact size the caller expects:
            an adapter's signed manifest names each file's size)

A getter may be a remote peer: nothing it returns is used before its hash matches the CID the
parent named. Hashes make cycles impossible, but not size: a hostile DAG can still be deep,
wide, huge or made of huge blocks, so :class:`DagLimits` bounds depth, links per node, block
size, block count and file size, and each is checked before the next block is requested.

:func:`missing_blocks` walks the same DAG over the blocks present locally and lists the ones to
fetch; a peer-to-peer fetcher calls it, fetches those, stores them, and calls it again until
it returns nothing (each round reveals the next level).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from multiformats import CID

from .cid import RAW, check_supported, cid_text, parse_cid, verify_block
from .errors import InvalidDag, LimitExceeded, SizeMismatch
from .unixfs import FileNode, decode_file_node

MAX_BLOCK_SIZE = 2 << 20  # bytes; Bitswap's message limit, the largest block peers exchange


@dataclass(frozen=True)
class DagLimits:
    """Bounds on a DAG read from untrusted sources.

    Attributes:
        max_file_size: bytes the root may declare (default 1 GiB; adapters are 1-100 MB).
        max_depth: links from the root to the deepest block (default 16; Kubo's balanced
            layout needs 2 past 45.6 MB and 3 past 7.9 GB, trickle DAGs go deeper).
        max_links: links in one node (default 1024; Kubo uses 174, its 2025 profile 1024).
        max_block_size: bytes in one block (default 2 MiB, Bitswap's limit).
        max_blocks: blocks in one DAG (default 65536; a 1 GiB Kubo file has ~4100).

    Raises:
        ValueError: a bound is not a positive integer.
    """

    max_file_size: int = 1 << 30
    max_depth: int = 16
    max_links: int = 1024
    max_block_size: int = MAX_BLOCK_SIZE
    max_blocks: int = 1 << 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DagLimits.{f.name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = DagLimits()


class _Walk:
    """Per-DAG bookkeeping shared by the reader and the missing-block scan."""

    def __init__(self, limits: DagLimits) -> None:
        self.limits = limits
        self.blocks = 0

    def count(self, cid: CID, depth: int) -> None:
        limits = self.limits
        self.blocks += 1
        if self.blocks > limits.max_blocks:
            raise LimitExceeded(
                f"DAG has more than {limits.max_blocks} blocks (reached at {cid_text(cid)}); "
                f"raise DagLimits.max_blocks if this file is expected",
                cid=cid_text(cid),
            )
        if depth > limits.max_depth:
            raise LimitExceeded(
                f"DAG is deeper than {limits.max_depth} levels at {cid_text(cid)}; "
                f"raise DagLimits.max_depth if this file is expected",
                cid=cid_text(cid),
            )

    def node(self, cid: CID, block: bytes, expected_size: int | None, root: bool = False) -> FileNode:
        """Verify and decode one block; ``expected_size`` is the parent's claim, or for the root the
        caller's (``None``: the root is bounded by ``max_file_size`` only)."""
        limits = self.limits
        if len(block) > limits.max_block_size:
            name = cid_text(cid)
            raise LimitExceeded(
                f"block {name} has {len(block)} bytes, over the {limits.max_block_size}-byte limit",
                cid=name,
            )
        verify_block(cid, block)
        node = decode_file_node(cid, block)
        if expected_size is None and node.filesize > limits.max_file_size:
            name = cid_text(cid)
            raise LimitExceeded(
                f"file {name} declares {node.filesize} bytes, over the {limits.max_file_size}-byte "
                f"limit; raise DagLimits.max_file_size if this file is expected",
                cid=name,
            )
        if root and expected_size is not None and node.filesize != expected_size:
            name = cid_text(cid)
            raise SizeMismatch(f"file {name} declares {node.filesize} bytes; expected {expected_size}", cid=name)
        if expected_size is not None and node.filesize != expected_size:
            name = cid_text(cid)
            raise InvalidDag(
                f"block {name} holds {node.filesize} file bytes, its parent says {expected_size}",
                cid=name,
            )
        if len(node.links) > limits.max_links:
            name = cid_text(cid)
            raise LimitExceeded(
                f"node {name} has {len(node.links)} links, over the limit of {limits.max_links}",
                cid=name,
            )
        return node


def iter_file(
    root: str | CID, get_block: Callable[[CID], bytes], limits: DagLimits = DEFAULT_LIMITS, size: int | None = None
) -> Iterator[bytes]:
    """Stream a file's bytes from its DAG, fetching and verifying one block at a time.

    Args:
        root: the file's CID (v0 or v1; a raw CID is a one-block file).
        get_block: returns the bytes of a block; may be untrusted (every block is verified).
        limits: bounds on the DAG.
        size: the file's size in bytes when the caller knows it; the root must declare exactly that.

    Yields:
        Consecutive pieces of the file (``bytes``), in order; together exactly the root's
        declared ``filesize`` bytes.

    Raises:
        InvalidCID, UnsupportedCID: the root is not a usable CID.
        BlockHashMismatch: a block does not hash to the CID its parent named (``.cid``).
        InvalidDag: a block is not a UnixFS file node, or sizes disagree (``.cid``).
        SizeMismatch: the root declares another size than ``size`` (an ``InvalidDag``).
        LimitExceeded: the DAG breaks a bound in ``limits`` (``.cid``).
        Whatever ``get_block`` raises (e.g. BlockNotFound).
    """
    root = parse_cid(root)
    check_supported(root)
    walk = _Walk(limits)

    def emit(cid: CID, expected: int | None, depth: int) -> Iterator[bytes]:
        walk.count(cid, depth)
        node = walk.node(cid, get_block(cid), expected, root=depth == 0)
        if node.data:
            yield node.data
        for link in node.links:
            yield from emit(link.cid, link.filesize, depth + 1)

    yield from emit(root, size, 0)


def missing_blocks(
    root: str | CID,
    get_block: Callable[[CID], bytes | None],
    has_block: Callable[[CID], bool],
    limits: DagLimits = DEFAULT_LIMITS,
    size: int | None = None,
) -> list[CID]:
    """The blocks of a file DAG that are not available locally, in file order.

    Raw leaves are only probed with ``has_block`` (they have no children); dag-pb blocks are
    read, verified and descended into. A block that is absent hides its subtree, so the list
    grows level by level as the caller fetches what it names.

    Args:
        root: the file's CID.
        get_block: local bytes of a block, or ``None`` when absent.
        has_block: whether a block is present locally.
        limits: bounds on the DAG (checked on the part that is present).
        size: the file's size in bytes when the caller knows it; the root must declare exactly
            that (checked as soon as the root is present, before any child is listed).

    Returns:
        CIDs to fetch; empty when the whole file is present.

    Raises:
        InvalidCID, UnsupportedCID, BlockHashMismatch, InvalidDag, SizeMismatch, LimitExceeded: as
        :func:`iter_file`, for the blocks that are present.
    """
    root = parse_cid(root)
    check_supported(root)
    walk = _Walk(limits)
    missing: list[CID] = []

    def visit(cid: CID, expected: int | None, depth: int) -> None:
        walk.count(cid, depth)
        if cid.codec.code == RAW and depth > 0:
            if not has_block(cid):
                missing.append(cid)
            return
        block = get_block(cid)
        if block is None:
            missing.append(cid)
            return
        for link in walk.node(cid, block, expected, root=depth == 0).links:
            visit(link.cid, link.filesize, depth + 1)

    visit(root, size, 0)
    return missing
