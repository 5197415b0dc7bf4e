"""Chain records ↔ ``openlora.v1`` protobuf messages, for the servicer (node side) and the client SDK.

Wei amounts travel as decimal strings (they exceed 2^64); addresses as checksummed hex; signatures and the
32-byte adapter id as bytes. Decoding checks what it can without a key or a chain (decimal strings, address
checksums, lengths) and raises ``InvalidVoucher`` / ``InvalidReceipt`` with what is wrong; signatures are checked
by the party that trusts them (the node's voucher check, the client's ``Payer.accept``).
"""

from __future__ import annotations

from eth_utils import is_checksum_address

from ..v1 import node_pb2 as pb
from .errors import InvalidReceipt, InvalidVoucher
from .records import Receipt, SignedReceipt, SignedVoucher, Voucher

#: Trailing metadata key naming the PaymentError subclass of a refused call (e.g. ``StaleVoucher``).
PAYMENT_ERROR_KEY = "openlora-payment-error"
#: Trailing metadata key carrying the serialized ``Receipt`` of a call cut off after it delivered text.
RECEIPT_KEY = "openlora-receipt-bin"


def wei(text: str, what: str, error: type[Exception] = ValueError) -> int:
    """A decimal wei string as int.

    Raises:
        ``error``: ``text`` is not a non-negative decimal integer.
    """
    if not text.isdigit() or not text.isascii():
        raise error(f"{what} must be a decimal number of wei, got {text!r}")
    return int(text)


def voucher_to_pb(signed: SignedVoucher) -> pb.Voucher:
    """The wire form of a signed voucher."""
    v = signed.voucher
    return pb.Voucher(
        client=v.client,
        node=v.node,
        epoch=v.epoch,
        cumulative_amount=str(v.cumulative_amount),
        signature=signed.signature,
        adapter_id=v.adapter,
        price_per_1k_tokens=str(v.price_per_1k_tokens),
        adapter_amount=str(v.adapter_amount),
    )


def voucher_from_pb(message: pb.Voucher) -> SignedVoucher:
    """A signed voucher from the wire.

    Raises:
        InvalidVoucher: an address is not checksummed, the amount is not decimal wei, the signature is not 65 bytes.
    """
    for name in ("client", "node"):
        if not is_checksum_address(getattr(message, name)):
            raise InvalidVoucher(f"voucher.{name} must be a checksummed address, got {getattr(message, name)!r}")
    amount = wei(message.cumulative_amount, "voucher.cumulative_amount", InvalidVoucher)
    price = wei(message.price_per_1k_tokens, "voucher.price_per_1k_tokens", InvalidVoucher)
    adapter_amount = wei(message.adapter_amount, "voucher.adapter_amount", InvalidVoucher)
    if len(message.signature) != 65:
        raise InvalidVoucher(f"voucher.signature must be 65 bytes (r, s, v), got {len(message.signature)}")
    if len(message.adapter_id) != 32:
        raise InvalidVoucher(f"voucher.adapter_id must be 32 bytes, got {len(message.adapter_id)}")
    voucher = Voucher(
        message.client, message.node, message.epoch, amount, bytes(message.adapter_id), price, adapter_amount
    )
    return SignedVoucher(voucher, bytes(message.signature))


def receipt_to_pb(signed: SignedReceipt) -> pb.Receipt:
    """The wire form of a node-signed receipt."""
    r = signed.receipt
    return pb.Receipt(
        node=r.node,
        client=r.client,
        epoch=r.epoch,
        sequence=r.sequence,
        adapter_id=r.adapter,
        publisher=r.publisher,
        tokens=r.tokens,
        cost=str(r.cost),
        charged_total=str(r.charged_total),
        signature=signed.signature,
        serving=r.serving,
    )


def receipt_from_pb(message: pb.Receipt) -> SignedReceipt:
    """A node-signed receipt from the wire (its signature is checked by ``Payer.accept``).

    Raises:
        InvalidReceipt: an address is not checksummed, an amount is not decimal wei, or a length is wrong.
    """
    for name in ("node", "client", "publisher"):
        if not is_checksum_address(getattr(message, name)):
            raise InvalidReceipt(f"receipt.{name} must be a checksummed address, got {getattr(message, name)!r}")
    if len(message.adapter_id) != 32 or len(message.signature) != 65 or len(message.serving) != 32:
        raise InvalidReceipt("receipt.adapter_id and receipt.serving must be 32 bytes and receipt.signature 65 bytes")
    receipt = Receipt(
        node=message.node,
        client=message.client,
        epoch=message.epoch,
        sequence=message.sequence,
        adapter=bytes(message.adapter_id),
        publisher=message.publisher,
        tokens=message.tokens,
        cost=wei(message.cost, "receipt.cost", InvalidReceipt),
        charged_total=wei(message.charged_total, "receipt.charged_total", InvalidReceipt),
        serving=bytes(message.serving),
    )
    return SignedReceipt(receipt, bytes(message.signature))
