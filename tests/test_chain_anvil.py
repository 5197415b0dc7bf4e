"""End to end on anvil (npm @foundry-rs/anvil, 127.0.0.1): the same code as on the embedded chain, over a real
JSON-RPC node: deploy, register, deposit, pay per call, settle in a batch, read attribution, replay refused,
withdraw the rest and the earnings."""

from __future__ import annotations

import pytest
from chain_fixtures import anvil_url, build_world  # noqa: F401

from openlora.chain.attribution import usage_report
from openlora.chain.backends import rpc_chain
from openlora.chain.errors import ContractRevert, StaleVoucher
from openlora.chain.ledger import Ledger
from openlora.chain.payer import Payer
from openlora.chain.payments import NodePayments
from openlora.chain.records import Redemption, UsageEntry
from openlora.chain.settlement import Settler


def test_pay_per_call_and_attribution_on_anvil(anvil_url, tmp_path):  # noqa: F811
    chain = rpc_chain(anvil_url)
    assert chain.chain_id == 31337
    w = build_world(chain)
    cid = w.register("anvil", price_per_1k=2000, royalty_bps=3000)
    ledger = Ledger(tmp_path / "ledger.sqlite", w.node, w.channels.domain, chain.genesis_hash)
    settler = Settler(ledger, w.channels, w.node)
    settler.recover()
    payments = NodePayments(w.registry, w.channels, ledger, 1000, settler)
    payer = Payer(w.channels, w.client, w.node.address)
    payer.deposit(10**9)

    quote = payments.quote(cid, w.publisher.address)
    for tokens in (10, 64, 1):
        payment = payer.pay_quote(quote, 64)
        auth = payments.authorize(payment.voucher, cid, 64, w.publisher.address)
        payer.accept(payment, payments.finalize(auth, tokens))
        last = payment
    with pytest.raises(StaleVoucher):
        payments.authorize(last.voucher, cid, 64, w.publisher.address)

    result = settler.settle_now()
    assert result.ok
    charged = 30 + 192 + 3  # ceil(tokens × 3000 / 1000)
    (row,) = usage_report(w.registry, w.channels)
    assert (row.adapter, row.calls, row.tokens, row.amount_wei) == (cid, 3, 75, charged)
    assert row.publisher_earnings_wei == charged * 3000 // 10_000
    assert ledger.receipt_totals()[quote.adapter_id].amount == charged

    # Replaying the settled claim pays nothing: the contract's guard, decoded over real JSON-RPC.
    replay = Redemption(last.voucher, charged, (UsageEntry(last.voucher, 3, 75, charged),))
    with pytest.raises(ContractRevert) as raised:
        w.channels.settle(w.node, [replay])
    assert raised.value.error == "NothingToRedeem"

    w.channels.request_withdraw(w.client, w.node.address)
    chain.advance_time(w.channels.withdraw_timeout_s)
    w.channels.withdraw(w.client, w.node.address)
    assert w.channels.channel(w.client.address, w.node.address).epoch == 1
    w.channels.withdraw_earnings(w.publisher)
    assert w.channels.earnings(w.publisher.address) == 0
    ledger.close()
