"""EIP-712 vouchers (client → node) and receipts (node → client), and the node's check of a voucher.

Both are EIP-712 typed data (https://eips.ethereum.org/EIPS/eip-712) in the domain
``{name: "OpenLoRA", version: "1", chainId, verifyingContract: PaymentChannels}``:

    Voucher(address client,address node,uint64 epoch,uint256 cumulativeAmount,bytes32 adapter,
            uint256 pricePer1kTokens,uint256 adapterAmount)
    Receipt(address node,address client,uint64 epoch,uint64 sequence,bytes32 adapter,address publisher,
            uint64 tokens,uint256 cost,uint256 chargedTotal,bytes32 serving)

A voucher is cumulative: it authorises the node to claim up to ``cumulativeAmount`` in total from the channel's
epoch, so only the latest one matters and losing one costs nothing. It also names the call's adapter and price
and authorises up to ``adapterAmount`` in total for that adapter on the epoch: settlement may attribute to an
adapter only what the client's latest voucher for it allows (PaymentChannels). The node accepts a call when

    signature in the chain's form (v 27/28, low s) (else InvalidVoucher: the contract would refuse it)
    signature recovers to voucher.client          (else InvalidVoucher)
    voucher.node == this node                      (else WrongNode)
    voucher.epoch == the channel's epoch on chain  (else WrongEpoch)
    no withdrawal requested on the channel         (else ChannelClosing)
    voucher.adapter, pricePer1kTokens == the call's (else InvalidVoucher)
    cumulativeAmount > latest accepted amount      (else StaleVoucher: replays and reorderings land here)
    cumulativeAmount - committed >= max cost       (else InsufficientAuthorization)
    adapterAmount - adapter committed >= max cost  (else InsufficientAuthorization)
    committed + max cost <= deposited on chain     (else InsufficientDeposit)

where ``committed`` is what the node already charged on the epoch plus the max cost of its calls in flight, and
``adapter committed`` the same for the call's adapter only.
Requiring a strictly larger amount per call makes a voucher single-use, so one seen on the wire cannot be
replayed to spend the client's unused authorisation; the unused part still carries over, because the client
computes its next amount from ``chargedTotal`` (the node-signed receipt), not from its previous voucher.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address

from ..adapters.signing import signature_form_error
from .errors import (
    ChannelClosing,
    InsufficientAuthorization,
    InsufficientDeposit,
    InvalidVoucher,
    StaleVoucher,
    WrongEpoch,
    WrongNode,
)
from .records import ChannelState, Eip712Domain, Receipt, SignedReceipt, SignedVoucher, Voucher

UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1

_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_VOUCHER_TYPE = [
    {"name": "client", "type": "address"},
    {"name": "node", "type": "address"},
    {"name": "epoch", "type": "uint64"},
    {"name": "cumulativeAmount", "type": "uint256"},
    {"name": "adapter", "type": "bytes32"},
    {"name": "pricePer1kTokens", "type": "uint256"},
    {"name": "adapterAmount", "type": "uint256"},
]
_RECEIPT_TYPE = [
    {"name": "node", "type": "address"},
    {"name": "client", "type": "address"},
    {"name": "epoch", "type": "uint64"},
    {"name": "sequence", "type": "uint64"},
    {"name": "adapter", "type": "bytes32"},
    {"name": "publisher", "type": "address"},
    {"name": "tokens", "type": "uint64"},
    {"name": "cost", "type": "uint256"},
    {"name": "chargedTotal", "type": "uint256"},
    {"name": "serving", "type": "bytes32"},
]


def voucher_message(voucher: Voucher, domain: Eip712Domain) -> SignableMessage:
    """The EIP-712 message of ``voucher``; its hash equals ``PaymentChannels.voucherDigest``.

    Raises:
        InvalidVoucher: an address is not checksummed hex, or epoch/amount is out of range.
    """
    for name in ("client", "node"):
        if not is_checksum_address(getattr(voucher, name)):
            raise InvalidVoucher(f"voucher.{name} must be a checksummed address, got {getattr(voucher, name)!r}")
    amounts = (voucher.cumulative_amount, voucher.price_per_1k_tokens, voucher.adapter_amount)
    if not 0 <= voucher.epoch <= UINT64_MAX or not all(0 <= a <= UINT256_MAX for a in amounts):
        raise InvalidVoucher("voucher.epoch must fit uint64 and its amounts and price uint256")
    if len(voucher.adapter) != 32:
        raise InvalidVoucher(f"voucher.adapter must be a 32-byte adapter id, got {len(voucher.adapter)} bytes")
    return encode_typed_data(
        full_message={
            "types": {"EIP712Domain": _DOMAIN_TYPE, "Voucher": _VOUCHER_TYPE},
            "primaryType": "Voucher",
            "domain": domain.as_dict(),
            "message": {
                "client": voucher.client,
                "node": voucher.node,
                "epoch": voucher.epoch,
                "cumulativeAmount": voucher.cumulative_amount,
                "adapter": voucher.adapter,
                "pricePer1kTokens": voucher.price_per_1k_tokens,
                "adapterAmount": voucher.adapter_amount,
            },
        }
    )


def sign_voucher(account: LocalAccount, voucher: Voucher, domain: Eip712Domain) -> SignedVoucher:
    """Signs ``voucher`` with the client's key (``account.address`` must be ``voucher.client``).

    Raises:
        ValueError: ``account`` is not the voucher's client.
    """
    if account.address != voucher.client:
        raise ValueError(f"voucher.client is {voucher.client} but the signing account is {account.address}")
    signed = account.sign_message(voucher_message(voucher, domain))
    return SignedVoucher(voucher, bytes(signed.signature))


def recover_voucher_signer(signed: SignedVoucher, domain: Eip712Domain) -> str:
    """The checksummed address whose key signed ``signed.voucher``.

    Raises:
        InvalidVoucher: the signature is not 65 bytes, has v not in {27, 28} or a high s (the chain refuses
            those), or recovers to no key.
    """
    if (problem := signature_form_error(signed.signature)) is not None:
        # the contract's ECDSA would revert on it: a call served on it could never be settled
        raise InvalidVoucher(f"voucher {problem}; sign it with a standard EIP-712 signer")
    try:
        return Account.recover_message(voucher_message(signed.voucher, domain), signature=signed.signature)
    except InvalidVoucher:
        raise
    except Exception as exc:  # eth-keys raises several types for a malformed (r, s, v)
        raise InvalidVoucher(f"voucher signature does not recover: {exc}") from exc


def check_voucher(
    signed: SignedVoucher,
    *,
    domain: Eip712Domain,
    node: str,
    channel: ChannelState,
    latest_amount: int,
    committed: int,
    max_cost: int,
    adapter: bytes,
    price_per_1k_tokens: int,
    adapter_committed: int,
) -> None:
    """Raises unless the node may serve a call of max cost ``max_cost`` wei on ``signed`` (rules: module doc).

    Args:
        node: this node's address.
        channel: the channel's on-chain state (``PaymentChannels.channel(client, node)``).
        latest_amount: the largest cumulative amount the node accepted on this channel epoch (0 if none).
        committed: wei the node charged on this epoch plus the max cost of its calls in flight.
        max_cost: wei this call costs at most (quote × max tokens).
        adapter / price_per_1k_tokens: the call's adapter id (32 bytes) and price (wei per 1000 tokens).
        adapter_committed: like ``committed``, for the call's adapter only.

    Raises:
        InvalidVoucher, WrongNode, WrongEpoch, ChannelClosing, StaleVoucher, InsufficientAuthorization,
        InsufficientDeposit: see the module doc; each message says what the client must do.
    """
    v = signed.voucher
    signer = recover_voucher_signer(signed, domain)
    if signer != v.client:
        raise InvalidVoucher(f"voucher signature is by {signer}, not by the client {v.client}")
    if v.node != node:
        raise WrongNode(f"voucher pays node {v.node}; this node is {node}")
    if v.epoch != channel.epoch:
        raise WrongEpoch(f"voucher is for epoch {v.epoch}; the channel is at epoch {channel.epoch}")
    if channel.withdraw_at:
        raise ChannelClosing(
            f"client {v.client} requested a withdrawal (possible at {channel.withdraw_at}); "
            "withdraw, then deposit again to open the next epoch"
        )
    if v.adapter != adapter or v.price_per_1k_tokens != price_per_1k_tokens:
        raise InvalidVoucher(
            f"voucher pays adapter 0x{v.adapter.hex()} at {v.price_per_1k_tokens} wei per 1k tokens; this call is to "
            f"0x{adapter.hex()} at {price_per_1k_tokens} wei per 1k tokens (ask GetQuote again and sign for that)"
        )
    if v.cumulative_amount <= latest_amount:
        raise StaleVoucher(
            f"voucher amount {v.cumulative_amount} wei is not above the latest accepted {latest_amount} wei; "
            f"sign a new voucher for more than {latest_amount} wei"
        )
    needed = committed + max_cost
    if v.cumulative_amount < needed:
        raise InsufficientAuthorization(
            f"voucher authorises {v.cumulative_amount} wei but this call needs {needed} wei "
            f"({committed} committed + {max_cost} max cost); sign a voucher for at least {needed} wei"
        )
    adapter_needed = adapter_committed + max_cost
    if v.adapter_amount < adapter_needed:
        raise InsufficientAuthorization(
            f"voucher authorises {v.adapter_amount} wei for adapter 0x{adapter.hex()} but this call needs "
            f"{adapter_needed} wei ({adapter_committed} committed on it + {max_cost} max cost); sign a voucher whose "
            f"adapter amount is at least {adapter_needed} wei"
        )
    if needed > channel.deposited:
        raise InsufficientDeposit(
            f"channel deposit is {channel.deposited} wei but {needed} wei are needed; "
            f"deposit at least {needed - channel.deposited} wei more"
        )


def receipt_message(receipt: Receipt, domain: Eip712Domain) -> SignableMessage:
    """The EIP-712 message of a node receipt."""
    return encode_typed_data(
        full_message={
            "types": {"EIP712Domain": _DOMAIN_TYPE, "Receipt": _RECEIPT_TYPE},
            "primaryType": "Receipt",
            "domain": domain.as_dict(),
            "message": {
                "node": receipt.node,
                "client": receipt.client,
                "epoch": receipt.epoch,
                "sequence": receipt.sequence,
                "adapter": receipt.adapter,
                "publisher": receipt.publisher,
                "tokens": receipt.tokens,
                "cost": receipt.cost,
                "chargedTotal": receipt.charged_total,
                "serving": receipt.serving,
            },
        }
    )


def sign_receipt(account: LocalAccount, receipt: Receipt, domain: Eip712Domain) -> SignedReceipt:
    """Signs ``receipt`` with the node's key (``account.address`` must be ``receipt.node``).

    Raises:
        ValueError: ``account`` is not the receipt's node.
    """
    if account.address != receipt.node:
        raise ValueError(f"receipt.node is {receipt.node} but the signing account is {account.address}")
    return SignedReceipt(receipt, bytes(account.sign_message(receipt_message(receipt, domain)).signature))


def recover_receipt_signer(signed: SignedReceipt, domain: Eip712Domain) -> str:
    """The checksummed address whose key signed ``signed.receipt`` (a client compares it with the node's)."""
    return Account.recover_message(receipt_message(signed.receipt, domain), signature=signed.signature)
