"""The client's side of a channel: deposit with its own key, sign just-enough vouchers, check receipts.

For each call the client reserves the call's max cost and signs a voucher for

    amount = max(last signed amount + 1, charged + reserved)        (reserved includes this call)

where ``charged`` is the highest ``chargedTotal`` of the node-signed receipts received and ``reserved`` the max
cost of the calls still in flight. The node holds at most ``charged + reserved`` committed, so the voucher
always covers the call, while the part of earlier authorisations a call did not use is credited to the next
one (it is never charged). Every voucher is strictly above the previous one, which the node requires.

A receipt is accepted only if the node signed it, it is for this client and epoch, its cost is within the
call's max cost, and ``chargedTotal`` does not exceed what the client ever authorised.

A client that lost its state (a new process; another process paying with the same key) ``resume``s from the
node's account of the channel: the latest voucher the node accepted and what it charged. Only the client's own
signature is trusted there, and the charged total counts only up to that voucher's amount, so a node that lies
about it can take at most the unused rest of what the client already authorised, never more.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from .contracts import PaymentChannels
from .errors import InvalidReceipt
from .records import ChannelState, Receipt, SignedReceipt, SignedVoucher, Voucher
from .vouchers import recover_receipt_signer, recover_voucher_signer, sign_voucher


@dataclass(frozen=True)
class PendingPayment:
    """A signed voucher for one call of max cost ``max_cost`` wei, until its receipt arrives."""

    voucher: SignedVoucher
    max_cost: int


class Payer:
    """Pays one node from one client account. Thread safe: concurrent calls share the channel correctly.

    Args:
        channels: the PaymentChannels deployment (through any chain connection; the key stays here).
        account: the client's key.
        node: the node's address.
        signed_amount, charged: resume an epoch: the last amount signed and the last ``chargedTotal`` seen.
    """

    def __init__(
        self, channels: PaymentChannels, account: LocalAccount, node: str, signed_amount: int = 0, charged: int = 0
    ) -> None:
        self.channels = channels
        self.account = account
        self.node = node
        self.epoch = channels.channel(account.address, node).epoch
        self.signed_amount = signed_amount
        self.charged = charged
        self.reserved = 0
        self._lock = threading.Lock()

    def deposit(self, amount_wei: int) -> ChannelState:
        """Deposits ``amount_wei`` (a transaction signed by this client) and returns the channel state.

        Raises:
            ContractRevert: ``ZeroDeposit``.
        """
        self.channels.deposit(self.account, self.node, amount_wei)
        state = self.channels.channel(self.account.address, self.node)
        with self._lock:
            if state.epoch != self.epoch:  # the previous epoch was withdrawn: start over
                self.epoch, self.signed_amount, self.charged, self.reserved = state.epoch, 0, 0, 0
        return state

    def refresh(self) -> ChannelState:
        """Re-reads the channel on chain; a new epoch (the client withdrew and deposited again) starts over."""
        state = self.channels.channel(self.account.address, self.node)
        with self._lock:
            if state.epoch != self.epoch:
                self.epoch, self.signed_amount, self.charged, self.reserved = state.epoch, 0, 0, 0
        return state

    def resume(self, latest: SignedVoucher, charged_total: int) -> None:
        """Catches up with the node's account of this epoch: ``latest`` is the last voucher it accepted,
        ``charged_total`` what it says it charged (wei). Never lowers what this payer already knows.

        Raises:
            InvalidReceipt: ``latest`` is not this client's voucher for this node and epoch (the node lies).
        """
        v = latest.voucher
        if (v.client, v.node, v.epoch) != (self.account.address, self.node, self.epoch):
            raise InvalidReceipt(
                f"the node reports a voucher of {v.client} to {v.node} for epoch {v.epoch}; expected this "
                f"client's to {self.node} for epoch {self.epoch}"
            )
        signer = recover_voucher_signer(latest, self.channels.domain)
        if signer != self.account.address:
            raise InvalidReceipt(f"the node reports a voucher signed by {signer}, not by this client")
        with self._lock:
            self.signed_amount = max(self.signed_amount, v.cumulative_amount)
            self.charged = max(self.charged, min(charged_total, v.cumulative_amount))

    def pay(self, max_cost: int) -> PendingPayment:
        """Reserves ``max_cost`` wei for one call and signs the voucher to send with it.

        Raises:
            ValueError: ``max_cost`` < 1.
        """
        if max_cost < 1:
            raise ValueError(f"max_cost must be >= 1 wei, got {max_cost}")
        with self._lock:
            self.reserved += max_cost
            amount = max(self.signed_amount + 1, self.charged + self.reserved)
            self.signed_amount = amount
            voucher = Voucher(self.account.address, self.node, self.epoch, amount)
            return PendingPayment(sign_voucher(self.account, voucher, self.channels.domain), max_cost)

    def refused(self, payment: PendingPayment) -> None:
        """The node refused the call: release its reservation (retry with a fresh ``pay``)."""
        with self._lock:
            self.reserved -= payment.max_cost

    def accept(self, payment: PendingPayment, signed: SignedReceipt) -> Receipt:
        """Checks the node's receipt for the call paid with ``payment`` and books its charge.

        Raises:
            InvalidReceipt: not signed by the node, for another client/epoch, costlier than the max cost, or
                charging more in total than this client ever authorised.
        """
        r = signed.receipt
        signer = recover_receipt_signer(signed, self.channels.domain)
        if signer != self.node or r.node != self.node:
            raise InvalidReceipt(f"receipt signed by {signer} for node {r.node}; expected node {self.node}")
        if r.client != self.account.address or r.epoch != payment.voucher.voucher.epoch:
            raise InvalidReceipt(f"receipt is for {r.client} epoch {r.epoch}, not this client's call")
        if r.cost > payment.max_cost:
            raise InvalidReceipt(f"receipt charges {r.cost} wei, above the call's max cost {payment.max_cost} wei")
        with self._lock:
            if r.charged_total > self.signed_amount:
                raise InvalidReceipt(
                    f"receipt says {r.charged_total} wei charged in total; only {self.signed_amount} were authorised"
                )
            self.reserved -= payment.max_cost
            self.charged = max(self.charged, r.charged_total)
        return r
