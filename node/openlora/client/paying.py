"""Paying a node per call from a key held in this process (README "Economics"), sync and async.

    once:      the node's contracts checked (chain.pinning: the pinned deployment, openlora code) before any
               deposit or voucher
    per call:  GetQuote(prompt, client) ─► price recomputed from the registry (client.quotes; a quote that
               disagrees is refused) ─► Payer signs a voucher for what was charged + the calls in flight, naming
               the adapter and price ─► Generate(voucher) ─► text ─► receipt checked (signed by the node, cost ==
               its tokens at the voucher's price) ─► its charged total is the base of the next voucher
    composed:  each paid part of "A*0.7+B*0.3" as above on its own adapter lane (its share of the token bound,
               client.quotes), vouchers signed in the parts' CID order, one receipt per part billed (its exact
               share of the call's tokens, client.streams)

A paid ``Generate`` is sent again only when (1) the node refused the voucher as stale or short (concurrent
calls of this client reached it out of order; a fresh voucher fixes it) or (2) the request never left this
process (gRPC could not connect; retry.py). Either way the refused payment is released first, and the next
attempt pays from a fresh quote.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import TYPE_CHECKING

import grpc

from ..v1 import node_pb2 as pb
from .builders import generate_request
from .retry import RetryPolicy
from .streams import AsyncGenerationStream, AsyncPaidStream, GenerationStream, PaidStream, _Booking

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from ..chain.audit import ChannelAudit
    from ..chain.contracts import AdapterRegistry, Deployment, PaymentChannels
    from ..chain.payer import Payer, PendingPayment
    from ..chain.records import ChannelState
    from .aio import AsyncNodeClient
    from .sync import NodeClient

#: refusals a fresh voucher fixes (concurrent calls from this client reached the node out of order)
RETRY_ON = frozenset({"StaleVoucher", "InsufficientAuthorization"})


def payment_error(error: grpc.RpcError) -> str:
    """The name of the payment error a node refused a call with (``"StaleVoucher"``, ...), ``""`` for others."""
    from ..chain.wire import PAYMENT_ERROR_KEY

    return dict(error.trailing_metadata() or ()).get(PAYMENT_ERROR_KEY, "")


def node_contracts(info: pb.ChainInfo, rpc_url: str | None = None) -> tuple[AdapterRegistry, PaymentChannels]:
    """The node's contracts over ``rpc_url`` (default: the URL the node advertises, ``NodeInfo.chain.rpc_url``).

    Raises:
        openlora.chain.errors.ChainError: nothing answers there, or it is another chain than the node's.
    """
    from ..chain.backends import rpc_chain
    from ..chain.contracts import AdapterRegistry, PaymentChannels
    from ..chain.errors import ChainError

    url = rpc_url or info.rpc_url
    if not url:
        raise ChainError("the node advertises no chain RPC URL; pass one (--chain-rpc)")
    chain = rpc_chain(url)
    if chain.chain_id != info.chain_id:
        raise ChainError(f"{url} is chain {chain.chain_id}, but the node is paid on chain {info.chain_id}")
    return AdapterRegistry(chain, info.registry), PaymentChannels(chain, info.channels)


class _Paying:
    """One session's trusted pieces: the payer, the pinned registry, the node fee cap (wei per 1k) and the
    publishers proven by the adapters' signed manifests (CID -> address)."""

    def __init__(self, payer: Payer, registry: AdapterRegistry, max_node_fee_per_1k: int) -> None:
        self.payer = payer
        self.registry = registry
        self.max_node_fee_per_1k = max_node_fee_per_1k
        self.publishers: dict[str, str] = {}


def register_adapter(client: NodeClient, cid: str, signer: LocalAccount, rpc_url: str | None = None) -> bool:
    """Registers adapter ``cid`` on the node's chain at the terms of its signed manifest, signed by ``signer``
    (the manifest's publisher), so that calls to it can be paid and attributed.

    Returns:
        ``True`` when registered now, ``False`` when ``signer`` already registered it at the same terms.

    Raises:
        ValueError: ``signer`` is not the manifest's publisher, or ``signer`` registered the CID at other terms
            (a registration by anybody else is another adapter and does not matter).
        grpc.RpcError: the node does not know the adapter.
        openlora.chain.errors.ChainError: the chain cannot be reached, or the transaction reverts.
    """
    from ..chain.pricing import registration

    info = client.get_adapter(cid)
    if info.publisher != signer.address:
        raise ValueError(f"adapter {cid} is published by {info.publisher}; register it with that key, not {signer.address}")
    price, royalty = int(info.price_per_1k_tokens or 0), info.royalty_bps
    registry, _ = node_contracts(client.node_info().chain, rpc_url)
    existing = registration(registry, info.cid, signer.address)
    if existing is None:
        registry.register(signer, info.cid, price, royalty)
        return True
    if (existing.price_per_1k_tokens, existing.royalty_bps) != (price, royalty):
        raise ValueError(
            f"you already registered adapter {cid} at {existing.price_per_1k_tokens} wei per 1k tokens and "
            f"{existing.royalty_bps} bps; nodes refuse paid calls to it (republish under a new CID)"
        )
    return False


def revoke_adapter(client: NodeClient, cid: str, signer: LocalAccount, rpc_url: str | None = None) -> None:
    """Revokes adapter ``cid`` on the node's chain (signed by its publisher): nodes refuse new calls to it.

    Raises:
        openlora.chain.errors.ContractRevert: ``UnknownAdapter``, ``NotPublisher`` or ``AlreadyRevoked``.
        openlora.chain.errors.ChainError: the chain cannot be reached.
    """
    registry, _ = node_contracts(client.node_info().chain, rpc_url)
    registry.revoke(signer, cid)


def _connect(
    info: pb.ChainInfo,
    account: LocalAccount,
    rpc_url: str | None,
    deployment: Deployment | None,
    max_node_fee_per_1k: int | None,
) -> _Paying:
    """The payer of ``account`` to the node described by ``info``, once its contracts pass ``check_contracts``
    (reads the channel on chain). The fee cap defaults to the fee the node announces now.

    Raises:
        UntrustedContracts: the node names contracts this client does not trust.
        ChainError: the chain cannot be reached.
    """
    from ..chain.payer import Payer
    from ..chain.pinning import check_contracts
    from ..chain.wire import wei

    registry, channels = node_contracts(info, rpc_url)
    check_contracts(registry, channels, deployment)
    cap = wei(info.node_fee_per_1k or "0", "node_fee_per_1k") if max_node_fee_per_1k is None else max_node_fee_per_1k
    return _Paying(Payer(channels, account, info.node_address), registry, cap)


def _pay(
    paying: _Paying, request: pb.GenerateRequest, quote: pb.Quote, manifests: dict[str, pb.AdapterInfo]
) -> dict[str, PendingPayment]:
    """Checks ``quote`` against the chain (``client.quotes``), catches the payer up with the node's account of
    the channel (a new process, or another one paying with the same key), reserves the call's max cost and puts
    the signed voucher into ``request``: one for a plain call; for a composed call one per paid part, in its
    ``AdapterPart``, signed in canonical (CID) order, the order the node checks them in (each voucher's amount
    above the one before).

    ``manifests``: the node's ``GetAdapter`` answer for each adapter paid for the first time (by CID); its
    publisher is then remembered.

    Returns:
        the payments by adapter CID: one per paid part of a composition (canonical CIDs), one for a plain call.

    Raises:
        UntrustedQuote: the quote disagrees with the chain, a signed manifest or the request (nothing is signed).
    """
    from ..chain.wire import voucher_to_pb
    from ..content.cid import cid_text
    from .quotes import check_composed_quote, check_quote, manifest_publisher

    payer = paying.payer
    for cid, manifest in manifests.items():
        paying.publishers[cid] = manifest_publisher(cid, manifest)
    terms = dict(registry=paying.registry, channels=payer.channels, node=payer.node, max_node_fee_per_1k=paying.max_node_fee_per_1k)
    if request.adapters:
        prices = check_composed_quote(quote, request, publishers=paying.publishers, **terms)
        parts = {cid_text(p.cid): p for p in request.adapters}
        lanes = [(q.adapter, price, q, parts[q.adapter].voucher) for price, q in zip(prices, quote.parts) if price]
    else:
        price = check_quote(quote, request, publisher=paying.publishers[request.adapter], **terms)
        lanes = [(request.adapter, price, quote, request.voucher)]
    for _, _, quoted, _ in lanes:
        _catch_up(payer, quoted.channel)
    payments: dict[str, PendingPayment] = {}
    try:
        for cid, price, _, voucher in lanes:  # canonical order: check_composed_quote checked the quote's
            payment = payer.pay(
                price.max_cost, adapter=price.adapter, price_per_1k_tokens=price.price_per_1k_tokens, max_tokens=price.max_tokens
            )
            payments[cid] = payment
            voucher.CopyFrom(voucher_to_pb(payment.voucher))
    except BaseException:
        for payment in payments.values():
            payer.refused(payment)
        raise
    return payments


def _paid_cids(request: pb.GenerateRequest, quote: pb.Quote) -> list[str]:
    """The adapters ``request`` pays for (``quote`` says which parts of a composition cost something)."""
    if not request.adapters:
        return [request.adapter]
    return [part.adapter for part in quote.parts if part.payment_required]


def _catch_up(payer: Payer, channel: pb.ChannelState) -> None:
    """Resumes ``payer`` from the node's account of the channel in a quote (its latest voucher, charged totals and
    the quoted adapter's lane), when the quote is for the payer's epoch (a new epoch is read from the chain)."""
    from ..chain.wire import voucher_from_pb, wei

    if channel.epoch != payer.epoch:
        payer.refresh()
    if channel.epoch == payer.epoch and channel.HasField("latest_voucher"):
        lane = None
        if channel.HasField("adapter_voucher"):
            lane = (voucher_from_pb(channel.adapter_voucher), wei(channel.adapter_charged, "adapter_charged"))
        payer.resume(voucher_from_pb(channel.latest_voucher), wei(channel.charged_total, "charged_total"), lane)


class _Refusals:
    """Decides, refusal by refusal, whether a paid call is paid and sent again (module docstring) and after
    how many seconds."""

    def __init__(self, stale_retries: int, policy: RetryPolicy, rng: random.Random) -> None:
        self._stale_left = stale_retries
        self._policy = policy
        self._rng = rng
        self._attempts = 1

    def delay(self, error: grpc.RpcError) -> float | None:
        if payment_error(error) in RETRY_ON and self._stale_left > 0:
            self._stale_left -= 1
            return 0.0
        delay = self._policy.delay(error, self._attempts, self._rng, paid=True)
        self._attempts += 1
        return delay


class PaidSession:
    """Pays one node per call from one client key. Thread safe; the key never leaves this process.

    Args:
        client: the node connection (its retry policy also covers the paid calls, as the module says).
        account: the client's key (``openlora.adapters.keys.load_account``).
        rpc_url: the chain's JSON-RPC URL (default: the one the node advertises).
        retries: times a call is re-paid when concurrent calls' vouchers reached the node out of order.
        deployment: the contracts this client trusts (``Deployment.from_json`` of a deployment file); the node
            must name exactly them. Without it, any deployment of the openlora contracts' code is accepted
            (``chain.pinning``).
        max_node_fee_per_1k: the most node fee this client pays, wei per 1000 tokens (default: the fee the node
            announces when the session connects).

    ``generate`` blocks until the node accepted the payment (first text or the end), so that a voucher refused
    as stale can be re-signed and sent again.
    """

    RETRY_ON = RETRY_ON

    def __init__(
        self,
        client: NodeClient,
        account: LocalAccount,
        rpc_url: str | None = None,
        retries: int = 8,
        deployment: Deployment | None = None,
        max_node_fee_per_1k: int | None = None,
    ) -> None:
        self.client = client
        self.account = account
        self.rpc_url = rpc_url
        self.retries = retries
        self.deployment = deployment
        self.max_node_fee_per_1k = max_node_fee_per_1k
        self._paying: _Paying | None = None
        self._lock = threading.Lock()

    def _connected(self) -> _Paying:
        with self._lock:
            if self._paying is None:
                info = self.client.node_info().chain
                self._paying = _connect(info, self.account, self.rpc_url, self.deployment, self.max_node_fee_per_1k)
            return self._paying

    def payer(self) -> Payer:
        """The channel's payer (connects to the chain and checks the node's contracts on first use).

        Raises:
            openlora.chain.errors.UntrustedContracts: the node names contracts this client does not trust.
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        return self._connected().payer

    def open_channel(self, amount_wei: int) -> ChannelState:
        """Deposits ``amount_wei`` into this client's channel with the node (a transaction signed here).

        Raises:
            openlora.chain.errors.ContractRevert: ``ZeroDeposit``; ChainError: not mined (e.g. too little ETH).
        """
        return self.payer().deposit(amount_wei)

    def channel(self) -> ChannelState:
        """This client's channel with the node, as the chain has it."""
        return self.payer().refresh()

    def quote(self, request: pb.GenerateRequest) -> pb.Quote:
        """The price of ``request`` and the state of this client's channel."""
        return self.client.quote(request, self.account)

    def audit(self) -> ChannelAudit:
        """What the node charged (its signed receipts held by this session) against what it claimed and
        attributed on chain for the current epoch (``chain.audit``).

        Raises:
            openlora.chain.errors.InvalidReceipt: a receipt held is inconsistent (the node signed two versions).
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        from ..chain.audit import audit_channel

        payer = self.payer()
        return audit_channel(payer.channels, self.account.address, payer.node, payer.receipts, payer.signed_amount)

    def generate(self, prompt: str | None = None, **kwargs) -> GenerationStream:
        """Like :meth:`NodeClient.generate` (same arguments), paying when the quote says so.

        Returns:
            a :class:`PaidStream` for a paid call, a plain :class:`GenerationStream` for a free one.

        Raises:
            grpc.RpcError: the node refused the call (``payment_error`` names a payment refusal) or failed it.
            openlora.chain.errors.UntrustedQuote: the quote disagrees with the chain, the manifest or the request.
            openlora.chain.errors.InvalidReceipt: the node's account of the channel is not backed by this client's
                vouchers, or a receipt's cost is not its tokens at the voucher's price.
            openlora.chain.errors.UntrustedContracts: the node names contracts this client does not trust.
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        request = generate_request(prompt, **kwargs)
        refusals = _Refusals(self.retries, self.client.retry, self.client._rng)
        while True:
            quote = self.quote(request)
            if not quote.payment_required:
                return self.client._stream(request)
            paying = self._connected()
            payer = paying.payer
            unknown = [cid for cid in _paid_cids(request, quote) if cid not in paying.publishers]
            payments = _pay(paying, request, quote, {cid: self.client.get_adapter(cid) for cid in unknown})
            responses = self.client._stub.Generate(request, timeout=self.client.timeout)
            try:
                first = next(responses)
            except grpc.RpcError as e:
                for payment in payments.values():
                    payer.refused(payment)
                delay = refusals.delay(e)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            return PaidStream(responses, first, _Booking(payer, payments, request), quote)


class AsyncPaidSession:
    """The asyncio twin of :class:`PaidSession` (same arguments, rules and errors); chain calls run in a worker
    thread so the event loop keeps serving."""

    RETRY_ON = RETRY_ON

    def __init__(
        self,
        client: AsyncNodeClient,
        account: LocalAccount,
        rpc_url: str | None = None,
        retries: int = 8,
        deployment: Deployment | None = None,
        max_node_fee_per_1k: int | None = None,
    ):
        self.client = client
        self.account = account
        self.rpc_url = rpc_url
        self.retries = retries
        self.deployment = deployment
        self.max_node_fee_per_1k = max_node_fee_per_1k
        self._paying: _Paying | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> _Paying:
        async with self._lock:
            if self._paying is None:
                info = (await self.client.node_info()).chain
                self._paying = await asyncio.to_thread(
                    _connect, info, self.account, self.rpc_url, self.deployment, self.max_node_fee_per_1k
                )
            return self._paying

    async def payer(self) -> Payer:
        """The channel's payer (see :meth:`PaidSession.payer`)."""
        return (await self._connected()).payer

    async def open_channel(self, amount_wei: int) -> ChannelState:
        """Deposits ``amount_wei`` into this client's channel with the node (see :meth:`PaidSession.open_channel`)."""
        return await asyncio.to_thread((await self.payer()).deposit, amount_wei)

    async def channel(self) -> ChannelState:
        """This client's channel with the node, as the chain has it."""
        return await asyncio.to_thread((await self.payer()).refresh)

    async def quote(self, request: pb.GenerateRequest) -> pb.Quote:
        """The price of ``request`` and the state of this client's channel."""
        return await self.client.quote(request, self.account)

    async def generate(self, prompt: str | None = None, **kwargs) -> AsyncGenerationStream:
        """Like :meth:`PaidSession.generate`, but a coroutine returning an :class:`AsyncPaidStream` (paid) or an
        :class:`AsyncGenerationStream` (free)."""
        request = generate_request(prompt, **kwargs)
        refusals = _Refusals(self.retries, self.client.retry, self.client._rng)
        while True:
            quote = await self.quote(request)
            if not quote.payment_required:
                return self.client._stream(request)
            paying = await self._connected()
            payer = paying.payer
            unknown = [cid for cid in _paid_cids(request, quote) if cid not in paying.publishers]
            manifests = {cid: await self.client.get_adapter(cid) for cid in unknown}
            payments = await asyncio.to_thread(_pay, paying, request, quote, manifests)
            call = self.client._stub.Generate(request, timeout=self.client.timeout)
            try:
                first = await call.read()
            except grpc.RpcError as e:
                for payment in payments.values():
                    payer.refused(payment)
                delay = refusals.delay(e)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            return AsyncPaidStream(call, first, _Booking(payer, payments, request), quote)
