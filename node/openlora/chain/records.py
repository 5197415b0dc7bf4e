"""Plain records shared by the chain modules: what the contracts store and what vouchers and receipts say.

All amounts are wei (int), token counts are tokens (int), addresses are checksummed hex strings, adapter ids are
the 32-byte ``keccak256(publisher ‖ cid)`` of ``AdapterRegistry``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: EIP-712 domain name and version of vouchers and receipts (PaymentChannels' constructor uses the same).
DOMAIN_NAME = "OpenLoRA"
DOMAIN_VERSION = "1"


@dataclass(frozen=True)
class Eip712Domain:
    """The EIP-712 domain of one PaymentChannels deployment: vouchers signed for it are void anywhere else."""

    chain_id: int
    verifying_contract: str

    def as_dict(self) -> dict:
        """The domain as EIP-712 typed data (``eth_account.messages.encode_typed_data``) expects it."""
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }


@dataclass(frozen=True)
class Voucher:
    """The client authorises ``node`` to claim up to ``cumulative_amount`` wei in total from the channel's
    ``epoch``, of which up to ``adapter_amount`` wei in total for calls to ``adapter`` (32-byte registry id) at
    ``price_per_1k_tokens`` wei per 1000 tokens (EIP-712 type ``Voucher(address client,address node,uint64 epoch,
    uint256 cumulativeAmount,bytes32 adapter,uint256 pricePer1kTokens,uint256 adapterAmount)``)."""

    client: str
    node: str
    epoch: int
    cumulative_amount: int
    adapter: bytes
    price_per_1k_tokens: int
    adapter_amount: int


@dataclass(frozen=True)
class SignedVoucher:
    """A voucher and the client's 65-byte (r, s, v) EIP-712 signature over it."""

    voucher: Voucher
    signature: bytes


@dataclass(frozen=True)
class Receipt:
    """What the node tells the client after a call, signed by the node (EIP-712 type ``Receipt``).

    Attributes:
        sequence: the node's receipt number (unique per node ledger).
        adapter: 32-byte adapter id; ``publisher`` its publisher.
        tokens: tokens billed; ``cost``: wei charged for them (``<=`` the call's max cost).
        charged_total: wei charged on this channel epoch so far, this call included: the most the node may
            claim on chain for the epoch, and what the client's next voucher builds on.
        serving: the 32-byte EIP-712 digest of the call's serving record (``proof.record``): what the node
            claims it computed; zeros for a call cut off before it finished (it has no record).
    """

    node: str
    client: str
    epoch: int
    sequence: int
    adapter: bytes
    publisher: str
    tokens: int
    cost: int
    charged_total: int
    serving: bytes = bytes(32)


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt and the node's 65-byte EIP-712 signature over it."""

    receipt: Receipt
    signature: bytes


@dataclass(frozen=True)
class ChannelState:
    """On-chain state of the channel from a client to a node (``PaymentChannels.channel``).

    Attributes:
        deposited: wei deposited in this epoch; ``redeemed``: wei the node claimed in it.
        withdraw_at: unix seconds when the client may withdraw; 0 when no withdrawal was requested.
    """

    deposited: int
    redeemed: int
    epoch: int
    withdraw_at: int


@dataclass(frozen=True)
class UsageEntry:
    """One adapter's share of a redemption: ``calls`` calls, ``tokens`` tokens, ``amount`` wei, backed by
    ``voucher``: the client's latest signed voucher naming that adapter (the contract bounds the entry by it)."""

    voucher: SignedVoucher
    calls: int
    tokens: int
    amount: int

    @property
    def adapter(self) -> bytes:
        """The 32-byte adapter id the entry attributes to (the voucher's)."""
        return self.voucher.voucher.adapter


@dataclass(frozen=True)
class Redemption:
    """A claim of ``claimed_total`` wei (cumulative over the epoch) against a signed voucher, attributed per
    adapter; the entries' amounts sum to the part not yet redeemed on chain."""

    voucher: SignedVoucher
    claimed_total: int
    usage: tuple[UsageEntry, ...]


@dataclass(frozen=True)
class AdapterInfo:
    """A registered adapter (``AdapterRegistry.adapter``); ``revoked_at`` is 0 while it is active."""

    adapter_id: bytes
    cid: str
    publisher: str
    price_per_1k_tokens: int
    royalty_bps: int
    revoked_at: int


@dataclass(frozen=True)
class AdapterUsage:
    """Settled totals of one adapter over all nodes and clients (``PaymentChannels.usage``)."""

    calls: int
    tokens: int
    amount: int
    publisher_earnings: int
