"""The contracts themselves, on the embedded chain: artifacts match sources, every revert path, settlement
arithmetic, EIP-712 agreement between Python and Solidity, pull payments, withdrawals and gas batching."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace

import pytest
from chain_fixtures import ROOT, WITHDRAW_TIMEOUT_S, World, base_world, build_world, make_cid, world  # noqa: F401
from eth_utils import keccak
from multiformats import CID

from openlora.chain.backends import dev_accounts, embedded_chain
from openlora.chain.contracts import (
    ARTIFACTS_DIR,
    AdapterRegistry,
    Deployment,
    adapter_id,
    canonical_cid,
    deploy,
    load_artifact,
    transact,
)
from openlora.chain.errors import ContractRevert
from openlora.chain.pricing import AdapterTerms, call_quote
from openlora.chain.records import Redemption, SignedVoucher, UsageEntry, Voucher
from openlora.chain.vouchers import sign_voucher, voucher_message


PUBLISHER = "0x" + "ab" * 20
PRICE = 100  # wei per 1k tokens in the test vouchers: 10 tokens per wei at most


def voucher(
    w: World,
    amount: int,
    *,
    epoch: int = 0,
    client=None,
    node=None,
    signer=None,
    adapter: bytes | None = None,
    price: int = PRICE,
    adapter_amount: int | None = None,
) -> SignedVoucher:
    """A voucher from ``client`` (default: the world's client) to ``node``, signed by ``signer`` (a forgery when
    that is not the client), naming ``adapter`` (default: some registered-looking id) at ``price``."""
    client = client or w.client
    adapter = adapter if adapter is not None else adapter_id(make_cid("adapter"), w.publisher.address)
    v = Voucher(
        client.address, (node or w.node).address, epoch, amount, adapter, price,
        amount if adapter_amount is None else adapter_amount,
    )  # fmt: skip
    if signer is None:
        return sign_voucher(client, v, w.channels.domain)
    return SignedVoucher(v, bytes(signer.sign_message(voucher_message(v, w.channels.domain)).signature))


def redeem(w: World, signed, claimed: int, usage: list[UsageEntry], sender=None):
    return w.channels.settle(sender or w.node, [Redemption(signed, claimed, tuple(usage))])


def aid(w: World, cid: str, publisher: str | None = None) -> bytes:
    """The adapter id of ``cid`` registered by the world's publisher (or ``publisher``)."""
    return adapter_id(cid, publisher or w.publisher.address)


def entry(
    w: World,
    cid: str,
    amount: int,
    calls: int = 1,
    tokens: int = 10,
    *,
    client=None,
    epoch: int = 0,
    authorised: int = 10**9,
    publisher: str | None = None,
    signed: SignedVoucher | None = None,
) -> UsageEntry:
    """A usage entry backed by a voucher of ``client`` naming ``cid`` and authorising ``authorised`` wei on it."""
    if signed is None:
        signed = voucher(w, amount, client=client, epoch=epoch, adapter=aid(w, cid, publisher), adapter_amount=authorised)
    return UsageEntry(signed, calls, tokens, amount)


def funded(w: World, amount: int = 10_000) -> str:
    """Registers an adapter and deposits ``amount`` wei from the client to the node; returns the CID."""
    cid = w.register()
    w.channels.deposit(w.client, w.node.address, amount)
    return cid


def forwarder(w: World):
    """Deploys a RefusingForwarder (an account that refuses ETH); returns a function that calls through it."""
    address = deploy(w.chain, w.deployer, "RefusingForwarder")
    contract = w.chain.w3.eth.contract(address=address, abi=load_artifact("RefusingForwarder")["abi"])

    def call(target, fn: str, *args, value: int = 0):
        data = target.contract.encode_abi(fn, args=list(args))
        return transact(w.chain, w.deployer, contract.functions.forward(target.address, data), value=value)

    call.address = address
    return call


# -- artifacts ---------------------------------------------------------------------------------------------


def test_artifacts_match_sources():
    """Recompiles contracts/src with the pinned solc-js and fails when the committed artifacts differ."""
    node = shutil.which("node")
    assert node, "node (Node.js >= 18) is needed to recompile the contracts"
    result = subprocess.run(
        [node, str(ROOT / "scripts" / "build_contracts.mjs"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_artifacts_record_compiler_and_sources():
    pinned = json.loads((ROOT / "contracts" / "package.json").read_text())["devDependencies"]["solc"]
    for path in ARTIFACTS_DIR.glob("*.json"):
        artifact = json.loads(path.read_text())
        assert artifact["compiler"]["version"].startswith(pinned + "+")
        assert artifact["settings"]["evmVersion"] == "cancun"
        source = (ROOT / "contracts" / artifact["sourceName"]).read_bytes()
        assert artifact["sources"][artifact["sourceName"]] == hashlib.sha256(source).hexdigest()
        assert len(artifact["bytecode"]) > 2 and artifact["abi"]


# -- every revert path -------------------------------------------------------------------------------------


def _invalid_registry(w: World):
    deploy(w.chain, w.deployer, "PaymentChannels", w.client.address, WITHDRAW_TIMEOUT_S)


def _invalid_timeout(w: World):
    deploy(w.chain, w.deployer, "PaymentChannels", w.registry.address, 0)


def _invalid_cid_empty(w: World):
    w.registry._transact(w.publisher, "register", "", 1, 1)


def _invalid_cid_long(w: World):
    w.registry._transact(w.publisher, "register", "b" * 129, 1, 1)


def _royalty_too_high(w: World):
    w.registry.register(w.publisher, make_cid("a"), 1, 10_001)


def _already_registered(w: World):
    cid = w.register()
    w.registry.register(w.publisher, cid, 5, 0)  # only its own registration blocks a publisher


def _unknown_adapter_revoke(w: World):
    w.registry.revoke(w.publisher, make_cid("never"))


def _unknown_adapter_lookup(w: World):
    w.registry.adapter(make_cid("never"), w.publisher.address)


def _not_publisher(w: World):
    w.registry._transact(w.other, "revoke", aid(w, w.register()))


def _already_revoked(w: World):
    cid = w.register()
    w.registry.revoke(w.publisher, cid)
    w.registry.revoke(w.publisher, cid)


def _index_out_of_range(w: World):
    w.registry._call("adapterIds", 1, 10)


def _zero_deposit(w: World):
    w.channels.deposit(w.client, w.node.address, 0)


def _zero_node(w: World):
    w.channels.deposit(w.client, "0x" + "00" * 20, 1)


def _nothing_to_withdraw(w: World):
    w.channels.request_withdraw(w.client, w.node.address)


def _withdraw_already_requested(w: World):
    funded(w)
    w.channels.request_withdraw(w.client, w.node.address)
    w.channels.request_withdraw(w.client, w.node.address)


def _no_withdraw_requested(w: World):
    funded(w)
    w.channels.withdraw(w.client, w.node.address)


def _withdraw_too_early(w: World):
    funded(w)
    w.channels.request_withdraw(w.client, w.node.address)
    w.channels.withdraw(w.client, w.node.address)


def _transfer_failed_refund(w: World):
    call = forwarder(w)
    call(w.channels, "deposit", w.node.address, value=100)
    call(w.channels, "requestWithdraw", w.node.address)
    w.chain.advance_time(WITHDRAW_TIMEOUT_S)
    call(w.channels, "withdraw", w.node.address)


def _transfer_failed_earnings(w: World):
    call = forwarder(w)
    cid = make_cid("refuser")
    call(w.registry, "register", canonical_cid(cid), 1000, 5000)
    w.channels.deposit(w.client, w.node.address, 1000)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 100, publisher=call.address)])
    call(w.channels, "withdrawEarnings")


def _nothing_to_claim(w: World):
    w.channels.withdraw_earnings(w.publisher)


def _empty_batch(w: World):
    w.channels.settle(w.node, [])


def _not_voucher_node(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 100)], sender=w.other)


def _wrong_epoch(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100, epoch=1), 100, [entry(w, cid, 100)])


def _claim_exceeds_voucher(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 101, [entry(w, cid, 101)])


def _claim_exceeds_deposit(w: World):
    cid = funded(w, 100)
    redeem(w, voucher(w, 500), 101, [entry(w, cid, 101)])


def _nothing_to_redeem(w: World):
    cid = funded(w)
    signed = voucher(w, 100)
    redeem(w, signed, 60, [entry(w, cid, 60)])
    redeem(w, signed, 60, [entry(w, cid, 60)])  # the same redemption again: a replay


def _invalid_signature_forged(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100, signer=w.other), 100, [entry(w, cid, 100)])


def _invalid_signature_malformed(w: World):
    cid = funded(w)
    signed = voucher(w, 100)
    redeem(w, SignedVoucher(signed.voucher, signed.signature[:64]), 100, [entry(w, cid, 100)])


def _no_usage(w: World):
    funded(w)
    redeem(w, voucher(w, 100), 100, [])


def _zero_calls(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 100, calls=0)])


def _unknown_adapter_settle(w: World):
    funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, make_cid("unregistered"), 100)])


def _usage_mismatch_over(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 60), entry(w, cid, 41)])


def _usage_mismatch_under(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 99)])


def _invalid_signature_entry_forged(w: World):
    """The node re-points the client's voucher for one adapter at another (its own, at 0 % royalty)."""
    cid, own = funded(w), make_cid("node's own")
    w.registry.register(w.node, own, 0, 0)
    paid_for = entry(w, cid, 100).voucher
    forged = SignedVoucher(replace(paid_for.voucher, adapter=aid(w, own, w.node.address)), paid_for.signature)
    redeem(w, voucher(w, 100), 100, [entry(w, own, 100, signed=forged)])


def _voucher_mismatch(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 100, client=w.other)])


def _usage_beyond_voucher(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 100, authorised=99)])


def _usage_beyond_voucher_over_redemptions(w: World):
    cid = funded(w)
    lane = entry(w, cid, 60, authorised=100).voucher
    redeem(w, voucher(w, 100), 60, [entry(w, cid, 60, signed=lane)])
    redeem(w, voucher(w, 200), 101, [entry(w, cid, 41, signed=lane)])  # 101 > the 100 authorised on the adapter


def _usage_beyond_amount_tokens(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 100), 100, [entry(w, cid, 100, tokens=1001)])  # 1001 tokens at 100 wei/1k cost > 100 wei


def _usage_beyond_amount_calls(w: World):
    cid = funded(w)
    redeem(w, voucher(w, 5), 5, [entry(w, cid, 5, calls=6, tokens=1)])  # every paid call costs >= 1 wei


REVERTS: dict[str, list[Callable[[World], object]]] = {
    "InvalidRegistry": [_invalid_registry],
    "InvalidTimeout": [_invalid_timeout],
    "InvalidCid": [_invalid_cid_empty, _invalid_cid_long],
    "RoyaltyTooHigh": [_royalty_too_high],
    "AlreadyRegistered": [_already_registered],
    "UnknownAdapter": [_unknown_adapter_revoke, _unknown_adapter_lookup, _unknown_adapter_settle],
    "NotPublisher": [_not_publisher],
    "AlreadyRevoked": [_already_revoked],
    "IndexOutOfRange": [_index_out_of_range],
    "ZeroDeposit": [_zero_deposit],
    "ZeroNode": [_zero_node],
    "NothingToWithdraw": [_nothing_to_withdraw],
    "WithdrawAlreadyRequested": [_withdraw_already_requested],
    "NoWithdrawRequested": [_no_withdraw_requested],
    "WithdrawTooEarly": [_withdraw_too_early],
    "TransferFailed": [_transfer_failed_refund, _transfer_failed_earnings],
    "NothingToClaim": [_nothing_to_claim],
    "EmptyBatch": [_empty_batch],
    "NotVoucherNode": [_not_voucher_node],
    "WrongEpoch": [_wrong_epoch],
    "ClaimExceedsVoucher": [_claim_exceeds_voucher],
    "ClaimExceedsDeposit": [_claim_exceeds_deposit],
    "NothingToRedeem": [_nothing_to_redeem],
    "InvalidSignature": [_invalid_signature_forged, _invalid_signature_malformed, _invalid_signature_entry_forged],
    "VoucherMismatch": [_voucher_mismatch],
    "UsageBeyondVoucher": [_usage_beyond_voucher, _usage_beyond_voucher_over_redemptions],
    "UsageBeyondAmount": [_usage_beyond_amount_tokens, _usage_beyond_amount_calls],
    "NoUsage": [_no_usage],
    "ZeroCalls": [_zero_calls],
    "UsageMismatch": [_usage_mismatch_over, _usage_mismatch_under],
}


def test_every_custom_error_has_a_revert_test():
    declared = {
        e["name"]
        for name in ("AdapterRegistry", "PaymentChannels")
        for e in load_artifact(name)["abi"]
        if e["type"] == "error" and not e["name"].startswith(("ECDSA", "StringTooLong", "InvalidShortString"))
    }
    assert declared == set(REVERTS)


@pytest.mark.parametrize(
    "error, case",
    [(error, case) for error, cases in REVERTS.items() for case in cases],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_revert(world, error, case):  # noqa: F811 (fixture)
    with pytest.raises(ContractRevert) as raised:
        case(world)
    assert raised.value.error == error, raised.value


def test_revert_leaves_state_unchanged(world):  # noqa: F811
    cid = funded(world)
    with pytest.raises(ContractRevert):
        # The second redemption is bad: the whole batch, the good first one included, reverts.
        world.channels.settle(
            world.node,
            [
                Redemption(voucher(world, 100), 100, (entry(world, cid, 100),)),
                Redemption(voucher(world, 50, client=world.other), 50, (entry(world, cid, 50, client=world.other),)),
            ],
        )
    assert world.channels.channel(world.client.address, world.node.address).redeemed == 0
    assert world.channels.usage(aid(world, cid)).calls == 0


# -- behaviour ---------------------------------------------------------------------------------------------


def test_voucher_digest_matches_python(world):  # noqa: F811
    signed = voucher(world, 12345, epoch=7)
    expected = voucher_message(signed.voucher, world.channels.domain)
    # EIP-712 digest: keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(message))
    digest = keccak(b"\x19" + expected.version + expected.header + expected.body)
    assert world.channels.voucher_digest(signed.voucher) == digest


def test_settle_splits_by_royalty_and_records_usage(world):  # noqa: F811
    cid_a = world.register("a", royalty_bps=2500)
    cid_b = world.register("b", royalty_bps=333)
    world.channels.deposit(world.client, world.node.address, 10_000)
    redeem(world, voucher(world, 5000), 1001, [entry(world, cid_a, 1000, calls=3, tokens=70), entry(world, cid_b, 1, tokens=5)])
    a, b = world.channels.usage(aid(world, cid_a)), world.channels.usage(aid(world, cid_b))
    assert (a.calls, a.tokens, a.amount, a.publisher_earnings) == (3, 70, 1000, 250)
    assert (b.calls, b.tokens, b.amount, b.publisher_earnings) == (1, 5, 1, 0)  # 1 * 333 / 10000 rounds down
    assert world.channels.earnings(world.publisher.address) == 250
    assert world.channels.earnings(world.node.address) == 751
    # A later claim on a newer voucher pays only the delta.
    redeem(world, voucher(world, 6000), 1401, [entry(world, cid_a, 400)])
    assert world.channels.usage(aid(world, cid_a)).amount == 1400
    assert world.channels.channel(world.client.address, world.node.address).redeemed == 1401


def test_a_squatter_cannot_take_or_block_a_cid(world):  # noqa: F811
    """Whoever registers a CID first (e.g. seen on gossip) registers only (itself, CID): the publisher the
    manifest names still registers its own, and that is the adapter nodes price and settle."""
    cid = make_cid("seen on gossip")
    world.registry.register(world.other, cid, 0, 10_000)  # front-runs the publisher
    real = world.registry.register(world.publisher, cid, 1000, 2500)
    assert real == aid(world, cid) != aid(world, cid, world.other.address)
    info = world.registry.adapter(cid, world.publisher.address)
    assert (info.publisher, info.price_per_1k_tokens, info.royalty_bps) == (world.publisher.address, 1000, 2500)
    terms = AdapterTerms(world.publisher.address, 1000, 2500)
    assert call_quote(world.registry, cid, terms, 500).adapter_id == real


def test_attribution_follows_the_clients_vouchers_per_adapter(world):  # noqa: F811
    cid_a, cid_b = world.register("a"), world.register("b")
    world.channels.deposit(world.client, world.node.address, 10_000)
    lane_a = entry(world, cid_a, 300, authorised=300).voucher
    redeem(world, voucher(world, 1000), 300, [entry(world, cid_a, 300, signed=lane_a)])
    assert world.channels.attributed(world.client.address, world.node.address, 0, aid(world, cid_a)) == 300
    # The client paid 300 more in total but authorised it for b: the node cannot put it on a.
    with pytest.raises(ContractRevert, match="UsageBeyondVoucher"):
        redeem(world, voucher(world, 1000), 600, [entry(world, cid_a, 300, signed=lane_a)])
    redeem(world, voucher(world, 1000), 600, [entry(world, cid_b, 300, authorised=300)])
    assert world.channels.usage(aid(world, cid_b)).amount == 300


def test_revoked_adapter_usage_is_still_settled(world):  # noqa: F811
    cid = funded(world)
    world.registry.revoke(world.publisher, cid)
    assert world.registry.adapter(cid, world.publisher.address).revoked_at > 0
    redeem(world, voucher(world, 100), 100, [entry(world, cid, 100)])
    assert world.channels.usage(aid(world, cid)).publisher_earnings == 25


def test_earnings_are_withdrawn_by_their_owner(world):  # noqa: F811
    cid = funded(world)
    redeem(world, voucher(world, 1000), 1000, [entry(world, cid, 1000)])
    w3 = world.chain.w3
    before = w3.eth.get_balance(world.publisher.address)
    receipt = world.channels.withdraw_earnings(world.publisher)
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(world.publisher.address) == before + 250 - fee
    assert world.channels.earnings(world.publisher.address) == 0


def test_withdraw_refunds_unclaimed_and_starts_next_epoch(world):  # noqa: F811
    cid = funded(world, 1000)
    old = voucher(world, 1000)
    redeem(world, old, 300, [entry(world, cid, 300)])
    world.channels.request_withdraw(world.client, world.node.address)
    assert world.channels.channel(world.client.address, world.node.address).withdraw_at > 0
    redeem(world, old, 400, [entry(world, cid, 100)])  # the node may still claim during the timeout
    world.chain.advance_time(WITHDRAW_TIMEOUT_S)
    w3 = world.chain.w3
    before = w3.eth.get_balance(world.client.address)
    receipt = world.channels.withdraw(world.client, world.node.address)
    assert w3.eth.get_balance(world.client.address) == before + 600 - receipt["gasUsed"] * receipt["effectiveGasPrice"]
    state = world.channels.channel(world.client.address, world.node.address)
    assert (state.deposited, state.redeemed, state.epoch, state.withdraw_at) == (0, 0, 1, 0)
    world.channels.deposit(world.client, world.node.address, 50)
    with pytest.raises(ContractRevert, match="WrongEpoch"):
        redeem(world, old, 450, [entry(world, cid, 50)])  # old-epoch vouchers are dead


def test_adapter_ids_are_enumerable_and_map_back_to_cids(world):  # noqa: F811
    cids = [world.register(f"adapter-{i}") for i in range(5)]
    ids = world.registry.adapter_ids(page=2)
    assert ids == [aid(world, c) for c in cids]
    assert [world.registry.adapter(i).cid for i in ids] == cids
    expected = keccak(bytes.fromhex(world.publisher.address[2:]) + cids[0].encode())
    assert world.registry._call("adapterIdOf", world.publisher.address, cids[0]) == expected


@pytest.mark.parametrize("bad", ["", "not-a-cid", "Qm" + "1" * 10])
def test_adapter_id_rejects_non_cids(bad):
    with pytest.raises(ValueError, match="not a CID"):
        adapter_id(bad, PUBLISHER)


def test_adapter_id_is_canonical_across_bases():
    cid = make_cid("x")
    expected = keccak(bytes.fromhex(PUBLISHER[2:]) + cid.encode())
    assert adapter_id(CID.decode(cid).encode("base36"), PUBLISHER) == adapter_id(cid, PUBLISHER) == expected


def test_batching_amortises_gas(world):  # noqa: F811
    """Per-redemption gas of one 50-redemption settle is well below that of a 1-redemption settle."""
    cid = world.register()
    clients = dev_accounts(10)[5:]
    for c in [world.client, world.other, *clients]:
        world.channels.deposit(c, world.node.address, 10**6)
    single = redeem(world, voucher(world, 100), 100, [entry(world, cid, 100)])["gasUsed"]
    # 50 redemptions: 7 clients, each redeemed several times in the batch with growing totals.
    batch, totals = [], {}
    for i in range(50):
        c = [world.client, world.other, *clients][i % 7]
        totals[c.address] = totals.get(c.address, 100 if c is world.client else 0) + 10
        batch.append(Redemption(voucher(world, 10**6, client=c), totals[c.address], (entry(world, cid, 10, client=c),)))
    many = world.channels.settle(world.node, batch)["gasUsed"]
    assert many / 50 < single / 2, (single, many)


def test_deployment_round_trips_as_json(world):  # noqa: F811
    assert Deployment.from_json(world.deployment.to_json()) == world.deployment
    with pytest.raises(ValueError, match="not a deployment"):
        Deployment.from_json('{"chain_id": 1}')


def test_deploy_on_fresh_chain_gives_working_registry():
    w = build_world(embedded_chain())
    assert isinstance(w.registry, AdapterRegistry)
    assert w.channels.withdraw_timeout_s == WITHDRAW_TIMEOUT_S
    assert w.channels.registry_address == w.registry.address
