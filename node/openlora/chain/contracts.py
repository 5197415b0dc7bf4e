"""The compiled contracts, deployment, and typed wrappers that sign every transaction locally.

    contracts/artifacts/<Name>.json ──load_artifact──► abi + bytecode
    deploy_contracts(chain, deployer, withdraw_timeout_s) ──► Deployment(chain_id, registry, channels)
    send_value(chain, sender, to, amount)                    a plain ETH transfer (funds a dev node's account)
    AdapterRegistry(chain, address)   register / revoke / adapter / adapter_ids
    PaymentChannels(chain, address)   deposit / request_withdraw / withdraw / settle / channel / usage / earnings

Every transaction is first simulated (gas estimation, or one eth_call where the chain has a fixed gas limit), so a
revert surfaces before anything is sent; it is then signed with the sender's ``LocalAccount``, sent raw and
awaited. Reverts are raised as ``ContractRevert`` with the Solidity custom error's name and arguments, decoded
from the ABIs of all our contracts.

Adapter ids are ``keccak256`` of the publisher's address bytes then the canonical CID string (CIDv1: base32,
CIDv0: base58btc), as in ``AdapterRegistry.adapterIdOf``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import function_abi_to_4byte_selector, keccak, to_canonical_address, to_checksum_address
from multiformats import CID
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import TxReceipt

from .backends import Chain
from .errors import ChainError, ContractRevert
from .records import (
    AdapterInfo,
    AdapterUsage,
    ChannelState,
    Eip712Domain,
    Redemption,
    Voucher,
)

#: Where scripts/build_contracts.mjs writes the committed artifacts.
ARTIFACTS_DIR = Path(__file__).resolve().parents[3] / "contracts" / "artifacts"
#: Seconds for a transaction to be mined before ``ChainError``.
TX_TIMEOUT_S = 120.0


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """The build artifact of contract ``name`` (keys ``abi``, ``bytecode``, ``compiler``, ``settings``, ...).

    Raises:
        ChainError: no artifact by that name (run ``node scripts/build_contracts.mjs``).
    """
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise ChainError(f"no contract artifact {path}; run: node scripts/build_contracts.mjs")
    return json.loads(path.read_text())


@cache
def _error_abis() -> dict[bytes, dict]:
    """Custom errors of all our contracts by 4-byte selector (shared errors have identical signatures)."""
    errors = {}
    for path in sorted(ARTIFACTS_DIR.glob("*.json")):
        for entry in json.loads(path.read_text())["abi"]:
            if entry["type"] == "error":
                errors[function_abi_to_4byte_selector(entry)] = entry
    return errors


def decode_revert(data: bytes) -> ContractRevert:
    """Turns raw revert data into a ``ContractRevert`` naming our custom error (or Error/Panic)."""
    selector, payload = data[:4], data[4:]
    if not data:
        return ContractRevert("")
    if selector == keccak(text="Error(string)")[:4]:
        return ContractRevert("Error", abi_decode(["string"], payload))
    if selector == keccak(text="Panic(uint256)")[:4]:
        return ContractRevert("Panic", abi_decode(["uint256"], payload))
    entry = _error_abis().get(selector)
    if entry is None:
        return ContractRevert("", (), f"unknown revert data 0x{data.hex()}")
    types = [i["type"] for i in entry["inputs"]]  # our errors take only elementary types
    values = tuple(
        to_checksum_address(v) if t == "address" else v for t, v in zip(types, abi_decode(types, payload), strict=True)
    )
    return ContractRevert(entry["name"], values)


@contextmanager
def _decoded_reverts() -> Iterator[None]:
    try:
        yield
    except (ContractCustomError, ContractPanicError) as exc:
        raise decode_revert(bytes.fromhex(str(exc.data)[2:])) from exc
    except ContractLogicError as exc:  # a revert without data, or a require() message web3 already decoded
        raise ContractRevert("Error", (str(exc),)) from exc
    except Web3RPCError as exc:  # not a revert: the chain refused the request (e.g. the sender cannot pay for gas)
        error = (exc.rpc_response or {}).get("error")
        raise ChainError(f"the chain refused the request: {error.get('message') if isinstance(error, dict) else exc}") from exc


@dataclass(frozen=True)
class SignedTx:
    """A signed transaction not necessarily sent yet: ``raw`` bytes, its ``tx_hash`` and ``nonce``."""

    raw: bytes
    tx_hash: bytes
    nonce: int


_nonce_locks: dict[str, threading.Lock] = {}
_nonce_locks_guard = threading.Lock()


def sender_lock(address: str) -> threading.Lock:
    """The lock that serialises nonce use of ``address`` within this process."""
    with _nonce_locks_guard:
        return _nonce_locks.setdefault(address, threading.Lock())


def sign_call(chain: Chain, account: LocalAccount, call: Any, *, value: int = 0, nonce: int) -> SignedTx:
    """Builds and signs ``call`` (a web3 contract function or constructor) from ``account``, checking first
    that it would not revert.

    Raises:
        ContractRevert: the call would revert.
    """
    fields: dict[str, Any] = {"from": account.address, "value": value, "nonce": nonce}
    if chain.fixed_gas is not None:
        fields["gas"] = chain.fixed_gas
    with _decoded_reverts():
        tx = call.build_transaction(fields)  # estimates gas (and so checks for a revert) unless fixed_gas
        if chain.fixed_gas is not None:
            _simulate(chain, tx)
    signed = account.sign_transaction(tx)
    return SignedTx(bytes(signed.raw_transaction), bytes(signed.hash), nonce)


def _simulate(chain: Chain, tx: dict) -> None:
    """Runs ``tx`` as an eth_call on the pending block; a revert raises web3's contract errors."""
    chain.w3.eth.call({k: tx[k] for k in ("from", "to", "data", "value") if tx.get(k)}, block_identifier="pending")


def broadcast(chain: Chain, signed: SignedTx) -> None:
    """Sends a signed transaction; sending one the chain already knows (mined or pending) is not an error.

    Raises:
        ChainError: the chain refused it and does not know it.
    """
    try:
        chain.w3.eth.send_raw_transaction(signed.raw)
    except Exception as exc:  # nodes word "already known"/"nonce too low" differently: ask for the tx itself
        try:
            chain.w3.eth.get_transaction(signed.tx_hash)
        except TransactionNotFound:
            raise ChainError(f"could not send transaction 0x{signed.tx_hash.hex()}: {exc}") from exc


def tx_receipt(chain: Chain, tx_hash: bytes) -> TxReceipt | None:
    """The receipt of a mined transaction, ``None`` while it is not mined (or unknown)."""
    try:
        return chain.w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        return None


def wait_receipt(chain: Chain, tx_hash: bytes, timeout_s: float = TX_TIMEOUT_S) -> TxReceipt:
    """Waits until ``tx_hash`` is mined and returns its receipt.

    Raises:
        ChainError: not mined within ``timeout_s`` seconds.
    """
    try:
        return chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s, poll_latency=0.05)
    except Exception as exc:  # web3 raises TimeExhausted; a dropped connection is just as fatal here
        raise ChainError(f"transaction 0x{tx_hash.hex()} not mined within {timeout_s} s: {exc}") from exc


def transact(chain: Chain, account: LocalAccount, call: Any, *, value: int = 0) -> TxReceipt:
    """Signs, sends and awaits ``call`` from ``account``; returns the receipt of the mined transaction.

    Raises:
        ContractRevert: the call reverts (at estimation, or when mined after the state changed).
        ChainError: the transaction could not be sent or was not mined in time.
    """
    with sender_lock(account.address):
        nonce = chain.w3.eth.get_transaction_count(account.address, "pending")
        signed = sign_call(chain, account, call, value=value, nonce=nonce)
        broadcast(chain, signed)
        receipt = wait_receipt(chain, signed.tx_hash)
    if receipt["status"] != 1:  # passed simulation, but the state changed before it was mined
        raise ContractRevert("", (), f"transaction 0x{signed.tx_hash.hex()} reverted when mined")
    return receipt


def send_value(chain: Chain, sender: LocalAccount, to: str, amount_wei: int) -> TxReceipt:
    """Sends ``amount_wei`` of ETH from ``sender`` to ``to`` (a plain transfer, signed locally) and awaits it.

    Raises:
        ChainError: the transfer could not be sent, was not mined in time, or failed.
    """
    w3 = chain.w3
    with sender_lock(sender.address):
        nonce = w3.eth.get_transaction_count(sender.address, "pending")
        tx = {
            "to": to_checksum_address(to),
            "value": amount_wei,
            "gas": 21_000,  # a transfer to an account without code costs exactly this
            "gasPrice": w3.eth.gas_price,
            "nonce": nonce,
            "chainId": chain.chain_id,
        }
        signed = sender.sign_transaction(tx)
        broadcast(chain, SignedTx(bytes(signed.raw_transaction), bytes(signed.hash), nonce))
        receipt = wait_receipt(chain, bytes(signed.hash))
    if receipt["status"] != 1:
        raise ChainError(f"transfer of {amount_wei} wei to {to} failed")
    return receipt


def deploy(chain: Chain, account: LocalAccount, name: str, *args: Any) -> str:
    """Deploys contract ``name`` from its artifact with constructor ``args``; returns its address.

    Raises:
        ContractRevert: the constructor reverts.
    """
    artifact = load_artifact(name)
    factory = chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = transact(chain, account, factory.constructor(*args))
    return to_checksum_address(receipt["contractAddress"])


@dataclass(frozen=True)
class Deployment:
    """Where the openlora contracts live on a chain; what a client needs besides the RPC URL."""

    chain_id: int
    registry: str
    channels: str

    def to_json(self) -> str:
        """``{"chain_id": int, "registry": address, "channels": address}``."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        """Raises ValueError when ``text`` is not a deployment written by ``to_json``."""
        try:
            data = json.loads(text)
            registry, channels = to_checksum_address(data["registry"]), to_checksum_address(data["channels"])
            return cls(int(data["chain_id"]), registry, channels)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a deployment (chain_id, registry, channels): {text!r}") from exc


def deploy_contracts(chain: Chain, deployer: LocalAccount, withdraw_timeout_s: int) -> Deployment:
    """Deploys AdapterRegistry and PaymentChannels (clients wait ``withdraw_timeout_s`` to withdraw).

    Raises:
        ContractRevert: ``withdraw_timeout_s`` is 0 (``InvalidTimeout``).
    """
    registry = deploy(chain, deployer, "AdapterRegistry")
    channels = deploy(chain, deployer, "PaymentChannels", registry, withdraw_timeout_s)
    return Deployment(chain.chain_id, registry, channels)


def canonical_cid(cid: str) -> str:
    """The canonical string of a CID: base32 for CIDv1, base58btc for CIDv0.

    Raises:
        ValueError: ``cid`` is not a CID.
    """
    try:
        parsed = CID.decode(cid)
    except Exception as exc:  # multiformats raises KeyError/ValueError subclasses for bad input
        raise ValueError(f"not a CID: {cid!r} ({exc})") from exc
    return str(parsed) if parsed.version == 0 else parsed.encode("base32")


def adapter_id(cid: str, publisher: str) -> bytes:
    """The registry key of ``publisher``'s adapter ``cid``: keccak256 of the publisher's 20 address bytes then the
    canonical CID string (32 bytes; ``AdapterRegistry.adapterIdOf``). The publisher is part of the key, so a
    registration of someone else's CID is another adapter, never the one a node serves.

    Raises:
        ValueError: ``cid`` is not a CID, or ``publisher`` is not an address.
    """
    return keccak(to_canonical_address(publisher) + canonical_cid(cid).encode())


class _Wrapper:
    def __init__(self, chain: Chain, address: str, name: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract = chain.w3.eth.contract(address=self.address, abi=load_artifact(name)["abi"])

    def _call(self, fn: str, *args: Any) -> Any:
        with _decoded_reverts():
            return getattr(self.contract.functions, fn)(*args).call()

    def _transact(self, account: LocalAccount, fn: str, *args: Any, value: int = 0) -> TxReceipt:
        return transact(self.chain, account, getattr(self.contract.functions, fn)(*args), value=value)


class AdapterRegistry(_Wrapper):
    """Typed access to a deployed AdapterRegistry."""

    def __init__(self, chain: Chain, address: str) -> None:
        super().__init__(chain, address, "AdapterRegistry")

    def register(self, publisher: LocalAccount, cid: str, price_per_1k_tokens: int, royalty_bps: int) -> bytes:
        """Registers ``cid`` with ``publisher`` as its publisher; returns the adapter id (32 bytes).

        Args:
            price_per_1k_tokens: the publisher's price, wei per 1000 tokens.
            royalty_bps: the publisher's share of each settled amount, basis points (0..10000).

        Raises:
            ValueError: ``cid`` is not a CID.
            ContractRevert: ``AlreadyRegistered``, ``RoyaltyTooHigh``, ``InvalidCid``.
        """
        self._transact(publisher, "register", canonical_cid(cid), price_per_1k_tokens, royalty_bps)
        return adapter_id(cid, publisher.address)

    def revoke(self, publisher: LocalAccount, cid: str) -> None:
        """Revokes ``cid``: nodes stop serving it.

        Raises:
            ContractRevert: ``UnknownAdapter``, ``NotPublisher``, ``AlreadyRevoked``.
        """
        self._transact(publisher, "revoke", adapter_id(cid, publisher.address))

    def adapter(self, cid_or_id: str | bytes, publisher: str | None = None) -> AdapterInfo:
        """The registered adapter with this id (32 bytes), or this CID (str) registered by ``publisher``.

        Raises:
            ValueError: a CID without its publisher.
            ContractRevert: ``UnknownAdapter``.
        """
        if isinstance(cid_or_id, str):
            if publisher is None:
                raise ValueError(f"adapter {cid_or_id}: a CID names an adapter only with its publisher's address")
            key = adapter_id(cid_or_id, publisher)
        else:
            key = cid_or_id
        publisher, price, royalty, revoked_at, cid = self._call("adapter", key)
        return AdapterInfo(key, cid, publisher, price, royalty, revoked_at)

    def adapter_ids(self, page: int = 200) -> list[bytes]:
        """Ids of every adapter ever registered, in registration order (read ``page`` at a time)."""
        ids: list[bytes] = []
        while batch := self._call("adapterIds", len(ids), page):
            ids.extend(bytes(i) for i in batch)
        return ids


class PaymentChannels(_Wrapper):
    """Typed access to a deployed PaymentChannels."""

    def __init__(self, chain: Chain, address: str) -> None:
        super().__init__(chain, address, "PaymentChannels")
        self.domain = Eip712Domain(chain.chain_id, self.address)

    @property
    def withdraw_timeout_s(self) -> int:
        """Seconds between ``request_withdraw`` and ``withdraw``."""
        return self._call("withdrawTimeout")

    @property
    def registry_address(self) -> str:
        """The AdapterRegistry this deployment settles against."""
        return self._call("registry")

    def deposit(self, client: LocalAccount, node: str, amount_wei: int) -> TxReceipt:
        """Adds ``amount_wei`` to ``client``'s channel with ``node``, signed by the client.

        Raises:
            ContractRevert: ``ZeroDeposit``, ``ZeroNode``.
        """
        return self._transact(client, "deposit", node, value=amount_wei)

    def request_withdraw(self, client: LocalAccount, node: str) -> TxReceipt:
        """Starts the withdrawal timeout. Raises ContractRevert ``NothingToWithdraw``/``WithdrawAlreadyRequested``."""
        return self._transact(client, "requestWithdraw", node)

    def withdraw(self, client: LocalAccount, node: str) -> TxReceipt:
        """Refunds what the node did not claim, after the timeout; the channel moves to its next epoch.

        Raises:
            ContractRevert: ``NoWithdrawRequested``, ``WithdrawTooEarly``, ``TransferFailed``.
        """
        return self._transact(client, "withdraw", node)

    def withdraw_earnings(self, account: LocalAccount) -> TxReceipt:
        """Sends ``account`` its settled earnings. Raises ContractRevert ``NothingToClaim``/``TransferFailed``."""
        return self._transact(account, "withdrawEarnings")

    def settle_call(self, redemptions: Sequence[Redemption]) -> Any:
        """The ``settle`` contract call for ``redemptions`` (to sign with ``sign_call``)."""
        return self.contract.functions.settle([_redemption_arg(r) for r in redemptions])

    def simulate_settle(self, node: str, redemptions: Sequence[Redemption]) -> None:
        """Runs ``settle(redemptions)`` from ``node`` as an eth_call on the pending block (nothing is sent).

        Raises:
            ContractRevert: the settlement would revert (the decoded contract error).
        """
        with _decoded_reverts():
            self.settle_call(redemptions).call({"from": node}, block_identifier="pending")

    def settle(self, node: LocalAccount, redemptions: Sequence[Redemption]) -> TxReceipt:
        """Redeems ``redemptions`` in one transaction signed by ``node``.

        Raises:
            ContractRevert: any of PaymentChannels' settlement errors (``NothingToRedeem``, ``WrongEpoch``, ...).
        """
        return transact(self.chain, node, self.settle_call(redemptions))

    def channel(self, client: str, node: str) -> ChannelState:
        """The channel from ``client`` to ``node`` (all zero when never opened)."""
        deposited, redeemed, epoch, withdraw_at = self._call("channel", client, node)
        return ChannelState(deposited, redeemed, epoch, withdraw_at)

    def usage(self, adapter: bytes) -> AdapterUsage:
        """Settled totals of ``adapter`` (a 32-byte id)."""
        return AdapterUsage(*self._call("usage", adapter))

    def earnings(self, account: str) -> int:
        """Wei credited to ``account`` and not yet withdrawn."""
        return self._call("earnings", account)

    def attributed(self, client: str, node: str, epoch: int, adapter: bytes) -> int:
        """Wei attributed to ``adapter`` on the channel epoch so far (bounded by the client's vouchers for it)."""
        return self._call("attributedTo", client, node, epoch, adapter)

    def voucher_digest(self, voucher: Voucher) -> bytes:
        """The contract's EIP-712 digest of the voucher (equals the Python one)."""
        return bytes(self._call("voucherDigest", _voucher_arg(voucher)))


def _voucher_arg(v: Voucher) -> tuple:
    return (v.client, v.node, v.epoch, v.cumulative_amount, v.adapter, v.price_per_1k_tokens, v.adapter_amount)


def _redemption_arg(r: Redemption) -> tuple:
    usage = [(_voucher_arg(u.voucher.voucher), u.voucher.signature, u.calls, u.tokens, u.amount) for u in r.usage]
    return (_voucher_arg(r.voucher.voucher), r.voucher.signature, r.claimed_total, usage)
