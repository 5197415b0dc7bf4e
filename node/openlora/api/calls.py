"""One Generate call, whatever the transport: the steps gRPC (``servicer.py``) and HTTP (``openai_http.py``) share.

    CallInput ─► resolve adapter (catalog; fetched from the swarm when missing) ─► sampling + prompt limits
      ─► price (chain) ─► open the paid call (voucher checked, reservation committed to the ledger)
      ─► engine submit (with a proof collector) ─► TextDelta* ─► serving record signed (proof/attest.py)
      ─► close the call (receipt binding the record's digest) ─► CallDone
    any refusal ─► CallError(code, message)  ── gRPC: the status code; HTTP: an HTTP status (openai_http.py)

Errors carry a gRPC status code because it is the one vocabulary both transports already map
from (google.rpc.Code); the HTTP layer translates it. Paying (when ``chain`` is set; rules in
``chain/payments.py``): the voucher is checked and the call recorded before the engine sees the
request; a finished call bills prompt + completion tokens; a call cut off after it delivered text
(client cancel, engine failure) bills prompt + the completion tokens whose text it delivered (each
``TextDelta`` says how many tokens it completes); one that delivered nothing is voided.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from ..adapters.catalog import AdapterState, CatalogEntry
from ..adapters.composition import Composition, CompositionError, is_composition
from ..adapters.reasons import AdapterRejected, RejectReason
from ..adapters.store import AdapterNotFound, AdapterStore
from ..chain import wire
from ..chain.errors import AdapterRevoked, ChainError, PaymentError
from ..chain.ledger import Authorization
from ..chain.payments import CallPrice, ComposedPrice
from ..chain.pricing import AdapterTerms
from ..chain.records import SignedReceipt
from ..content.cid import cid_text
from ..content.errors import InvalidCID, StoreFull
from ..engine.sampling import SamplingError, SamplingParams
from ..engine.structured import Constraint, ConstraintError
from ..engine.interface import (
    Engine,
    EngineUnsupported,
    Failed,
    NoFreeSlot,
    FinishReason,
    Finished,
    GenerationRequest,
    NonFiniteLogits,
    QueueFull,
    TextDelta,
)
from ..metrics import NodeMetrics
from ..v1 import node_pb2 as pb
from .swarm_link import AdapterUnavailable, SwarmLink

if TYPE_CHECKING:
    from ..chain.service import NodeChain
    from ..proof.attest import Attestor
    from ..proof.record import SignedRecord

log = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant"})
# What the chat template adds around each message (role markers, separators), counted in the
# character budget so that many short messages cost what their rendered prompt costs: 4 tokens
# at the budget's 16 characters per token.
CHAT_MESSAGE_OVERHEAD_CHARS = 64
MAX_CHAT_MESSAGES = 1024


class CallError(Exception):
    """A call refused or failed; ``code`` is the gRPC status it maps to, the message says what to fix.

    Attributes:
        code: the status code.
        payment_error: the ``PaymentError`` subclass name when the call was not paid for, else ``None``.
        receipt: the receipt of a paid call cut off after it delivered text, else ``None``.
        part_receipts: the same for a composed call: one receipt per part billed.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        payment_error: str | None = None,
        receipt: SignedReceipt | None = None,
        part_receipts: tuple[SignedReceipt, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.payment_error = payment_error
        self.receipt = receipt
        self.part_receipts = part_receipts


class ServingLimits:
    """Per-request bounds enforced before work reaches the engine.

    Attributes:
        max_prompt_tokens: longest prompt accepted, tokens.
        max_new_tokens: largest ``max_new_tokens`` accepted, tokens.
        default_new_tokens: used when the request leaves it 0 (at most ``max_new_tokens``).
        max_prompt_chars: longest raw prompt / chat text accepted before tokenising, characters (a chat
            message counts its content plus ``CHAT_MESSAGE_OVERHEAD_CHARS``).
        max_chat_messages: most chat messages accepted in one call.
    """

    def __init__(
        self, max_prompt_tokens: int = 4096, max_new_tokens: int = 1024, default_new_tokens: int = 128
    ) -> None:
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.default_new_tokens = min(default_new_tokens, max_new_tokens)
        self.max_prompt_chars = max_prompt_tokens * 16
        self.max_chat_messages = MAX_CHAT_MESSAGES


@dataclass(frozen=True)
class CallInput:
    """What a client asked for, transport-neutral.

    Attributes:
        adapter: adapter CID text ("" for the base model).
        prompt: a raw prompt, or ``None`` when ``chat`` is used (exactly one of them is set).
        chat: ``(role, content)`` messages rendered by the base's chat template.
        max_new_tokens: tokens to generate at most (0: the node's default).
        temperature / top_p / top_k / seed / stop: sampling (see ``engine.sampling.SamplingParams``).
        voucher: the payment voucher as sent (decoded and checked only when the call must be paid).
        constraint: structured output (``engine.structured``), ``None`` for free text.
        part_vouchers: a composed call's vouchers, ``(part CID, voucher)`` as sent (one per paid part).
    """

    adapter: str = ""
    prompt: str | None = None
    chat: tuple[tuple[str, str], ...] | None = None
    max_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    voucher: pb.Voucher | None = None
    constraint: Constraint | None = None
    part_vouchers: tuple[tuple[str, pb.Voucher], ...] = ()


@dataclass(frozen=True)
class CallDone:
    """The last item of :meth:`Calls.generate`: how it ended, for which adapter, the receipt if paid, and the
    node's signed serving record with the token ids it covers (``None`` / empty for a call the node cut short);
    a paid composed call has ``part_receipts`` (one per part billed) instead of ``receipt``."""

    finished: Finished
    adapter: str | None
    receipt: SignedReceipt | None
    served: SignedRecord | None = None
    prompt_ids: tuple[int, ...] = ()
    completion_ids: tuple[int, ...] = ()
    part_receipts: tuple[SignedReceipt, ...] = ()


class Calls:
    """The request core over an :class:`Engine` and an :class:`AdapterStore`.

    ``swarm_link`` is set by the node when it runs a swarm (``None``: a standalone node); ``chain``
    when it takes payments (``None``: every call is free); ``attestor`` when it signs serving records
    (``None``: calls carry no record).

    Args:
        engine: the running engine.
        store: the adapter store.
        limits: per-request bounds.
        metrics: where calls are counted.
    """

    swarm_link: SwarmLink | None = None
    chain: NodeChain | None = None
    attestor: Attestor | None = None

    def __init__(self, engine: Engine, store: AdapterStore, limits: ServingLimits, metrics: NodeMetrics) -> None:
        self.engine = engine
        self.store = store
        self.limits = limits
        self.metrics = metrics

    # ----- adapter -----

    async def known_cid(self, raw: str) -> CatalogEntry:
        """The catalog entry of ``raw``.

        Raises:
            CallError: INVALID_ARGUMENT (not a CID), NOT_FOUND (not known here).
        """
        try:
            cid = cid_text(raw)
        except InvalidCID as e:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        entry = self.store.catalog.get(cid)
        if entry is None:
            raise CallError(
                grpc.StatusCode.NOT_FOUND,
                f"adapter {cid} is not known to this node; publish it (openlora-node publish) or check the CID",
            )
        return entry

    async def resolve_adapter(self, raw: str) -> str | None:
        """The canonical CID of a servable adapter (``None`` for the base, ``raw == ""``).

        An adapter this node lacks (unknown, or only announced) is fetched from the swarm first when
        the node has one (``swarm_link``).

        Raises:
            CallError: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION (rejected), UNAVAILABLE (not ready yet).
        """
        if not raw:
            return None
        if is_composition(raw):
            return await self._resolve_composition(raw)
        try:
            cid = cid_text(raw)
        except InvalidCID as e:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        entry = self.store.catalog.get(cid)
        if self.swarm_link is not None and _fetchable(entry):
            try:
                await self.swarm_link.fetch(cid)
            except AdapterUnavailable as e:
                if entry is None or entry.state is not AdapterState.REJECTED:
                    raise CallError(grpc.StatusCode.NOT_FOUND, str(e)) from None
                # a damaged local copy no peer could replace: answer with the rejection below
            except AdapterRejected as e:
                self.metrics.rejected("fetch", e)
                raise CallError(grpc.StatusCode.FAILED_PRECONDITION, f"adapter {cid} was rejected ({e})") from None
            except StoreFull as e:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"cannot store adapter {cid}: {e}") from None
        entry = await self.known_cid(cid)
        if entry.state is AdapterState.REJECTED:
            raise CallError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"adapter {entry.cid} was rejected ({entry.reason}): {entry.detail}",
            )
        if entry.state is not AdapterState.READY:
            raise CallError(
                grpc.StatusCode.UNAVAILABLE, f"adapter {cid} is {entry.state.value} on this node; retry shortly"
            )
        return entry.cid

    async def _resolve_composition(self, raw: str) -> str:
        """The canonical id of composition ``raw`` (``cidA*0.7+cidB*0.3``), every part resolved as a single adapter.

        Raises:
            CallError: INVALID_ARGUMENT (the composition is malformed: count, duplicate, weight), or what
                :meth:`resolve_adapter` raises for a part.
        """
        try:
            comp = Composition.parse(raw)
        except CompositionError as e:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        return Composition.of([(await self.resolve_adapter(cid), f"{w}e-6") for cid, w in comp.parts]).id

    # ----- input -----

    def sampling(self, call: CallInput) -> SamplingParams:
        """Validated sampling parameters of ``call``.

        Raises:
            CallError: INVALID_ARGUMENT naming the bad field.
        """
        params = SamplingParams(
            max_new_tokens=call.max_new_tokens or self.limits.default_new_tokens,
            temperature=call.temperature,
            top_p=call.top_p,
            top_k=call.top_k,
            seed=call.seed,
            stop=call.stop,
        )
        if params.max_new_tokens > self.limits.max_new_tokens:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_new_tokens is {params.max_new_tokens}; this node accepts up to {self.limits.max_new_tokens} "
                "(its operator sets that with --max-new-tokens)",
            )
        try:
            params.validate(self.limits.max_new_tokens)
        except SamplingError as e:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        return params

    def check_chat_count(self, n: int) -> None:
        """Refuse ``n`` chat messages over the limit; transports call it before they copy the messages.

        Raises:
            CallError: INVALID_ARGUMENT naming the limit.
        """
        if n > self.limits.max_chat_messages:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chat has {n} messages; this node accepts up to {self.limits.max_chat_messages}",
            )

    def prompt_ids(self, call: CallInput) -> list[int]:
        """Prompt token ids of ``call`` (raw prompt, or chat through the chat template).

        Raises:
            CallError: INVALID_ARGUMENT: no input, empty, too long (characters or tokens), a bad role.
        """
        try:
            return self._prompt_ids(call)
        except ValueError as e:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    def _prompt_ids(self, call: CallInput) -> list[int]:
        codec = self.engine.codec
        if call.prompt is None and call.chat is None:
            raise ValueError("set either prompt or chat")
        if call.prompt is not None:
            if not call.prompt:
                raise ValueError("prompt is empty")
            if len(call.prompt) > self.limits.max_prompt_chars:
                raise ValueError(f"prompt is longer than {self.limits.max_prompt_chars} characters (16 per token of --max-prompt-tokens)")
            ids = codec.encode_prompt(call.prompt)
        else:
            if not call.chat:
                raise ValueError("chat has no messages")
            self.check_chat_count(len(call.chat))
            bad = [role for role, _ in call.chat if role not in ROLES]
            if bad:
                raise ValueError(f"chat role {bad[0]!r} is not one of {sorted(ROLES)}")
            if sum(len(content) + CHAT_MESSAGE_OVERHEAD_CHARS for _, content in call.chat) > self.limits.max_prompt_chars:
                raise ValueError(
                    f"chat is longer than {self.limits.max_prompt_chars} characters (16 per token of --max-prompt-tokens; "
                    f"each message counts {CHAT_MESSAGE_OVERHEAD_CHARS} for its template markers)"
                )
            ids = codec.encode_chat([{"role": role, "content": content} for role, content in call.chat])
        if not ids:  # text the tokenizer drops whole (e.g. lone control characters): nothing to price or run
            raise ValueError("prompt is empty once tokenized: it holds no text the tokenizer keeps")
        if len(ids) > self.limits.max_prompt_tokens:
            raise ValueError(
                f"prompt is {len(ids)} tokens; this node accepts up to {self.limits.max_prompt_tokens} "
                "(its operator sets that with --max-prompt-tokens)"
            )
        return ids

    # ----- the call -----

    async def generate(self, call: CallInput, api: str) -> AsyncIterator[TextDelta | CallDone]:
        """Run one call: ``TextDelta`` items, then one :class:`CallDone`.

        Args:
            call: the request.
            api: the transport, for metrics (``grpc``, ``http``).

        Raises:
            CallError: refused before any text, or failed (the message and code say why; a paid call cut off
                after it delivered text carries its receipt).
        """
        adapter: str | None = None
        resolved = False
        code = "CANCELLED"
        try:
            try:
                # first: under overload a refusal must cost no catalog read, tokenizing or chain read
                self.engine.check_room()
            except QueueFull as e:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
            adapter = await self.resolve_adapter(call.adapter)
            resolved = True
            # closed with this generator, at once: its ``finally`` closes the paid call
            async with aclosing(self._run(call, adapter)) as run:
                async for item in run:
                    yield item
            code = "OK"
        except CallError as e:
            code = e.code.name
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.metrics.outcome(api, adapter, code, resolved)

    async def _run(self, call: CallInput, adapter: str | None) -> AsyncIterator[TextDelta | CallDone]:
        sampling = self.sampling(call)
        ids = await asyncio.to_thread(self.prompt_ids, call)  # templating and tokenizing: off the event loop
        if call.constraint is not None:  # compiled (bounded in time, off the loop) before pricing or payment
            try:
                await asyncio.to_thread(self.engine.codec.grammars.check, call.constraint)
            except ConstraintError as e:
                raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        price = await self.price(adapter, len(ids), sampling.max_new_tokens)
        # From here on the call is recorded in the ledger (when paid): every way out below closes it.
        paid = await self._open(call.voucher, price, adapter, call.part_vouchers)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        proof = self.attestor.collector() if self.attestor is not None else None
        req = GenerationRequest(
            ids,
            sampling,
            lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
            adapter,
            proof=proof,
            constraint=call.constraint,
        )
        delivered = 0  # completion tokens whose text reached the client
        try:
            try:
                self.engine.submit(req)
            except QueueFull as e:
                raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
            except ValueError as e:
                raise CallError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
            while True:
                ev = await events.get()
                if isinstance(ev, TextDelta):
                    yield ev
                    delivered += ev.tokens
                elif isinstance(ev, Finished):
                    served = None
                    if proof is not None and ev.reason is not FinishReason.CANCELLED:
                        served = self.attestor.attest(ids, proof, sampling, adapter, call.constraint)
                    receipt, parts = None, ()
                    if paid is not None:
                        # A call the engine cut short (node stopping) bills what it delivered, like a cancel.
                        completion = delivered if ev.reason is FinishReason.CANCELLED else ev.completion_tokens
                        serving = served.record.digest() if served is not None else bytes(32)
                        receipt, parts = self._close(paid, adapter, ev.prompt_tokens, completion, serving)
                        paid = None
                    self.metrics.finished(adapter, ev.prompt_tokens, ev.completion_tokens, ev.ttft_ms, ev.itl_ms)
                    completion_ids = tuple(proof.tokens) if served is not None else ()
                    yield CallDone(ev, adapter, receipt, served, tuple(ids) if served is not None else (), completion_ids, parts)
                    return
                elif isinstance(ev, Failed):
                    code, msg = _failure_status(ev.error, adapter)
                    receipt, parts = None, ()
                    if paid is not None:
                        receipt, parts = self._close(paid, adapter, len(ids), delivered)
                        paid = None
                    raise CallError(code, msg, receipt=receipt, part_receipts=parts)
        except (asyncio.CancelledError, GeneratorExit):
            self.engine.cancel(req.request_id)
            raise
        finally:
            if paid is not None:  # refused by the engine, cancelled by the client, or the stream was closed
                self._close(paid, adapter, len(ids), delivered)

    # ----- payment (see the module doc) -----

    def _refusal(self, error: PaymentError) -> CallError:
        name = type(error).__name__
        self.metrics.refusals.labels(name).inc()
        return CallError(grpc.StatusCode[error.status], str(error), payment_error=name)

    async def price(
        self, adapter: str | None, prompt_tokens: int, max_new_tokens: int
    ) -> CallPrice | ComposedPrice | None:
        """The call's price (``None``: this node takes no payments); a composition's is per part.

        Raises:
            CallError: the payment refusal (``payment_error`` set), or UNAVAILABLE (the chain did not answer, the
                adapter is not verified yet).
        """
        if self.chain is None:
            return None
        payments = self.chain.payments
        try:
            if is_composition(adapter):
                comp = Composition.parse(adapter)
                parts = [(cid, self._terms(cid), w) for cid, w in comp.parts]
                return await asyncio.to_thread(payments.price_composed, parts, prompt_tokens, max_new_tokens)
            terms = self._terms(adapter) if adapter is not None else None
            return await asyncio.to_thread(payments.price_call, adapter, terms, prompt_tokens, max_new_tokens)
        except PaymentError as e:
            if isinstance(e, AdapterRevoked):
                self.engine.forget(adapter)  # its publisher withdrew it: no copy stays in the engine
            raise self._refusal(e) from None
        except ChainError as e:
            raise CallError(
                grpc.StatusCode.UNAVAILABLE, f"cannot price the call: the chain did not answer: {e}"
            ) from None

    def _terms(self, cid: str) -> AdapterTerms:
        """What ``cid``'s verified manifest asks.

        Raises:
            CallError: UNAVAILABLE when the adapter is not verified here yet.
        """
        manifest = self.store.manifest(cid)
        if manifest is None:
            raise CallError(grpc.StatusCode.UNAVAILABLE, f"adapter {cid} is not verified on this node yet; retry shortly")
        return AdapterTerms(manifest.publisher, manifest.price_wei, manifest.royalty_bps)

    async def _open(
        self,
        voucher: pb.Voucher | None,
        price: CallPrice | ComposedPrice | None,
        adapter: str | None,
        part_vouchers: tuple[tuple[str, pb.Voucher], ...] = (),
    ) -> Authorization | _ComposedCall | None:
        """Checks the voucher (a composed call: every paid part's) and records the paid call, durably (``None``: a
        free call)."""
        if price is None or not price.required:
            return None
        payments = self.chain.payments
        try:
            if isinstance(price, ComposedPrice):
                signed = {cid_text(cid): wire.voucher_from_pb(v) for cid, v in part_vouchers}
                opening = asyncio.get_running_loop().run_in_executor(None, payments.open_composed, signed, price)
            else:
                signed = wire.voucher_from_pb(voucher) if voucher is not None else None
                opening = asyncio.get_running_loop().run_in_executor(None, payments.open_call, signed, price)
        except PaymentError as e:
            raise self._refusal(e) from None
        except InvalidCID as e:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, f"a composed call's part voucher: {e}") from None
        try:
            paid = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The client left while the ledger recorded the call: release its reservation once it is recorded.
            opening.add_done_callback(lambda f: _void_if_opened(payments, f))
            raise
        except PaymentError as e:
            raise self._refusal(e) from None
        except ChainError as e:
            raise CallError(
                grpc.StatusCode.UNAVAILABLE, f"cannot check the voucher: the chain did not answer: {e}"
            ) from None
        if isinstance(price, ComposedPrice):
            paid = _ComposedCall(paid, price)
        if paid is not None:
            self.metrics.authorized.labels(self.metrics.label(adapter)).inc(price.max_cost)
        return paid

    def _close(
        self,
        paid: Authorization | _ComposedCall,
        adapter: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        serving: bytes = bytes(32),
    ) -> tuple[SignedReceipt | None, tuple[SignedReceipt, ...]]:
        """Bills prompt + ``completion_tokens`` (nothing, voided, when no completion token was delivered); the
        receipt binds ``serving``, the digest of the call's serving record (zeros: none).

        Returns:
            ``(receipt, ())`` for a plain call (``None``: voided); ``(None, part receipts)`` for a composed one, each
            part billed its share (``ChainPayments.close_composed``).
        """
        tokens = prompt_tokens + completion_tokens if completion_tokens else 0
        if isinstance(paid, _ComposedCall):
            closed = self.chain.payments.close_composed(paid.authorizations, paid.price, tokens, serving)
            receipts = tuple(r for r in closed if r is not None)
            self.metrics.charged.labels(self.metrics.label(adapter)).inc(sum(r.receipt.cost for r in receipts))
            return None, receipts
        receipt = self.chain.payments.close_call(paid, tokens, serving)
        if receipt is not None:
            self.metrics.charged.labels(self.metrics.label(adapter)).inc(receipt.receipt.cost)
        return receipt, ()


@dataclass(frozen=True)
class _ComposedCall:
    """A paid composed call in flight: per part its authorisation (``None``: free part) and the call's price."""

    authorizations: tuple[Authorization | None, ...]
    price: ComposedPrice


def _void_if_opened(payments, opening: asyncio.Future) -> None:
    """Voids the call ``opening`` recorded, if it recorded one (its client is gone); every part of a composed one."""
    if opening.cancelled() or opening.exception() is not None or opening.result() is None:
        return
    for authorization in opening.result() if isinstance(opening.result(), tuple) else (opening.result(),):
        if authorization is not None:
            payments.void(authorization)


def _failure_status(error: Exception, adapter: str | None) -> tuple[grpc.StatusCode, str]:
    """Map an engine-side failure to a status code and message."""
    if isinstance(error, AdapterRejected):
        return grpc.StatusCode.FAILED_PRECONDITION, f"adapter {adapter} was rejected at load ({error})"
    if isinstance(error, AdapterNotFound):
        return grpc.StatusCode.NOT_FOUND, f"adapter {adapter} is not available on this node: {error}"
    if isinstance(error, EngineUnsupported):
        return grpc.StatusCode.FAILED_PRECONDITION, f"{error}; a node running --engine torch serves it"
    if isinstance(error, (NoFreeSlot, QueueFull)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, NonFiniteLogits):
        return grpc.StatusCode.FAILED_PRECONDITION, f"generation failed: {error}; try another prompt or adapter"
    if isinstance(error, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    log.error("generation failed: %r", error)
    return grpc.StatusCode.INTERNAL, f"generation failed: {type(error).__name__}: {error}"


def _fetchable(entry: CatalogEntry | None) -> bool:
    """Whether the swarm should be asked for this adapter before serving it: unknown, only
    announced, or refused because the local copy is damaged or incomplete (a peer's copy may
    be whole; refusals for what the adapter is, or for this node's limits, stand)."""
    if entry is None or entry.state in (AdapterState.AVAILABLE, AdapterState.FETCHING):
        return True
    return entry.state is AdapterState.REJECTED and entry.reason in _DAMAGED_COPY


_DAMAGED_COPY = {RejectReason.HASH_MISMATCH.value, RejectReason.ABSENT_FILE.value}
