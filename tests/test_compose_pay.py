"""Paying for a composed call on the embedded chain: each part priced at its adapter's price × weight, one voucher
and one receipt per part, settlement attributing every part's share to its adapter and publisher (what
``openlora usage`` prints), exact integer splits with the remainder rule pinned, and all-or-nothing authorisation."""

from __future__ import annotations

import pytest
from chain_fixtures import base_world, make_cid, world  # noqa: F401

from openlora.adapters.composition import Composition, part_token_bounds, part_tokens, split_exact
from openlora.chain.contracts import adapter_id
from openlora.chain.errors import InvalidReceipt, InvalidVoucher, PaymentRequired
from openlora.chain.ledger import Ledger
from openlora.chain.payer import Payer
from openlora.chain.payments import NodePayments
from openlora.chain.pricing import AdapterTerms
from openlora.chain.records import Voucher
from openlora.chain.settlement import Settler
from openlora.chain.vouchers import sign_voucher
from openlora.chain.wire import receipt_to_pb
from openlora.client.builders import generate_request
from openlora.client.streams import _Booking
from openlora.v1 import node_pb2 as pb

NODE_FEE = 500  # wei per 1k tokens, added to each part's price


@pytest.mark.parametrize(
    "total, weights, shares",
    [
        (100, [700_000, 300_000], [70, 30]),  # exact: no remainder
        (10, [1, 1, 1], [4, 3, 3]),  # remainder 1 to the first of the equal largest weights
        (7, [2, 1], [5, 2]),  # floors 4 + 2, remainder 1 to the largest weight
        (25, [500_000, 300_000, 200_000], [13, 7, 5]),  # floors 12 + 7 + 5, remainder 1 to 0.5
        (3, [100_000, 200_000, 300_000, 400_000], [0, 0, 0, 3]),  # small totals: the remainder carries it all
    ],
)
def test_split_is_exact_and_the_remainder_goes_to_the_largest_weight(total, weights, shares):
    assert split_exact(total, weights) == shares and sum(shares) == total


def test_token_bounds_cover_every_count_up_to_the_maximum():
    for weights in ([500_000, 300_000, 200_000], [300_000, 300_000, 400_000], [1, 1, 1, 1], [2_500_000, 1_000_000]):
        bounds = part_token_bounds(300, weights)
        for tokens in range(301):
            assert all(t <= b for t, b in zip(part_tokens(tokens, weights), bounds)), (weights, tokens)


@pytest.fixture
def composed(world, tmp_path):  # noqa: F811
    """Three registered adapters of two publishers, a node's payments with a fee, a funded channel, and the
    composition ``0.5 × cheap + 0.3 × dear + 0.2 × other's``."""
    w = world
    terms = {}
    for label, publisher, price, royalty in (("cheap", w.publisher, 1000, 2500), ("dear", w.publisher, 3000, 2500), ("others", w.other, 2000, 5000)):  # fmt: skip
        cid = make_cid(label)
        w.registry.register(publisher, cid, price, royalty)
        terms[cid] = AdapterTerms(publisher.address, price, royalty)
    weights = dict(zip(terms, ("0.5", "0.3", "0.2")))
    comp = Composition.of(list(weights.items()))
    ledger = Ledger(tmp_path / "ledger.sqlite", w.node, w.channels.domain, w.chain.genesis_hash)
    Payer(w.channels, w.client, w.node.address).deposit(10**6)
    payments = NodePayments(w.registry, w.channels, ledger, NODE_FEE)
    yield w, comp, terms, ledger, payments
    ledger.close()


def _vouchers(w, price, spent: int = 0, wrong: int | None = None):
    """One voucher per paid part, cumulative amounts chained in canonical order; part ``wrong`` names another
    adapter."""
    out, amount = {}, spent
    for i, part in enumerate(price.parts):
        amount += part.max_cost
        q = part.quote
        target = q.adapter_id if i != wrong else adapter_id(make_cid("elsewhere"), w.publisher.address)
        v = Voucher(w.client.address, w.node.address, 0, amount, target, q.price_per_1k_tokens, part.max_cost)
        out[part.cid] = sign_voucher(w.client, v, w.channels.domain)
    return out


def test_composed_call_is_billed_per_part_and_settles_to_each_publisher(composed):
    w, comp, terms, ledger, payments = composed
    parts = [(cid, terms[cid], ppm) for cid, ppm in comp.parts]
    price = payments.price_composed(parts, prompt_tokens=15, max_new_tokens=15)
    by_cid = {p.cid: p for p in price.parts}
    # each part quoted at its adapter's price + the node fee, for its bound of the weighted 30 tokens
    assert [by_cid[c].quote.price_per_1k_tokens for c in terms] == [1500, 3500, 2500]
    assert price.max_cost == sum(p.max_cost for p in price.parts) > 0
    authorizations = payments.open_composed(_vouchers(w, price), price)
    receipts = payments.close_composed(authorizations, price, 25)
    shares = dict(zip(comp.cids, part_tokens(25, [ppm for _, ppm in comp.parts])))
    # 25 tokens × (0.5 + 0.3 + 0.2) = 25 weighted tokens: floors 12 + 7 + 5, the remainder 1 to the 0.5 part
    assert [shares[c] for c in terms] == [13, 7, 5]
    costs = {}
    for part, signed in zip(price.parts, receipts):
        r = signed.receipt
        assert r.adapter == part.quote.adapter_id and r.publisher == terms[part.cid].publisher
        assert r.tokens == shares[part.cid]
        costs[part.cid] = r.cost
    assert [costs[c] for c in terms] == [20, 25, 13]  # ceil(13 × 1.5), ceil(7 × 3.5), ceil(5 × 2.5)
    totals, _ = ledger.channel(w.client.address, 0)
    assert totals.charged == totals.committed == sum(costs.values())  # unused authorisation released

    assert Settler(ledger, w.channels, w.node).settle_now().ok
    usage = {row.adapter: row for row in payments.usage()}  # what `openlora usage` prints
    for cid, t in terms.items():
        row = usage[cid]
        assert (row.calls, row.tokens, row.amount_wei, row.publisher) == (1, shares[cid], costs[cid], t.publisher)
        assert row.publisher_earnings_wei == costs[cid] * t.royalty_bps // 10_000


def test_a_refused_part_voids_the_parts_before_it_and_charges_nothing(composed):
    w, comp, terms, ledger, payments = composed
    price = payments.price_composed([(cid, terms[cid], ppm) for cid, ppm in comp.parts], 10, 10)
    with pytest.raises(InvalidVoucher):
        payments.open_composed(_vouchers(w, price, wrong=1), price)
    totals, _ = ledger.channel(w.client.address, 0)
    assert totals.committed == totals.charged == 0  # the first part's reservation was released
    vouchers = _vouchers(w, price, spent=totals.latest_amount)
    missing = price.parts[2].cid
    with pytest.raises(PaymentRequired, match=f"part {missing}"):
        payments.open_composed({c: v for c, v in vouchers.items() if c != missing}, price)
    totals, _ = ledger.channel(w.client.address, 0)
    assert totals.committed == totals.charged == 0


@pytest.mark.parametrize("node", ["exact", "one-token-over", "a-receipt-too-many"])
def test_the_client_books_each_parts_receipt_only_at_its_exact_share(composed, node):
    """The SDK's side (``client.streams._Booking``): one payment per paid part, each receipt booked against its own
    part's payment; a node that bills a part even one token over its share of the call is caught, and one that sends
    more receipts than the call paid for is refused before any of them is checked."""
    w, comp, terms, ledger, payments = composed
    price = payments.price_composed([(cid, terms[cid], ppm) for cid, ppm in comp.parts], 40, 10)
    payer = Payer(w.channels, w.client, w.node.address)
    paid = {
        p.cid: payer.pay(p.max_cost, adapter=p.quote.adapter_id, price_per_1k_tokens=p.quote.price_per_1k_tokens, max_tokens=p.max_tokens)
        for p in price.parts
    }  # fmt: skip
    authorizations = payments.open_composed({cid: p.voucher for cid, p in paid.items()}, price)
    shares = part_tokens(45, [p.weight_ppm for p in price.parts])
    over = 1 if node == "one-token-over" else 0
    receipts = [payments.close_call(a, t + (over if i == 0 else 0)) for i, (a, t) in enumerate(zip(authorizations, shares))]
    done = pb.GenerateDone(usage=pb.Usage(prompt_tokens=40, completion_tokens=5), part_receipts=map(receipt_to_pb, receipts))
    booking = _Booking(payer, paid, generate_request("q", adapter=comp.id))
    if node == "a-receipt-too-many":
        done.part_receipts.append(done.part_receipts[0])
        with pytest.raises(InvalidReceipt, match="4 receipts for a call paid with 3"):
            booking.done(done)
        assert booking.receipts == () and payer.reserved == 0  # nothing booked, every reservation released
        return
    problem = booking._misbilled(done, list(done.part_receipts))
    if over:
        assert "shares of 45 tokens" in problem
        return
    assert problem is None
    booking.close(list(done.part_receipts))
    assert [r.tokens for r in booking.receipts] == shares and booking.receipt is None
    assert payer.reserved == 0 and payer.charged == max(r.receipt.charged_total for r in receipts)
