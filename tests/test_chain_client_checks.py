"""What a paying client checks itself, on the embedded chain, instead of trusting the node (issue 12, items 2, 3
and 5): the contracts it deposits into (pinned deployment, code), the price of a call (registry terms, its own
token bound, a fee cap), and what the node charged and claimed (its signed receipts against the chain)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from chain_fixtures import World, base_world, make_cid, world  # noqa: F401

from openlora.adapters.composition import Composition, part_token_bounds
from openlora.chain.audit import audit_channel
from openlora.chain.contracts import AdapterRegistry, Deployment, PaymentChannels, adapter_id, deploy
from openlora.chain.errors import InvalidReceipt, UntrustedContracts, UntrustedQuote
from openlora.chain.ledger import Ledger
from openlora.chain.payer import Payer
from openlora.chain.payments import NodePayments
from openlora.chain.pinning import check_contracts
from openlora.chain.pricing import cost_wei
from openlora.client.builders import generate_request
from openlora.client.quotes import TEMPLATE_TOKENS, check_composed_quote, check_quote
from openlora.v1 import node_pb2 as pb

NODE_FEE, PRICE, ROYALTY = 500, 1000, 2500
MAX_NEW = 20


# -- item 3: the contracts ----------------------------------------------------------------------------------


def test_genuine_deployment_passes_pinned_or_not(world):  # noqa: F811
    check_contracts(world.registry, world.channels, world.deployment)
    check_contracts(world.registry, world.channels, None)


def test_a_node_naming_another_deployment_than_the_pinned_one_is_refused(world):  # noqa: F811
    registry = deploy(world.chain, world.deployer, "AdapterRegistry")
    channels = deploy(world.chain, world.deployer, "PaymentChannels", registry, 3600)
    other = (AdapterRegistry(world.chain, registry), PaymentChannels(world.chain, channels))
    check_contracts(*other, None)  # genuine code: acceptable when nothing is pinned
    with pytest.raises(UntrustedContracts, match="trusts only"):
        check_contracts(*other, world.deployment)


def test_a_contract_that_is_not_ours_is_refused_before_any_deposit(world):  # noqa: F811
    impostor = deploy(world.chain, world.deployer, "RefusingForwarder")  # any code that would keep deposits
    with pytest.raises(UntrustedContracts, match="does not hold the openlora PaymentChannels code"):
        check_contracts(world.registry, PaymentChannels(world.chain, impostor), None)
    with pytest.raises(UntrustedContracts, match="AdapterRegistry code"):
        check_contracts(AdapterRegistry(world.chain, world.client.address), world.channels, None)  # no code at all


def test_channels_bound_to_another_registry_are_refused(world):  # noqa: F811
    registry = deploy(world.chain, world.deployer, "AdapterRegistry")
    with pytest.raises(UntrustedContracts, match="settles against registry"):
        check_contracts(AdapterRegistry(world.chain, registry), world.channels, None)


# -- item 2: the price ----------------------------------------------------------------------------------------


def honest_quote(w: World, cid: str, request: pb.GenerateRequest, prompt_tokens: int = 12) -> pb.Quote:
    """The quote an honest node gives for ``request`` (as the servicer builds it)."""
    price = PRICE + NODE_FEE
    return pb.Quote(
        payment_required=True, adapter=cid, prompt_tokens=prompt_tokens, max_new_tokens=MAX_NEW,
        price_per_1k_tokens=str(price), publisher_price_per_1k=str(PRICE), node_fee_per_1k=str(NODE_FEE),
        max_cost_wei=str(cost_wei(prompt_tokens + MAX_NEW, price)), publisher=w.publisher.address,
        royalty_bps=ROYALTY, node_address=w.node.address, chain_id=w.chain.chain_id, channels=w.channels.address,
    )  # fmt: skip


def checked(w: World, quote: pb.Quote, request: pb.GenerateRequest, fee_cap: int = NODE_FEE):
    return check_quote(
        quote, request, registry=w.registry, channels=w.channels, node=w.node.address,
        publisher=w.publisher.address, max_node_fee_per_1k=fee_cap,
    )  # fmt: skip


def test_an_honest_quote_is_priced_from_the_registry(world):  # noqa: F811
    cid = world.register("priced", PRICE, ROYALTY)
    request = generate_request("hello", adapter=cid, max_new_tokens=MAX_NEW)
    price = checked(world, honest_quote(world, cid, request), request)
    assert (price.adapter, price.price_per_1k_tokens) == (adapter_id(cid, world.publisher.address), PRICE + NODE_FEE)
    assert price.max_cost == cost_wei(12 + MAX_NEW, PRICE + NODE_FEE)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_cost_wei": "999999"}, "max cost"),  # main signed a voucher for whatever max cost the node said
        ({"price_per_1k_tokens": "3000"}, "the registry says"),
        ({"publisher_price_per_1k": "2500", "price_per_1k_tokens": "3000"}, "the registry says"),
        ({"node_fee_per_1k": "900", "price_per_1k_tokens": "1900"}, "above this client's cap"),
        ({"prompt_tokens": 10**6}, "prompt tokens"),
        ({"max_new_tokens": MAX_NEW + 1}, "new tokens"),
        ({"channels": "0x" + "11" * 20}, "this session pays"),
        ({"node_address": "0x" + "22" * 20}, "this session pays"),
        ({"publisher": "0x" + "33" * 20}, "manifest names"),
    ],
    ids=["max-cost", "price", "publisher-price", "fee-cap", "prompt-tokens", "max-new", "channels", "node", "publisher"],
)
def test_a_quote_that_disagrees_with_the_chain_or_request_is_refused(world, change, message):  # noqa: F811
    cid = world.register("priced", PRICE, ROYALTY)
    request = generate_request("hello", adapter=cid, max_new_tokens=MAX_NEW)
    quote = honest_quote(world, cid, request)
    for field, value in change.items():
        setattr(quote, field, value)
    with pytest.raises(UntrustedQuote, match=message):
        checked(world, quote, request)


def test_prompt_token_bound_follows_the_input(world):  # noqa: F811
    cid = world.register("priced", PRICE, ROYALTY)
    request = generate_request("hello", adapter=cid, max_new_tokens=MAX_NEW, raw=True)
    bound = len(b"hello") + TEMPLATE_TOKENS
    quote = honest_quote(world, cid, request, prompt_tokens=bound)
    assert checked(world, quote, request).max_tokens == bound + MAX_NEW
    with pytest.raises(UntrustedQuote, match="prompt tokens"):
        checked(world, honest_quote(world, cid, request, prompt_tokens=bound + 1), request)


def test_a_revoked_or_squatted_adapter_is_refused(world):  # noqa: F811
    cid = make_cid("squatted")
    world.registry.register(world.other, cid, PRICE, 0)  # only a squatter registered it
    request = generate_request("hello", adapter=cid, max_new_tokens=MAX_NEW)
    with pytest.raises(UntrustedQuote, match="not registered by"):
        checked(world, honest_quote(world, cid, request), request)
    world.registry.register(world.publisher, cid, PRICE, ROYALTY)
    world.registry.revoke(world.publisher, cid)
    with pytest.raises(UntrustedQuote, match="revoked"):
        checked(world, honest_quote(world, cid, request), request)


def honest_composed_quote(w: World, paid: str, free: str, request: pb.GenerateRequest) -> pb.Quote:
    """What an honest node quotes for ``request``, ``paid*0.6+free*0.4``: each part a call of its share of the
    token bound (``part_token_bounds``) to its adapter, the free part not payable."""
    comp = Composition.parse(f"{paid}*0.6+{free}*0.4")
    bounds = dict(zip(comp.cids, part_token_bounds(12 + MAX_NEW, [ppm for _, ppm in comp.parts])))
    quote = honest_quote(w, comp.id, request)
    quote.ClearField("publisher")
    for cid in comp.cids:
        part = honest_quote(w, cid, request, prompt_tokens=bounds[cid])
        part.max_new_tokens = 0
        part.max_cost_wei = str(cost_wei(bounds[cid], PRICE + NODE_FEE))
        if cid == free:
            part.payment_required, part.max_cost_wei = False, "0"
        quote.parts.append(part)
    quote.max_cost_wei = str(sum(int(p.max_cost_wei) for p in quote.parts))
    return quote


@pytest.mark.parametrize(
    "tamper, message",
    [
        (None, None),
        (lambda q, paid: setattr(q.parts[paid], "prompt_tokens", q.parts[paid].prompt_tokens + 1), "its share"),
        (lambda q, paid: setattr(q.parts[paid], "max_cost_wei", "999999"), "max cost"),
        (lambda q, paid: setattr(q, "max_cost_wei", str(int(q.max_cost_wei) + 1)), "its parts cost"),
        (lambda q, paid: setattr(q.parts[paid], "publisher", "0x" + "33" * 20), "manifest names"),
        (lambda q, paid: q.parts.pop(), "prices parts"),
        (lambda q, paid: setattr(q, "adapter", q.adapter.replace("0.6", "0.7")), "the request is for"),
    ],
    ids=["honest", "part-bound", "part-cost", "total", "part-publisher", "part-missing", "weights"],
)
def test_a_composed_quote_is_priced_part_by_part_from_the_registry(world, tamper, message):  # noqa: F811
    paid, free = world.register("priced", PRICE, ROYALTY), make_cid("free")
    request = generate_request("hello", adapter=f"{paid}*0.6+{free}*0.4", max_new_tokens=MAX_NEW)
    quote = honest_composed_quote(world, paid, free, request)
    index = [p.adapter for p in quote.parts].index(paid)
    terms = dict(registry=world.registry, channels=world.channels, node=world.node.address, max_node_fee_per_1k=NODE_FEE)
    if tamper is None:
        prices = dict(zip([p.adapter for p in quote.parts], check_composed_quote(quote, request, publishers={paid: world.publisher.address}, **terms)))
        assert prices[free] is None and prices[paid].max_cost == int(quote.max_cost_wei) > 0
        return
    tamper(quote, index)
    with pytest.raises(UntrustedQuote, match=message):
        check_composed_quote(quote, request, publishers={paid: world.publisher.address}, **terms)


# -- item 5: what was charged, provably ---------------------------------------------------------------------


@pytest.fixture
def served(world, tmp_path):  # noqa: F811
    cid = world.register("priced", PRICE, ROYALTY)
    ledger = Ledger(tmp_path / "l.sqlite", world.node, world.channels.domain, world.chain.genesis_hash)
    payments = NodePayments(world.registry, world.channels, ledger, NODE_FEE)
    payer = Payer(world.channels, world.client, world.node.address)
    payer.deposit(10**6)
    quote = payments.quote(cid, world.publisher.address)
    for tokens in (30, 64, 5):  # the last call uses 5 of its 64 tokens: its voucher covers 59 unused
        payment = payer.pay_quote(quote, 64)
        payer.accept(payment, payments.finalize(payments.authorize(payment.voucher, cid, 64, world.publisher.address), tokens))
    yield world, ledger, payer, quote
    ledger.close()


def test_the_last_voucher_exceeds_the_charge_by_at_most_one_calls_max_cost(served):
    world, ledger, payer, quote = served
    totals, latest = ledger.channel(world.client.address, 0)
    assert 0 < latest.voucher.cumulative_amount - totals.charged <= quote.cost_wei(64)
    assert latest.voucher.adapter_amount - totals.charged <= quote.cost_wei(64)


def test_receipts_prove_an_over_claim_and_bound_it_by_the_last_voucher(served):
    world, ledger, payer, quote = served
    (claim,) = ledger.plan_claims(10)
    honest = audit_channel(world.channels, world.client.address, world.node.address, payer.receipts, payer.signed_amount)
    assert (honest.receipts, honest.charged, honest.costs, honest.redeemed) == (3, claim.claimed_total, claim.claimed_total, 0)
    # A node claims everything its last voucher allows instead of what its receipts say it charged.
    authorised = claim.voucher.voucher.cumulative_amount
    grab = replace(claim, claimed_total=authorised, usage=(replace(claim.usage[0], amount=authorised - 0),))
    world.channels.settle(world.node, [grab.redemption()])
    audit = audit_channel(world.channels, world.client.address, world.node.address, payer.receipts, payer.signed_amount)
    assert audit.over_claim == authorised - honest.charged > 0
    assert audit.over_claim <= quote.cost_wei(64)  # bounded by one call's max cost
    (adapter,) = audit.adapters
    assert (adapter.costs, adapter.attributed) == (honest.costs, authorised)


def test_audit_refuses_receipts_the_node_did_not_sign(served):
    world, _, payer, _ = served
    bad = replace(payer.receipts[0], signature=payer.receipts[1].signature)
    with pytest.raises(InvalidReceipt, match="not a receipt of node"):
        audit_channel(world.channels, world.client.address, world.node.address, [bad], 0)
