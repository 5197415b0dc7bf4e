"""Pay per call through a real node on its embedded dev chain (no chain flags): a client in another process opens a
channel, pays per call and sees the usage on chain; every way a call can be unpaid is refused with a status and
no text; concurrent calls, a cancelled call, a revoked adapter, a squatted CID.

Below the API the same rules are tested by the library tests: test_chain_payments.py (each voucher check, the
payer's receipt checks, the ledger), test_chain_settlement.py (batching, kill -9 at every settlement step),
test_chain_contracts.py (every revert of the contracts).
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from pay_fixtures import (
    CLIENT,
    CLIENT2,
    FINANCE,
    LEGAL,
    MEDICAL,
    PUBLISHER,
    QUESTION,
    SQUATTER,
    channel_of,
    keys,  # noqa: F401 (fixture)
    paid_request,
    raw_stub,
    refusal,
    start_node,
    voucher,
    wait_usage,
)

from openlora.adapters.composition import Composition, part_tokens
from openlora.chain.attribution import usage_events
from openlora.chain.backends import rpc_chain
from openlora.chain.contracts import Deployment, PaymentChannels, adapter_id
from openlora.chain.errors import UntrustedContracts
from openlora.chain.pricing import cost_wei
from openlora.chain.quote_auth import sign_quote_auth
from openlora.client import NodeClient, PaidSession, node_contracts, payment_error, quote_request
from openlora.local import cli

PRICE, ROYALTY = 1000, 2500  # wei per 1k tokens, bps
DEPOSIT = 10**15


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = start_node(tmp_path_factory.mktemp("node"), "--settle-every-calls", "1")
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def client(node):
    with NodeClient(node.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def info(client):
    return client.node_info()


@pytest.fixture(scope="module")
def stub(node):
    channel, stub = raw_stub(node.address)
    yield stub
    channel.close()


def publish(node, keys, folder, price: int, royalty: int) -> str:  # noqa: F811
    """Publishes ``folder`` through the CLI at ``price``; the CID (a priced adapter is registered on chain)."""
    out = cli(
        "openlora-node", "publish", str(folder), "--node", node.address, "--key", str(keys["publisher"]),
        "--price-per-1k", str(price), "--royalty-bps", str(royalty),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"registered {out.stdout.split()[-1]} on chain as {PUBLISHER.address}" in out.stderr
    return out.stdout.split()[-1]


@pytest.fixture(scope="module")
def priced(node, keys):  # noqa: F811
    return publish(node, keys, MEDICAL, PRICE, ROYALTY)


@pytest.fixture(scope="module")
def funded(node, keys, priced):  # noqa: F811
    """The client's channel, opened through the CLI."""
    out = cli("openlora", "channel", "open", "--node", node.address, "--key", str(keys["client"]), "--amount", str(DEPOSIT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"epoch=0 deposited_wei={DEPOSIT} redeemed_wei=0 withdraw_at=0"


@pytest.fixture(scope="module")
def session(client, funded):
    return PaidSession(client, CLIENT)


def test_node_info_tells_clients_where_to_pay(node, info):
    c = info.chain
    assert c.embedded and c.rpc_url.startswith("http://127.0.0.1:") and c.node_fee_per_1k == "0"
    assert f"chain={c.rpc_url} account={c.node_address}" in node.ready_line
    assert rpc_chain(c.rpc_url).chain_id == c.chain_id


def test_client_in_another_process_pays_per_call_and_sees_usage_on_chain(node, client, info, keys, priced, funded):  # noqa: F811
    before = wait_usage(client, priced, 0)
    billed = []
    for _ in range(3):
        out = cli(
            "openlora", "generate", "--node", node.address, "--adapter", priced, "--max-tokens", "6", "--temperature",
            "0", "--usage", "--key", str(keys["client"]), QUESTION,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("Clinical note:")
        usage = dict(re.findall(r"(\w+)=(\d+)", out.stderr))
        tokens = int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
        assert int(usage["cost_wei"]) == cost_wei(tokens, PRICE)
        billed.append((tokens, int(usage["cost_wei"])))

    row = wait_usage(client, priced, before.calls + 3)
    assert row.calls - before.calls == 3
    assert row.tokens - before.tokens == sum(t for t, _ in billed)
    assert int(row.amount_wei) - int(before.amount_wei) == sum(c for _, c in billed)
    # The chain's own record: the events sum to the totals, each paying the publisher its royalty share.
    events = usage_events(
        PaymentChannels(rpc_chain(info.chain.rpc_url), info.chain.channels), cid=priced, publisher=PUBLISHER.address
    )
    assert sum(e.calls for e in events) == row.calls and sum(e.amount for e in events) == int(row.amount_wei)
    assert all(e.publisher_amount == e.amount * ROYALTY // 10_000 and e.client == CLIENT.address for e in events)
    assert int(row.publisher_earnings_wei) == sum(e.publisher_amount for e in events)

    out = cli("openlora", "usage", "--node", node.address, "--adapter", priced, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"adapter": priced, "calls": row.calls, "tokens": row.tokens, "publisher_earnings_wei": int(row.publisher_earnings_wei)}
    ]
    out = cli("openlora", "usage", "--node", node.address)
    assert f"{priced}  calls={row.calls} tokens={row.tokens}" in out.stdout


def test_cli_pays_each_part_of_a_composition_and_each_publisher_earns_its_share(node, client, keys, priced, funded):  # noqa: F811
    """`openlora generate --adapter "medical*0.6+legal*0.4"` (names resolved per part) signs one voucher per paid
    part; each part is billed its share of the call's tokens at its own price, and settles as its own call."""
    legal = publish(node, keys, LEGAL, 3 * PRICE, ROYALTY)
    before = {cid: wait_usage(client, cid, 0) for cid in (priced, legal)}
    out = cli(
        "openlora", "generate", "--node", node.address, "--adapter", f"medical*0.6+{legal}*0.4", "--max-tokens", "6",
        "--temperature", "0", "--usage", "--key", str(keys["client"]), QUESTION,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    usage = dict(re.findall(r"(\w+)=(\d+)", out.stderr))
    comp = Composition.of([(priced, 0.6), (legal, 0.4)])
    shares = dict(zip(comp.cids, part_tokens(int(usage["prompt_tokens"]) + int(usage["completion_tokens"]), [w for _, w in comp.parts])))
    costs = {priced: cost_wei(shares[priced], PRICE), legal: cost_wei(shares[legal], 3 * PRICE)}
    assert int(usage["cost_wei"]) == sum(costs.values()) and all(shares.values())
    for cid in (priced, legal):  # settled one by one (--settle-every-calls 1): each an ordinary call to its adapter
        row = wait_usage(client, cid, before[cid].calls + 1)
        assert (row.calls - before[cid].calls, row.tokens - before[cid].tokens) == (1, shares[cid])
        assert int(row.amount_wei) - int(before[cid].amount_wei) == costs[cid]


def test_free_calls_need_no_voucher(client, node, keys):  # noqa: F811
    free = client.publish(FINANCE, PUBLISHER, "finance-free").cid  # price 0 on a node without a fee: not registered
    # Priced but never registered: nothing could be settled for it, so a node without a fee serves it free.
    unregistered = client.publish(FINANCE, PUBLISHER, "finance-unregistered", price_per_1k_tokens=700).cid
    for adapter in (None, free, unregistered):
        request = paid_request(adapter or "", None, max_new_tokens=4)
        quote = client.quote(request)
        assert not quote.payment_required and quote.max_cost_wei == "0"
        assert client.generate(QUESTION, adapter=adapter, max_new_tokens=4).text()
    with pytest.raises(grpc.RpcError) as e:
        client.usage(free)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "not registered" in e.value.details()


def test_quote_prices_prompt_plus_max_new_tokens(node, client, info, priced):
    quote = client.quote(paid_request(priced, None, max_new_tokens=20), CLIENT2)
    assert quote.payment_required and quote.adapter == priced
    assert (quote.price_per_1k_tokens, quote.publisher_price_per_1k, quote.node_fee_per_1k) == (str(PRICE), str(PRICE), "0")
    assert int(quote.max_cost_wei) == cost_wei(quote.prompt_tokens + 20, PRICE)
    assert (quote.publisher, quote.royalty_bps) == (PUBLISHER.address, ROYALTY)
    assert (quote.node_address, quote.chain_id, quote.channels) == (info.chain.node_address, info.chain.chain_id, info.chain.channels)
    assert quote.channel.deposited == "0" and not quote.channel.HasField("latest_voucher")
    out = cli("openlora", "quote", "--node", node.address, "--adapter", priced, "--max-tokens", "20", "--raw", QUESTION)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["paymentRequired"] and printed["pricePer1kTokens"] == str(PRICE)
    assert int(printed["maxCostWei"]) == cost_wei(printed["promptTokens"] + 20, PRICE)
    assert printed["promptTokens"] < quote.prompt_tokens  # --raw: the text alone, without the chat template


@pytest.fixture(scope="module")
def overspender(client):
    """A second client whose channel holds 10 wei: less than any call's max cost."""
    PaidSession(client, CLIENT2).open_channel(10)


@pytest.mark.parametrize(
    "case, code, error",
    [
        ("unpaid", grpc.StatusCode.FAILED_PRECONDITION, "PaymentRequired"),
        ("underpaid", grpc.StatusCode.FAILED_PRECONDITION, "InsufficientAuthorization"),
        ("forged", grpc.StatusCode.PERMISSION_DENIED, "InvalidVoucher"),
        ("malformed", grpc.StatusCode.PERMISSION_DENIED, "InvalidVoucher"),
        ("other_node", grpc.StatusCode.PERMISSION_DENIED, "WrongNode"),
        ("other_epoch", grpc.StatusCode.FAILED_PRECONDITION, "WrongEpoch"),
        ("replayed", grpc.StatusCode.FAILED_PRECONDITION, "StaleVoucher"),
        ("overspent", grpc.StatusCode.FAILED_PRECONDITION, "InsufficientDeposit"),
    ],
)
def test_unpaid_call_is_refused_before_any_text(case, code, error, client, info, stub, priced, session, overspender):
    session.generate(QUESTION, adapter=priced, max_new_tokens=2).text()  # so that there is a voucher to replay
    before = channel_of(client, CLIENT)
    latest, committed = int(before.latest_voucher.cumulative_amount), int(before.committed)
    max_cost = int(client.quote(paid_request(priced, None)).max_cost_wei)
    enough = max(latest + 1, committed + max_cost)
    assert latest + 1 < committed + max_cost  # so that "underpaid" is not also stale
    signed = {
        "unpaid": None,
        "underpaid": voucher(info, CLIENT, latest + 1, cid=priced, price=PRICE),
        "forged": voucher(info, CLIENT, enough, signer=SQUATTER, cid=priced, price=PRICE),
        "malformed": voucher(info, CLIENT, enough, cid=priced, price=PRICE),
        "other_node": voucher(info, CLIENT, enough, node=CLIENT2.address, cid=priced, price=PRICE),
        "other_epoch": voucher(info, CLIENT, enough, epoch=1, cid=priced, price=PRICE),
        "replayed": None,
        "overspent": voucher(info, CLIENT2, max_cost, cid=priced, price=PRICE),
    }[case]
    request = paid_request(priced, signed)
    if case == "malformed":
        request.voucher.signature = request.voucher.signature[:64]
    if case == "replayed":
        request.voucher.CopyFrom(before.latest_voucher)

    e = refusal(stub, request)
    assert (e.code(), payment_error(e)) == (code, error), e.details()
    after = channel_of(client, CLIENT)  # nothing was recorded
    assert (after.latest_voucher, after.committed, after.charged_total) == (
        before.latest_voucher,
        before.committed,
        before.charged_total,
    )


def test_concurrent_calls_from_one_client_are_each_charged_their_tokens(client, priced, session):
    before = channel_of(client, CLIENT)

    def call(i: int):
        stream = session.generate(QUESTION, adapter=priced, max_new_tokens=3 + i % 4, temperature=0)
        stream.text()
        return stream.done, stream.receipt

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(8)))

    for done, receipt in results:
        assert receipt.tokens == done.usage.prompt_tokens + done.usage.completion_tokens
        assert receipt.cost == cost_wei(receipt.tokens, PRICE)
    after = channel_of(client, CLIENT)
    charged = sum(r.cost for _, r in results)
    assert int(after.charged_total) - int(before.charged_total) == charged
    assert after.committed == after.charged_total  # no reservation left behind
    assert max(r.charged_total for _, r in results) == int(after.charged_total)


def test_cancelled_call_is_billed_only_the_text_it_delivered(client, priced, session):
    before = channel_of(client, CLIENT)
    stream = session.generate(QUESTION, adapter=priced, max_new_tokens=64, temperature=0)
    quote = stream.quote
    next(iter(stream))
    stream.cancel()
    deadline = time.monotonic() + 30
    while (after := channel_of(client, CLIENT)).committed != after.charged_total and time.monotonic() < deadline:
        time.sleep(0.05)  # the node closes the call when it sees the cancellation
    assert after.committed == after.charged_total
    charged = int(after.charged_total) - int(before.charged_total)
    assert cost_wei(quote.prompt_tokens + 1, PRICE) <= charged < int(quote.max_cost_wei)
    assert stream.receipt is None
    # The client's next call builds on what the node says it charged, backed by the client's own voucher.
    follow = session.generate(QUESTION, adapter=priced, max_new_tokens=2)
    follow.text()
    assert follow.receipt.charged_total == int(after.charged_total) + follow.receipt.cost


def test_revoked_adapter_is_refused(node, client, keys, session):  # noqa: F811
    cid = publish(node, keys, LEGAL, 2000, 1000)
    assert session.generate(QUESTION, adapter=cid, max_new_tokens=2).text()
    out = cli("openlora-node", "revoke", cid, "--node", node.address, "--key", str(keys["publisher"]))
    assert out.returncode == 0, out.stderr
    for call in (
        lambda: session.generate(QUESTION, adapter=cid, max_new_tokens=2),
        lambda: client.quote(paid_request(cid, None)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert (e.value.code(), payment_error(e.value)) == (grpc.StatusCode.FAILED_PRECONDITION, "AdapterRevoked")
        assert "revoked by its publisher" in e.value.details()


def test_squatted_cid_earns_the_squatter_nothing_and_blocks_nobody(node, client, info, keys, session):  # noqa: F811
    cid = client.publish(FINANCE, PUBLISHER, "finance-priced", price_per_1k_tokens=500, royalty_bps=5000).cid
    registry, _ = node_contracts(info.chain)
    registry.register(SQUATTER, cid, 500, 0)  # before the publisher does, at 0 % royalty
    assert not client.quote(paid_request(cid, None)).payment_required  # not the publisher's: nothing to pay or earn
    # On main the publisher was refused here for good ("already registered by" the squatter).
    out = cli("openlora-node", "register", cid, "--node", node.address, "--key", str(keys["publisher"]))
    assert out.returncode == 0, out.stderr
    stream = session.generate(QUESTION, adapter=cid, max_new_tokens=2)
    stream.text()
    assert (stream.receipt.adapter, stream.receipt.publisher) == (adapter_id(cid, PUBLISHER.address), PUBLISHER.address)


def test_client_refuses_to_deposit_into_contracts_it_did_not_pin(client, info):
    """The deployment the client trusts is not the node's: nothing is deposited, nothing signed."""
    c = info.chain
    elsewhere = Deployment(c.chain_id, c.registry, "0x" + "ab" * 20)
    session = PaidSession(client, CLIENT2, deployment=elsewhere)
    before = channel_of(client, CLIENT2)
    with pytest.raises(UntrustedContracts, match="trusts only"):
        session.open_channel(1000)
    assert channel_of(client, CLIENT2).deposited == before.deposited
    pinned = PaidSession(client, CLIENT2, deployment=Deployment(c.chain_id, c.registry, c.channels))
    assert pinned.channel().epoch == before.epoch  # the node's own deployment, pinned, is accepted


def test_cli_pays_only_through_the_deployment_file_it_is_given(node, info, keys, tmp_path):  # noqa: F811
    c = info.chain
    wrong = tmp_path / "elsewhere.json"
    wrong.write_text(Deployment(c.chain_id, c.registry, "0x" + "cd" * 20).to_json())
    args = ["openlora", "channel", "open", "--node", node.address, "--key", str(keys["client"]), "--amount", "5"]
    out = cli(*args, "--deployment", str(wrong))
    assert out.returncode == 1 and "trusts only" in out.stderr, out.stderr
    right = tmp_path / "node.json"
    right.write_text(Deployment(c.chain_id, c.registry, c.channels).to_json())
    out = cli(*args, "--deployment", str(right))
    assert out.returncode == 0, out.stderr


def test_session_audit_matches_the_receipts_it_holds(client, priced, session):
    for _ in range(2):
        session.generate(QUESTION, adapter=priced, max_new_tokens=3).text()
    audit = session.audit()
    assert audit.receipts >= 2 and audit.over_claim == 0
    assert audit.charged == int(channel_of(client, CLIENT).charged_total)


def test_usage_of_bad_cid_is_invalid_argument(client):
    with pytest.raises(grpc.RpcError) as e:
        client.usage("not-a-cid")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT



def test_quote_shows_a_channels_ledger_only_to_its_client(client, priced, session):
    session.generate(QUESTION, adapter=priced, max_new_tokens=2).text()  # the ledger holds a voucher of CLIENT's
    request = paid_request(priced, None)
    mine = client.quote(request, CLIENT).channel
    assert mine.HasField("latest_voucher") and int(mine.charged_total) > 0
    unsigned = quote_request(request)
    unsigned.client, unsigned.issued_at = CLIENT.address, int(time.time())
    stranger = quote_request(request, CLIENT2)  # signed by CLIENT2, then naming CLIENT
    stranger.client = CLIENT.address
    stale = quote_request(request, CLIENT)
    stale.issued_at, stale.client_signature = sign_quote_auth(CLIENT, int(time.time()) - 3600)
    for asked in (unsigned, stranger, stale):
        seen = client._stub.GetQuote(asked, timeout=30).channel
        assert not seen.HasField("latest_voucher") and not seen.HasField("adapter_voucher")
        assert (seen.charged_total, seen.committed, seen.adapter_charged) == ("0", "0", "0")
        assert seen.deposited == mine.deposited  # what the chain shows anyone stays
