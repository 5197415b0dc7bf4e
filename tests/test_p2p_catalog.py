"""The persisted swarm catalog (openlora.p2p.catalog)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openlora.p2p.catalog import SwarmCatalog

FP = "sha256:" + "ab" * 32


def test_records_providers_and_local_flag_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "swarm.sqlite"
    catalog = SwarmCatalog(path)
    assert catalog.add("bafk1", b"m1", FP, "one", provider="peerA")
    assert not catalog.add("bafk1", b"m1", FP, "one", provider="peerB")  # known: providers grow
    assert catalog.add("bafk2", b"m2", FP, "two", local=True)
    catalog.close()

    again = SwarmCatalog(path)
    one, two = again.get("bafk1"), again.get("bafk2")
    assert set(one.providers) == {"peerA", "peerB"} and not one.local
    assert two.local and two.providers == () and two.manifest == b"m2"
    assert [r.cid for r in again.records()] == ["bafk2", "bafk1"]  # most recent first
    assert [r.cid for r in again.records(limit=1)] == ["bafk2"]
    assert again.get("bafk3") is None
    again.close()


def test_local_is_never_reset_by_a_later_add(tmp_path: Path) -> None:
    catalog = SwarmCatalog(tmp_path / "c.sqlite")
    catalog.add("bafk1", b"m", FP, "n", local=True)
    catalog.add("bafk1", b"m", FP, "n", provider="peer", local=False)
    assert catalog.get("bafk1").local
    catalog.close()


def test_concurrent_adds_from_threads(tmp_path: Path) -> None:
    catalog = SwarmCatalog(tmp_path / "c.sqlite")
    with ThreadPoolExecutor(8) as pool:
        new = list(pool.map(lambda i: catalog.add(f"bafk{i % 50}", b"m", FP, "n", provider=f"p{i}"), range(400)))
    assert sum(new) == 50
    assert all(len(r.providers) == 8 for r in catalog.records())
    catalog.close()
