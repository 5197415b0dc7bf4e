"""Proof of serving across nodes (issue 15): receipts a client keeps and has checked, evidence that travels,
routing that stops.

    V (verifier) ◄── O (observer)          every node a subprocess on loopback; C runs tests/cheating_node.py:
    ▲                                      its engine computes with the bare base whatever adapter a call
    └──── C (cheater)                      names, its records claim the adapter, its status says "resident"

A client calls C, keeps the served call and spot-checks it on V: V's recomputation fails it, V signs evidence
and gossips it; O re-checks it on its own and stops routing to C (its directory leaves C out and lists C's
account). An honest call passes ``openlora verify``, here and on V; the same receipt file changed fails.
A peer gossiping forged evidence, or a false accusation of an honest node, is refused and banned.
"""

from __future__ import annotations

import json
import sys

import pytest
from eth_account import Account

from conftest import DEMO_ADAPTERS, ROOT
from openlora.client import NodeClient, SpotChecker, route
from openlora.content.cid import RAW, cid_text, make_cid
from openlora.local import NodeProcess, cli
from openlora.p2p.directory import query_nodes
from openlora.p2p.messages import TOPIC_EVIDENCE
from openlora.proof.evidence import sign_evidence
from openlora.proof.verify import Verdict
from openlora.v1 import node_pb2 as pb
from p2p_helpers import RawPeer, multiaddr_of, wait_until

PUBLISHER = Account.from_key(b"\x61" * 32)
LIAR = Account.from_key(b"\x62" * 32)
QUESTION = "What should I do about a sprained wrist?"
ARGS = ("--dtype", "float32", "--threads", "1", "--no-http")


def account_of(node: NodeProcess) -> str:
    with NodeClient(node.address, timeout=30) as c:
        return c.node_info().chain.node_address


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    nodes: dict[str, NodeProcess] = {}
    try:
        nodes["v"] = NodeProcess(tmp_path_factory.mktemp("v"), *ARGS)
        boot = ("--bootstrap", multiaddr_of(nodes["v"]))
        nodes["o"] = NodeProcess(tmp_path_factory.mktemp("o"), *ARGS, *boot)
        nodes["c"] = NodeProcess(
            tmp_path_factory.mktemp("c"), *ARGS, *boot, program=(sys.executable, str(ROOT / "tests" / "cheating_node.py"))
        )
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def cid(swarm):
    with NodeClient(swarm["v"].address, timeout=60) as v:
        return v.publish(DEMO_ADAPTERS / "medical", PUBLISHER, name="medical").cid


@pytest.fixture(scope="module")
def honest_call(swarm, cid):
    with NodeClient(swarm["v"].address, timeout=120) as v:
        stream = v.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=12)
        assert stream.text().startswith("Clinical note:")
        return stream.served


def test_an_honest_call_verifies_on_a_node_and_locally_and_a_changed_file_does_not(swarm, cid, honest_call, tmp_path):
    receipt = tmp_path / "call.json"
    out = cli(
        "openlora", "generate", "--node", swarm["v"].address, "--adapter", cid, "--temperature", "0", "--max-tokens", "12",
        "--receipt-out", str(receipt), QUESTION,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(receipt.read_text())
    assert doc["call"]["record"]["adapter"] == cid and doc["manifest"]
    on_node = cli("openlora", "verify", str(receipt), "--node", swarm["o"].address, timeout=300)
    assert on_node.returncode == 0 and on_node.stdout.startswith("valid"), on_node.stdout + on_node.stderr
    here = cli("openlora", "verify", str(receipt), "--adapter-dir", str(DEMO_ADAPTERS / "medical"), timeout=300)
    assert here.returncode == 0 and here.stdout.startswith("valid"), here.stdout + here.stderr
    doc["call"]["completion_ids"][2] += 1  # one token of the completion changed
    receipt.write_text(json.dumps(doc))
    changed = cli("openlora", "verify", str(receipt), "--node", swarm["o"].address, timeout=300)
    assert changed.returncode == 1 and changed.stdout.startswith("invalid: completion:"), changed.stdout + changed.stderr


def test_a_record_its_node_did_not_sign_is_refused_before_its_adapter_is_fetched(swarm, honest_call):
    """Verify on a stranger's call: the record's signature is checked before anything is fetched or
    recomputed, so a made-up record naming an adapter nobody has costs the verifier one signature recovery."""
    forged = pb.ServedCall()
    forged.CopyFrom(honest_call)
    forged.record.adapter = cid_text(make_cid(b"an adapter nobody published", RAW))
    with NodeClient(swarm["o"].address, timeout=30) as o:
        response = o.verify(forged)
    assert not response.valid and response.check == "signature", response
    assert not response.HasField("evidence")


def test_a_cheating_node_is_caught_and_the_evidence_stops_routing_to_it_on_another_node(swarm, cid, tmp_path):
    c_grpc, c_account = swarm["c"].address, account_of(swarm["c"])
    # C claims the adapter resident once it has been asked for it: the swarm routes to it
    with NodeClient(c_grpc, timeout=120) as c:
        stream = c.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=12)
        text = stream.text()
        served = stream.served
    assert not text.startswith("Clinical note:")  # the bare base answered
    assert served.record.adapter == cid and served.record.node == c_account  # ... under the adapter's name
    o = multiaddr_of(swarm["o"])
    wait_until(lambda: route(o, cid).grpc_address == c_grpc, "O routes the adapter to C (resident, idle)", 30.0)
    with NodeClient(swarm["v"].address, timeout=300) as v:
        checker = SpotChecker(v, rate=1.0)
        response = checker.check(served, c_account)
    assert not response.valid and response.check == "commitment", response
    assert response.HasField("evidence") and response.evidence.verifier == account_of(swarm["v"])
    assert checker.accused == {c_account}
    # V gossiped the evidence; O re-checks it itself (fetching the adapter from V) and drops C
    directory = wait_until(lambda: (d := query_nodes(o, cid)).accused and d, "O holds evidence against C", 120.0)
    assert directory.accused == {c_account}
    assert all(e.grpc_address != c_grpc for e in directory.entries)
    assert route(o, cid).grpc_address != c_grpc
    assert "stands" in "".join(swarm["o"].stderr)
    # the CLI's own spot check records the accused account for its --swarm routing
    accused_file = tmp_path / "accused.json"
    out = cli(
        "openlora", "generate", "--node", c_grpc, "--adapter", cid, "--temperature", "0", "--max-tokens", "8",
        "--spot-check", "1", "--verifier", swarm["v"].address, QUESTION, env={"OPENLORA_ACCUSED": str(accused_file)},
    )  # fmt: skip
    assert out.returncode == 1 and "INVALID: commitment" in out.stderr, out.stderr
    assert json.loads(accused_file.read_text()) == [c_account]


def test_forged_evidence_and_a_false_accusation_are_refused_and_cost_their_sender(swarm, cid, honest_call):
    o = multiaddr_of(swarm["o"])
    forger = RawPeer()
    forger.start()
    try:
        forger.connect(o)
        # a false accusation: V's honest call, "evidence" signed by a key of the forger's
        false = sign_evidence(LIAR, honest_call, Verdict("commitment", "made up", distance=3.0))
        forger.publish(false.SerializeToString(), wait_mesh_with=o, topic=TOPIC_EVIDENCE)
        wait_until(lambda: "not_failing" in "".join(swarm["o"].stderr), "O re-checks and refuses the false accusation", 120.0)
        assert forger.connected_to(o), "one refusal costs score, not yet the connection"
        forged = pb.Evidence()
        forged.CopyFrom(false)
        forged.signature = bytes(65)  # not a signature at all
        forger.publish(forged.SerializeToString(), wait_mesh_with=o, topic=TOPIC_EVIDENCE)
        wait_until(lambda: not forger.connected_to(o), "O bans the forger after two refusals", 30.0)
    finally:
        forger.stop()
    assert account_of(swarm["v"]) not in query_nodes(o, cid).accused
