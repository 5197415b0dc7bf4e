"""The text stream of one ``Generate`` call, sync and async, free and paid.

    Generate ─► text, text, …, done(usage[, receipt], record, token ids) ─► stream.done, stream.served
       ✗ before anything arrived: retried (retry.py)      ✗ after: raised
    paid: done.receipt (or the receipt in the error's trailers) ─► _Booking ─► Payer.accept / refused
          (a receipt must bind the call's serving record: its ``serving`` is the record's digest)

``_Booking`` is the one place that turns how a paid call ended into the payer's books; the sync and the async
stream only drive it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from ..chain.errors import InvalidReceipt
from ..v1 import node_pb2 as pb
from .retry import RetryPolicy

if TYPE_CHECKING:
    from ..chain.payer import Payer, PendingPayment
    from ..chain.records import Receipt


class _Served:
    """``served``: the call as a verifier checks it (``proof.wire.served_call``), once the stream ended."""

    done: pb.GenerateDone | None

    @property
    def served(self) -> pb.ServedCall | None:
        """The node's signed serving record with the token ids it covers (and a paid call's receipt); ``None``
        before the end and for a call the node cut short (it signs no record for those)."""
        from ..proof.wire import served_call

        return served_call(self.done) if self.done is not None else None


class GenerationStream(_Served):
    """Iterates the text chunks of one ``Generate`` call; ``done`` holds the final message after, ``served`` the
    call's serving record (for ``openlora verify`` and spot checks).

    Args:
        responses: the started call (a gRPC response iterator).
        restart: starts the call again; with ``policy``, a call that fails before it delivered anything is
            restarted as the policy says (``None``: never).
        policy / rng: the retry policy and the RNG of its jitter.

    Iteration raises ``grpc.RpcError`` with the node's status when the call fails.
    """

    def __init__(
        self,
        responses,
        restart: Callable[[], Any] | None = None,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._responses = responses
        self._restart = restart
        self._policy = policy if restart is not None and policy is not None else RetryPolicy.none()
        self._rng = rng or random.Random()
        self.done: pb.GenerateDone | None = None

    def __iter__(self) -> Iterator[str]:
        attempts, received = 1, False
        while True:
            try:
                for resp in self._responses:
                    received = True
                    if resp.HasField("done"):
                        self.done = resp.done
                    else:
                        yield resp.text
                return
            except grpc.RpcError as e:
                delay = None if received else self._policy.delay(e, attempts, self._rng)
                if delay is None:
                    raise
            time.sleep(delay)
            attempts += 1
            self._responses = self._restart()

    def text(self) -> str:
        """Consume the stream and return the whole completion."""
        return "".join(self)

    def cancel(self) -> None:
        """Stop the call; the node frees the row at once."""
        self._responses.cancel()


class AsyncGenerationStream(_Served):
    """The asyncio twin of :class:`GenerationStream`: ``async for text in stream``; ``done`` and ``served`` after.

    Args:
        call: the started ``grpc.aio`` stream call.
        restart / policy / rng: as for :class:`GenerationStream`.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall,
        restart: Callable[[], grpc.aio.UnaryStreamCall] | None = None,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._call = call
        self._restart = restart
        self._policy = policy if restart is not None and policy is not None else RetryPolicy.none()
        self._rng = rng or random.Random()
        self.done: pb.GenerateDone | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        attempts, received = 1, False
        while True:
            try:
                while (resp := await self._call.read()) is not grpc.aio.EOF:
                    received = True
                    if resp.HasField("done"):
                        self.done = resp.done
                    else:
                        yield resp.text
                return
            except grpc.RpcError as e:
                delay = None if received else self._policy.delay(e, attempts, self._rng)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempts += 1
            self._call = self._restart()

    async def text(self) -> str:
        """Consume the stream and return the whole completion."""
        return "".join([t async for t in self])

    def cancel(self) -> None:
        """Stop the call; the node frees the row at once."""
        self._call.cancel()


class _Booking:
    """How one paid call ended, booked with the payer exactly once: a checked receipt, or a refusal (the next
    quote's channel state then says what the node billed)."""

    def __init__(self, payer: Payer, payment: PendingPayment) -> None:
        self.receipt: Receipt | None = None
        self.open = True
        self._payer = payer
        self._payment = payment
        self._lock = threading.Lock()

    def done(self, done: pb.GenerateDone) -> None:
        """The final message arrived.

        Raises:
            InvalidReceipt: no receipt although the call was not cut short, a receipt that does not bind the
                call's serving record, or one that fails the payer's checks.
        """
        if done.HasField("receipt"):
            problem = _unbound(done)
            if problem is not None:
                self.close(None)
                raise InvalidReceipt(problem)
            self.close(done.receipt)
            return
        self.close(None)
        # Only a call the node cut short before any text (it was stopping) is free of charge.
        if done.finish_reason != pb.FINISH_REASON_CANCELLED:
            raise InvalidReceipt("the node ended a paid call without a receipt")

    def failed(self, error: grpc.RpcError) -> None:
        """The call failed: the node puts the receipt of the text it delivered before in the trailers."""
        from ..chain.wire import RECEIPT_KEY

        raw = dict(error.trailing_metadata() or ()).get(RECEIPT_KEY)
        self.close(pb.Receipt.FromString(raw) if raw else None)

    def close(self, receipt: pb.Receipt | None) -> None:
        """Book ``receipt`` (``None``: refused / lost) unless the call is already booked.

        Raises:
            InvalidReceipt: the receipt fails the payer's checks (the call is then booked as refused).
        """
        with self._lock:
            if not self.open:
                return
            self.open = False
        if receipt is None:
            self._payer.refused(self._payment)
            return
        from ..chain.wire import receipt_from_pb

        try:
            self.receipt = self._payer.accept(self._payment, receipt_from_pb(receipt))
        except InvalidReceipt:
            self._payer.refused(self._payment)
            raise


def _unbound(done: pb.GenerateDone) -> str | None:
    """Why a paid call's receipt does not bind its serving record (``None``: it does). A finished call must come
    with a record signed by the receipt's node whose digest is the receipt's ``serving``; a call the node cut
    short has none, and its receipt's ``serving`` is zeros."""
    from ..proof.record import RecordError
    from ..proof.wire import record_from_pb

    serving = bytes(done.receipt.serving)
    if not done.HasField("record"):
        if done.finish_reason == pb.FINISH_REASON_CANCELLED and serving == bytes(32):
            return None
        return "the node ended a paid call without a serving record its receipt binds"
    try:
        signed = record_from_pb(done.record)
        signed.check_signature()
        digest = signed.record.digest()
    except RecordError as e:
        return f"the call's serving record is not valid: {e}"
    if signed.record.node != done.receipt.node or digest != serving:
        return "the receipt does not bind the call's serving record (its serving digest or node differ)"
    return None


class PaidStream(GenerationStream):
    """The stream of a paid call. Iterating it to the end checks the node's receipt and books its charge.

    Attributes:
        quote: the quote the call was paid by.
        receipt: the node-signed receipt (``chain.records.Receipt``) once the call ended, ``None`` before (and
            for a call cut off before it delivered anything).

    Iteration raises ``chain.errors.InvalidReceipt`` when the receipt is not signed by the node, charges more than
    the quote's max cost, or is missing (only a call the stopping node cut short before any text has none);
    ``grpc.RpcError`` when the call fails (a receipt for the text delivered before the failure is still checked
    and booked). Never retried: the node has accepted the voucher.
    """

    def __init__(self, responses, first: pb.GenerateResponse, booking: _Booking, quote: pb.Quote) -> None:
        super().__init__(responses)
        self.quote = quote
        self._first = first
        self._booking = booking

    @property
    def receipt(self) -> Receipt | None:
        return self._booking.receipt

    def __iter__(self) -> Iterator[str]:
        try:
            for resp in itertools.chain([self._first], self._responses):
                if resp.HasField("done"):
                    self.done = resp.done
                    self._booking.done(resp.done)
                else:
                    yield resp.text
        except grpc.RpcError as e:
            self._booking.failed(e)
            raise
        finally:
            if self._booking.open:  # the consumer stopped early: end the call, its receipt is lost to this client
                self._responses.cancel()
                self._booking.close(None)

    def cancel(self) -> None:
        """Stop the call; the node bills the text it delivered (the next quote reports it)."""
        self._responses.cancel()
        self._booking.close(None)


class AsyncPaidStream(AsyncGenerationStream):
    """The asyncio twin of :class:`PaidStream` (same attributes, same errors)."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, first: pb.GenerateResponse, booking: _Booking, quote: pb.Quote):
        super().__init__(call)
        self.quote = quote
        self._first = first
        self._booking = booking

    @property
    def receipt(self) -> Receipt | None:
        return self._booking.receipt

    async def __aiter__(self) -> AsyncIterator[str]:
        resp = self._first
        try:
            while resp is not grpc.aio.EOF:
                if resp.HasField("done"):
                    self.done = resp.done
                    self._booking.done(resp.done)
                else:
                    yield resp.text
                resp = await self._call.read()
        except grpc.RpcError as e:
            self._booking.failed(e)
            raise
        finally:
            if self._booking.open:
                self._call.cancel()
                self._booking.close(None)

    def cancel(self) -> None:
        """Stop the call; the node bills the text it delivered (the next quote reports it)."""
        self._call.cancel()
        self._booking.close(None)
