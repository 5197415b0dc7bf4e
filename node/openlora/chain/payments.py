"""The node's payment gate: what the API layer calls around every paid call.

    GetQuote  → price_call(cid, manifest terms, prompt tokens, max new tokens) → CallPrice
                (+ channel_view(client): the channel on chain and in the ledger, for the client to resume)
    Generate  → price_call(...), then open_call(voucher, price)   raises PaymentError → refuse, stream nothing
                ... stream tokens ...
              → close_call(authorization, billed tokens) → receipt    node-signed; wakes the settler
                (0 billed tokens: the call is voided and costs nothing)
    GetUsage  → usage(cid)                                    settled per-adapter totals, read from the chain
    composed  → price_composed(parts), open_composed(one voucher per paid part), close_composed(billed tokens):
                each part is an ordinary call to its adapter, billed its weighted share of the tokens
                (``adapters.composition.part_tokens``) at its own price, on its own voucher, receipt and lane

A call's billed tokens are its prompt tokens plus the completion tokens delivered; its max cost, which the
voucher must newly authorise, is ``cost_wei(prompt_tokens + max_new_tokens)`` at the quoted price. A call is
free (no voucher needed) exactly when that max cost is 0: the base model (no adapter to attribute the payment
to: settlement only pays registered adapters), or, on a node without a fee, an adapter registered at price 0
or not registered at all (``pricing.call_quote``).

Every call sees the adapter's registration as of the chain's latest block (read once per block, so a revoked
adapter is refused by the first call after the revocation), re-reads the channel's on-chain state, then lets
the ledger check and persist the voucher atomically.

While the chain is unreachable (``ChainUnreachable``) calls run on credit:

    registration   the last one read for the adapter is used (none read yet → ChainUnreachable: UNAVAILABLE)
    channel        the last state read for the client is used (none read yet → ChainUnreachable)
    credit         the max costs of the client's calls authorised since its channel was last read add up;
                   a call that would take them above ``credit_limit_wei`` → CreditLimitReached (UNAVAILABLE)
    chain back     the next successful channel read clears the client's credit

The voucher itself is still checked in full (signature, node, epoch, monotonic amount, deposit as last seen),
so the node risks at most ``credit_limit_wei`` per client on a deposit withdrawn during the outage.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..adapters.composition import part_token_bounds, part_tokens
from .attribution import UsageRow, usage_report
from .contracts import AdapterRegistry, PaymentChannels
from .errors import ChainUnreachable, ContractRevert, CreditLimitReached, PaymentRequired
from .ledger import Authorization, ChannelTotals, Ledger
from .pricing import AdapterTerms, Quote, call_quote, make_quote
from .records import AdapterInfo, ChannelState, SignedReceipt, SignedVoucher
from .settlement import Settler


class _TokenLimit:
    """What a price derives from its ``prompt_tokens``, ``max_new_tokens`` and ``max_cost`` (wei)."""

    prompt_tokens: int
    max_new_tokens: int
    max_cost: int

    @property
    def max_tokens(self) -> int:
        """Most tokens the call can bill: prompt + max new tokens (before a composition's split)."""
        return self.prompt_tokens + self.max_new_tokens

    @property
    def required(self) -> bool:
        """Whether the call needs a voucher (its max cost is above 0; a composition: any part's)."""
        return self.max_cost > 0


@dataclass(frozen=True)
class CallPrice(_TokenLimit):
    """The price of one call: ``quote`` is ``None`` for a free call.

    Attributes:
        prompt_tokens / max_new_tokens: the call's prompt length and generation limit, tokens.
    """

    quote: Quote | None
    prompt_tokens: int
    max_new_tokens: int

    @property
    def max_cost(self) -> int:
        """Most wei the call can cost (0 when free)."""
        return 0 if self.quote is None else self.quote.cost_wei(self.max_tokens)


@dataclass(frozen=True)
class PartPrice:
    """One part of a composed call: adapter ``cid``, its ``quote`` (``None``: free), its weight in ppm, and
    ``max_tokens``, the most tokens it can be billed (``part_token_bounds``; 0: it cannot be billed any)."""

    cid: str
    quote: Quote | None
    weight_ppm: int
    max_tokens: int

    @property
    def max_cost(self) -> int:
        """Most wei this part can cost (what its voucher must newly authorise; 0 when free)."""
        return 0 if self.quote is None else self.quote.cost_wei(self.max_tokens)


@dataclass(frozen=True)
class ComposedPrice(_TokenLimit):
    """The price of a composed call: its parts in canonical (CID) order; prompt and generation limit in tokens."""

    parts: tuple[PartPrice, ...]
    prompt_tokens: int
    max_new_tokens: int

    @property
    def max_cost(self) -> int:
        """Most wei the call can cost, all parts together."""
        return sum(p.max_cost for p in self.parts)


@dataclass(frozen=True)
class ChannelView:
    """A client's channel with this node: ``state`` on chain; ``ledger`` (totals and the latest accepted
    voucher) for the current epoch, ``None`` before the node accepted a voucher on it; ``lane`` (wei charged and
    the latest voucher accepted for one adapter), ``None`` when not asked or none was accepted for it."""

    state: ChannelState
    ledger: tuple[ChannelTotals, SignedVoucher] | None
    lane: tuple[int, SignedVoucher] | None = None


class _LastKnownRegistry:
    """An ``AdapterRegistry`` reader (what ``pricing`` needs: ``adapter(adapter_id)``) that reads each
    registration once per block and answers from the last one read while the chain is unreachable.

    Registrations change only in a new block, so an answer read at the chain's current block number is still
    exact (a revocation is seen by the first call after the block that holds it). One ``eth_blockNumber``
    replaces an ``eth_call`` through the EVM on every call: ~0.8 ms against ~8–20 ms on the embedded chain,
    which at a few hundred calls a second was most of the node's CPU outside the engine.
    """

    def __init__(self, registry: AdapterRegistry) -> None:
        self.registry = registry
        # adapter id -> (block number read at, registration or the UnknownAdapter revert)
        self._known: dict[bytes, tuple[int, AdapterInfo | ContractRevert]] = {}
        self._lock = threading.Lock()

    def adapter(self, adapter_id: bytes) -> AdapterInfo:
        """The registration of ``adapter_id`` (32 bytes).

        Raises:
            ContractRevert: ``UnknownAdapter`` (the chain answered: not registered).
            ChainUnreachable: the chain does not answer and this registration was never read.
        """
        try:
            block = self.registry.chain.w3.eth.block_number
            with self._lock:
                seen = self._known.get(adapter_id)
            if seen is None or seen[0] != block:
                try:
                    seen = (block, self.registry.adapter(adapter_id))
                except ContractRevert as revert:
                    seen = (block, revert)
                with self._lock:
                    self._known[adapter_id] = seen
        except ChainUnreachable:
            with self._lock:
                seen = self._known.get(adapter_id)
            if seen is None:
                raise
        if isinstance(seen[1], ContractRevert):
            # a fresh exception per call: re-raising one shared instance would grow its traceback forever
            raise ContractRevert(seen[1].error, seen[1].args_)
        return seen[1]


class NodePayments:
    """Quotes, authorises and bills calls for one node.

    Args:
        registry, channels: the deployment's contracts.
        ledger: the node's ledger (its node account is this node).
        node_fee_per_1k: wei per 1000 tokens the node adds to the publisher's price.
        settler: notified after each billed call (optional: without it, settle by other means).
        credit_limit_wei: while the chain is unreachable, the most wei of calls (their max costs) one client
            may have authorised since its channel was last read from the chain (module doc); 0: none.

    Raises:
        ValueError: a negative fee or credit limit.
    """

    def __init__(
        self,
        registry: AdapterRegistry,
        channels: PaymentChannels,
        ledger: Ledger,
        node_fee_per_1k: int,
        settler: Settler | None = None,
        credit_limit_wei: int = 0,
    ) -> None:
        if node_fee_per_1k < 0:
            raise ValueError(f"node fee must be >= 0 wei per 1k tokens, got {node_fee_per_1k}")
        if credit_limit_wei < 0:
            raise ValueError(f"credit limit must be >= 0 wei, got {credit_limit_wei}")
        self.registry = registry
        self.channels = channels
        self.ledger = ledger
        self.node_fee_per_1k = node_fee_per_1k
        self.settler = settler
        self.credit_limit_wei = credit_limit_wei
        self._registrations = _LastKnownRegistry(registry)
        self._channels_seen: dict[str, ChannelState] = {}
        self._credit_used: dict[str, int] = {}
        self._credit_lock = threading.Lock()

    @property
    def node_address(self) -> str:
        return self.ledger.node.address

    def quote(self, cid: str, publisher: str) -> Quote:
        """The current price of calls to ``publisher``'s adapter ``cid`` on this node.

        Raises:
            ValueError: ``cid`` is not a CID (or the call would be free).
            AdapterNotPayable: unknown or revoked adapter.
            ChainUnreachable: the chain does not answer and the adapter's registration was never read.
        """
        return make_quote(self._registrations, cid, self.node_fee_per_1k, publisher)

    def authorize(self, signed: SignedVoucher, cid: str, max_tokens: int, publisher: str) -> Authorization:
        """Checks that ``signed`` pays for up to ``max_tokens`` tokens of ``publisher``'s adapter ``cid`` and
        records the call durably.

        Raises:
            ValueError: bad ``cid`` or ``max_tokens`` < 1.
            PaymentError: not paid for (the subclass and message say why and what to do).
        """
        return self._authorize(signed, self.quote(cid, publisher), max_tokens)

    def _authorize(self, signed: SignedVoucher, quote: Quote, max_tokens: int) -> Authorization:
        client = signed.voucher.client
        try:
            state = self.channels.channel(client, self.node_address)
        except ChainUnreachable as exc:
            return self._authorize_on_credit(signed, quote, max_tokens, exc)
        with self._credit_lock:
            self._channels_seen[client] = state
            self._credit_used.pop(client, None)
        return self.ledger.authorize(signed, quote, max_tokens, state)

    def _authorize_on_credit(
        self, signed: SignedVoucher, quote: Quote, max_tokens: int, outage: ChainUnreachable
    ) -> Authorization:
        client = signed.voucher.client
        max_cost = quote.cost_wei(max_tokens)
        # One lock over check and record: two racing calls cannot both fit in the last of the credit.
        with self._credit_lock:
            state = self._channels_seen.get(client)
            if state is None:
                raise outage
            used = self._credit_used.get(client, 0)
            if used + max_cost > self.credit_limit_wei:
                raise CreditLimitReached(
                    f"chain unreachable; credit limit reached: {used} wei of this client's calls are not yet "
                    f"checked against the chain, this call needs up to {max_cost} wei more and the node's limit is "
                    f"{self.credit_limit_wei} wei; retry when the chain is back"
                )
            authorization = self.ledger.authorize(signed, quote, max_tokens, state)
            self._credit_used[client] = used + max_cost
        return authorization

    def credit_used(self, client: str) -> int:
        """Wei of ``client``'s calls authorised on credit since its channel was last read from the chain."""
        with self._credit_lock:
            return self._credit_used.get(client, 0)

    def price_call(
        self, cid: str | None, terms: AdapterTerms | None, prompt_tokens: int, max_new_tokens: int
    ) -> CallPrice:
        """The price of one call to adapter ``cid`` (``None``: the base model, free) whose signed manifest asks
        ``terms``.

        Raises:
            ValueError: ``cid`` is not a CID, a token count is below 1, or ``terms`` is missing for an adapter.
            AdapterRevoked, AdapterNotPayable, TermsMismatch: see ``pricing.call_quote``.
            ChainUnreachable: the chain does not answer and the adapter's registration was never read.
        """
        if prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(f"prompt and max new tokens must be >= 1, got {prompt_tokens} and {max_new_tokens}")
        if cid is None:
            return CallPrice(None, prompt_tokens, max_new_tokens)
        if terms is None:
            raise ValueError(f"adapter {cid} has no verified manifest, so its terms are unknown")
        return CallPrice(
            call_quote(self._registrations, cid, terms, self.node_fee_per_1k), prompt_tokens, max_new_tokens
        )

    def price_composed(
        self, parts: list[tuple[str, AdapterTerms, int]], prompt_tokens: int, max_new_tokens: int
    ) -> ComposedPrice:
        """The price of a composed call whose parts are ``(cid, signed manifest terms, weight in ppm)`` in canonical
        order: each part priced as a call to its adapter (``pricing.call_quote``) for its bound of tokens.

        Raises:
            ValueError: a token count below 1.
            AdapterRevoked, AdapterNotPayable, TermsMismatch, ChainUnreachable: for any part, as :meth:`price_call`.
        """
        if prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(f"prompt and max new tokens must be >= 1, got {prompt_tokens} and {max_new_tokens}")
        bounds = part_token_bounds(prompt_tokens + max_new_tokens, [w for _, _, w in parts])
        return ComposedPrice(
            tuple(
                PartPrice(cid, call_quote(self._registrations, cid, terms, self.node_fee_per_1k), w, bound)
                for (cid, terms, w), bound in zip(parts, bounds)
            ),
            prompt_tokens,
            max_new_tokens,
        )

    def open_composed(
        self, vouchers: dict[str, SignedVoucher], price: ComposedPrice
    ) -> tuple[Authorization | None, ...]:
        """Authorises every paid part of a composed call on its own voucher (``vouchers`` by part CID), in canonical
        order, each recorded durably as its own call; all or nothing: a refused part voids the parts before it.

        Returns:
            per part its authorisation, ``None`` for a part that costs nothing.

        Raises:
            PaymentRequired: a paid part has no voucher (the message names it and its max cost).
            PaymentError, ChainUnreachable: as :meth:`open_call`, for the first part refused.
        """
        done: list[Authorization | None] = []
        try:
            for part in price.parts:
                if part.max_cost == 0:
                    done.append(None)
                    continue
                signed = vouchers.get(part.cid)
                if signed is None:
                    raise PaymentRequired(
                        f"part {part.cid} of this composed call costs up to {part.max_cost} wei ({part.max_tokens} "
                        f"tokens at {part.quote.price_per_1k_tokens} wei per 1k); send a voucher for it in its AdapterPart"
                    )
                done.append(self._authorize(signed, part.quote, part.max_tokens))
        except BaseException:
            for authorization in done:
                if authorization is not None:
                    self.void(authorization)
            raise
        return tuple(done)

    def close_composed(
        self, authorizations: tuple[Authorization | None, ...], price: ComposedPrice, tokens: int, serving: bytes = bytes(32)
    ) -> tuple[SignedReceipt | None, ...]:
        """Bills a composed call of ``tokens`` tokens (0 voids every part): each paid part its share
        (``part_tokens``), a part whose share is 0 tokens voided. Each receipt binds ``serving``.

        Returns:
            per part its receipt, ``None`` for a free or voided part.

        Raises:
            ValueError: ``tokens`` above the call's max tokens.
            LedgerError: a part was already closed.
        """
        if tokens > price.max_tokens:
            raise ValueError(f"tokens must be 0..{price.max_tokens} (the authorised maximum), got {tokens}")
        shares = part_tokens(tokens, [p.weight_ppm for p in price.parts])
        return tuple(
            None if a is None else self.close_call(a, share, serving) for a, share in zip(authorizations, shares)
        )

    def open_call(self, signed: SignedVoucher | None, price: CallPrice) -> Authorization | None:
        """Authorises a priced call and records it durably (``None``: the call is free, nothing to record).

        Raises:
            PaymentRequired: the call costs something and ``signed`` is ``None``.
            PaymentError: ``signed`` does not pay for the call (see ``vouchers.check_voucher``); while the chain
                is unreachable, CreditLimitReached when the client's credit is used up.
            ChainUnreachable: the chain does not answer and this client's channel was never read.
        """
        if price.quote is None:
            return None
        if signed is None:
            raise PaymentRequired(
                f"this call costs up to {price.max_cost} wei ({price.max_tokens} tokens at "
                f"{price.quote.price_per_1k_tokens} wei per 1k); ask GetQuote and send a voucher signed by your "
                "key (openlora generate --key PATH does both)"
            )
        return self._authorize(signed, price.quote, price.max_tokens)

    def close_call(self, authorization: Authorization, tokens: int, serving: bytes = bytes(32)) -> SignedReceipt | None:
        """Bills ``tokens`` for a call that ended (cut-off calls: the tokens delivered); 0 voids it. The receipt
        binds ``serving``, the digest of the call's serving record (zeros for a call cut off: it has none).

        Returns:
            the node-signed receipt, ``None`` when voided.

        Raises:
            ValueError: ``tokens`` above the authorised maximum.
            LedgerError: the call was already closed.
        """
        if tokens == 0:
            self.void(authorization)
            return None
        return self.finalize(authorization, tokens, serving)

    def channel_view(self, client: str, adapter: bytes | None = None) -> ChannelView:
        """``client``'s channel with this node, on chain and in the ledger (current epoch; with ``adapter``, a
        32-byte id, that adapter's lane too); while the chain is unreachable, the state last read from it.

        Raises:
            ChainUnreachable: the chain does not answer and this client's channel was never read.
        """
        try:
            state = self.channels.channel(client, self.node_address)
        except ChainUnreachable:
            with self._credit_lock:
                state = self._channels_seen.get(client)
            if state is None:
                raise
        lane = self.ledger.lane(client, state.epoch, adapter) if adapter is not None else None
        return ChannelView(state, self.ledger.channel(client, state.epoch), lane)

    def usage(self, cid: str | None = None) -> list[UsageRow]:
        """Settled on-chain usage of adapter ``cid``, or of every registered adapter.

        Raises:
            ValueError: ``cid`` is not a CID.
            ContractRevert: ``UnknownAdapter`` when ``cid`` is not registered.
        """
        return usage_report(self.registry, self.channels, cid)

    def finalize(self, authorization: Authorization, tokens: int, serving: bytes = bytes(32)) -> SignedReceipt:
        """Bills ``tokens`` tokens (1..max_tokens) for the call; returns the node-signed receipt (binding ``serving``,
        the 32-byte digest of the call's serving record).

        Raises:
            ValueError: ``tokens`` out of range.
            LedgerError: the call was already finalized or voided.
        """
        receipt = self.ledger.finalize(authorization.receipt_id, tokens, serving)
        if self.settler is not None:
            self.settler.notify()
        return receipt

    def void(self, authorization: Authorization) -> None:
        """Cancels a call that produced nothing; the client is not charged.

        Raises:
            LedgerError: the call was already finalized or voided.
        """
        self.ledger.void(authorization.receipt_id)
