"""Three (then four) nodes as subprocesses on loopback, joined by libp2p (issue 5 acceptance).

    A ◄── B          A publishes; B and C list the adapter (announced) within 5 s;
    ▲                C serves it after fetching every block from A and verifying it;
    └──── C ◄── D    A is killed: C keeps serving from its own store; D, bootstrapped only to
                     C, learns the catalog on connect; a peer gossiping a forged announcement to
                     D is ignored, penalised, and banned after repeating it.
"""

from __future__ import annotations

import time

import pytest
from eth_account import Account

from conftest import DEMO_ADAPTERS
from openlora.client import NodeClient, route
from openlora.local import NodeProcess, cli
from openlora.p2p.messages import Announcement, encode
from openlora.v1 import node_pb2 as pb
from p2p_helpers import RawPeer, multiaddr_of, wait_until

PUBLISHER = Account.from_key(b"\x22" * 32)
QUESTION = "What should I do about a sprained wrist?"
ARGS = ("--dtype", "float32", "--threads", "1")


def node_info(node: NodeProcess) -> pb.NodeInfo:
    with NodeClient(node.address, timeout=30) as c:
        return c.node_info()


def statuses(node: NodeProcess) -> dict[str, int]:
    with NodeClient(node.address, timeout=30) as c:
        return {a.cid: a.status for a in c.list_adapters()}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    nodes: dict[str, NodeProcess] = {}
    try:
        nodes["a"] = NodeProcess(tmp_path_factory.mktemp("a"), *ARGS)
        for name in "bc":
            nodes[name] = NodeProcess(tmp_path_factory.mktemp(name), *ARGS, "--bootstrap", multiaddr_of(nodes["a"]))
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@pytest.fixture(scope="module")
def cid(swarm):
    with NodeClient(swarm["a"].address, timeout=60) as a:
        return a.publish(DEMO_ADAPTERS / "medical", PUBLISHER, name="medical").cid


def test_ready_line_and_node_info_carry_the_full_multiaddr(swarm):
    for node in swarm.values():
        addr = multiaddr_of(node)
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/16Uiu2" in addr
    with NodeClient(swarm["b"].address, timeout=30) as b:
        info = wait_until(lambda: (i := b.node_info()).p2p.peers >= 1 and i, "B connected to A", 10.0)
    assert info.p2p.multiaddr == multiaddr_of(swarm["b"]) and info.p2p.peer_id in info.p2p.multiaddr
    # a node dialled directly runs the DHT as a server, relays for no one, and is reached through no relay
    assert info.p2p.dht_mode == "server" and not info.p2p.relay_service and not info.p2p.reached_through
    info = wait_until(lambda: (i := node_info(swarm["b"])).p2p.dht_providing >= 1 and i, "B provides its base in the DHT", 15.0)
    assert info.p2p.dht_routing_peers >= 1
    table = wait_until(lambda: (out := cli("openlora", "nodes", "--swarm", multiaddr_of(swarm["a"])).stdout).count("reach=") >= 3 and out,
                       "A's node table lists A, B and C", 30.0)  # fmt: skip
    assert table.count("reach=direct  dht=server") >= 3 and "relay-service" not in table
    by_base = cli("openlora", "nodes", "--swarm", multiaddr_of(swarm["a"]), "--base", info.base_fingerprint).stdout
    assert by_base.count(info.base_fingerprint[:19]) == by_base.count("reach=") >= 3  # A looked its base up in the DHT


def test_b_and_c_list_the_published_adapter_within_5_s(swarm, cid):
    for name in "bc":
        status = wait_until(lambda: statuses(swarm[name]).get(cid), f"{name} lists {cid}", 5.0)
        assert status == pb.ADAPTER_STATUS_AVAILABLE
    out = cli("openlora", "adapters", "--node", swarm["b"].address)
    assert cid in out.stdout.split()


def test_c_serves_the_adapter_with_blocks_fetched_from_a(swarm, cid):
    with NodeClient(swarm["c"].address, timeout=120) as c:
        text = c.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=12).text()
        assert text.startswith("Clinical note:")
        info = c.get_adapter(cid)
    assert info.status == pb.ADAPTER_STATUS_RESIDENT
    assert info.publisher == PUBLISHER.address
    assert "fetched from the swarm and verified" in "".join(swarm["c"].stderr)


def test_client_routing_prefers_the_node_with_the_adapter_resident(swarm, cid):
    c_grpc = swarm["c"].address
    # C publishes its status every 10 s; wait for one that lists the adapter as resident
    entry = wait_until(
        lambda: (e := route(multiaddr_of(swarm["a"]), cid)).grpc_address == c_grpc and e, "route picks C", 25.0
    )
    assert cid in entry.resident
    out = cli(
        "openlora", "generate", "--swarm", multiaddr_of(swarm["b"]), "--adapter", cid, "--max-tokens", "6",
        "--temperature", "0", QUESTION,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"at {c_grpc} (adapter resident)" in out.stderr and out.stdout.startswith("Clinical")


def test_c_keeps_serving_after_a_is_killed(swarm, cid):
    swarm["a"].proc.kill()
    swarm["a"].proc.wait()
    with NodeClient(swarm["c"].address, timeout=120) as c:
        assert c.generate(QUESTION, adapter=cid, temperature=0, max_new_tokens=8).text().startswith("Clinical note:")


def test_late_node_bootstrapped_to_c_learns_the_catalog(swarm, cid, tmp_path_factory):
    swarm["d"] = NodeProcess(tmp_path_factory.mktemp("d"), *ARGS, "--bootstrap", multiaddr_of(swarm["c"]))
    assert wait_until(lambda: statuses(swarm["d"]).get(cid), "D lists the adapter", 5.0) == pb.ADAPTER_STATUS_AVAILABLE


def test_forged_announcement_is_ignored_and_the_forger_penalised(swarm, cid):
    d = multiaddr_of(swarm["d"])
    with NodeClient(swarm["c"].address, timeout=30) as c:
        manifest = c.get_adapter(cid).manifest_json.encode()
    forged_cid = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"  # not this manifest's hash
    forger = RawPeer()
    forger.start()
    try:
        forger.connect(d)
        forger.publish(encode(Announcement.of(forged_cid, manifest)), wait_mesh_with=d)
        time.sleep(1.0)
        assert forged_cid not in statuses(swarm["d"])
        assert forger.connected_to(d), "one forgery costs score, not yet the connection"
        forged = encode(Announcement.of(forged_cid, manifest))
        forger.publish(forged, forged, forged, wait_mesh_with=d)  # each costs 10; at -30: ban
        wait_until(lambda: not forger.connected_to(d), "D disconnects the forger", 10.0)
    finally:
        forger.stop()
    assert forged_cid not in statuses(swarm["d"])
    assert "refused /openlora/1/adapters message" in "".join(swarm["d"].stderr)
