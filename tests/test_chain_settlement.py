"""Settlement: batches, attribution totals, forfeits, reconciliation, and kill -9 of the node at every step
(then a restart): everything owed is settled exactly once and on-chain totals per adapter equal the receipts.
Also the JSON-RPC server that lets other processes use the embedded chain."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from chain_fixtures import PUBLISHER, World, base_world, make_cid, world  # noqa: F401

from openlora.chain.attribution import usage_events, usage_report
from openlora.chain.backends import dev_accounts, rpc_chain
from openlora.chain.contracts import AdapterRegistry, PaymentChannels, adapter_id, transact
from openlora.chain.errors import LedgerError, SettlementError
from openlora.chain.ledger import Ledger
from openlora.chain.payer import Payer
from openlora.chain.payments import NodePayments
from openlora.chain.pricing import cost_wei
from openlora.chain.records import Voucher
from openlora.chain.rpc_server import ChainRpcServer
from openlora.chain.settlement import Settler
from openlora.chain.vouchers import sign_voucher

CHILD = Path(__file__).with_name("chain_crash_child.py")
NODE_FEE = 500
MAX_TOKENS = 50


def node_side(w: World, path: Path, **settler_args) -> tuple[Ledger, NodePayments, Settler]:
    ledger = Ledger(path, w.node, w.channels.domain, w.chain.genesis_hash)
    settler = Settler(ledger, w.channels, w.node, **settler_args)
    return ledger, NodePayments(w.registry, w.channels, ledger, NODE_FEE, settler), settler


def serve(payments: NodePayments, payer: Payer, cid: str, tokens: int):
    payment = payer.pay_quote(payments.quote(cid, PUBLISHER), MAX_TOKENS)
    auth = payments.authorize(payment.voucher, cid, MAX_TOKENS, PUBLISHER)
    return payer.accept(payment, payments.finalize(auth, tokens))


def assert_attribution_matches_receipts(w: World, ledger: Ledger, cids: list[str]) -> None:
    """On-chain per-adapter totals == sum of settled receipts == sum of AdapterUsage events; nothing unsettled."""
    assert ledger.receipt_totals(settled_only=True) == ledger.receipt_totals(settled_only=False)
    receipts = ledger.receipt_totals()
    events = usage_events(w.channels)
    for cid in cids:
        key = adapter_id(cid, PUBLISHER)
        on_chain = w.channels.usage(key)
        mine = [e for e in events if e.adapter == key]
        expected = receipts.get(key)
        got = (on_chain.calls, on_chain.tokens, on_chain.amount)
        assert got == ((expected.calls, expected.tokens, expected.amount) if expected else (0, 0, 0))
        assert got == (sum(e.calls for e in mine), sum(e.tokens for e in mine), sum(e.amount for e in mine))
        assert on_chain.publisher_earnings == sum(e.publisher_amount for e in mine)
    for totals in ledger.channel_totals():
        state = w.channels.channel(totals.client, w.node.address)
        assert (state.redeemed, totals.settled, totals.charged, totals.committed) == (totals.charged,) * 4


# -- in process ---------------------------------------------------------------------------------------------


def test_one_transaction_settles_many_channels_and_adapters(world, tmp_path):  # noqa: F811
    cids = [world.register("a", royalty_bps=1000), world.register("b", price_per_1k=3000, royalty_bps=5000)]
    ledger, payments, settler = node_side(world, tmp_path / "l.sqlite")
    payers = [Payer(world.channels, c, world.node.address) for c in (world.client, world.other)]
    for p in payers:
        p.deposit(10**6)
    for i in range(6):
        serve(payments, payers[i % 2], cids[i % 3 % 2], tokens=7 + i)
    result = settler.settle_now()
    assert result.ok and result.redemptions == 2
    assert settler.settle_now() is None  # nothing owed any more
    assert_attribution_matches_receipts(world, ledger, cids)
    report = {row.adapter: row for row in usage_report(world.registry, world.channels)}
    assert report[cids[1]].publisher_earnings_wei == world.channels.usage(adapter_id(cids[1], PUBLISHER)).publisher_earnings
    assert report[cids[0]].as_json().keys() == {"adapter", "publisher", "calls", "tokens", "publisher_earnings_wei"}
    assert [r.adapter for r in usage_report(world.registry, world.channels, cids[1])] == [cids[1]]


def test_settler_runs_every_n_calls_and_settles_the_rest_on_stop(world, tmp_path):  # noqa: F811
    cid = world.register()
    ledger, payments, settler = node_side(world, tmp_path / "l.sqlite", every_calls=3, every_seconds=3600)
    payer = Payer(world.channels, world.client, world.node.address)
    payer.deposit(10**6)
    settler.start()
    try:
        for tokens in (5, 6, 7):
            serve(payments, payer, cid, tokens)
        deadline = time.monotonic() + 30
        while ledger.unsettled_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert world.channels.usage(adapter_id(cid, PUBLISHER)).calls == 3
        serve(payments, payer, cid, 8)  # below N: waits for stop()
    finally:
        settler.stop(settle=True)
    assert world.channels.usage(adapter_id(cid, PUBLISHER)).calls == 4
    assert_attribution_matches_receipts(world, ledger, [cid])


def test_settler_runs_every_t_seconds(world, tmp_path):  # noqa: F811
    cid = world.register()
    ledger, payments, settler = node_side(world, tmp_path / "l.sqlite", every_calls=1000, every_seconds=0.2)
    payer = Payer(world.channels, world.client, world.node.address)
    payer.deposit(10**6)
    settler.start()
    try:
        serve(payments, payer, cid, 9)
        deadline = time.monotonic() + 30
        while ledger.unsettled_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert world.channels.usage(adapter_id(cid, PUBLISHER)).calls == 1
    finally:
        settler.stop(settle=False)


def test_receipts_of_a_withdrawn_epoch_are_forfeit(world, tmp_path):  # noqa: F811
    cid = world.register()
    ledger, payments, settler = node_side(world, tmp_path / "l.sqlite")
    payer = Payer(world.channels, world.client, world.node.address)
    payer.deposit(10**6)
    serve(payments, payer, cid, 10)
    world.channels.request_withdraw(world.client, world.node.address)
    world.chain.advance_time(world.channels.withdraw_timeout_s)
    world.channels.withdraw(world.client, world.node.address)
    assert settler.settle_now() is None
    assert ledger.unsettled_count() == 0
    assert world.channels.usage(adapter_id(cid, PUBLISHER)).calls == 0


def test_recover_refuses_a_ledger_the_chain_disagrees_with(world, tmp_path):  # noqa: F811
    cid = world.register()
    ledger, payments, settler = node_side(world, tmp_path / "l.sqlite")
    payer = Payer(world.channels, world.client, world.node.address)
    payer.deposit(10**6)
    serve(payments, payer, cid, 10)
    # Someone else with the node's key settles this channel behind the ledger's back.
    (claim,) = ledger.plan_claims(10)
    world.channels.settle(world.node, [claim.redemption()])
    with pytest.raises(SettlementError, match="chain redeemed"):
        settler.recover()
    with pytest.raises(SettlementError, match="chain redeemed"):
        settler.settle_now()


def test_batch_whose_nonce_was_reused_is_abandoned_then_resettled(world, tmp_path):  # noqa: F811
    cid = world.register()
    ledger, payments, settler = node_side(world, tmp_path / "l.sqlite")
    payer = Payer(world.channels, world.client, world.node.address)
    payer.deposit(10**6)
    serve(payments, payer, cid, 10)
    batch = settler.prepare()  # recorded and signed, never sent
    with pytest.raises(LedgerError, match="still open"):
        ledger.plan_claims(10)
    # The node account spends the batch's nonce on something else: that batch can never be mined.
    transact(world.chain, world.node, world.channels.contract.functions.deposit(world.other.address), value=1)
    assert world.chain.w3.eth.get_transaction_count(world.node.address) > batch.tx.nonce
    result = settler.settle_now()
    assert result.ok and result.batch_id != batch.id
    assert_attribution_matches_receipts(world, ledger, [cid])


def test_a_claim_the_chain_refuses_is_set_aside_and_the_others_settle(world, tmp_path):  # noqa: F811
    cid = world.register()
    ledger, payments, settler = node_side(world, tmp_path / "l.sqlite")
    bad, good = (Payer(world.channels, c, world.node.address) for c in (world.client, world.other))
    for p in (bad, good):
        p.deposit(10**6)
        serve(payments, p, cid, 10)
    # A ledger written before the gate refused them: the bad client's latest voucher has v = 0/1, which
    # eth-account recovers and the contract's ECDSA refuses (InvalidSignature), reverting any batch it is in.
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        (sig,) = db.execute("SELECT signature FROM lane_vouchers WHERE client = ?", (world.client.address,)).fetchone()
        db.execute(
            "UPDATE lane_vouchers SET signature = ? WHERE client = ?",
            (sig[:64] + bytes([sig[64] - 27]), world.client.address),
        )
    result = settler.settle_now()
    assert result.ok and result.redemptions == 1
    assert world.channels.channel(world.other.address, world.node.address).redeemed > 0
    assert world.channels.channel(world.client.address, world.node.address).redeemed == 0
    ((client, epoch, _, reason),) = ledger.set_aside_claims()
    assert (client, epoch, settler.set_aside) == (world.client.address, 0, 1) and "InvalidSignature" in reason
    assert ledger.unsettled_count() == 0 and settler.settle_now() is None  # not retried on the same voucher
    serve(payments, bad, cid, 5)  # the client's next (valid) voucher replaces the refused one: all is claimed
    assert settler.settle_now().ok
    assert_attribution_matches_receipts(world, ledger, [cid])


def test_settler_checks_its_arguments(world, tmp_path):  # noqa: F811
    ledger = Ledger(tmp_path / "l.sqlite", world.node, world.channels.domain, world.chain.genesis_hash)
    with pytest.raises(ValueError, match="not the ledger's node"):
        Settler(ledger, world.channels, world.other)
    with pytest.raises(ValueError):
        Settler(ledger, world.channels, world.node, every_calls=0)


# -- kill -9 of the node process ----------------------------------------------------------------------------


def _plan(w: World, cid: str, calls: int, path: Path) -> list[dict]:
    max_cost = cost_wei(MAX_TOKENS, 1000 + NODE_FEE)
    rng = random.Random(calls)
    plan = []
    for i in range(calls):
        amount = (i + 1) * max_cost
        voucher = Voucher(w.client.address, w.node.address, 0, amount, adapter_id(cid, PUBLISHER), 1000 + NODE_FEE, amount)
        signed = sign_voucher(w.client, voucher, w.channels.domain)
        plan.append(
            {
                "client": w.client.address,
                "epoch": 0,
                "amount": voucher.cumulative_amount,
                "adapter": voucher.adapter.hex(),
                "price": voucher.price_per_1k_tokens,
                "signature": signed.signature.hex(),
                "cid": cid,
                "publisher": PUBLISHER,
                "max_tokens": MAX_TOKENS,
                "tokens": rng.randint(1, MAX_TOKENS),
            }
        )
    path.write_text(json.dumps(plan))
    return plan


def _child_env(w: World, url: str, ledger: Path) -> dict:
    return {
        **os.environ,
        "OPENLORA_TEST_RPC": url,
        "OPENLORA_TEST_REGISTRY": w.registry.address,
        "OPENLORA_TEST_CHANNELS": w.channels.address,
        "OPENLORA_TEST_LEDGER": str(ledger),
        "OPENLORA_TEST_NODE_KEY": w.node.key.hex(),
    }


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHILD), *args], env=env, capture_output=True, text=True, timeout=120)


def _recover_and_check(w: World, env: dict, ledger_path: Path, cid: str) -> Ledger:
    done = _run(env, "recover")
    assert done.returncode == 0, done.stderr
    ledger = Ledger(ledger_path, w.node, w.channels.domain, w.chain.genesis_hash)
    assert_attribution_matches_receipts(w, ledger, [cid])
    return ledger


@pytest.mark.parametrize("die_after", ["authorized", "finalized", "prepared", "submitted"])
def test_kill_9_at_each_step_then_restart_settles_exactly_once(world, tmp_path, die_after):  # noqa: F811
    cid = world.register()
    world.channels.deposit(world.client, world.node.address, 10**7)
    plan = _plan(world, cid, 4, tmp_path / "plan.json")
    ledger_path = tmp_path / "ledger.sqlite"
    with ChainRpcServer(world.chain) as server:
        env = _child_env(world, server.url, ledger_path)
        killed = _run(env, "steps", str(tmp_path / "plan.json"), "--die-after", die_after)
        assert killed.returncode == -9, killed.stderr
        assert killed.stdout.splitlines()[-1] == die_after
        ledger = _recover_and_check(world, env, ledger_path, cid)
    served = plan if die_after != "authorized" else plan[:-1]  # the call cut off before finalize is void
    receipts = ledger.receipt_totals()[adapter_id(cid, PUBLISHER)]
    assert (receipts.calls, receipts.tokens) == (len(served), sum(c["tokens"] for c in served))
    assert receipts.amount == sum(cost_wei(c["tokens"], 1500) for c in served)
    ledger.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_at_random_moments_then_restart_settles_exactly_once(world, tmp_path, seed):  # noqa: F811
    """The node serves and settles (every 2 calls) in the background; it is killed twice at a random moment
    (mid-SQLite-commit, mid-settlement, anywhere), restarted, and finally reconciled."""
    rng = random.Random(seed)
    cid = world.register()
    world.channels.deposit(world.client, world.node.address, 10**7)
    _plan(world, cid, 12, tmp_path / "plan.json")
    ledger_path = tmp_path / "ledger.sqlite"
    with ChainRpcServer(world.chain) as server:
        env = _child_env(world, server.url, ledger_path)
        for _ in range(2):
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), "loop", str(tmp_path / "plan.json")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                for _ in range(rng.randint(1, 10)):
                    if not proc.stdout.readline():
                        break
                time.sleep(rng.uniform(0, 0.05))
            finally:
                proc.kill()
                proc.communicate()
        ledger = _recover_and_check(world, env, ledger_path, cid)
    assert ledger.receipt_totals()[adapter_id(cid, PUBLISHER)].calls >= 1
    ledger.close()


# -- the embedded chain over JSON-RPC -----------------------------------------------------------------------


def test_rpc_server_lets_another_client_deposit_with_its_own_key(world):  # noqa: F811
    with ChainRpcServer(world.chain) as server:
        remote = PaymentChannels(rpc_chain(server.url), world.channels.address)
        assert remote.domain == world.channels.domain
        remote.deposit(world.client, world.node.address, 1234)
        assert world.channels.channel(world.client.address, world.node.address).deposited == 1234


@pytest.mark.parametrize("method", ["eth_sendTransaction", "eth_sign", "personal_unlockAccount", "evm_mine"])
def test_rpc_server_refuses_key_and_rule_methods(world, method):  # noqa: F811
    with ChainRpcServer(world.chain) as server:
        answer = httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).json()
    assert answer["error"]["code"] == -32601 and "sign transactions locally" in answer["error"]["message"]


def test_rpc_server_answers_batches_and_rejects_garbage(world):  # noqa: F811
    with ChainRpcServer(world.chain) as server:
        assert server.url.startswith("http://127.0.0.1:")
        batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId", "params": []} for i in range(2)]
        answers = httpx.post(server.url, json=batch).json()
        assert [a["result"] for a in answers] == [hex(world.chain.chain_id)] * 2
        assert httpx.post(server.url, content=b"{nope").json()["error"]["code"] == -32700
        assert httpx.post(server.url, json={"id": 3}).json()["error"]["code"] == -32600


def test_stand_alone_dev_chain_serves_a_deployment():
    proc = subprocess.Popen(
        [sys.executable, "-m", "openlora.chain.rpc_server"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        info = json.loads(proc.stdout.readline())
        chain = rpc_chain(info["url"])
        registry = AdapterRegistry(chain, info["registry"])
        client = dev_accounts(4)[3]
        cid = make_cid("stand-alone")
        registry.register(client, cid, 1, 0)
        assert registry.adapter(cid, client.address).publisher == client.address
        assert PaymentChannels(chain, info["channels"]).registry_address == registry.address
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
