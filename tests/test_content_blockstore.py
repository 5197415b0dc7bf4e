"""The on-disk block store: round trips, verification on put and get, corruption, the missing-block
loop a fetcher runs, and concurrent use (openlora.content.blockstore)."""

from __future__ import annotations

import random
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openlora.content import (
    DAG_PB,
    RAW,
    BlockHashMismatch,
    BlockNotFound,
    BlockStore,
    CorruptBlock,
    DagLimits,
    InvalidCID,
    LimitExceeded,
    UnsupportedCID,
    cid_text,
    file_cid,
    import_bytes,
    make_cid,
    parse_cid,
)
from openlora.content.importer import CHUNK_SIZE, MAX_LINKS


def content(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store")


def stored_blocks(store: BlockStore) -> list[Path]:
    return sorted(p for p in (store.root / "blocks").rglob("*") if p.is_file())


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("size", [0, 12, CHUNK_SIZE, CHUNK_SIZE + 1, MAX_LINKS * CHUNK_SIZE + 1])
def test_round_trip(store: BlockStore, version: int, size: int) -> None:
    data = content(size)
    root = store.add_bytes(data, cid_version=version)
    assert root == cid_text(import_bytes(data, cid_version=version).root)
    assert store.cat(root) == data
    assert store.missing(root) == []


def test_add_file_streams_to_the_same_blocks(store: BlockStore, tmp_path: Path) -> None:
    path = tmp_path / "adapter.bin"
    path.write_bytes(content(3 * CHUNK_SIZE))
    root = store.add_file(path)
    assert root == file_cid(path) == store.add_bytes(content(3 * CHUNK_SIZE))
    # 3 raw leaves + 1 root, in shards named by the next-to-last two characters.
    files = stored_blocks(store)
    assert len(files) == 4
    assert all(f.parent.name == f.name[-3:-1] for f in files)
    assert store.cat(root) == path.read_bytes()


def test_get_and_has(store: BlockStore) -> None:
    root = store.add_bytes(b"hello world\n")
    assert root == "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    assert store.has(root) and store.get(root) == b"hello world\n"
    absent = cid_text(make_cid(b"absent", RAW))
    assert not store.has(absent)
    with pytest.raises(BlockNotFound, match="not in the store") as err:
        store.get(absent)
    assert err.value.cid == absent
    with pytest.raises(BlockNotFound):
        store.cat(absent)


def test_v0_and_v1_names_of_one_dag_pb_block_share_a_file(store: BlockStore) -> None:
    root_v0 = parse_cid(store.add_bytes(b"hello world\n", cid_version=0))
    as_v1 = root_v0.set(version=1)
    assert store.has(as_v1)
    assert store.get(as_v1) == store.get(root_v0)
    assert len(stored_blocks(store)) == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: bytes([b[0] ^ 1]) + b[1:],  # bit rot
        lambda b: b[: len(b) // 2],  # torn write
        lambda b: b"",  # emptied by a crash
    ],
    ids=["flipped-bit", "truncated", "empty"],
)
def test_corruption_on_disk_is_detected_removed_and_healed(store: BlockStore, damage) -> None:
    data = content(3 * CHUNK_SIZE)
    root = store.add_bytes(data)
    leaf = next(p for p in stored_blocks(store) if p.name.startswith("bafk"))
    good = leaf.read_bytes()
    leaf.write_bytes(damage(good))

    with pytest.raises(CorruptBlock) as err:
        store.cat(root)
    assert err.value.cid == leaf.name
    assert not leaf.exists() and not store.has(leaf.name)
    assert store.missing(root) == [leaf.name]

    store.put(leaf.name, good)
    assert store.cat(root) == data


def test_corrupt_blocks_found_by_missing_are_listed(store: BlockStore) -> None:
    root = store.add_bytes(content(3 * CHUNK_SIZE), cid_version=0)  # dag-pb leaves are read

    def as_v0(name: str) -> str:  # files are named by CIDv1; this DAG speaks CIDv0
        return cid_text(parse_cid(name).set(version=0, base="base58btc"))

    leaf = next(p for p in stored_blocks(store) if as_v0(p.name) != root)
    leaf.write_bytes(b"junk")
    assert store.missing(root) == [as_v0(leaf.name)]
    assert not leaf.exists()


def test_put_refuses_a_wrong_block(store: BlockStore) -> None:
    cid = cid_text(make_cid(b"the real block", RAW))
    with pytest.raises(BlockHashMismatch) as err:
        store.put(cid, b"an impostor")
    assert err.value.cid == cid
    assert not store.has(cid) and stored_blocks(store) == []
    assert list((store.root / "tmp").iterdir()) == []


def test_put_refuses_bad_cids_and_huge_blocks(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, DagLimits(max_block_size=10))
    with pytest.raises(InvalidCID):
        store.put("not-a-cid", b"x")
    with pytest.raises(UnsupportedCID):
        store.put("bafkqaaly", b"x")  # identity hash
    with pytest.raises(LimitExceeded, match="11 bytes"):
        store.put(make_cid(b"x" * 11, RAW), b"x" * 11)


@pytest.mark.parametrize("version", [0, 1])
def test_fetcher_loop_copies_a_dag_between_stores(tmp_path: Path, version: int) -> None:
    source, sink = BlockStore(tmp_path / "a"), BlockStore(tmp_path / "b")
    data = content(MAX_LINKS * CHUNK_SIZE + 1)
    root = source.add_bytes(data, cid_version=version)
    rounds = []
    while wanted := sink.missing(root):
        rounds.append(len(wanted))
        for cid in wanted:
            sink.put(cid, source.get(cid))
    # root; its two children; the 175 leaves.
    assert rounds == [1, 2, MAX_LINKS + 1]
    assert sink.cat(root) == data


def test_concurrent_puts_and_reads(store: BlockStore) -> None:
    data = content(20 * CHUNK_SIZE + 3)
    blocks: dict = {}
    root = cid_text(import_bytes(data, on_block=blocks.__setitem__, cid_version=0).root)
    work = list(blocks.items()) * 4
    random.Random(0).shuffle(work)

    def put_then_get(item):
        cid, block = item
        store.put(cid, block)
        return store.get(cid) == block

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(put_then_get, work))
        cats = list(pool.map(lambda _: store.cat(root), range(4)))
    assert all(c == data for c in cats)
    assert len(stored_blocks(store)) == len(blocks)
    assert list((store.root / "tmp").iterdir()) == []


near_boundaries = st.builds(
    lambda chunks, delta: max(0, chunks * CHUNK_SIZE + delta),
    st.integers(0, 3),
    st.integers(-2, 2),
)


@settings(max_examples=30, deadline=None)
@given(size=near_boundaries | st.integers(0, 3 * CHUNK_SIZE), version=st.sampled_from([0, 1]))
def test_import_then_cat_is_identity(size: int, version: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = BlockStore(tmp)
        data = random.Random(size).randbytes(size)
        root = store.add_bytes(data, cid_version=version)
        assert parse_cid(root).codec.code in (RAW, DAG_PB)
        assert store.cat(root) == data
