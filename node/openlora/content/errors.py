"""Typed errors of the content layer.

    ContentError
    ├── InvalidCID            the text/bytes are not a CID (ValueError)
    │   └── UnsupportedCID    a real CID we refuse: hash function other than sha2-256, codec
    │                         other than raw/dag-pb
    ├── BlockHashMismatch     bytes do not hash to the CID they were offered under (ValueError)
    │   └── CorruptBlock      ...and they came from our own disk (the file has been removed)
    ├── BlockNotFound         no such block in the local store (KeyError)
    ├── InvalidDag            a block decodes to something that is not a UnixFS file (ValueError)
    ├── LimitExceeded         a block or DAG is bigger/deeper/wider than allowed (ValueError)
    └── StoreFull             the disk refused a block write: no space, quota, file size limit (OSError)

Every error that concerns one block carries its CID (canonical text) in ``cid``, so a fetcher
can penalise the peer that served it and retry elsewhere.
"""

from __future__ import annotations


class ContentError(Exception):
    """Base of every content-layer error; ``cid`` names the offending block when there is one."""

    def __init__(self, message: str, cid: str | None = None) -> None:
        super().__init__(message)
        self.cid = cid


class InvalidCID(ContentError, ValueError):
    """The value is not a valid CID; the message says what is wrong with it."""


class UnsupportedCID(InvalidCID):
    """A well-formed CID that this node refuses (hash function other than sha2-256, or a codec
    other than raw 0x55 / dag-pb 0x70 inside a file DAG)."""


class BlockHashMismatch(ContentError, ValueError):
    """Block bytes whose sha2-256 digest differs from the digest in the CID they came with."""


class CorruptBlock(BlockHashMismatch):
    """A block read back from the local store no longer matches its CID; it has been deleted so
    that it can be fetched again."""


class BlockNotFound(ContentError, KeyError):
    """The local block store has no block with this CID."""

    def __str__(self) -> str:
        # KeyError would repr() the message; keep it readable.
        return str(self.args[0])


class InvalidDag(ContentError, ValueError):
    """A block is valid for its CID but is not a well-formed UnixFS file node (bad protobuf,
    wrong UnixFS type, sizes that do not add up, links to unsupported codecs)."""


class SizeMismatch(InvalidDag):
    """A file's DAG root declares another size than the one expected (e.g. the signed manifest's),
    found at the root, before any child block is fetched or read."""


class LimitExceeded(ContentError, ValueError):
    """A block or DAG exceeds a configured bound (block size, file size, depth, links per node,
    number of blocks); the message names the bound and how to raise it."""


class StoreFull(ContentError, OSError):
    """The disk refused to store a block (ENOSPC, EDQUOT, or EFBIG from a file size limit). Nothing of the block
    is visible in the store; ``errno`` is the operating system's code. The message starts with "disk full:"."""
