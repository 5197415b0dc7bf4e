"""The pieces that wire payments into the node, without a model: pricing a call against its signed manifest (free,
revoked, unregistered, squatted, other terms), the call gate (unpaid, voided), a client resuming from the node's
account of its channel, the wire form of vouchers and receipts, the node key, the chain settings and the node's
chain services (embedded and over JSON-RPC)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from chain_fixtures import World, base_world, make_cid, world  # noqa: F401 (fixtures)
from pydantic import ValidationError

from openlora.adapters.keys import KeystoreError
from openlora.chain.backends import dev_accounts, embedded_chain, rpc_chain
from openlora.chain.contracts import PaymentChannels
from openlora.chain.errors import (
    AdapterNotPayable,
    AdapterRevoked,
    ChainError,
    InvalidReceipt,
    InvalidVoucher,
    PaymentRequired,
    TermsMismatch,
)
from openlora.chain.ledger import Ledger
from openlora.chain.node_key import EMPTY_PASSPHRASE_SCRYPT_N, node_account
from openlora.chain.payer import Payer
from openlora.chain.payments import NodePayments
from openlora.chain.pricing import AdapterTerms, call_quote, cost_wei
from openlora.chain.records import Voucher
from openlora.chain.rpc_server import ChainRpcServer
from openlora.chain.service import NodeChain
from openlora.chain.vouchers import sign_voucher
from openlora.chain.wire import receipt_from_pb, receipt_to_pb, voucher_from_pb, voucher_to_pb
from openlora.config import ChainSettings
from openlora.local import cli

PRICE, ROYALTY = 1000, 2500


def terms(w: World, price: int = PRICE, royalty: int = ROYALTY, publisher: str | None = None) -> AdapterTerms:
    return AdapterTerms(publisher or w.publisher.address, price, royalty)


# -- pricing a call against its manifest --------------------------------------------------------------------


@pytest.mark.parametrize("price", [0, PRICE])
def test_unregistered_adapter_is_free_on_a_node_without_fee(world, price):  # noqa: F811
    assert call_quote(world.registry, make_cid("unregistered"), terms(world, price=price), 0) is None


def test_adapter_registered_at_price_zero_is_free(world):  # noqa: F811
    cid = world.register("free", 0, ROYALTY)
    assert call_quote(world.registry, cid, terms(world, price=0), 0) is None


def test_node_fee_makes_a_free_adapter_paid(world):  # noqa: F811
    cid = make_cid("free")
    with pytest.raises(AdapterNotPayable, match="not registered on chain.*openlora-node register"):
        call_quote(world.registry, cid, terms(world, price=0), 300)
    world.registry.register(world.publisher, cid, 0, ROYALTY)
    quote = call_quote(world.registry, cid, terms(world, price=0), 300)
    assert (quote.price_per_1k_tokens, quote.publisher, quote.royalty_bps) == (300, world.publisher.address, ROYALTY)


def test_registered_adapter_is_quoted_at_its_terms(world):  # noqa: F811
    cid = world.register("paid", PRICE, ROYALTY)
    quote = call_quote(world.registry, cid, terms(world), 500)
    assert (quote.publisher_price_per_1k, quote.node_fee_per_1k, quote.cid) == (PRICE, 500, cid)


@pytest.mark.parametrize("price", [0, PRICE])
def test_revoked_adapter_is_refused_even_when_free(world, price):  # noqa: F811
    cid = world.register("revoked", price, ROYALTY)
    world.registry.revoke(world.publisher, cid)
    with pytest.raises(AdapterRevoked, match="revoked by its publisher"):
        call_quote(world.registry, cid, terms(world, price=price), 0)


@pytest.mark.parametrize("price", [0, PRICE])
def test_a_squatter_neither_earns_nor_blocks_the_publisher(world, price):  # noqa: F811
    cid = make_cid("squatted")
    world.registry.register(world.other, cid, price, ROYALTY)  # before the manifest's publisher
    with pytest.raises(AdapterNotPayable, match="not registered"):  # the squatter's registration is not looked up
        call_quote(world.registry, cid, terms(world, price=price), 300)
    world.registry.register(world.publisher, cid, price, ROYALTY)  # on main: AlreadyRegistered, forever
    quote = call_quote(world.registry, cid, terms(world, price=price), 300)
    assert quote.publisher == world.publisher.address


@pytest.mark.parametrize("price, royalty", [(PRICE + 1, ROYALTY), (PRICE, ROYALTY + 1)])
def test_registration_at_other_terms_is_refused(world, price, royalty):  # noqa: F811
    cid = world.register("terms", PRICE, ROYALTY)
    with pytest.raises(TermsMismatch, match="republish"):
        call_quote(world.registry, cid, terms(world, price, royalty), 0)


# -- the call gate ------------------------------------------------------------------------------------------


@pytest.fixture
def payments(world, tmp_path):  # noqa: F811
    ledger = Ledger(tmp_path / "ledger.sqlite", world.node, world.channels.domain, world.chain.genesis_hash)
    yield NodePayments(world.registry, world.channels, ledger, 500)
    ledger.close()


def test_base_model_calls_are_free(payments):
    price = payments.price_call(None, None, 30, 100)
    assert (price.quote, price.max_cost, price.required) == (None, 0, False)
    assert payments.open_call(None, price) is None


def test_paid_call_without_voucher_is_refused_with_its_price(world, payments):  # noqa: F811
    cid = world.register("paid", PRICE, ROYALTY)
    price = payments.price_call(cid, terms(world), 30, 100)
    assert price.max_cost == cost_wei(130, PRICE + 500) and price.required
    with pytest.raises(PaymentRequired, match=f"costs up to {price.max_cost} wei"):
        payments.open_call(None, price)


def test_call_closed_with_no_tokens_is_voided(world, payments):  # noqa: F811
    cid = world.register("paid", PRICE, ROYALTY)
    world.channels.deposit(world.client, world.node.address, 10**6)
    price = payments.price_call(cid, terms(world), 30, 100)
    payer = Payer(world.channels, world.client, world.node.address)
    call = payments.open_call(payer.pay_quote(price.quote, price.max_tokens).voucher, price)
    assert payments.close_call(call, 0) is None
    totals, _ = payments.channel_view(world.client.address).ledger
    assert (totals.committed, totals.charged) == (0, 0)


@pytest.mark.parametrize("tokens", [0, -1])
def test_price_call_needs_tokens(payments, tokens):
    with pytest.raises(ValueError, match=">= 1"):
        payments.price_call(None, None, tokens, 10)


# -- a client resuming from the node's account --------------------------------------------------------------


@pytest.fixture
def payer(world):  # noqa: F811
    world.channels.deposit(world.client, world.node.address, 10**6)
    return Payer(world.channels, world.client, world.node.address)


LANE = b"\x07" * 32  # an adapter id the resume tests' vouchers name


def latest(w: World, amount: int, signer=None, epoch: int = 0):
    """The client's voucher for ``amount`` (its signature replaced by ``signer``'s when given)."""
    v = Voucher(w.client.address, w.node.address, epoch, amount, LANE, PRICE, amount)
    signed = sign_voucher(w.client, v, w.channels.domain)
    if signer is not None:
        other = sign_voucher(signer, replace(v, client=signer.address), w.channels.domain)
        signed = replace(signed, signature=other.signature)
    return signed


def test_payer_resumes_from_its_own_latest_voucher(world, payer):  # noqa: F811
    payer.resume(latest(world, 500), 300)
    assert (payer.signed_amount, payer.charged) == (500, 300)
    paid = payer.pay(100, adapter=LANE, price_per_1k_tokens=1000, max_tokens=100).voucher.voucher
    assert paid.cumulative_amount == 501  # above the latest, covers 300 + 100
    payer.resume(latest(world, 200), 100)  # never lowers what it knows
    assert (payer.signed_amount, payer.charged) == (501, 300)


def test_payer_counts_a_claimed_charge_only_up_to_its_voucher(world, payer):  # noqa: F811
    payer.resume(latest(world, 500), 10**9)
    assert payer.charged == 500


@pytest.mark.parametrize("case", ["forged", "other_epoch"])
def test_payer_refuses_an_account_not_backed_by_its_voucher(world, payer, case):  # noqa: F811
    signed = latest(world, 500, signer=world.other) if case == "forged" else latest(world, 500, epoch=3)
    with pytest.raises(InvalidReceipt):
        payer.resume(signed, 0)
    assert (payer.signed_amount, payer.charged) == (0, 0)


# -- the wire form ------------------------------------------------------------------------------------------


def test_voucher_and_receipt_round_trip(world, payments):  # noqa: F811
    cid = world.register("paid", PRICE, ROYALTY)
    world.channels.deposit(world.client, world.node.address, 10**6)
    price = payments.price_call(cid, terms(world), 30, 100)
    payment = Payer(world.channels, world.client, world.node.address).pay_quote(price.quote, price.max_tokens)
    assert voucher_from_pb(voucher_to_pb(payment.voucher)) == payment.voucher
    receipt = payments.close_call(payments.open_call(payment.voucher, price), 77)
    assert receipt_from_pb(receipt_to_pb(receipt)) == receipt


@pytest.mark.parametrize(
    "field, value, match",
    [("client", "0xabc", "checksummed"), ("cumulative_amount", "-5", "decimal"), ("cumulative_amount", "1e3", "decimal"),
     ("signature", b"\x00" * 64, "65 bytes")],
)  # fmt: skip
def test_malformed_wire_voucher_is_refused(world, field, value, match):  # noqa: F811
    message = voucher_to_pb(latest(world, 5))
    setattr(message, field, value)
    with pytest.raises(InvalidVoucher, match=match):
        voucher_from_pb(message)


def test_malformed_wire_receipt_is_refused(world, payments):  # noqa: F811
    cid = world.register("paid", PRICE, ROYALTY)
    world.channels.deposit(world.client, world.node.address, 10**6)
    price = payments.price_call(cid, terms(world), 30, 100)
    payment = Payer(world.channels, world.client, world.node.address).pay_quote(price.quote, price.max_tokens)
    message = receipt_to_pb(payments.close_call(payments.open_call(payment.voucher, price), 77))
    message.cost = "seven"
    with pytest.raises(InvalidReceipt, match="decimal"):
        receipt_from_pb(message)


# -- node key, settings, chain services ---------------------------------------------------------------------


def test_node_key_is_made_once_and_reopened(tmp_path):
    path = tmp_path / "keys" / "node-key.json"
    first = node_account(path, "")
    assert node_account(path, "").address == first.address
    assert json.loads(path.read_text())["crypto"]["kdfparams"]["n"] == EMPTY_PASSPHRASE_SCRYPT_N
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        node_account(path, "not it")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rpc_url": "http://127.0.0.1:8545"}, "--contracts FILE"), ({"rpc_url": "ws://x", "contracts": "d.json"}, "http"),
     ({"node_fee_per_1k": -1}, "greater than or equal")],
)  # fmt: skip
def test_chain_settings_refuse_what_cannot_work(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        ChainSettings(**kwargs)


def test_embedded_chain_services_key_the_ledger_by_genesis(tmp_path):
    ledgers = []
    for _ in range(2):
        chain = NodeChain(ChainSettings(settle_every_seconds=5), tmp_path)
        chain.start()
        try:
            info = chain.info
            remote = PaymentChannels(rpc_chain(info.rpc_url), info.channels)
            assert remote.chain.w3.eth.get_balance(info.node_address) > 0  # funded for settlement gas
            assert info.embedded and info.rpc_url.startswith("http://127.0.0.1:") and remote.withdraw_timeout_s == 3600
            ledgers.append(chain.ledger_path)
        finally:
            chain.stop()
    assert ledgers[0] != ledgers[1] and all(p.is_file() for p in ledgers)  # a new chain never meets an old ledger
    assert ledgers[0].parent == ledgers[1].parent == tmp_path / "ledger"


def test_rpc_chain_services_check_the_deployment(world, tmp_path):  # noqa: F811
    deployment = tmp_path / "deployment.json"
    with ChainRpcServer(world.chain) as server:
        deployment.write_text(world.deployment.to_json())
        chain = NodeChain(ChainSettings(rpc_url=server.url, contracts=deployment), tmp_path)
        chain.start()
        try:
            assert (chain.info.rpc_url, chain.info.channels, chain.info.embedded) == (server.url, world.channels.address, False)
        finally:
            chain.stop()
        for data, match in (
            ({**json.loads(world.deployment.to_json()), "chain_id": 1}, "is for chain 1"),
            ({**json.loads(world.deployment.to_json()), "registry": world.client.address}, "no AdapterRegistry contract"),
        ):
            deployment.write_text(json.dumps(data))
            with pytest.raises(ChainError, match=match):
                NodeChain(ChainSettings(rpc_url=server.url, contracts=deployment), tmp_path).start()


def test_embedded_chains_have_distinct_geneses():
    assert embedded_chain().genesis_hash != embedded_chain().genesis_hash


def test_unreadable_deployment_file_is_a_chain_error(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ChainError, match="--contracts"):
        NodeChain(ChainSettings(rpc_url="http://127.0.0.1:1", contracts=missing), tmp_path).start()


# -- command lines that need no node ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--chain", "ganache"], "--chain: only 'embedded' is built in"),
        (["--chain-rpc", "http://127.0.0.1:1"], "--contracts FILE"),
        (["--chain-rpc", "ws://127.0.0.1:1", "--contracts", "d.json"], "--chain-rpc: chain RPC URL must start with http"),
        (["--node-fee-per-1k", "-5"], "--node-fee-per-1k"),
    ],
)
def test_start_refuses_bad_chain_flags_before_loading_anything(tmp_path, flags, message):
    out = cli("openlora-node", "start", "--data-dir", str(tmp_path), *flags, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_keys_dev_writes_a_funded_dev_account(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENLORA_KEY_PASSPHRASE", "")
    path = tmp_path / "client.json"
    out = cli("openlora-node", "keys", "dev", "3", "--out", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == dev_accounts(4)[3].address == node_account(path, "").address
    assert cli("openlora-node", "keys", "dev", "3", "--out", str(path)).returncode == 2  # never overwrites
