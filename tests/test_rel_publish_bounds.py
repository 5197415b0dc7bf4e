"""Hostile input, limits: PublishAdapter streams each upload to disk, bounded by its signed manifest.

One real node subprocess. A client that sends more bytes for a file than the manifest lists is
refused at that chunk, before its stream ends; a fifth upload while four are open is refused at
once; nothing of an upload is left on disk once its call ends, and a normal publish still works.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from adapter_corpus import BaseInfo, signed_manifest, template_files
from openlora.adapters.package import CONFIG_FILE
from openlora.api.uploads import MAX_CONCURRENT_UPLOADS
from openlora.client.builders import publish_requests
from openlora.local import NodeProcess
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data = tmp_path_factory.mktemp("publish-bounds")
    proc = NodeProcess(data, "--no-p2p", "--no-http", "--threads", "1", "--client-rate-limit", "0")
    proc.data = data
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def stub(node):
    with grpc.insecure_channel(node.address) as ch:
        yield node_pb2_grpc.NodeStub(ch)


@pytest.fixture(scope="module")
def base(stub) -> BaseInfo:
    info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=60)
    return BaseInfo(info.base_model, info.base_fingerprint, info.slots.max_rank)


def held_open(first: list[pb.PublishAdapterRequest], release: threading.Event) -> Iterator[pb.PublishAdapterRequest]:
    """``first``, then a stream that stays open until ``release`` is set (a slow uploader)."""
    yield from first
    release.wait(120)


def uploads_left(node) -> list:
    root = node.data / "blocks" / "uploads"
    return list(root.iterdir()) if root.exists() else []


def test_a_file_over_its_listed_size_is_refused_at_that_chunk(stub, base) -> None:
    good = template_files()
    manifest = signed_manifest(good, base, name="oversized-config")
    listed = len(good[CONFIG_FILE])
    header = pb.PublishAdapterRequest(header=pb.PublishHeader(manifest=manifest))
    chunk = pb.PublishAdapterRequest(chunk=pb.FileChunk(path=CONFIG_FILE, data=b" " * (listed + 1)))
    release = threading.Event()
    try:
        with pytest.raises(grpc.RpcError) as e:
            stub.PublishAdapter(held_open([header, chunk], release), timeout=60)  # the stream never ends by itself
    finally:
        release.set()
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"hash_mismatch: {CONFIG_FILE} is over the {listed} bytes the manifest lists for it" in e.value.details()


def test_uploads_at_once_are_bounded_and_leave_nothing_behind(node, stub, base) -> None:
    good = template_files()
    release = threading.Event()
    held = []
    try:
        for i in range(MAX_CONCURRENT_UPLOADS):
            header = pb.PublishAdapterRequest(header=pb.PublishHeader(manifest=signed_manifest(good, base, name=f"slow-{i}")))
            held.append(stub.PublishAdapter.future(held_open([header], release), timeout=120))
        for _ in range(1200):  # each open upload has its folder on disk once its header is checked
            assert not any(f.done() for f in held), [f.exception() for f in held if f.done()]
            if len(uploads_left(node)) == MAX_CONCURRENT_UPLOADS:
                break
            release.wait(0.05)
        assert len(uploads_left(node)) == MAX_CONCURRENT_UPLOADS
        with pytest.raises(grpc.RpcError) as e:
            stub.PublishAdapter(publish_requests(signed_manifest(good, base, name="one-too-many"), good), timeout=60)
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{MAX_CONCURRENT_UPLOADS} uploads are in progress on this node; retry later" in e.value.details()
    finally:
        release.set()
    for f in held:  # each ends (with no files sent: absent_file), and frees its place
        assert f.exception(60) is not None and f.exception().code() is grpc.StatusCode.INVALID_ARGUMENT
    reply = stub.PublishAdapter(publish_requests(signed_manifest(good, base, name="after"), good), timeout=120)
    assert reply.cid and reply.adapter.status == pb.ADAPTER_STATUS_READY
    assert uploads_left(node) == []
