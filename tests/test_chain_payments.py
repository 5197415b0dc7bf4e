"""The node's payment gate and the client's payer, on the embedded chain: what is refused (replays, forgeries,
other nodes, overspending, revoked adapters), what is charged (never above the quote, unused authorisation
credited), concurrency, and crash leftovers in the ledger."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, replace

import pytest
from eth_account import Account
from chain_fixtures import World, base_world, make_cid, world  # noqa: F401

from openlora.chain.errors import (
    AdapterNotPayable,
    ChannelClosing,
    InsufficientAuthorization,
    InsufficientDeposit,
    InvalidReceipt,
    InvalidVoucher,
    LedgerError,
    PaymentError,
    StaleVoucher,
    WrongEpoch,
    WrongNode,
)
from openlora.chain.contracts import adapter_id
from openlora.chain.ledger import Ledger
from openlora.chain.payer import Payer
from openlora.chain.payments import NodePayments

from openlora.chain.pricing import cost_wei, make_quote
from openlora.chain.records import Eip712Domain, SignedReceipt, SignedVoucher, Voucher
from openlora.chain.settlement import Settler
from openlora.chain.vouchers import recover_receipt_signer, sign_receipt, sign_voucher, voucher_message

NODE_FEE = 500  # wei per 1k tokens; publisher's price is 1000, so 1500 in total
MAX_TOKENS = 100
DEPOSIT = 10**6


@dataclass
class Setup:
    world: World
    cid: str
    ledger: Ledger
    payments: NodePayments
    payer: Payer

    @property
    def max_cost(self) -> int:
        return cost_wei(MAX_TOKENS, 1000 + NODE_FEE)

    @property
    def pub(self) -> str:
        return self.world.publisher.address

    @property
    def quote(self):
        return self.payments.quote(self.cid, self.pub)

    def voucher(
        self,
        amount: int,
        *,
        epoch: int = 0,
        node: str | None = None,
        signer=None,
        adapter_amount: int | None = None,
        price: int = 1000 + NODE_FEE,
        cid: str | None = None,
    ) -> SignedVoucher:
        w = self.world
        adapter = adapter_id(cid or self.cid, self.pub)
        lane = amount if adapter_amount is None else adapter_amount
        v = Voucher(w.client.address, node or w.node.address, epoch, amount, adapter, price, lane)
        if signer is None:
            return sign_voucher(w.client, v, w.channels.domain)
        return SignedVoucher(v, bytes(signer.sign_message(voucher_message(v, w.channels.domain)).signature))

    def call(self, tokens: int) -> SignedReceipt:
        payment = self.payer.pay_quote(self.quote, MAX_TOKENS)
        auth = self.payments.authorize(payment.voucher, self.cid, MAX_TOKENS, self.pub)
        receipt = self.payments.finalize(auth, tokens)
        self.payer.accept(payment, receipt)
        return receipt


def open_ledger(w: World, path) -> Ledger:
    return Ledger(path, w.node, w.channels.domain, w.chain.genesis_hash)


@pytest.fixture
def setup(world, tmp_path) -> Setup:  # noqa: F811
    cid = world.register()
    ledger = open_ledger(world, tmp_path / "ledger.sqlite")
    payer = Payer(world.channels, world.client, world.node.address)
    payer.deposit(DEPOSIT)
    yield Setup(world, cid, ledger, NodePayments(world.registry, world.channels, ledger, NODE_FEE), payer)
    ledger.close()


# -- what a call costs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens, price, expected", [(0, 1500, 0), (1, 1500, 2), (1000, 1500, 1500), (1001, 1, 2), (3, 333, 1)]
)
def test_cost_rounds_up(tokens, price, expected):
    assert cost_wei(tokens, price) == expected


def test_cost_rejects_negative():
    with pytest.raises(ValueError):
        cost_wei(-1, 5)


def test_quote_adds_node_fee(setup):
    quote = setup.payments.quote(setup.cid, setup.pub)
    assert (quote.publisher_price_per_1k, quote.node_fee_per_1k, quote.price_per_1k_tokens) == (1000, 500, 1500)
    assert (quote.publisher, quote.royalty_bps, quote.cid) == (setup.world.publisher.address, 2500, setup.cid)


def test_free_adapter_cannot_be_quoted(world):  # noqa: F811
    cid = world.register("free", price_per_1k=0)
    with pytest.raises(ValueError, match="node fee"):
        make_quote(world.registry, cid, 0, world.publisher.address)
    with pytest.raises(ValueError, match=">= 0"):
        make_quote(world.registry, cid, -1, world.publisher.address)


# -- paid calls ---------------------------------------------------------------------------------------------


def test_call_is_charged_actual_tokens_and_receipt_is_node_signed(setup):
    w = setup.world
    receipt = setup.call(tokens=37)
    r = receipt.receipt
    assert recover_receipt_signer(receipt, w.channels.domain) == w.node.address
    assert (r.client, r.node, r.epoch, r.publisher) == (w.client.address, w.node.address, 0, w.publisher.address)
    assert (r.tokens, r.cost, r.charged_total) == (37, cost_wei(37, 1500), cost_wei(37, 1500))


def test_unused_authorisation_is_credited_to_the_next_call(setup):
    first = setup.call(tokens=10)
    payment = setup.payer.pay_quote(setup.quote, MAX_TOKENS)
    # The second voucher builds on what was charged, not on the first voucher's full authorisation.
    assert payment.voucher.voucher.cumulative_amount == first.receipt.charged_total + setup.max_cost
    auth = setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)
    second = setup.payments.finalize(auth, 20)
    assert second.receipt.charged_total == first.receipt.cost + cost_wei(20, 1500)


def test_void_call_costs_nothing(setup):
    payment = setup.payer.pay_quote(setup.quote, MAX_TOKENS)
    auth = setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)
    setup.payments.void(auth)
    (totals,) = setup.ledger.channel_totals()
    assert (totals.committed, totals.charged) == (0, 0)


# -- refused calls ------------------------------------------------------------------------------------------


def test_replayed_voucher_is_refused(setup):
    payment = setup.payer.pay_quote(setup.quote, MAX_TOKENS)
    auth = setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)
    setup.payments.finalize(auth, 1)
    with pytest.raises(StaleVoucher, match="sign a new voucher"):
        setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)


def test_older_voucher_is_refused(setup):
    setup.payments.authorize(setup.voucher(5 * setup.max_cost), setup.cid, MAX_TOKENS, setup.pub)
    with pytest.raises(StaleVoucher):
        setup.payments.authorize(setup.voucher(4 * setup.max_cost), setup.cid, MAX_TOKENS, setup.pub)


def test_forged_signature_is_refused(setup):
    forged = setup.voucher(setup.max_cost, signer=setup.world.other)
    with pytest.raises(InvalidVoucher, match="not by the client"):
        setup.payments.authorize(forged, setup.cid, MAX_TOKENS, setup.pub)


@pytest.mark.parametrize("signature", [b"", b"\x01" * 64, b"\x00" * 65], ids=["empty", "short", "zero"])
def test_malformed_signature_is_refused(setup, signature):
    signed = replace(setup.voucher(setup.max_cost), signature=signature)
    with pytest.raises(InvalidVoucher):
        setup.payments.authorize(signed, setup.cid, MAX_TOKENS, setup.pub)


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def chain_rejected_forms(signature: bytes) -> dict[str, bytes]:
    """Re-encodings of a valid (r, s, v) signature that eth-account still recovers to the same key but the
    contract's ECDSA refuses: v as 0/1, v as EIP-155 35+, and the high-s twin (n - s, flipped v)."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return {
        "v-0-1": r + signature[32:64] + bytes([v - 27]),
        "v-35": r + signature[32:64] + bytes([v - 27 + 35]),
        "high-s": r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v]),
    }


@pytest.mark.parametrize("form", ["v-0-1", "v-35", "high-s"])
def test_signature_the_chain_rejects_is_refused_before_serving(setup, form):
    signed = setup.voucher(setup.max_cost)
    bad = replace(signed, signature=chain_rejected_forms(signed.signature)[form])
    # eth-account alone accepts it: the node would serve a call whose claim reverts on chain
    assert Account.recover_message(voucher_message(bad.voucher, setup.world.channels.domain), signature=bad.signature) == setup.world.client.address
    with pytest.raises(InvalidVoucher, match="27 or 28|lower half"):
        setup.payments.authorize(bad, setup.cid, MAX_TOKENS, setup.pub)
    assert setup.ledger.channel(setup.world.client.address, 0) is None  # nothing recorded, nothing served


def test_voucher_with_tampered_amount_is_refused(setup):
    signed = setup.voucher(setup.max_cost)
    tampered = SignedVoucher(replace(signed.voucher, cumulative_amount=10 * setup.max_cost), signed.signature)
    with pytest.raises(InvalidVoucher):
        setup.payments.authorize(tampered, setup.cid, MAX_TOKENS, setup.pub)


def test_voucher_for_another_node_is_refused(setup):
    with pytest.raises(WrongNode, match=setup.world.other.address):
        setup.payments.authorize(setup.voucher(setup.max_cost, node=setup.world.other.address), setup.cid, MAX_TOKENS, setup.pub)


def test_voucher_for_another_domain_is_refused(setup):
    w = setup.world
    v = replace(setup.voucher(setup.max_cost).voucher)
    elsewhere = sign_voucher(w.client, v, Eip712Domain(w.chain.chain_id + 1, w.channels.address))
    with pytest.raises(InvalidVoucher):
        setup.payments.authorize(elsewhere, setup.cid, MAX_TOKENS, setup.pub)


@pytest.mark.parametrize("epoch", [1, 2**64 - 1])  # the largest uint64 overflows SQLite's INTEGER
def test_voucher_for_another_epoch_is_refused(setup, epoch):
    with pytest.raises(WrongEpoch, match="epoch 0"):
        setup.payments.authorize(setup.voucher(setup.max_cost, epoch=epoch), setup.cid, MAX_TOKENS, setup.pub)


def test_closing_channel_is_refused(setup):
    setup.world.channels.request_withdraw(setup.world.client, setup.world.node.address)
    with pytest.raises(ChannelClosing):
        setup.payments.authorize(setup.voucher(setup.max_cost), setup.cid, MAX_TOKENS, setup.pub)


def test_overspend_beyond_deposit_is_refused(setup):
    tokens = DEPOSIT * 1000 // 1500 + 1000  # costs just above the deposit
    with pytest.raises(InsufficientDeposit, match="deposit at least"):
        setup.payments.authorize(setup.voucher(10 * DEPOSIT), setup.cid, tokens, setup.pub)


def test_overspend_beyond_authorisation_is_refused(setup):
    with pytest.raises(InsufficientAuthorization, match=f"at least {setup.max_cost} wei"):
        setup.payments.authorize(setup.voucher(setup.max_cost - 1), setup.cid, MAX_TOKENS, setup.pub)


def test_calls_in_flight_count_against_the_authorisation(setup):
    setup.payments.authorize(setup.voucher(setup.max_cost + 10), setup.cid, MAX_TOKENS, setup.pub)
    # The first call may still use its whole max cost: a voucher 1 wei higher does not pay for a second call.
    with pytest.raises(InsufficientAuthorization):
        setup.payments.authorize(setup.voucher(setup.max_cost + 11), setup.cid, MAX_TOKENS, setup.pub)


def test_revoked_adapter_is_refused(setup):
    setup.call(tokens=5)
    setup.world.registry.revoke(setup.world.publisher, setup.cid)
    with pytest.raises(AdapterNotPayable, match="revoked"):
        setup.payments.authorize(setup.payer.pay_quote(setup.quote, MAX_TOKENS).voucher, setup.cid, MAX_TOKENS, setup.pub)


def test_unknown_adapter_is_refused(setup):
    with pytest.raises(AdapterNotPayable, match="not registered"):
        setup.payments.authorize(setup.voucher(setup.max_cost), make_cid("unknown"), MAX_TOKENS, setup.pub)


def test_registration_after_an_unknown_answer_is_seen_by_the_next_call(setup):
    # Registrations are read once per block: the "not registered" answer must not outlive its block.
    cid = make_cid("late")
    with pytest.raises(AdapterNotPayable, match="not registered"):
        setup.payments.quote(cid, setup.pub)
    setup.world.registry.register(setup.world.publisher, cid, 1500, 2500)
    assert setup.payments.quote(cid, setup.pub).price_per_1k_tokens >= 1500


@pytest.mark.parametrize(
    "error, status",
    [
        (AdapterNotPayable, "NOT_FOUND"),
        (InvalidVoucher, "PERMISSION_DENIED"),
        (WrongNode, "PERMISSION_DENIED"),
        (InsufficientDeposit, "FAILED_PRECONDITION"),
        (StaleVoucher, "FAILED_PRECONDITION"),
    ],
)
def test_payment_errors_name_a_grpc_status(error, status):
    assert issubclass(error, PaymentError) and error.status == status


# -- finalisation rules and crash leftovers -------------------------------------------------------------


@pytest.mark.parametrize("tokens", [0, MAX_TOKENS + 1])
def test_finalize_outside_the_authorised_tokens_is_refused(setup, tokens):
    auth = setup.payments.authorize(setup.payer.pay_quote(setup.quote, MAX_TOKENS).voucher, setup.cid, MAX_TOKENS, setup.pub)
    with pytest.raises(ValueError, match=f"1..{MAX_TOKENS}"):
        setup.payments.finalize(auth, tokens)


def test_a_call_is_finalized_once(setup):
    auth = setup.payments.authorize(setup.payer.pay_quote(setup.quote, MAX_TOKENS).voucher, setup.cid, MAX_TOKENS, setup.pub)
    setup.payments.finalize(auth, 3)
    with pytest.raises(LedgerError, match="final, not pending"):
        setup.payments.finalize(auth, 3)
    with pytest.raises(LedgerError, match="final, not pending"):
        setup.payments.void(auth)


def test_reopened_ledger_voids_calls_cut_off_by_a_crash(setup, tmp_path):
    setup.call(tokens=10)
    setup.payments.authorize(setup.payer.pay_quote(setup.quote, MAX_TOKENS).voucher, setup.cid, MAX_TOKENS, setup.pub)  # never finalized
    (before,) = setup.ledger.channel_totals()
    assert before.committed == before.charged + setup.max_cost
    setup.ledger.close()
    reopened = open_ledger(setup.world, tmp_path / "ledger.sqlite")
    (after,) = reopened.channel_totals()
    assert (after.committed, after.charged) == (before.charged, before.charged)
    assert after.latest_amount == before.latest_amount
    reopened.close()


def test_ledger_refuses_another_chain(setup, tmp_path):
    w = setup.world
    with pytest.raises(LedgerError, match="another ledger file"):
        Ledger(tmp_path / "ledger.sqlite", w.node, w.channels.domain, chain_tag="0xsomething-else")
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "ledger.sqlite", w.other, w.channels.domain, w.chain.genesis_hash)


def test_payer_starts_over_on_the_next_epoch(setup):
    w = setup.world
    setup.call(tokens=10)
    w.channels.request_withdraw(w.client, w.node.address)
    w.chain.advance_time(w.channels.withdraw_timeout_s)
    w.channels.withdraw(w.client, w.node.address)
    state = setup.payer.deposit(DEPOSIT)
    assert (state.epoch, setup.payer.epoch, setup.payer.signed_amount, setup.payer.charged) == (1, 1, 0, 0)
    receipt = setup.call(tokens=20)
    assert (receipt.receipt.epoch, receipt.receipt.charged_total) == (1, cost_wei(20, 1500))


# -- the client's checks ------------------------------------------------------------------------------------


def test_payer_rejects_receipt_not_signed_by_the_node(setup):
    w = setup.world
    payment = setup.payer.pay_quote(setup.quote, MAX_TOKENS)
    auth = setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)
    genuine = setup.payments.finalize(auth, 5).receipt
    fake = sign_receipt(w.other, replace(genuine, node=w.other.address), w.channels.domain)
    with pytest.raises(InvalidReceipt, match="expected node"):
        setup.payer.accept(payment, fake)


def test_payer_rejects_overcharge(setup):
    w = setup.world
    payment = setup.payer.pay_quote(setup.quote, MAX_TOKENS)
    auth = setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)
    genuine = setup.payments.finalize(auth, 5).receipt
    greedy = sign_receipt(w.node, replace(genuine, cost=setup.max_cost + 1), w.channels.domain)
    with pytest.raises(InvalidReceipt, match="they cost"):
        setup.payer.accept(payment, greedy)
    inflated = sign_receipt(w.node, replace(genuine, charged_total=10 * setup.max_cost), w.channels.domain)
    with pytest.raises(InvalidReceipt, match="were authorised"):
        setup.payer.accept(payment, inflated)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"cost": "max"}, "they cost"),  # within the max cost, but not what 5 tokens cost: main accepted it
        ({"tokens": MAX_TOKENS + 1, "cost": "max"}, "could bill 1 to"),
        ({"adapter": b"\x01" * 32}, "not this client's call"),
    ],
    ids=["cost-not-tokens-times-price", "tokens-above-max", "other-adapter"],
)
def test_payer_computes_the_cost_itself_from_the_receipts_tokens(setup, change, message):
    w = setup.world
    payment = setup.payer.pay_quote(setup.quote, MAX_TOKENS)
    auth = setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)
    genuine = setup.payments.finalize(auth, 5).receipt
    fields = {k: (setup.max_cost if v == "max" else v) for k, v in change.items()}
    lying = sign_receipt(w.node, replace(genuine, **fields), w.channels.domain)
    with pytest.raises(InvalidReceipt, match=message):
        setup.payer.accept(payment, lying)
    assert setup.payer.accept(payment, sign_receipt(w.node, genuine, w.channels.domain)).cost == cost_wei(5, 1500)


def test_voucher_must_name_the_calls_adapter_and_price(setup):
    other = setup.world.register("other")
    with pytest.raises(InvalidVoucher, match="this call is to"):
        setup.payments.authorize(setup.voucher(setup.max_cost, cid=other), setup.cid, MAX_TOKENS, setup.pub)
    with pytest.raises(InvalidVoucher, match="this call is to"):
        setup.payments.authorize(setup.voucher(setup.max_cost, price=1499), setup.cid, MAX_TOKENS, setup.pub)


def test_adapter_amount_must_cover_the_adapters_calls(setup):
    setup.call(tokens=MAX_TOKENS)  # charged max_cost on the adapter
    # Enough on the channel, but the adapter amount does not cover what the adapter already took plus this call.
    short = setup.voucher(3 * setup.max_cost, adapter_amount=2 * setup.max_cost - 1)
    with pytest.raises(InsufficientAuthorization, match="adapter amount"):
        setup.payments.authorize(short, setup.cid, MAX_TOKENS, setup.pub)


# -- concurrency --------------------------------------------------------------------------------------------


def test_concurrent_calls_from_one_client_never_overcharge(setup):
    """8 threads share one payer and one channel; vouchers reach the node out of order (refused as stale and
    retried). Every call is charged exactly its tokens' cost, and the chain ends up redeeming exactly that."""
    w = setup.world
    rng = random.Random(7)
    plan = [rng.randint(1, MAX_TOKENS) for _ in range(40)]
    receipts, lock = [], threading.Lock()
    refusals = []

    def worker(jobs: list[int]) -> None:
        for tokens in jobs:
            while True:
                payment = setup.payer.pay_quote(setup.quote, MAX_TOKENS)
                try:
                    auth = setup.payments.authorize(payment.voucher, setup.cid, MAX_TOKENS, setup.pub)
                except (StaleVoucher, InsufficientAuthorization) as exc:
                    setup.payer.refused(payment)
                    refusals.append(exc)
                    continue
                receipt = setup.payments.finalize(auth, tokens)
                setup.payer.accept(payment, receipt)
                with lock:
                    receipts.append(receipt.receipt)
                break

    threads = [threading.Thread(target=worker, args=(plan[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(r.tokens for r in receipts) == sorted(plan)
    assert all(r.cost == cost_wei(r.tokens, 1500) for r in receipts)
    total = sum(r.cost for r in receipts)
    assert max(r.charged_total for r in receipts) == total
    (totals,) = setup.ledger.channel_totals()
    assert (totals.charged, totals.committed) == (total, total)
    assert totals.latest_amount <= DEPOSIT
    assert all(not isinstance(e, InsufficientAuthorization) for e in refusals), refusals  # payer signs enough

    settler = Settler(setup.ledger, w.channels, w.node)
    assert settler.settle_now().ok
    assert w.channels.channel(w.client.address, w.node.address).redeemed == total
