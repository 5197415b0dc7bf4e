"""A node killed (SIGKILL) after its clients got their receipts but before it settled: restarted on the same data
dir, it settles everything owed exactly once, and the chain's per-adapter totals equal the sum of the receipts.

The chain runs in its own process (``python -m openlora.chain.rpc_server``): an embedded chain would die with the
node. Kills at every step of a settlement itself (planned, signed, sent, mined) are covered below the API by
test_chain_settlement.py (``test_kill_9_at_each_step_then_restart_settles_exactly_once`` and the random-moment
variant).
"""

from __future__ import annotations

import pytest
from pay_fixtures import (
    CLIENT,
    MEDICAL,
    PUBLISHER,
    QUESTION,
    keys,  # noqa: F401 (fixture)
    node_key,
    start_node,
    wait_usage,
)

from openlora.chain.attribution import usage_events, usage_report
from openlora.local import ChainProcess
from openlora.chain.backends import rpc_chain
from openlora.chain.contracts import AdapterRegistry, Deployment, PaymentChannels
from openlora.chain.pricing import cost_wei
from openlora.client import NodeClient, PaidSession
from openlora.local import cli

PRICE, FEE, ROYALTY = 1000, 500, 2000


@pytest.fixture
def chain_process(tmp_path):
    proc = ChainProcess(tmp_path / "deployment.json")
    yield proc
    proc.stop()


def paid_call(session: PaidSession, cid: str, tokens: int):
    stream = session.generate(QUESTION, adapter=cid, max_new_tokens=tokens, temperature=0)
    assert stream.text()
    return stream.receipt


def test_node_killed_before_settlement_settles_exactly_once_after_restart(tmp_path, keys, chain_process):  # noqa: F811
    flags = (
        "--chain-rpc", chain_process.url, "--contracts", str(chain_process.deployment_file),
        "--node-key", str(node_key(tmp_path / "node-key.json")), "--node-fee-per-1k", str(FEE),
        "--settle-every-seconds", "3600",
    )  # fmt: skip
    data = tmp_path / "node"
    node = start_node(data, *flags, "--settle-every-calls", "1000")
    try:
        out = cli(
            "openlora-node", "publish", str(MEDICAL), "--node", node.address, "--key", str(keys["publisher"]),
            "--price-per-1k", str(PRICE), "--royalty-bps", str(ROYALTY),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        cid = out.stdout.split()[-1]
        with NodeClient(node.address, timeout=120) as client:
            session = PaidSession(client, CLIENT)
            session.open_channel(10**15)
            receipts = [paid_call(session, cid, n) for n in (3, 5, 8)]
    finally:
        node.proc.kill()  # SIGKILL: no final settlement, no clean close of the ledger
        node.proc.wait()
    assert all(r.cost == cost_wei(r.tokens, PRICE + FEE) for r in receipts)

    chain = rpc_chain(chain_process.url)
    deployment = Deployment.from_json(chain_process.deployment_file.read_text())
    registry, channels = AdapterRegistry(chain, deployment.registry), PaymentChannels(chain, deployment.channels)
    (row,) = usage_report(registry, channels, cid)
    assert row.calls == 0  # owed, not settled

    node = start_node(data, *flags, "--settle-every-calls", "1")  # the restart settles what was left at once
    try:
        with NodeClient(node.address, timeout=120) as client:
            row = wait_usage(client, cid, 3)
            assert (row.calls, row.tokens, int(row.amount_wei)) == (
                3,
                sum(r.tokens for r in receipts),
                sum(r.cost for r in receipts),
            )
            # A new client process resumes from the node's account of the channel, backed by its own voucher.
            receipts.append(paid_call(PaidSession(client, CLIENT), cid, 4))
            assert receipts[-1].charged_total == sum(r.cost for r in receipts)
            wait_usage(client, cid, 4)
    finally:
        assert node.stop() == 0, "".join(node.stderr[-20:])

    (row,) = usage_report(registry, channels, cid)
    paid = sum(r.cost for r in receipts)
    assert (row.calls, row.tokens, row.amount_wei) == (4, sum(r.tokens for r in receipts), paid)
    assert channels.channel(CLIENT.address, receipts[0].node).redeemed == paid
    events = usage_events(channels, cid=cid, publisher=PUBLISHER.address)
    # the three receipts left by the killed node in one redemption at restart, the fourth in its own; none twice
    assert len(events) == 2 and sum(e.amount for e in events) == paid
    assert row.publisher_earnings_wei == sum(e.amount * ROYALTY // 10_000 for e in events)
    assert channels.earnings(PUBLISHER.address) == row.publisher_earnings_wei
