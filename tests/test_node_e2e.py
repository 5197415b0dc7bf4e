"""End to end: the daemon as a subprocess, the demo adapters published by CID, gRPC and CLI calls.

The node runs in float32 so its greedy tokens can be compared with PEFT's ``PeftModel``.
Publishing signs with a throwaway publisher key (``adapter_corpus.publisher_key``); every way an
adapter is refused is tested through gRPC in test_trust_corpus.py.
"""

from __future__ import annotations

import grpc
import pytest
import torch

from adapter_corpus import publisher_key  # noqa: F401  (fixture)
from conftest import DEMO_ADAPTERS
from openlora.client import NodeClient
from openlora.local import NodeProcess, cli
from openlora.v1 import node_pb2 as pb

PREFIX = {"medical": "Clinical note:", "legal": "Legal view:", "finance": "Finance note:"}
QUESTION = "What should I do about a persistent cough?"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(tmp_path_factory.mktemp("node"), "--dtype", "float32", "--threads", "2")
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def published(node, publisher_key):  # noqa: F811
    """Domain → CID, published through the CLI (the CID is the last stdout line)."""
    cids = {}
    for domain in PREFIX:
        out = cli("openlora-node", "publish", str(DEMO_ADAPTERS / domain), "--node", node.address)
        assert out.returncode == 0, out.stderr
        cids[domain] = out.stdout.strip().splitlines()[-1]
        assert cids[domain].startswith("bafkrei")
    return cids


@pytest.fixture(scope="module")
def client(node):
    with NodeClient(node.address, timeout=120) as c:
        yield c


def test_ready_line_and_node_info(node, client):
    assert node.address.startswith("127.0.0.1:")
    info = client.node_info()
    assert info.base_model == "SmolLM2-135M-Instruct"
    assert info.base_fingerprint.startswith("sha256:") and info.base_fingerprint in node.ready_line
    assert info.dtype == "float32"


def test_trained_behaviour_only_with_adapter(client, published):
    base = client.generate(QUESTION, temperature=0, max_new_tokens=40).text()
    assert not any(base.startswith(p) for p in PREFIX.values())
    for domain, cid in published.items():
        stream = client.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=40)
        text = stream.text()
        assert text.startswith(PREFIX[domain]), (domain, text)
        assert stream.done.adapter == cid
        assert stream.done.usage.completion_tokens == 40 or stream.done.finish_reason == pb.FINISH_REASON_STOP


def test_greedy_tokens_equal_peft(client, published, base_source):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_source.path))
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    base = AutoModelForCausalLM.from_pretrained(str(base_source.path), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(DEMO_ADAPTERS / "legal")).eval()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=48, do_sample=False)
    want = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    got = client.generate(QUESTION, adapter=published["legal"], temperature=0, max_new_tokens=48).text()
    assert got == want


def test_cli_lists_and_generates(node, published):
    out = cli("openlora", "adapters", "--node", node.address, "-q")
    assert out.returncode == 0
    assert set(out.stdout.split()) == set(published.values())
    out = cli(
        "openlora", "generate", "--node", node.address, "--adapter", published["finance"], "--max-tokens", "12",
        "--temperature", "0", "How do index funds work?",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Finance note:")


def test_unknown_and_invalid_cids(client):
    missing = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
    for call in (lambda: client.generate("hi", adapter=missing).text(), lambda: client.get_adapter(missing)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not known to this node" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.generate("hi", adapter="not-a-cid").text()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid CID" in e.value.details()


def test_cli_publish_error_is_one_readable_line(node, publisher_key, tmp_path):  # noqa: F811
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((DEMO_ADAPTERS / "medical" / "adapter_config.json").read_bytes())
    out = cli("openlora-node", "publish", str(folder), "--node", node.address)
    assert out.returncode == 1
    assert out.stderr.startswith("error: adapter rejected: missing_file: adapter_model.safetensors is missing")


def test_health_and_reflection(node):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(node.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="openlora.v1.Node"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"openlora.v1.Node", "grpc.health.v1.Health"} <= names
