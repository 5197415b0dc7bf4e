"""Paying a node per call from a key held in this process (README "Economics"), sync and async.

    per call:  GetQuote(prompt, client) ─► max cost, channel state ─► Payer signs a voucher for
               what was charged + the calls in flight ─► Generate(voucher) ─► text ─► receipt checked
               (signed by the node, cost <= max cost) ─► its charged total is the base of the next voucher

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

    from ..chain.contracts import AdapterRegistry, PaymentChannels
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


def register_adapter(client: NodeClient, cid: str, signer: LocalAccount, rpc_url: str | None = None) -> bool:
    """Registers adapter ``cid`` on the node's chain at the terms of its signed manifest, signed by ``signer``
    (the manifest's publisher), so that calls to it can be paid and attributed.

    Returns:
        ``True`` when registered now, ``False`` when it already was, by ``signer`` at the same terms.

    Raises:
        ValueError: ``signer`` is not the manifest's publisher, or the CID is registered by another account or
            at other terms.
        grpc.RpcError: the node does not know the adapter.
        openlora.chain.errors.ChainError: the chain cannot be reached, or the transaction reverts.
    """
    from ..chain.pricing import registration

    info = client.get_adapter(cid)
    if info.publisher != signer.address:
        raise ValueError(f"adapter {cid} is published by {info.publisher}; register it with that key, not {signer.address}")
    price, royalty = int(info.price_per_1k_tokens or 0), info.royalty_bps
    registry, _ = node_contracts(client.node_info().chain, rpc_url)
    existing = registration(registry, info.cid)
    if existing is None:
        registry.register(signer, info.cid, price, royalty)
        return True
    if (existing.publisher, existing.price_per_1k_tokens, existing.royalty_bps) != (signer.address, price, royalty):
        raise ValueError(
            f"adapter {cid} is already registered by {existing.publisher} at {existing.price_per_1k_tokens} wei per 1k "
            f"tokens and {existing.royalty_bps} bps; nodes refuse paid calls to it (republish under a new CID)"
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


def _new_payer(info: pb.ChainInfo, account: LocalAccount, rpc_url: str | None) -> Payer:
    """A payer of ``account`` to the node described by ``info`` (reads the channel on chain)."""
    from ..chain.payer import Payer

    _, channels = node_contracts(info, rpc_url)
    return Payer(channels, account, info.node_address)


def _pay(payer: Payer, request: pb.GenerateRequest, quote: pb.Quote) -> PendingPayment:
    """Catches ``payer`` up with the node's account of the channel (a new process, or another one paying with
    the same key), reserves the quote's max cost and puts the signed voucher into ``request``."""
    from ..chain.wire import voucher_from_pb, voucher_to_pb, wei

    channel = quote.channel
    if channel.epoch != payer.epoch:
        payer.refresh()
    if channel.epoch == payer.epoch and channel.HasField("latest_voucher"):
        payer.resume(voucher_from_pb(channel.latest_voucher), wei(channel.charged_total, "charged_total"))
    payment = payer.pay(int(quote.max_cost_wei))
    request.voucher.CopyFrom(voucher_to_pb(payment.voucher))
    return payment


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

    ``generate`` blocks until the node accepted the payment (first text or the end), so that a voucher refused
    as stale can be re-signed and sent again.
    """

    RETRY_ON = RETRY_ON

    def __init__(self, client: NodeClient, account: LocalAccount, rpc_url: str | None = None, retries: int = 8) -> None:
        self.client = client
        self.account = account
        self.rpc_url = rpc_url
        self.retries = retries
        self._payer: Payer | None = None
        self._lock = threading.Lock()

    def payer(self) -> Payer:
        """The channel's payer (connects to the chain on first use).

        Raises:
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        with self._lock:
            if self._payer is None:
                self._payer = _new_payer(self.client.node_info().chain, self.account, self.rpc_url)
            return self._payer

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
        return self.client.quote(request, self.account.address)

    def generate(self, prompt: str | None = None, **kwargs) -> GenerationStream:
        """Like :meth:`NodeClient.generate` (same arguments), paying when the quote says so.

        Returns:
            a :class:`PaidStream` for a paid call, a plain :class:`GenerationStream` for a free one.

        Raises:
            grpc.RpcError: the node refused the call (``payment_error`` names a payment refusal) or failed it.
            openlora.chain.errors.InvalidReceipt: the node's account of the channel is not backed by this client's
                vouchers.
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        request = generate_request(prompt, **kwargs)
        refusals = _Refusals(self.retries, self.client.retry, self.client._rng)
        while True:
            quote = self.quote(request)
            if not quote.payment_required:
                return self.client._stream(request)
            payer = self.payer()
            payment = _pay(payer, request, quote)
            responses = self.client._stub.Generate(request, timeout=self.client.timeout)
            try:
                first = next(responses)
            except grpc.RpcError as e:
                payer.refused(payment)
                delay = refusals.delay(e)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            return PaidStream(responses, first, _Booking(payer, payment), quote)


class AsyncPaidSession:
    """The asyncio twin of :class:`PaidSession` (same arguments, rules and errors); chain calls run in a worker
    thread so the event loop keeps serving."""

    RETRY_ON = RETRY_ON

    def __init__(self, client: AsyncNodeClient, account: LocalAccount, rpc_url: str | None = None, retries: int = 8):
        self.client = client
        self.account = account
        self.rpc_url = rpc_url
        self.retries = retries
        self._payer: Payer | None = None
        self._lock = asyncio.Lock()

    async def payer(self) -> Payer:
        """The channel's payer (connects to the chain on first use).

        Raises:
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        async with self._lock:
            if self._payer is None:
                info = (await self.client.node_info()).chain
                self._payer = await asyncio.to_thread(_new_payer, info, self.account, self.rpc_url)
            return self._payer

    async def open_channel(self, amount_wei: int) -> ChannelState:
        """Deposits ``amount_wei`` into this client's channel with the node (see :meth:`PaidSession.open_channel`)."""
        return await asyncio.to_thread((await self.payer()).deposit, amount_wei)

    async def channel(self) -> ChannelState:
        """This client's channel with the node, as the chain has it."""
        return await asyncio.to_thread((await self.payer()).refresh)

    async def quote(self, request: pb.GenerateRequest) -> pb.Quote:
        """The price of ``request`` and the state of this client's channel."""
        return await self.client.quote(request, self.account.address)

    async def generate(self, prompt: str | None = None, **kwargs) -> AsyncGenerationStream:
        """Like :meth:`PaidSession.generate`, but a coroutine returning an :class:`AsyncPaidStream` (paid) or an
        :class:`AsyncGenerationStream` (free)."""
        request = generate_request(prompt, **kwargs)
        refusals = _Refusals(self.retries, self.client.retry, self.client._rng)
        while True:
            quote = await self.quote(request)
            if not quote.payment_required:
                return self.client._stream(request)
            payer = await self.payer()
            payment = await asyncio.to_thread(_pay, payer, request, quote)
            call = self.client._stub.Generate(request, timeout=self.client.timeout)
            try:
                first = await call.read()
            except grpc.RpcError as e:
                payer.refused(payment)
                delay = refusals.delay(e)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            return AsyncPaidStream(call, first, _Booking(payer, payment), quote)
