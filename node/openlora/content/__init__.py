"""The content layer: CIDs, Kubo-compatible UnixFS import, verified reads, the block store.

    bytes/file ──importer──► blocks (256 KiB chunks, balanced DAG ≤ 174 links) ──► BlockStore
                                  │ root CID == what `ipfs add -Q [--cid-version=1]` prints
    BlockStore.missing(root) ──► CIDs to fetch ──(peer, Kubo RPC)──► BlockStore.put (verified)
    BlockStore.cat(root) ──reader──► bytes, every block re-hashed, DAG bounded by DagLimits

Modules: ``cid`` (parse/print/make/verify CIDs), ``unixfs`` (dag-pb UnixFS node codec),
``importer`` (chunking + balanced layout), ``reader`` (verified DAG walk, limits, missing
blocks), ``blockstore`` (files on disk), ``errors`` (typed errors).
"""

from .blockstore import BlockStore
from .cid import DAG_PB, RAW, cid_text, make_cid, parse_cid, verify_block
from .errors import (
    BlockHashMismatch,
    BlockNotFound,
    ContentError,
    CorruptBlock,
    InvalidCID,
    InvalidDag,
    LimitExceeded,
    StoreFull,
    UnsupportedCID,
)
from .importer import ImportResult, file_cid, import_bytes, import_path, import_stream
from .reader import DagLimits, iter_file, missing_blocks

__all__ = [
    "DAG_PB",
    "RAW",
    "BlockHashMismatch",
    "BlockNotFound",
    "BlockStore",
    "ContentError",
    "CorruptBlock",
    "DagLimits",
    "ImportResult",
    "InvalidCID",
    "InvalidDag",
    "LimitExceeded",
    "StoreFull",
    "UnsupportedCID",
    "cid_text",
    "file_cid",
    "import_bytes",
    "import_path",
    "import_stream",
    "iter_file",
    "make_cid",
    "missing_blocks",
    "parse_cid",
    "verify_block",
]
