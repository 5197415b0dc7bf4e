"""End to end on anvil (``--chain-rpc``), through the command lines only: deploy the contracts, start a node on
them, publish and register a priced adapter, open a channel, pay per call, read the attribution; then, on chain,
the client withdraws what was not spent and the publisher its royalties."""

from __future__ import annotations

import json
import re

from chain_fixtures import anvil_url  # noqa: F401 (fixture)
from pay_fixtures import CLIENT, MEDICAL, PUBLISHER, QUESTION, keys, node_key, start_node, wait_usage  # noqa: F401

from openlora.chain.backends import rpc_chain
from openlora.chain.contracts import Deployment, PaymentChannels
from openlora.chain.pricing import cost_wei
from openlora.client import NodeClient
from openlora.local import cli

PRICE, ROYALTY, FEE, DEPOSIT = 3000, 3000, 1000, 10**12


def test_pay_per_call_end_to_end_on_anvil(anvil_url, tmp_path, keys):  # noqa: F811
    deployment_file = tmp_path / "deployment.json"
    out = cli("openlora-node", "chain", "deploy", "--chain-rpc", anvil_url, "--key", str(keys["deployer"]), "--out", str(deployment_file))
    assert out.returncode == 0, out.stderr
    deployment = Deployment.from_json(deployment_file.read_text())
    assert Deployment.from_json(out.stdout) == deployment and deployment.chain_id == 31337

    node = start_node(
        tmp_path / "node", "--chain-rpc", anvil_url, "--contracts", str(deployment_file),
        "--node-key", str(node_key(tmp_path / "node-key.json")), "--node-fee-per-1k", str(FEE), "--settle-every-calls", "2",
    )  # fmt: skip
    try:
        assert f"chain={anvil_url}" in node.ready_line
        out = cli(
            "openlora-node", "publish", str(MEDICAL), "--node", node.address, "--key", str(keys["publisher"]),
            "--price-per-1k", str(PRICE), "--royalty-bps", str(ROYALTY),
        )  # fmt: skip
        assert out.returncode == 0 and "registered" in out.stderr, out.stderr
        cid = out.stdout.split()[-1]
        out = cli("openlora", "channel", "open", "--node", node.address, "--key", str(keys["client"]), "--amount", str(DEPOSIT))
        assert out.returncode == 0, out.stderr

        costs = []
        for tokens in (4, 9):
            out = cli(
                "openlora", "generate", "--node", node.address, "--adapter", cid, "--max-tokens", str(tokens),
                "--temperature", "0", "--usage", "--key", str(keys["client"]), QUESTION,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith("Clinical note:")
            usage = dict(re.findall(r"(\w+)=(\d+)", out.stderr))
            billed = int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
            assert int(usage["cost_wei"]) == cost_wei(billed, PRICE + FEE)
            costs.append(int(usage["cost_wei"]))

        with NodeClient(node.address, timeout=120) as client:
            row = wait_usage(client, cid, 2)
            node_address = client.node_info().chain.node_address
        assert (row.calls, int(row.amount_wei)) == (2, sum(costs))
        out = cli("openlora", "usage", "--node", node.address, "--json")
        assert json.loads(out.stdout) == [
            {"adapter": cid, "calls": 2, "tokens": row.tokens, "publisher_earnings_wei": sum(costs) * ROYALTY // 10_000}
        ]
        out = cli("openlora", "channel", "show", "--node", node.address, "--key", str(keys["client"]))
        assert out.stdout.strip() == f"epoch=0 deposited_wei={DEPOSIT} redeemed_wei={sum(costs)} withdraw_at=0"
    finally:
        assert node.stop() == 0, "".join(node.stderr[-20:])

    chain = rpc_chain(anvil_url)
    channels = PaymentChannels(chain, deployment.channels)
    channels.request_withdraw(CLIENT, node_address)
    chain.advance_time(channels.withdraw_timeout_s)
    balance = chain.w3.eth.get_balance(CLIENT.address)
    receipt = channels.withdraw(CLIENT, node_address)
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert chain.w3.eth.get_balance(CLIENT.address) == balance + DEPOSIT - sum(costs) - gas
    assert channels.earnings(PUBLISHER.address) == sum(costs) * ROYALTY // 10_000
    assert channels.earnings(node_address) == sum(costs) - sum(costs) * ROYALTY // 10_000
