"""Shared pieces of the pay-per-call tests (tests/test_pay_*.py): node subprocesses, dev-account keystores, a
stand-alone chain process, raw paid requests.

Roles are fixed dev accounts of the public dev mnemonic (funded on the embedded chain, the stand-alone chain and
anvil): 0 deploys, 1 publishes, 2 and 3 are clients, 4 squats, 7 is the node on external chains.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from openlora.chain.backends import dev_accounts
from openlora.chain.contracts import adapter_id
from openlora.chain.records import Eip712Domain, SignedVoucher, Voucher
from openlora.chain.vouchers import sign_voucher, voucher_message
from openlora.chain.wire import voucher_to_pb
from openlora.client import NodeClient, generate_request
from openlora.local import NodeProcess
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
MEDICAL = ROOT / "tests" / "fixtures" / "adapters" / "medical"
LEGAL = ROOT / "tests" / "fixtures" / "adapters" / "legal"
FINANCE = ROOT / "tests" / "fixtures" / "adapters" / "finance"
PASSPHRASE = "pay-tests"
DEPLOYER, PUBLISHER, CLIENT, CLIENT2, SQUATTER, NODE = (dev_accounts(8)[i] for i in (0, 1, 2, 3, 4, 7))
QUESTION = "What should I do about a persistent cough?"
NODE_FLAGS = ("--dtype", "float32", "--threads", "2", "--no-p2p")


def write_key(path: Path, account: LocalAccount, passphrase: str = PASSPHRASE) -> Path:
    """A keystore of ``account`` at ``path`` (cheap scrypt: throwaway test keys)."""
    path.write_text(json.dumps(Account.encrypt(account.key, passphrase, kdf="scrypt", iterations=2**4)))
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Keystores of the publisher, the clients and the squatter; ``$OPENLORA_KEY_PASSPHRASE`` opens them for the
    module's CLI calls (restored afterwards)."""
    folder = tmp_path_factory.mktemp("keys")
    paths = {
        name: write_key(folder / f"{name}.json", account)
        for name, account in (("deployer", DEPLOYER), ("publisher", PUBLISHER), ("client", CLIENT), ("squatter", SQUATTER))
    }
    saved = os.environ.get("OPENLORA_KEY_PASSPHRASE")
    os.environ["OPENLORA_KEY_PASSPHRASE"] = PASSPHRASE
    yield paths
    if saved is None:
        os.environ.pop("OPENLORA_KEY_PASSPHRASE", None)
    else:
        os.environ["OPENLORA_KEY_PASSPHRASE"] = saved


def start_node(data_dir: Path, *args: str) -> NodeProcess:
    """A float32 node subprocess without a swarm (payments need none)."""
    return NodeProcess(data_dir, *NODE_FLAGS, *args)


def node_key(path: Path) -> Path:
    """The dev node account's keystore with an empty passphrase (what ``--node-key`` reads by default)."""
    return write_key(path, NODE, passphrase="")


def raw_stub(address: str) -> tuple[grpc.Channel, node_pb2_grpc.NodeStub]:
    channel = grpc.insecure_channel(address)
    return channel, node_pb2_grpc.NodeStub(channel)


def domain_of(info: pb.NodeInfo) -> Eip712Domain:
    return Eip712Domain(info.chain.chain_id, info.chain.channels)


def voucher(
    info: pb.NodeInfo, client: LocalAccount, amount: int, *, cid: str, price: int, epoch: int = 0, node: str | None = None,
    signer=None,
):  # fmt: skip
    """A signed voucher of ``client`` to the node (or ``node``) for calls to ``PUBLISHER``'s adapter ``cid`` at
    ``price`` wei per 1k tokens (``amount`` on the channel and on the adapter), signed by ``signer`` (default: the
    client)."""
    v = Voucher(client.address, node or info.chain.node_address, epoch, amount, adapter_id(cid, PUBLISHER.address), price, amount)
    if signer is None:
        return sign_voucher(client, v, domain_of(info))
    return SignedVoucher(v, bytes(signer.sign_message(voucher_message(v, domain_of(info))).signature))


def paid_request(cid: str, signed: SignedVoucher | None, max_new_tokens: int = 8) -> pb.GenerateRequest:
    req = generate_request(QUESTION, adapter=cid, max_new_tokens=max_new_tokens, temperature=0)
    if signed is not None:
        req.voucher.CopyFrom(voucher_to_pb(signed))
    return req


def refusal(stub, request) -> grpc.RpcError:
    """The status a refused Generate ends with; fails the test if the node streamed anything."""
    responses = stub.Generate(request, timeout=60)
    try:
        first = next(responses)
    except grpc.RpcError as e:
        return e
    pytest.fail(f"the node streamed {first} instead of refusing")


def channel_of(client: NodeClient, account: LocalAccount) -> pb.ChannelState:
    """The node's account of ``account``'s channel (from a quote)."""
    return client.quote(generate_request("x", raw=True, max_new_tokens=1), account).channel


def wait_usage(client: NodeClient, cid: str, calls: int, timeout_s: float = 60.0) -> pb.AdapterUsage:
    """The adapter's on-chain usage once it counts ``calls`` settled calls (settlement runs in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        (row,) = client.usage(cid)
        if row.calls >= calls or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


