"""The client's side of a channel: deposit with its own key, sign just-enough vouchers, check receipts.

For each call the client reserves the call's max cost and signs a voucher for

    amount         = max(last signed amount + 1, charged + reserved)                 (reserved includes this call)
    adapter amount = charged on the call's adapter + reserved on it                  (the same, per adapter)
    adapter, price = the call's adapter id and price per 1k tokens (checked against the registry by the caller)

where ``charged`` is the highest ``chargedTotal`` of the node-signed receipts received and ``reserved`` the max
cost of the calls still in flight. The node holds at most ``charged + reserved`` committed, so the voucher
always covers the call, while the part of earlier authorisations a call did not use is credited to the next
one (it is never charged). Every voucher is strictly above the previous one, which the node requires. So the
latest voucher exceeds what was charged by at most the max cost of the calls in flight when it was signed (one
call's, for a client that waits for each call), plus 1 wei per refused call: all a node can over-claim, and
the receipts (``receipts``, node-signed) prove what it charged (``chain.audit``).

A receipt is accepted only if the node signed it, it is for this client, epoch and the call's adapter, it bills
at most the call's max tokens, its cost is exactly ``cost_wei(tokens, price)`` at the voucher's price, and
``chargedTotal`` does not exceed what the client ever authorised.

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
from .pricing import Quote, cost_wei
from .errors import InvalidReceipt
from .records import ChannelState, Receipt, SignedReceipt, SignedVoucher, Voucher
from .vouchers import recover_receipt_signer, recover_voucher_signer, sign_voucher


@dataclass(frozen=True)
class PendingPayment:
    """A signed voucher for one call of at most ``max_tokens`` tokens (``max_cost`` wei), until its receipt
    arrives; the voucher names the call's adapter and price."""

    voucher: SignedVoucher
    max_cost: int
    max_tokens: int

    @property
    def adapter(self) -> bytes:
        return self.voucher.voucher.adapter


class _Lane:
    """What this payer knows of one adapter on the epoch, wei."""

    def __init__(self) -> None:
        self.charged = 0
        self.reserved = 0


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
        self.receipts: list[SignedReceipt] = []  # every receipt accepted, in order: the client's proof
        self._lanes: dict[bytes, _Lane] = {}
        self._lock = threading.Lock()

    def _new_epoch(self, epoch: int) -> None:
        self.epoch, self.signed_amount, self.charged, self.reserved = epoch, 0, 0, 0
        self._lanes = {}

    def deposit(self, amount_wei: int) -> ChannelState:
        """Deposits ``amount_wei`` (a transaction signed by this client) and returns the channel state.

        Raises:
            ContractRevert: ``ZeroDeposit``.
        """
        self.channels.deposit(self.account, self.node, amount_wei)
        state = self.channels.channel(self.account.address, self.node)
        with self._lock:
            if state.epoch != self.epoch:  # the previous epoch was withdrawn: start over
                self._new_epoch(state.epoch)
        return state

    def refresh(self) -> ChannelState:
        """Re-reads the channel on chain; a new epoch (the client withdrew and deposited again) starts over."""
        state = self.channels.channel(self.account.address, self.node)
        with self._lock:
            if state.epoch != self.epoch:
                self._new_epoch(state.epoch)
        return state

    def _own(self, signed: SignedVoucher) -> None:
        v = signed.voucher
        if (v.client, v.node, v.epoch) != (self.account.address, self.node, self.epoch):
            raise InvalidReceipt(
                f"the node reports a voucher of {v.client} to {v.node} for epoch {v.epoch}; expected this "
                f"client's to {self.node} for epoch {self.epoch}"
            )
        signer = recover_voucher_signer(signed, self.channels.domain)
        if signer != self.account.address:
            raise InvalidReceipt(f"the node reports a voucher signed by {signer}, not by this client")

    def resume(
        self,
        latest: SignedVoucher,
        charged_total: int,
        lane: tuple[SignedVoucher, int] | None = None,
    ) -> None:
        """Catches up with the node's account of this epoch: ``latest`` is the last voucher it accepted,
        ``charged_total`` what it says it charged (wei); ``lane``: the last voucher it accepted for one adapter
        and what it says it charged on that adapter. Each charge counts only up to this client's own signed
        amount. Never lowers what this payer already knows.

        Raises:
            InvalidReceipt: a voucher is not this client's for this node and epoch (the node lies).
        """
        self._own(latest)
        if lane is not None:
            self._own(lane[0])
        with self._lock:
            self.signed_amount = max(self.signed_amount, latest.voucher.cumulative_amount)
            self.charged = max(self.charged, min(charged_total, latest.voucher.cumulative_amount))
            if lane is not None:
                known = self._lanes.setdefault(lane[0].voucher.adapter, _Lane())
                known.charged = max(known.charged, min(lane[1], lane[0].voucher.adapter_amount))

    def pay(self, max_cost: int, *, adapter: bytes, price_per_1k_tokens: int, max_tokens: int) -> PendingPayment:
        """Reserves ``max_cost`` wei for one call of at most ``max_tokens`` tokens to ``adapter`` (32-byte id) at
        ``price_per_1k_tokens`` and signs the voucher to send with it.

        Raises:
            ValueError: ``max_cost`` < 1, or it is not ``cost_wei(max_tokens, price_per_1k_tokens)``.
        """
        if max_cost < 1:
            raise ValueError(f"max_cost must be >= 1 wei, got {max_cost}")
        if max_cost != cost_wei(max_tokens, price_per_1k_tokens):
            raise ValueError(
                f"max_cost {max_cost} wei is not the cost of {max_tokens} tokens at {price_per_1k_tokens} wei per 1k"
            )
        with self._lock:
            self.reserved += max_cost
            lane = self._lanes.setdefault(adapter, _Lane())
            lane.reserved += max_cost
            amount = max(self.signed_amount + 1, self.charged + self.reserved)
            self.signed_amount = amount
            voucher = Voucher(
                self.account.address,
                self.node,
                self.epoch,
                amount,
                adapter,
                price_per_1k_tokens,
                lane.charged + lane.reserved,
            )
            return PendingPayment(sign_voucher(self.account, voucher, self.channels.domain), max_cost, max_tokens)

    def pay_quote(self, quote: Quote, max_tokens: int) -> PendingPayment:
        """``pay`` for one call of at most ``max_tokens`` tokens at ``quote`` (a ``pricing.Quote`` this process
        computed from the registry, e.g. in-process with the node)."""
        return self.pay(
            quote.cost_wei(max_tokens),
            adapter=quote.adapter_id,
            price_per_1k_tokens=quote.price_per_1k_tokens,
            max_tokens=max_tokens,
        )

    def refused(self, payment: PendingPayment) -> None:
        """The node refused the call: release its reservation (retry with a fresh ``pay``)."""
        with self._lock:
            self.reserved -= payment.max_cost
            self._lanes[payment.adapter].reserved -= payment.max_cost

    def accept(self, payment: PendingPayment, signed: SignedReceipt) -> Receipt:
        """Checks the node's receipt for the call paid with ``payment`` and books its charge.

        Raises:
            InvalidReceipt: not signed by the node, for another client/epoch/adapter, billing more tokens than the
                call's maximum, a cost other than those tokens at the voucher's price, or charging more in total
                than this client ever authorised.
        """
        r = signed.receipt
        v = payment.voucher.voucher
        signer = recover_receipt_signer(signed, self.channels.domain)
        if signer != self.node or r.node != self.node:
            raise InvalidReceipt(f"receipt signed by {signer} for node {r.node}; expected node {self.node}")
        if r.client != self.account.address or r.epoch != v.epoch or r.adapter != v.adapter:
            raise InvalidReceipt(
                f"receipt is for {r.client} epoch {r.epoch} adapter 0x{r.adapter.hex()}, not this client's call"
            )
        if not 0 < r.tokens <= payment.max_tokens:
            raise InvalidReceipt(f"receipt bills {r.tokens} tokens; the call could bill 1 to {payment.max_tokens}")
        expected = cost_wei(r.tokens, v.price_per_1k_tokens)
        if r.cost != expected:
            raise InvalidReceipt(
                f"receipt charges {r.cost} wei for {r.tokens} tokens; at {v.price_per_1k_tokens} wei per 1k they "
                f"cost {expected} wei"
            )
        with self._lock:
            if r.charged_total > self.signed_amount:
                raise InvalidReceipt(
                    f"receipt says {r.charged_total} wei charged in total; only {self.signed_amount} were authorised"
                )
            self.reserved -= payment.max_cost
            lane = self._lanes[payment.adapter]
            lane.reserved -= payment.max_cost
            lane.charged += r.cost
            self.charged = max(self.charged, r.charged_total)
            self.receipts.append(signed)
        return r
