"""Chain faults: the node's chain RPC goes down and comes back; the node is killed during settlement.

The node side talks to the test's embedded chain only through a JSON-RPC server (``ChainRpcServer``) that the
test stops and restarts on the same port: a real outage of a real endpoint (connection refused), with the
chain's state kept. The client pays through its own connection, as a real client would.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from chain_fixtures import PUBLISHER, World, base_world, world  # noqa: F401

from openlora.chain.backends import rpc_chain
from openlora.chain.contracts import AdapterRegistry, PaymentChannels, adapter_id, broadcast, send_value
from openlora.chain.errors import ChainUnreachable, CreditLimitReached
from openlora.chain.ledger import Ledger
from openlora.chain.payer import Payer
from openlora.chain.payments import NodePayments
from openlora.chain.pricing import cost_wei
from openlora.chain.rpc_server import ChainRpcServer
from openlora.chain.service import NodeChain
from openlora.chain.settlement import Settler
from openlora.config import ChainSettings

NODE_FEE = 500
PRICE = 1000 + NODE_FEE  # the registered 1000 wei per 1k plus the node's fee
MAX_TOKENS = 50
MAX_COST = cost_wei(MAX_TOKENS, PRICE)


def call_terms(cid: str) -> dict:
    """What a voucher for one call to ``cid`` (registered by the world's publisher) names."""
    return {"adapter": adapter_id(cid, PUBLISHER), "price_per_1k_tokens": PRICE, "max_tokens": MAX_TOKENS}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)


class NodeOverRpc:
    """The node's payment side, reaching the chain only through ``url``."""

    def __init__(self, w: World, url: str, ledger_path: Path, credit_limit_wei: int) -> None:
        chain = rpc_chain(url, timeout_s=5)
        channels = PaymentChannels(chain, w.channels.address)
        self.ledger = Ledger(ledger_path, w.node, channels.domain, chain.genesis_hash)
        self.settler = Settler(self.ledger, channels, w.node, every_calls=1, every_seconds=30, retry_min_s=0.05)
        self.payments = NodePayments(
            AdapterRegistry(chain, w.registry.address), channels, self.ledger, NODE_FEE, self.settler, credit_limit_wei
        )

    def settled_all(self) -> bool:
        return self.ledger.unsettled_count() == 0 and not self.ledger.open_batches()


def serve(node: NodeOverRpc, payer: Payer, cid: str, tokens: int) -> int:
    payment = payer.pay(MAX_COST, **call_terms(cid))
    auth = node.payments.authorize(payment.voucher, cid, MAX_TOKENS, PUBLISHER)
    payer.accept(payment, node.payments.finalize(auth, tokens))
    return cost_wei(tokens, PRICE)


def test_chain_rpc_down_calls_run_on_credit_then_settle_exactly_once_when_it_is_back(world, tmp_path):  # noqa: F811
    cid = world.register()
    world.channels.deposit(world.client, world.node.address, 10**7)
    port = free_port()
    server = ChainRpcServer(world.chain, port)
    server.start()
    node = NodeOverRpc(world, server.url, tmp_path / "ledger.sqlite", credit_limit_wei=2 * MAX_COST)
    node.settler.start()
    payer = Payer(world.channels, world.client, world.node.address)
    try:
        owed = serve(node, payer, cid, 10)  # chain up: the node reads registration and channel
        wait_until(node.settled_all, "the first call settled")

        server.stop()  # outage: connection refused from now on
        with pytest.raises(ChainUnreachable):
            node.payments.channels.channel(world.client.address, world.node.address)
        view = node.payments.channel_view(world.client.address)  # GetQuote still answers, from the last read
        assert view.state.deposited == 10**7 and view.ledger is not None
        owed += serve(node, payer, cid, 20)
        owed += serve(node, payer, cid, 30)  # two max costs: exactly the credit limit
        assert node.payments.credit_used(world.client.address) == 2 * MAX_COST
        payment = payer.pay(MAX_COST, **call_terms(cid))
        with pytest.raises(CreditLimitReached, match="chain unreachable; credit limit reached") as refused:
            node.payments.authorize(payment.voucher, cid, MAX_TOKENS, PUBLISHER)
        payer.refused(payment)
        assert refused.value.status == "UNAVAILABLE"
        wait_until(lambda: node.settler.failures >= 3, "settlement retried (and failed) during the outage")
        assert node.ledger.unsettled_count() + sum(1 for _ in node.ledger.open_batches()) >= 1

        outage_failures = node.settler.failures
        server = ChainRpcServer(world.chain, port)  # the same chain back on the same URL
        server.start()
        back = time.monotonic()
        wait_until(
            lambda: node.settled_all() and node.settler.failures == 0, "settlement succeeded once the chain was back"
        )
        print(
            f"\nchain outage: {outage_failures} failed settlement attempts (backoff from 0.05 s); settled "
            f"{time.monotonic() - back:.2f} s after the RPC came back"
        )
        owed += serve(node, payer, cid, 5)  # the channel is read again: credit is cleared
        assert node.payments.credit_used(world.client.address) == 0
        wait_until(node.settled_all, "the call after the outage settled")
    finally:
        node.settler.stop(settle=False)
        server.stop()
        node.ledger.close()

    usage = world.channels.usage(adapter_id(cid, PUBLISHER))
    state = world.channels.channel(world.client.address, world.node.address)
    assert (usage.calls, usage.tokens, usage.amount) == (4, 65, owed)  # each call attributed once
    assert state.redeemed == owed  # paid once, not twice


def test_chain_rpc_down_with_no_credit_refuses_paid_calls_at_once(world, tmp_path):  # noqa: F811
    cid = world.register()
    world.channels.deposit(world.client, world.node.address, 10**7)
    server = ChainRpcServer(world.chain, free_port())
    server.start()
    node = NodeOverRpc(world, server.url, tmp_path / "ledger.sqlite", credit_limit_wei=0)
    payer = Payer(world.channels, world.client, world.node.address)
    try:
        serve(node, payer, cid, 10)
        server.stop()
        payment = payer.pay(MAX_COST, **call_terms(cid))
        with pytest.raises(CreditLimitReached, match="the node's limit is 0 wei"):
            node.payments.authorize(payment.voucher, cid, MAX_TOKENS, PUBLISHER)
    finally:
        server.stop()
        node.ledger.close()


def test_chain_rpc_down_before_a_client_was_ever_seen_is_unavailable(world, tmp_path):  # noqa: F811
    cid = world.register()
    for account in (world.client, world.other):
        world.channels.deposit(account, world.node.address, 10**7)
    server = ChainRpcServer(world.chain, free_port())
    server.start()
    node = NodeOverRpc(world, server.url, tmp_path / "ledger.sqlite", credit_limit_wei=10 * MAX_COST)
    payer = Payer(world.channels, world.client, world.node.address)
    stranger = Payer(world.channels, world.other, world.node.address)
    try:
        serve(node, payer, cid, 10)  # the adapter's registration is known, the stranger's channel is not
        server.stop()
        payment = stranger.pay(MAX_COST, **call_terms(cid))
        with pytest.raises(ChainUnreachable, match="did not answer"):
            node.payments.authorize(payment.voucher, cid, MAX_TOKENS, PUBLISHER)
        with pytest.raises(ChainUnreachable):
            node.payments.channel_view(world.other.address)
        assert node.ledger.channel(world.other.address, 0) is None  # nothing recorded for the refused call
    finally:
        server.stop()
        node.ledger.close()


def test_negative_credit_limit_is_refused(world, tmp_path):  # noqa: F811
    ledger = Ledger(tmp_path / "ledger.sqlite", world.node, world.channels.domain, world.chain.genesis_hash)
    try:
        with pytest.raises(ValueError, match="credit limit must be >= 0"):
            NodePayments(world.registry, world.channels, ledger, NODE_FEE, credit_limit_wei=-1)
    finally:
        ledger.close()


@pytest.mark.parametrize("sent", [False, True], ids=["drop-before-send", "drop-after-send"])
def test_chain_rpc_drop_in_the_middle_of_a_settlement_settles_exactly_once_after_a_restart(world, tmp_path, sent):  # noqa: F811
    """The settlement transaction is recorded, then the RPC goes down before it is sent (or after it was sent,
    before its receipt was read). The node restarts against the chain once it is back: the open batch is resolved
    from the chain (re-sending the same signed bytes, or finding the receipt) and paid exactly once."""
    cid = world.register()
    world.channels.deposit(world.client, world.node.address, 10**7)
    port = free_port()
    server = ChainRpcServer(world.chain, port)
    server.start()
    node = NodeOverRpc(world, server.url, tmp_path / "ledger.sqlite", credit_limit_wei=0)
    payer = Payer(world.channels, world.client, world.node.address)
    try:
        owed = serve(node, payer, cid, 10) + serve(node, payer, cid, 25)
        batch = node.settler.prepare()
        if sent:
            broadcast(node.payments.channels.chain, batch.tx)
        server.stop()
        with pytest.raises(ChainUnreachable):
            node.settler.submit(batch)
        assert [b.id for b in node.ledger.open_batches()] == [batch.id]
        node.ledger.close()  # the node stops here; it starts again once the chain is back

        server = ChainRpcServer(world.chain, port)
        server.start()
        node = NodeOverRpc(world, server.url, tmp_path / "ledger.sqlite", credit_limit_wei=0)
        node.settler.recover()  # resolves the open batch against the chain, then reconciles every channel
        assert node.settled_all() and node.settler.settle_now() is None  # nothing left, nothing paid twice
    finally:
        server.stop()
        node.ledger.close()
    usage = world.channels.usage(adapter_id(cid, PUBLISHER))
    assert (usage.calls, usage.tokens, usage.amount) == (2, 35, owed)
    assert world.channels.channel(world.client.address, world.node.address).redeemed == owed


def test_the_node_chain_service_takes_its_credit_limit_from_the_settings_and_settles_after_an_outage(world, tmp_path):  # noqa: F811
    """``NodeChain`` (what ``openlora-node start --chain-rpc URL --contracts FILE`` runs) over an RPC that goes
    down: a call on credit within ``chain.credit_limit_wei``, one beyond it refused, and the stop after the chain
    is back settles what is owed."""
    cid = world.register()
    port = free_port()
    server = ChainRpcServer(world.chain, port)
    server.start()
    contracts = tmp_path / "contracts.json"
    contracts.write_text(world.deployment.to_json())
    settings = ChainSettings(rpc_url=server.url, contracts=contracts, node_fee_per_1k=NODE_FEE, credit_limit_wei=MAX_COST)
    service = NodeChain(settings, tmp_path / "data")
    try:
        service.start()
        node_address = service.info.node_address
        send_value(world.chain, world.deployer, node_address, 10**18)  # gas for settlement
        world.channels.deposit(world.client, node_address, 10**7)
        payments = service.payments
        assert payments.credit_limit_wei == MAX_COST
        payer = Payer(world.channels, world.client, node_address)

        def call(tokens: int) -> None:
            payment = payer.pay(MAX_COST, **call_terms(cid))
            auth = payments.authorize(payment.voucher, cid, MAX_TOKENS, PUBLISHER)
            payer.accept(payment, payments.finalize(auth, tokens))

        call(10)
        server.stop()
        call(20)  # on credit
        payment = payer.pay(MAX_COST, **call_terms(cid))
        with pytest.raises(CreditLimitReached):
            payments.authorize(payment.voucher, cid, MAX_TOKENS, PUBLISHER)
        payer.refused(payment)
        server = ChainRpcServer(world.chain, port)
        server.start()
        service.stop()  # settles what is owed while the chain answers
        state = world.channels.channel(world.client.address, node_address)
        assert state.redeemed == cost_wei(30, PRICE) and world.channels.usage(adapter_id(cid, PUBLISHER)).calls == 2
    finally:
        service.stop()
        server.stop()
