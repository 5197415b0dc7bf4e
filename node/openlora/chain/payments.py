"""The node's payment gate: what the API layer calls around every paid call.

    GetQuote  → quote(cid)                                    price per 1k tokens (publisher's + node fee)
    Generate  → authorize(voucher, cid, max_tokens)           raises PaymentError → refuse, stream nothing
                ... stream tokens ...
              → finalize(authorization, tokens) → receipt     node-signed; wakes the settler
                or void(authorization)                        the call failed before producing anything

``authorize`` re-reads the adapter's terms (a revoked adapter is refused at once) and the channel's on-chain
state for every call, then lets the ledger check and persist the voucher atomically.
"""

from __future__ import annotations

from .contracts import AdapterRegistry, PaymentChannels
from .ledger import Authorization, Ledger
from .pricing import Quote, make_quote
from .records import SignedReceipt, SignedVoucher
from .settlement import Settler


class NodePayments:
    """Quotes, authorises and bills calls for one node.

    Args:
        registry, channels: the deployment's contracts.
        ledger: the node's ledger (its node account is this node).
        node_fee_per_1k: wei per 1000 tokens the node adds to the publisher's price.
        settler: notified after each billed call (optional: without it, settle by other means).
    """

    def __init__(
        self,
        registry: AdapterRegistry,
        channels: PaymentChannels,
        ledger: Ledger,
        node_fee_per_1k: int,
        settler: Settler | None = None,
    ) -> None:
        if node_fee_per_1k < 0:
            raise ValueError(f"node fee must be >= 0 wei per 1k tokens, got {node_fee_per_1k}")
        self.registry = registry
        self.channels = channels
        self.ledger = ledger
        self.node_fee_per_1k = node_fee_per_1k
        self.settler = settler

    @property
    def node_address(self) -> str:
        return self.ledger.node.address

    def quote(self, cid: str) -> Quote:
        """The current price of calls to ``cid`` on this node.

        Raises:
            ValueError: ``cid`` is not a CID (or the call would be free).
            AdapterNotPayable: unknown or revoked adapter.
        """
        return make_quote(self.registry, cid, self.node_fee_per_1k)

    def authorize(self, signed: SignedVoucher, cid: str, max_tokens: int) -> Authorization:
        """Checks that ``signed`` pays for up to ``max_tokens`` tokens of ``cid`` and records the call durably.

        Raises:
            ValueError: bad ``cid`` or ``max_tokens`` < 1.
            PaymentError: not paid for (the subclass and message say why and what to do).
        """
        quote = self.quote(cid)
        state = self.channels.channel(signed.voucher.client, self.node_address)
        return self.ledger.authorize(signed, quote, max_tokens, state)

    def finalize(self, authorization: Authorization, tokens: int) -> SignedReceipt:
        """Bills ``tokens`` tokens (1..max_tokens) for the call; returns the node-signed receipt.

        Raises:
            ValueError: ``tokens`` out of range.
            LedgerError: the call was already finalized or voided.
        """
        receipt = self.ledger.finalize(authorization.receipt_id, tokens)
        if self.settler is not None:
            self.settler.notify()
        return receipt

    def void(self, authorization: Authorization) -> None:
        """Cancels a call that produced nothing; the client is not charged.

        Raises:
            LedgerError: the call was already finalized or voided.
        """
        self.ledger.void(authorization.receipt_id)
