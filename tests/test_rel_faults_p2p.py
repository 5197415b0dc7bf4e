"""Adapter fetch faults with real libp2p peers on 127.0.0.1: a peer that stalls (fetch timeout) and a peer process
killed with SIGKILL in the middle of a multi-block transfer.

The serving peer is a Swarm in a child process (``serve_forever`` below) whose block store stalls on one chosen
block, so the transfer is reliably half done when the test acts: the other blocks have arrived, the stalled batch
is in flight. Everything the test starts is stopped or killed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_p2p_swarm import FAST, FP, copy_adapter, make_adapter, spawn, validate, wait_until  # noqa: F401

from openlora.adapters.manifest import parse_manifest
from openlora.content import BlockStore, import_bytes
from openlora.p2p import FetchFailed, SwarmError
from openlora.p2p.errors import FetchTimeout
from openlora.p2p.swarm import Swarm, SwarmConfig

STALL_S = 30.0  # how long the child sits on the stalled block: far beyond every timeout below
WEIGHTS_BYTES = 20 * 256 * 1024  # 20 leaf blocks: one batch of 16 that arrives, one of 4 that stalls


class StallingStore(BlockStore):
    """A block store that takes ``STALL_S`` seconds to read one block (a peer that hangs mid-transfer)."""

    stall: str = ""

    def get(self, cid):  # type: ignore[no-untyped-def]
        if str(cid) == self.stall:
            time.sleep(STALL_S)
        return super().get(cid)


def serve_forever(data_dir: str, stall: str) -> None:
    """Child process: serve ``data_dir``'s blocks as a Swarm, stalling on block ``stall``; print the multiaddr."""
    StallingStore.stall = stall
    swarm = Swarm(Path(data_dir), StallingStore(Path(data_dir) / "blocks"), FP, validate, config=SwarmConfig(**FAST))
    swarm.start()
    print(swarm.multiaddr, flush=True)
    time.sleep(3600)


def leaves(data: bytes) -> list[str]:
    """The CIDs of a file's blocks in the order the importer makes them (leaves first, root last)."""
    made: list[str] = []
    import_bytes(data, cid_version=1, on_block=lambda cid, _block: made.append(str(cid)))
    return made


@pytest.fixture
def stalling_peer(tmp_path: Path):
    """Start a peer process holding one adapter whose last leaf block stalls; yields (process, multiaddr, adapter
    CID, its data folder)."""
    data_dir = tmp_path / "peer"
    cid, weights = make_adapter(BlockStore(data_dir / "blocks"), WEIGHTS_BYTES)
    stall = leaves(weights)[-2]  # the last leaf (the root comes last)
    tests = Path(__file__).parent
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import {Path(__file__).stem} as t; t.serve_forever({str(data_dir)!r}, {stall!r})"],
        cwd=tests,
        env={**os.environ, "PYTHONPATH": str(tests)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        addr = proc.stdout.readline().strip()
        assert addr.startswith("/ip4/127.0.0.1/"), f"peer did not start (exit {proc.poll()})"
        yield proc, addr, cid, data_dir
    finally:
        proc.kill()
        proc.wait()


def weights_cid(store: BlockStore, cid: str) -> str:
    return parse_manifest(store.get(cid)).file("adapter_model.safetensors").cid


def test_fetch_from_a_stalling_peer_times_out_with_a_clear_error(spawn, stalling_peer):  # noqa: F811
    _, addr, cid, _ = stalling_peer
    fetcher = spawn("fetcher")
    fetcher.connect(addr).result(10)
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"^fetching adapter .* timed out after 2 s with \d+ block\(s\) missing") as timeout:
        fetcher.fetch_adapter(cid, timeout_s=2.0).result(STALL_S)
    elapsed = time.monotonic() - started
    print(f"\nstalled peer: FetchTimeout after {elapsed:.2f} s (timeout 2 s, stall {STALL_S:.0f} s)")
    assert elapsed < STALL_S  # it did not wait for the stalled block
    assert isinstance(timeout.value, SwarmError)  # SwarmLink answers UNAVAILABLE for every SwarmError
    assert timeout.value.missing  # what is left to fetch is named
    assert fetcher.store.missing(weights_cid(fetcher.store, cid))  # not complete
    assert fetcher.connected_peers()  # the node is still up and connected


def test_a_peer_killed_mid_transfer_fails_the_fetch_then_another_peer_completes_it(spawn, stalling_peer, tmp_path):  # noqa: F811
    proc, addr, cid, data_dir = stalling_peer
    fetcher = spawn("fetcher")
    fetcher.connect(addr).result(10)
    pending = fetcher.fetch_adapter(cid, timeout_s=STALL_S)

    def some_weights_arrived() -> bool:
        if not fetcher.store.has(cid):
            return False
        w = weights_cid(fetcher.store, cid)
        return fetcher.store.has(w) and 0 < len(fetcher.store.missing(w)) < 20

    wait_until(some_weights_arrived, "the first batch of weight blocks arrived", timeout_s=20)
    proc.kill()  # SIGKILL: the stalled request's connection dies with the process
    proc.wait()
    with pytest.raises(FetchFailed, match="not available from any source") as failed:
        pending.result(STALL_S)
    assert not isinstance(failed.value, FetchTimeout)  # a dead peer is noticed, not waited out
    w = weights_cid(fetcher.store, cid)
    kept = 20 - len(fetcher.store.missing(w))
    print(f"\npeer killed mid-transfer: {kept}/20 weight blocks kept; {failed.value}")
    assert 0 < kept < 20  # the blocks that arrived were verified on arrival and are kept
    assert not any((fetcher.store.root / "tmp").iterdir())  # nothing half-written

    honest = spawn("honest")
    copy_adapter(BlockStore(data_dir / "blocks"), honest.store, cid)
    fetcher.connect(honest.multiaddr).result(10)
    again = fetcher.fetch_adapter(cid, timeout_s=30).result(30)
    assert again.stats.by_source == {honest.peer_id: again.stats.blocks}
    assert again.stats.blocks == 20 - kept  # only what was missing is fetched again
    assert fetcher.store.missing(w) == [] and fetcher.catalog.get(cid).local
