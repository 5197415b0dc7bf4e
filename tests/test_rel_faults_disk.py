"""Disk full in the blockstore: a write the disk refuses fails with a clear error, leaves nothing half-written, and
the store (and the node's publish and fetch paths above it) keeps working.

Mechanism: the process's file size limit (``RLIMIT_FSIZE``), lowered for the duration of the write. The kernel
then refuses any write past the limit with EFBIG (Python ignores SIGXFSZ), exactly where a full disk answers
ENOSPC; both reach the same code. No root, no loop mount, no monkeypatching. The limit is per file, so the small
files the test process writes meanwhile (pytest's capture, SQLite) are unaffected.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from adapter_corpus import PUBLISHER, publisher_key, template_files  # noqa: F401  (fixture)
from conftest import DEMO_ADAPTERS
from openlora.adapters.catalog import AdapterState, Catalog
from openlora.adapters.manifest import encode_manifest
from openlora.adapters.package import build_manifest
from openlora.adapters.signing import sign_manifest
from openlora.adapters.store import AdapterStore, manifest_cid
from openlora.adapters.verify import BaseProfile
from openlora.content import RAW, BlockStore, StoreFull, import_bytes, make_cid
from openlora.client import NodeClient
from openlora.content.errors import BlockNotFound
from openlora.local import NodeProcess, cli
from openlora.p2p.fetch import TIER_PEER, fetch_dag

LIMIT = 128 * 1024  # bytes: below one 256 KiB chunk, above every small file written meanwhile


@contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """Lower this process's file size limit to ``max_bytes``, restoring it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def leftovers(store: BlockStore) -> list[str]:
    return os.listdir(store.root / "tmp")


def test_a_refused_block_write_is_store_full_and_leaves_nothing(tmp_path):
    store = BlockStore(tmp_path / "blocks")
    small = os.urandom(1000)
    small_cid = str(make_cid(small, RAW))
    store.put(small_cid, small)
    big = os.urandom(300_000)
    big_cid = str(make_cid(big, RAW))
    with file_size_limit(LIMIT):
        with pytest.raises(StoreFull, match=r"^disk full: cannot store block .*300000 bytes") as full:
            store.put(big_cid, big)
        assert full.value.errno == errno.EFBIG and full.value.cid == big_cid
        assert isinstance(full.value, OSError)  # callers that catch OSError still do
        # nothing half-written is visible; the store keeps serving reads and small writes
        assert not store.has(big_cid) and leftovers(store) == []
        with pytest.raises(BlockNotFound):
            store.get(big_cid)
        assert store.get(small_cid) == small
        other = os.urandom(2000)
        store.put(str(make_cid(other, RAW)), other)
    store.put(big_cid, big)  # space is back: the same write succeeds
    assert store.get(big_cid) == big


def test_a_refused_file_import_leaves_only_whole_verified_blocks(tmp_path):
    store = BlockStore(tmp_path / "blocks")
    data = os.urandom(1_200_000)  # 5 chunks of 256 KiB: every one is over the limit
    root = str(import_bytes(data, cid_version=1).root)
    with file_size_limit(LIMIT), pytest.raises(StoreFull, match="^disk full"):
        store.add_bytes(data)
    assert leftovers(store) == []
    assert store.missing(root) == [root]  # the root is written last: the file is simply absent
    assert store.add_bytes(data) == root
    assert store.cat(root) == data


class StoreSource:
    """A block source serving from another local store (the fetch's far side, without a network)."""

    name = "peer"
    tier = TIER_PEER

    def __init__(self, store: BlockStore) -> None:
        self.store = store

    async def get_blocks(self, cids: list[str]) -> dict[str, bytes]:
        return {c: self.store.get(c) for c in cids if self.store.has(c)}


def test_a_fetch_into_a_full_disk_fails_with_store_full_then_resumes(tmp_path):
    far = BlockStore(tmp_path / "far")
    data = os.urandom(1_200_000)
    root = far.add_bytes(data)
    near = BlockStore(tmp_path / "near")
    with file_size_limit(LIMIT), pytest.raises(StoreFull, match="^disk full"):
        anyio.run(lambda: fetch_dag(near, root, [StoreSource(far)], timeout_s=30))
    assert leftovers(near) == []
    stats = anyio.run(lambda: fetch_dag(near, root, [StoreSource(far)], timeout_s=30))
    assert stats.blocks >= 5 and near.cat(root) == data


@pytest.fixture(scope="module")
def profile(base_source) -> BaseProfile:
    from openlora.engine.model import load_resident

    rm = load_resident(base_source, "float32", n_slots=1, max_rank=16)
    return BaseProfile(base_source.name, base_source.fingerprint, rm.base_modules, rm.max_rank)


def test_publish_onto_a_full_disk_fails_clearly_and_records_nothing(tmp_path, profile):
    store = AdapterStore(BlockStore(tmp_path / "blocks"), Catalog(tmp_path / "catalog.sqlite"), profile)
    files = template_files()
    unsigned = build_manifest(
        files, base_name=profile.name, base_fingerprint=profile.fingerprint, publisher=PUBLISHER.address, name="medical"
    )
    raw = encode_manifest(sign_manifest(unsigned, PUBLISHER))
    cid = manifest_cid(raw)
    try:
        with file_size_limit(LIMIT), pytest.raises(StoreFull, match="^disk full"):
            store.publish(raw, files)
        assert store.catalog.get(cid) is None  # not READY, and no verdict: the adapter did nothing wrong
        assert not store.blocks.has(cid) and leftovers(store.blocks) == []
        assert store.publish(raw, files) == cid  # space is back: publishing again works
        assert store.catalog.get(cid).state is AdapterState.READY
        assert len(store.load(cid).modules) == 120
    finally:
        store.catalog.close()


@pytest.mark.slow
def test_a_node_whose_disk_is_full_refuses_publish_with_resource_exhausted_and_keeps_serving(tmp_path, base_source, publisher_key):  # noqa: F811
    # The node inherits the lowered limit at fork (the model cache is already converted by base_source).
    with file_size_limit(LIMIT):
        node = NodeProcess(tmp_path / "node", "--no-p2p", "--no-http", "--threads", "2")
    try:
        out = cli("openlora-node", "publish", str(DEMO_ADAPTERS / "medical"), "--node", node.address)
        assert out.returncode != 0
        assert out.stderr.startswith("error: RESOURCE_EXHAUSTED: cannot store adapter "), out.stderr
        assert "disk full: cannot store" in out.stderr and "free space" in out.stderr
        with NodeClient(node.address, timeout=120) as c:
            assert c.list_adapters() == []  # nothing half-published is listed
            assert c.generate("Say hi.", max_new_tokens=2, temperature=0).text()  # still serving
    finally:
        assert node.stop() == 0, "".join(node.stderr[-20:])
