"""Hostile input, limits: the catalog of adapters learned from gossip is bounded, and listing is paged.

A peer may announce as many valid adapters as it can sign. The node keeps at most
``MAX_ANNOUNCED`` announced-only entries (AVAILABLE in the node's catalog; records of adapters it
does not hold in the swarm catalog), forgetting the least recently announced; what it fetched,
verified, published or rejected stays. ListAdapters answers one page of at most 100 at a time
(``page_token``), so no number of adapters can push a reply past the 8 MiB message cap; the SDK and
``openlora adapters`` follow the pages.
"""

from __future__ import annotations

import grpc
import pytest

from adapter_corpus import BaseInfo, signed_manifest, template_files
from openlora.adapters.catalog import MAX_ANNOUNCED, AdapterState, Catalog
from openlora.adapters.store import AdapterStore, BaseProfile
from openlora.api.server import MAX_MESSAGE_BYTES
from openlora.api.servicer import LIST_PAGE_SIZE
from openlora.content.blockstore import BlockStore
from openlora.local import NodeProcess, cli
from openlora.p2p.catalog import SwarmCatalog
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc

FP = "sha256:" + "ab" * 32


def fake_cid(i: int) -> str:
    return f"bafkrei{i:052d}"


def test_announced_adapters_are_bounded_and_never_evict_what_the_node_holds(tmp_path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    store = AdapterStore(BlockStore(tmp_path / "blocks"), catalog, BaseProfile("base", FP, {}, 8))
    kept = {
        "ready": AdapterState.READY, "fetching": AdapterState.FETCHING,
        "verifying": AdapterState.VERIFYING, "rejected": AdapterState.REJECTED,
    }  # fmt: skip
    for cid, state in kept.items():
        catalog.set_state(cid, state, reason="non_finite" if state is AdapterState.REJECTED else "")
    n = MAX_ANNOUNCED + 500
    for i in range(n):
        assert store.learn(fake_cid(i), b"{}", f"spam-{i}")
    states = [e.state for e in catalog.list()]
    assert states.count(AdapterState.AVAILABLE) == MAX_ANNOUNCED
    assert catalog.count() == MAX_ANNOUNCED + len(kept)
    for cid, state in kept.items():
        assert catalog.get(cid).state is state
    assert catalog.get(fake_cid(0)) is None  # the least recently learned went first
    assert catalog.get(fake_cid(n - 1)) is not None
    catalog.close()


def test_the_swarm_catalog_forgets_the_least_recently_announced_remote_records(tmp_path) -> None:
    swarm = SwarmCatalog(tmp_path / "swarm.sqlite", max_remote=10)
    swarm.add("mine", b"{}", FP, "mine", provider="me", local=True)
    for i in range(10):
        swarm.add(fake_cid(i), b"{}", FP, f"a{i}", provider="peer")
    swarm.add(fake_cid(0), b"{}", FP, "a0", provider="other-peer")  # announced again: the freshest
    for i in range(10, 15):
        swarm.add(fake_cid(i), b"{}", FP, f"a{i}", provider="peer")
    cids = {r.cid for r in swarm.records()}
    assert "mine" in cids and fake_cid(0) in cids
    assert len(cids - {"mine"}) == 10
    assert not cids & {fake_cid(i) for i in range(1, 6)}  # the five least recently announced
    swarm.close()


# ── a node with more adapters than one 8 MiB reply can hold ────────────────────────────────


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """A node whose catalog holds enough verified entries that listing them at once exceeds 8 MiB."""
    data = tmp_path_factory.mktemp("crowded")
    manifest = signed_manifest(template_files(), BaseInfo("SmolLM2-135M-Instruct", FP, 64))
    n = MAX_MESSAGE_BYTES // len(manifest) + 100  # each AdapterInfo carries its manifest_json at least
    catalog = Catalog(data / "catalog.sqlite")
    for i in range(n):
        catalog.set_state(fake_cid(i), AdapterState.READY, name=f"adapter-{i}", manifest=manifest)
    catalog.close()
    node = NodeProcess(data, "--no-p2p", "--no-http", "--threads", "1", "--client-rate-limit", "0")
    yield node, n
    assert node.stop() == 0, "".join(node.stderr[-20:])


def test_listing_is_paged_under_the_message_cap(crowded) -> None:
    node, n = crowded
    with grpc.insecure_channel(node.address) as ch:
        stub = node_pb2_grpc.NodeStub(ch)
        seen: list[str] = []
        token, total = "", 0
        while True:
            page = stub.ListAdapters(pb.ListAdaptersRequest(page_size=10_000, page_token=token), timeout=60)
            assert len(page.adapters) <= LIST_PAGE_SIZE and page.ByteSize() < MAX_MESSAGE_BYTES
            seen += [a.cid for a in page.adapters]
            total += page.ByteSize()
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == n
        assert total > MAX_MESSAGE_BYTES  # one reply of them all would have been refused
        assert stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=60).adapters_known == n
        with pytest.raises(grpc.RpcError) as e:
            stub.ListAdapters(pb.ListAdaptersRequest(page_token="not a token"), timeout=60)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "start again with an empty token" in e.value.details()


def test_the_adapters_command_lists_every_page(crowded) -> None:
    node, n = crowded
    out = cli("openlora", "adapters", "--quiet", "--node", node.address, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(set(out.stdout.split())) == n
