"""The text stream of one ``Generate`` call, sync and async, free and paid.

    Generate ─► text, text, …, done(usage[, receipt], record, token ids) ─► stream.done, stream.served
       ✗ before anything arrived: retried (retry.py)      ✗ after: raised
    paid: done.receipt (or the receipt in the error's trailers) ─► _Booking ─► Payer.accept / refused
          (a receipt must bind the call's serving record: its ``serving`` is the record's digest)
    composed: done.part_receipts, one per paid part billed, each its exact share of the tokens (part_tokens)

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
    """How one paid call ended, booked with the payer exactly once: checked receipts, or a refusal (the next
    quote's channel state then says what the node billed).

    A composed call has one payment per paid part (``payments`` by CID) and one receipt per part billed; each
    receipt must bill its part's exact share of the call's tokens (``part_tokens``, the node's own rule) and a part
    whose share is 0 tokens gets none (its payment is released)."""

    def __init__(self, payer: Payer, payments: dict[str, PendingPayment], request: pb.GenerateRequest) -> None:
        self.receipts: tuple[Receipt, ...] = ()
        self.open = True
        self._payer = payer
        self._payments = payments
        self._parts = [(p.cid, p.weight) for p in request.adapters]
        self._lock = threading.Lock()

    @property
    def receipt(self) -> Receipt | None:
        """The receipt of a plain call (``None`` for a composed one: see ``receipts``)."""
        return self.receipts[0] if self.receipts and not self._parts else None

    def done(self, done: pb.GenerateDone) -> None:
        """The final message arrived.

        Raises:
            InvalidReceipt: no receipt although the call was not cut short, a receipt that does not bind the
                call's serving record, a composed call's receipts that do not bill each part its share, or one
                that fails the payer's checks.
        """
        receipts = [done.receipt] if done.HasField("receipt") else list(done.part_receipts)
        problem = None
        if len(receipts) > len(self._payments):  # counted before a signature is checked: the node is a stranger
            problem = f"the node sent {len(receipts)} receipts for a call paid with {len(self._payments)} voucher(s)"
        problem = problem or next((p for p in (_unbound(done, r) for r in receipts) if p is not None), None)
        if problem is None and self._parts:
            problem = self._misbilled(done, receipts)
        if problem is not None:
            self.close(())
            raise InvalidReceipt(problem)
        self.close(receipts)
        # Only a call the node cut short before any text (it was stopping) is free of charge; a composed call's
        # paid parts may all have a share of 0 tokens (tiny weights).
        if not receipts and not self._parts and done.finish_reason != pb.FINISH_REASON_CANCELLED:
            raise InvalidReceipt("the node ended a paid call without a receipt")

    def _misbilled(self, done: pb.GenerateDone, receipts: list[pb.Receipt]) -> str | None:
        """Why a composed call's receipts are not each paid part's share of the billed tokens (``None``: they are)."""
        from ..adapters.composition import Composition, part_tokens
        from ..chain.wire import receipt_from_pb

        comp = Composition.of(self._parts)
        billed = done.usage.prompt_tokens + done.usage.completion_tokens if done.usage.completion_tokens else 0
        shares = dict(zip(comp.cids, part_tokens(billed, [w for _, w in comp.parts])))
        by_adapter = {payment.adapter: cid for cid, payment in self._payments.items()}
        billed_parts = {by_adapter.get(receipt_from_pb(r).receipt.adapter): r.tokens for r in receipts}
        owed = {cid: shares[cid] for cid in self._payments if shares[cid]}
        if billed_parts != owed:
            return f"the node billed the parts {billed_parts} tokens; by weight their shares of {billed} tokens are {owed}"
        return None

    def failed(self, error: grpc.RpcError) -> None:
        """The call failed: the node puts the receipts of the text it delivered before in the trailers.

        Raises:
            InvalidReceipt: more receipts than the call paid for, or one that fails ``close``'s checks.
        """
        from ..chain.wire import RECEIPT_KEY

        raw = [v for k, v in error.trailing_metadata() or () if k == RECEIPT_KEY]
        if len(raw) > len(self._payments):  # counted before a signature is checked: the node is a stranger
            self.close(())
            raise InvalidReceipt(f"the node sent {len(raw)} receipts for a call paid with {len(self._payments)} voucher(s)")
        self.close([pb.Receipt.FromString(v) for v in raw])

    def close(self, receipts: list[pb.Receipt] | tuple[()]) -> None:
        """Book ``receipts`` (none: refused / lost), each against the payment for its adapter, unless the call is
        already booked; a payment without a receipt is released.

        Raises:
            InvalidReceipt: a receipt fails the payer's checks or names an adapter this call did not pay (the
                payment is then booked as refused).
        """
        with self._lock:
            if not self.open:
                return
            self.open = False
        from ..chain.wire import receipt_from_pb

        unbooked = {payment.adapter: payment for payment in self._payments.values()}
        accepted: list[Receipt] = []
        problem = None
        for raw in receipts:
            signed = receipt_from_pb(raw)
            payment = unbooked.pop(signed.receipt.adapter, None)
            if payment is None:
                problem = problem or f"a receipt for adapter 0x{signed.receipt.adapter.hex()}, which this call did not pay"
                continue
            try:
                accepted.append(self._payer.accept(payment, signed))
            except InvalidReceipt as e:
                self._payer.refused(payment)
                problem = problem or str(e)
        for payment in unbooked.values():
            self._payer.refused(payment)
        self.receipts = tuple(accepted)
        if problem is not None:
            raise InvalidReceipt(problem)


def _unbound(done: pb.GenerateDone, receipt: pb.Receipt) -> str | None:
    """Why a paid call's receipt does not bind its serving record (``None``: it does). A finished call must come
    with a record signed by the receipt's node whose digest is the receipt's ``serving``; a call the node cut
    short has none, and its receipt's ``serving`` is zeros."""
    from ..proof.record import RecordError
    from ..proof.wire import record_from_pb

    serving = bytes(receipt.serving)
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
    if signed.record.node != receipt.node or digest != serving:
        return "the receipt does not bind the call's serving record (its serving digest or node differ)"
    return None


class PaidStream(GenerationStream):
    """The stream of a paid call. Iterating it to the end checks the node's receipt and books its charge.

    Attributes:
        quote: the quote the call was paid by.
        receipt: the node-signed receipt (``chain.records.Receipt``) once the call ended, ``None`` before (and
            for a call cut off before it delivered anything, and for a composed call).
        receipts: every receipt booked: one per part billed for a composed call (each its share of the tokens at
            its adapter's price), the one receipt of a plain call.

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

    @property
    def receipts(self) -> tuple[Receipt, ...]:
        return self._booking.receipts

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
                self._booking.close(())

    def cancel(self) -> None:
        """Stop the call; the node bills the text it delivered (the next quote reports it)."""
        self._responses.cancel()
        self._booking.close(())


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

    @property
    def receipts(self) -> tuple[Receipt, ...]:
        return self._booking.receipts

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
                self._booking.close(())

    def cancel(self) -> None:
        """Stop the call; the node bills the text it delivered (the next quote reports it)."""
        self._call.cancel()
        self._booking.close(())
