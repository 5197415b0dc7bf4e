"""Acceptance of issue 4 through the gRPC API of a real node subprocess: every corpus case
(tests/adapter_corpus.py) is rejected with its own reason while good Generate calls with a demo
adapter keep completing; GetAdapter reports the reason of every recorded rejection; the load path
rejects a block tampered on disk and a manifest whose files are absent; unsigned publishing is
refused; the CLI signs with the publisher key.

Which cases can be looked up afterwards: every case has a manifest and so a CID, but
``wrong_hash`` and ``absent_file`` are failures of the upload (not of the adapter the manifest
names), so the node does not record them and GetAdapter answers NOT_FOUND; their load-path twins
(tampered block, absent file blocks) are recorded and GetAdapter shows them. An unsigned publish
has no manifest, hence no CID.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from adapter_corpus import (
    CASE_REASONS,
    PUBLISHER,
    TEMPLATE,
    BaseInfo,
    absent_adapter,
    publisher_key,  # noqa: F401  (fixture)
    signed_manifest,
    tamper_block,
    unique_good_files,
    upload_cases,
)
from conftest import DEMO_ADAPTERS
from openlora.adapters.catalog import AdapterState, Catalog
from openlora.adapters.keys import keystore_address
from openlora.client import NodeClient, publish_requests
from openlora.content.blockstore import BlockStore
from openlora.local import NodeProcess, cli
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc

QUESTION = "What should I do about a persistent cough?"
MAX_RANK = 16


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data = tmp_path_factory.mktemp("trust-node")
    # standalone (--no-p2p): the swarm would also read, detect and drop a tampered block, racing
    # the load path this file tests
    proc = NodeProcess(
        data, "--dtype", "float32", "--threads", "2", "--max-loras", "2", "--max-lora-rank", str(MAX_RANK), "--no-p2p"
    )
    yield proc, data
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def client(node):
    with NodeClient(node[0].address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def stub(node):
    with grpc.insecure_channel(node[0].address) as channel:
        yield node_pb2_grpc.NodeStub(channel)


@pytest.fixture(scope="module")
def base(client) -> BaseInfo:
    info = client.node_info()
    assert info.slots.max_rank == MAX_RANK
    return BaseInfo(info.base_model, info.base_fingerprint, info.slots.max_rank)


@pytest.fixture(scope="module")
def medical(client) -> str:
    resp = client.publish(TEMPLATE, PUBLISHER, "medical", price_per_1k_tokens=10**15, royalty_bps=500)
    assert resp.adapter.status == pb.ADAPTER_STATUS_READY
    return resp.cid


@pytest.fixture(scope="module")
def background(client, medical):
    """Good Generate calls with the medical adapter, back to back on a thread, for as long as the
    corpus runs (stopped by the last test of the module)."""
    stop, texts, errors = threading.Event(), [], []

    def run() -> None:
        while not stop.is_set():
            try:
                texts.append(client.generate(QUESTION, adapter=medical, temperature=0, max_new_tokens=12).text())
            except grpc.RpcError as e:
                errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield stop, thread, texts, errors
    stop.set()
    thread.join(120)


@pytest.fixture(scope="module")
def cases(base, tmp_path_factory):
    marker = tmp_path_factory.mktemp("pickle") / "unpickled"
    return marker, {c.id: c for c in upload_cases(base, marker)}


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


@pytest.mark.parametrize("case_id", list(CASE_REASONS))
def test_corpus_case_is_rejected_with_its_reason(stub, client, background, cases, case_id):
    marker, by_id = cases
    case = by_id[case_id]
    err = _rpc_error(lambda: stub.PublishAdapter(publish_requests(case.manifest, case.files), timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"adapter rejected: {case.reason.value}: "), err.details()
    assert case.cid in err.details()
    if case.recorded:
        info = client.get_adapter(case.cid)
        assert (info.status, info.reason, info.retryable) == (pb.ADAPTER_STATUS_REJECTED, case.reason.value, case.reason.retryable)
        assert info.detail and info.detail in err.details()
        gen = _rpc_error(lambda: client.generate("hi", adapter=case.cid, max_new_tokens=2).text())
        assert gen.code() == grpc.StatusCode.FAILED_PRECONDITION and case.reason.value in gen.details()
    else:
        assert _rpc_error(lambda: client.get_adapter(case.cid)).code() == grpc.StatusCode.NOT_FOUND
    assert not marker.exists(), "the node unpickled the pickle"


def test_tampered_block_is_rejected_at_load_and_republishing_heals_it(node, stub, client, base, background):
    files = unique_good_files(10)
    raw = signed_manifest(files, base, name="tampered")
    cid = stub.PublishAdapter(publish_requests(raw, files), timeout=60).cid
    config_cid = client.get_adapter(cid).files[0].cid
    tamper_block(node[1] / "blocks", config_cid)
    err = _rpc_error(lambda: client.generate("hi", adapter=cid, max_new_tokens=2).text())
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "hash_mismatch" in err.details()
    info = client.get_adapter(cid)
    assert (info.status, info.reason, info.retryable) == (pb.ADAPTER_STATUS_REJECTED, "hash_mismatch", True)
    assert config_cid in info.detail
    assert stub.PublishAdapter(publish_requests(raw, files), timeout=60).adapter.status == pb.ADAPTER_STATUS_READY
    assert client.generate("hi", adapter=cid, temperature=0, max_new_tokens=2).text()


def test_manifest_with_absent_files_is_rejected_at_load(node, client, base, background):
    data = node[1]
    blocks = BlockStore(data / "blocks")
    cid = absent_adapter(blocks, base, seed=11)
    catalog = Catalog(data / "catalog.sqlite")  # the node's catalog, written by another process
    catalog.set_state(cid, AdapterState.READY, name="absent", manifest=blocks.get(cid))
    catalog.close()
    err = _rpc_error(lambda: client.generate("hi", adapter=cid, max_new_tokens=2).text())
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "absent_file" in err.details()
    info = client.get_adapter(cid)
    assert (info.status, info.reason, info.retryable) == (pb.ADAPTER_STATUS_REJECTED, "absent_file", True)


@pytest.mark.parametrize(
    "parts",
    [
        [pb.PublishAdapterRequest(header=pb.PublishHeader(name="old client"))],
        [pb.PublishAdapterRequest(chunk=pb.FileChunk(path="adapter_config.json", data=b"{}"))],
        [],
    ],
    ids=["header_without_manifest", "chunks_without_header", "empty"],
)
def test_unsigned_publishing_is_refused_with_a_way_forward(stub, parts):
    err = _rpc_error(lambda: stub.PublishAdapter(iter(parts), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsigned publishing is not accepted" in err.details() and "openlora-node keys new" in err.details()


def test_header_name_must_match_the_signed_name(stub, base):
    files = unique_good_files(12)
    raw = signed_manifest(files, base, name="signed-name")
    parts = [pb.PublishAdapterRequest(header=pb.PublishHeader(name="other-name", manifest=raw))]
    err = _rpc_error(lambda: stub.PublishAdapter(iter(parts), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "differs from the signed manifest" in err.details()


def test_cli_publish_signs_with_the_publisher_key(node, client, publisher_key):  # noqa: F811
    out = cli(
        "openlora-node", "publish", str(DEMO_ADAPTERS / "legal"), "--node", node[0].address,
        "--price-per-1k", str(10**20), "--royalty-bps", "750",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    cid = out.stdout.strip().splitlines()[-1]
    info = client.get_adapter(cid)
    assert info.status == pb.ADAPTER_STATUS_READY and info.name == "legal"
    assert (info.publisher, info.price_per_1k_tokens, info.royalty_bps) == (keystore_address(publisher_key), str(10**20), 750)
    assert info.created_at > 0 and '"signature":"0x' in info.manifest_json


def test_good_requests_completed_throughout(client, medical, background):
    stop, thread, texts, errors = background
    stop.set()
    thread.join(120)
    assert not thread.is_alive() and errors == []
    assert texts and all(t.startswith("Clinical note:") for t in texts), texts
    assert client.generate(QUESTION, adapter=medical, temperature=0, max_new_tokens=12).text() == texts[0]
