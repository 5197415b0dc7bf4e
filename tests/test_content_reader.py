"""Reading DAGs from untrusted blocks: verification, malformed nodes, bounds, missing blocks
(openlora.content.reader and .unixfs)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.bitswap.pb.dag_pb_pb2 import PBLink, PBNode
from libp2p.bitswap.pb.unixfs_pb2 import Data as UnixFSData
from multiformats import CID, multihash

from openlora.content import (
    DAG_PB,
    RAW,
    BlockHashMismatch,
    DagLimits,
    InvalidDag,
    LimitExceeded,
    UnsupportedCID,
    cid_text,
    import_bytes,
    iter_file,
    make_cid,
    missing_blocks,
)
from openlora.content.importer import CHUNK_SIZE
from openlora.content.unixfs import Link, encode_internal


class Blocks(dict):
    """An in-memory block source that records what was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.requested: list[CID] = []

    def add(self, block: bytes, codec: int = DAG_PB) -> CID:
        cid = make_cid(block, codec, 1)
        self[cid] = block
        return cid

    def get_block(self, cid: CID) -> bytes:
        self.requested.append(cid)
        return self[cid]


def imported(data: bytes, **options) -> tuple[Blocks, CID]:
    blocks = Blocks()
    root = import_bytes(data, on_block=blocks.__setitem__, **options).root
    return blocks, root


def read(blocks: Blocks, root: CID, limits: DagLimits | None = None) -> bytes:
    limits = limits or DagLimits()
    return b"".join(iter_file(root, blocks.get_block, limits))


def leaf(blocks: Blocks, data: bytes) -> Link:
    return Link(blocks.add(data, RAW), tsize=len(data), filesize=len(data))


def node(blocks: Blocks, children: list[Link]) -> Link:
    block = encode_internal(children)
    tsize = len(block) + sum(c.tsize for c in children)
    return Link(blocks.add(block), tsize, sum(c.filesize for c in children))


CBOR_CID = CID("base32", 1, "dag-cbor", multihash.digest(b"", "sha2-256"))


def unixfs_block(links: list[PBLink], **unixfs) -> bytes:
    data = UnixFSData(**unixfs).SerializeToString()
    return PBNode(Links=links).SerializeToString() + PBNode(Data=data).SerializeToString()


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 7])
def test_round_trip(version: int, size: int) -> None:
    data = random.Random(size).randbytes(size)
    blocks, root = imported(data, cid_version=version)
    assert read(blocks, root) == data


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 40).map(lambda n: n * 64) | st.integers(0, 2600),
    version=st.sampled_from([0, 1]),
)
def test_deep_small_trees_read_back(size: int, version: int) -> None:
    # 64-byte chunks, 3 links: sizes up to 2600 bytes give trees of up to 5 levels.
    data = random.Random(size).randbytes(size)
    blocks, root = imported(data, cid_version=version, chunk_size=64, max_links=3)
    assert read(blocks, root) == data


def test_a_wrong_block_is_named_by_its_cid() -> None:
    blocks, root = imported(random.Random(1).randbytes(2 * CHUNK_SIZE), cid_version=1)
    leaf_cid = next(c for c in blocks if c.codec.code == RAW)
    blocks[leaf_cid] = b"\0" * CHUNK_SIZE
    with pytest.raises(BlockHashMismatch) as err:
        read(blocks, root)
    assert err.value.cid == cid_text(leaf_cid)


def test_declared_size_over_the_limit_is_refused_before_fetching_children() -> None:
    blocks = Blocks()
    root = node(blocks, [leaf(blocks, b"a" * 100), leaf(blocks, b"b" * 100)])
    with pytest.raises(LimitExceeded, match="max_file_size") as err:
        read(blocks, root.cid, DagLimits(max_file_size=199))
    assert err.value.cid == cid_text(root.cid)
    assert blocks.requested == [root.cid]
    assert read(blocks, root.cid, DagLimits(max_file_size=200)) == b"a" * 100 + b"b" * 100


def chain(blocks: Blocks, depth: int) -> Link:
    """A file of one byte under ``depth`` single-child nodes."""
    link = leaf(blocks, b"x")
    for _ in range(depth):
        link = node(blocks, [link])
    return link


def test_deep_dags_are_bounded() -> None:
    blocks = Blocks()
    root = chain(blocks, 5)
    assert read(blocks, root.cid, DagLimits(max_depth=5)) == b"x"
    with pytest.raises(LimitExceeded, match="deeper than 4"):
        read(blocks, root.cid, DagLimits(max_depth=4))


def test_wide_nodes_are_bounded() -> None:
    blocks = Blocks()
    root = node(blocks, [leaf(blocks, bytes([i])) for i in range(5)])
    assert read(blocks, root.cid, DagLimits(max_links=5)) == bytes(range(5))
    with pytest.raises(LimitExceeded, match="5 links"):
        read(blocks, root.cid, DagLimits(max_links=4))
    assert blocks.requested[-1] == root.cid  # no child was fetched


def test_block_count_is_bounded() -> None:
    blocks = Blocks()
    root = node(blocks, [leaf(blocks, bytes([i])) for i in range(5)])
    with pytest.raises(LimitExceeded, match="more than 4 blocks"):
        read(blocks, root.cid, DagLimits(max_blocks=4))


def test_oversized_blocks_are_refused_before_hashing() -> None:
    blocks = Blocks()
    big = blocks.add(b"z" * 1000, RAW)
    with pytest.raises(LimitExceeded, match="1000 bytes"):
        read(blocks, big, DagLimits(max_block_size=999))


def test_a_child_smaller_than_its_parent_claims_is_refused() -> None:
    blocks = Blocks()
    small = leaf(blocks, b"abc")
    liar = Link(small.cid, tsize=3, filesize=5)
    root = node(blocks, [liar])
    with pytest.raises(InvalidDag, match="parent says 5") as err:
        read(blocks, root.cid)
    assert err.value.cid == cid_text(small.cid)


@pytest.mark.parametrize(
    "block, says",
    [
        (b"\xff\xff\xff", "not a valid dag-pb"),
        (PBNode(Links=[]).SerializeToString(), "without UnixFS Data"),
        (unixfs_block([], Type=UnixFSData.Directory), "UnixFS Directory, not a file"),
        (unixfs_block([], Type=UnixFSData.File, Data=b"abc", filesize=4), "filesize 4"),
        (unixfs_block([], Type=UnixFSData.File, blocksizes=[3]), "0 links but 1 blocksizes"),
        (
            unixfs_block([PBLink(Hash=bytes(CBOR_CID))], Type=UnixFSData.File, blocksizes=[1]),
            "unusable CID",
        ),
    ],
    ids=["garbage", "no-data", "directory", "filesize", "blocksizes", "cbor-link"],
)
def test_malformed_nodes_are_refused(block: bytes, says: str) -> None:
    blocks = Blocks()
    cid = blocks.add(block)
    with pytest.raises(InvalidDag, match=says) as err:
        read(blocks, cid)
    assert err.value.cid == cid_text(cid)


def test_a_root_with_another_hash_function_is_refused() -> None:
    root = CID("base32", 1, "raw", multihash.digest(b"x", "sha2-512"))
    with pytest.raises(UnsupportedCID, match="sha2-512"):
        read(Blocks(), root)


def test_missing_blocks_reveal_the_dag_level_by_level() -> None:
    source, root = imported(random.Random(7).randbytes(2000), chunk_size=64, max_links=3)
    local: dict[CID, bytes] = {}
    rounds = []
    while wanted := missing_blocks(root, local.get, local.__contains__):
        rounds.append(len(wanted))
        local.update((cid, source[cid]) for cid in wanted)
    # 32 leaves: root, then 2, 4, 11 nodes per level, then the 32 leaves.
    assert rounds == [1, 2, 4, 11, 32]
    assert local == dict(source)
    assert b"".join(iter_file(root, local.__getitem__)) == random.Random(7).randbytes(2000)
