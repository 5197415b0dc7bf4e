"""A client's check of what a node charged and claimed on one channel epoch, from receipts the node signed.

    charged     the highest ``chargedTotal`` among the receipts (each is signed by the node, so the client can
                show any of them to anyone: the node itself said it charged that much)
    costs       the sum of the receipts' costs (== charged when the client holds every receipt of the epoch)
    redeemed    what the node claimed on chain (``PaymentChannels.channel``)
    over_claim  redeemed - charged when positive: claimed above what the node's own receipts say. It is
                bounded by the client's latest voucher (``authorised``), which exceeds ``charged`` by at most
                the max cost of the calls in flight when it was signed (one call's, for a client that waits for
                each call; ``chain.payer``); the receipt with the highest ``chargedTotal`` and the chain's
                ``Redeemed`` event together prove it
    per adapter each adapter's receipt costs against what the chain attributed to it on this channel epoch
                (``PaymentChannels.attributedTo``); calls whose receipt the client lost (a cancelled stream)
                show up as attributed above the receipts, but never above the client's voucher for that adapter
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .contracts import PaymentChannels
from .errors import InvalidReceipt
from .records import SignedReceipt
from .vouchers import recover_receipt_signer


@dataclass(frozen=True)
class AdapterAudit:
    """One adapter on the channel epoch: ``receipts`` held, their ``costs`` and what the chain ``attributed``
    (wei)."""

    adapter: bytes
    receipts: int
    costs: int
    attributed: int


@dataclass(frozen=True)
class ChannelAudit:
    """The audit of one channel epoch, wei (module doc)."""

    client: str
    node: str
    epoch: int
    receipts: int
    charged: int
    costs: int
    redeemed: int
    authorised: int
    adapters: tuple[AdapterAudit, ...]

    @property
    def over_claim(self) -> int:
        """Wei the node claimed on chain above the highest charged total it signed (0 when honest)."""
        return max(0, self.redeemed - self.charged)

    @property
    def missing(self) -> int:
        """Wei the node's charged total counts that no receipt held here accounts for (lost receipts)."""
        return self.charged - self.costs


def audit_channel(
    channels: PaymentChannels, client: str, node: str, receipts: Sequence[SignedReceipt], authorised: int = 0
) -> ChannelAudit:
    """Checks ``receipts`` (of any epoch; those of the channel's current epoch count) against the chain.

    Args:
        authorised: the cumulative amount of the client's latest voucher on the epoch (wei).

    Raises:
        InvalidReceipt: a receipt is not signed by ``node``, or not for ``client``, or two receipts share a
            sequence number with different contents.
        ChainError: the chain cannot be reached.
    """
    state = channels.channel(client, node)
    seen: dict[int, SignedReceipt] = {}
    for signed in receipts:
        r = signed.receipt
        if recover_receipt_signer(signed, channels.domain) != node or r.node != node or r.client != client:
            raise InvalidReceipt(f"receipt {r.sequence} is not a receipt of node {node} to client {client}")
        if seen.setdefault(r.sequence, signed) != signed:
            raise InvalidReceipt(f"the node signed two different receipts with sequence {r.sequence}")
    mine = [s.receipt for s in seen.values() if s.receipt.epoch == state.epoch]
    adapters = []
    for adapter in sorted({r.adapter for r in mine}):
        of = [r for r in mine if r.adapter == adapter]
        attributed = channels.attributed(client, node, state.epoch, adapter)
        adapters.append(AdapterAudit(adapter, len(of), sum(r.cost for r in of), attributed))
    return ChannelAudit(
        client=client,
        node=node,
        epoch=state.epoch,
        receipts=len(mine),
        charged=max((r.charged_total for r in mine), default=0),
        costs=sum(r.cost for r in mine),
        redeemed=state.redeemed,
        authorised=authorised,
        adapters=tuple(adapters),
    )
