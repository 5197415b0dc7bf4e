"""Hostile input, limits: a file is bounded by the size its signed manifest declares, checked at the DAG root.

A manifest is small (a few KB) but names each file by CID, and a CID can name a DAG of any size:
the manifest says the weights are 3.7 MB while the CID's root declares 8 MiB (the same shape as a
1 GiB DAG, smaller to keep the test quick). The fetcher must refuse at the root, before any child
block is fetched, and the load path must refuse at the root, before any child is read into RAM;
both answer ``manifest_mismatch``. Real block stores on disk; the far side is a store served as a
block source (``StoreSource``), as in the disk-fault tests.
"""

from __future__ import annotations

import os
import tracemalloc

import anyio
import pytest

from adapter_corpus import BaseInfo, sign, template_files, unsigned_manifest
from openlora.adapters.catalog import Catalog
from openlora.adapters.manifest import FileRef
from openlora.adapters.package import CONFIG_FILE, WEIGHTS_FILE, file_ref
from openlora.adapters.reasons import AdapterRejected, RejectReason
from openlora.adapters.store import AdapterStore, BaseProfile, manifest_cid
from openlora.content.blockstore import BlockStore
from openlora.content.errors import SizeMismatch
from openlora.p2p.fetch import fetch_adapter, fetch_dag
from test_rel_faults_disk import StoreSource

FP = "sha256:" + "ab" * 32
BIG = 8 << 20  # what the weights CID's root declares: 32 leaves of 256 KiB


def stored_blocks(store_root) -> int:
    return sum(len(files) for _, _, files in os.walk(store_root / "blocks"))


@pytest.fixture
def oversized(tmp_path):
    """A far store holding a signed manifest whose weights CID names an 8 MiB DAG, and its CID."""
    good = template_files()
    far = BlockStore(tmp_path / "far")
    big_root = far.add_bytes(os.urandom(BIG))
    far.add_bytes(good[CONFIG_FILE])
    files = [file_ref(CONFIG_FILE, good[CONFIG_FILE]), FileRef(name=WEIGHTS_FILE, cid=big_root, size=len(good[WEIGHTS_FILE]))]
    raw = sign(unsigned_manifest(good, BaseInfo("base", FP, 64)).model_copy(update={"files": files}))
    cid = manifest_cid(raw)
    far.put(cid, raw)
    return far, cid, big_root, len(good[WEIGHTS_FILE])


def node_store(root) -> AdapterStore:
    return AdapterStore(BlockStore(root / "blocks"), Catalog(root / "catalog.sqlite"), BaseProfile("base", FP, {}, 64))


def test_a_fetch_refuses_a_dag_larger_than_its_manifest_at_the_root(tmp_path, oversized) -> None:
    far, cid, big_root, declared = oversized
    near = node_store(tmp_path / "near")
    with pytest.raises(AdapterRejected) as e:
        anyio.run(lambda: fetch_adapter(near.blocks, cid, [StoreSource(far)], near.validate_manifest, FP, timeout_s=60))
    assert e.value.reason is RejectReason.MANIFEST_MISMATCH
    assert f"declares {BIG} bytes; expected {declared}" in str(e.value)
    # the manifest, the config's block and the weights' root: not one of the 32 leaves
    assert stored_blocks(tmp_path / "near") == 3


def test_fetch_dag_checks_an_expected_size_before_the_children(tmp_path, oversized) -> None:
    far, _, big_root, declared = oversized
    near = BlockStore(tmp_path / "near")
    with pytest.raises(SizeMismatch):
        anyio.run(lambda: fetch_dag(near, big_root, [StoreSource(far)], timeout_s=60, size=declared))
    assert stored_blocks(tmp_path / "near") == 1
    stats = anyio.run(lambda: fetch_dag(near, big_root, [StoreSource(far)], timeout_s=60, size=BIG))
    assert stats.blocks == 32  # the right size fetches the whole DAG


def test_loading_refuses_a_dag_larger_than_its_manifest_without_reading_it(tmp_path, oversized) -> None:
    far, cid, _, declared = oversized
    store = AdapterStore(far, Catalog(tmp_path / "catalog.sqlite"), BaseProfile("base", FP, {}, 64))
    tracemalloc.start()
    try:
        with pytest.raises(AdapterRejected) as e:
            store.load(cid)  # every block of the 8 MiB DAG is present: only the root may be read
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak  # was: the whole 8 MiB read (and copied) before the size was compared
    assert e.value.reason is RejectReason.MANIFEST_MISMATCH and f"expected {declared}" in str(e.value)
