"""gRPC servicer for ``openlora.v1.Node``: turns requests into engine work and errors into statuses.

Every bad input ends in a status code with a message that says what to fix, and nothing about
one request can stop the node from serving the others:

    unknown adapter CID          NOT_FOUND
    malformed CID / prompt / sampling                      INVALID_ARGUMENT
    publish refused (unsigned, bad manifest, bad files)    INVALID_ARGUMENT "adapter rejected: <reason>: …"
    adapter rejected (earlier, or at load)                 FAILED_PRECONDITION + reason
    queue full / every slot busy                           RESOURCE_EXHAUSTED
    call not paid for (PaymentError)                       the error's ``status`` + trailing metadata
                                                           ``openlora-payment-error: <error name>``
    the chain cannot be reached                            UNAVAILABLE

Paying (when ``chain`` is set; rules in ``chain/payments.py``): Generate prices the call, checks and records
its voucher (committed to the ledger before the engine sees the request), streams, then bills prompt +
completion tokens and returns the node-signed receipt in ``GenerateDone``. A call cut off after it delivered
text (client cancel, engine failure) is billed prompt + the completion tokens whose text it delivered (each text
chunk says how many tokens it completes); one that delivered nothing is voided.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

import grpc
from eth_utils import is_checksum_address

from .. import __version__
from ..adapters.catalog import AdapterState, CatalogEntry
from ..adapters.manifest import parse_manifest
from ..adapters.reasons import AdapterRejected, RejectReason
from ..adapters.store import AdapterNotFound, AdapterStore, manifest_cid
from ..chain import wire
from ..chain.errors import ChainError, ContractRevert, PaymentError
from ..chain.ledger import Authorization
from ..chain.payments import CallPrice
from ..chain.pricing import AdapterTerms
from ..content.cid import cid_text
from ..content.errors import InvalidCID
from ..engine.sampling import SamplingError, SamplingParams
from ..engine.scheduler import Engine, Failed, FinishReason, Finished, GenerationRequest, QueueFull, TextDelta
from ..engine.slots import NoFreeSlot
from ..v1 import node_pb2 as pb
from ..v1 import node_pb2_grpc
from .swarm_link import AdapterUnavailable, SwarmLink

if TYPE_CHECKING:
    from ..chain.service import NodeChain

log = logging.getLogger(__name__)

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_STATE = {
    AdapterState.AVAILABLE: pb.ADAPTER_STATUS_AVAILABLE,
    AdapterState.FETCHING: pb.ADAPTER_STATUS_FETCHING,
    AdapterState.VERIFYING: pb.ADAPTER_STATUS_VERIFYING,
    AdapterState.READY: pb.ADAPTER_STATUS_READY,
    AdapterState.REJECTED: pb.ADAPTER_STATUS_REJECTED,
}
_ROLES = {"system", "user", "assistant"}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
PUBLISH_CHUNK = 1 << 20  # bytes per FileChunk the clients send
_UNSIGNED = (
    "unsigned publishing is not accepted: the first message must be a PublishHeader carrying the signed manifest; "
    "create a publisher key with `openlora-node keys new` and publish with `openlora-node publish ADAPTER_DIR --key PATH`"
)


class ServingLimits:
    """Per-request bounds the servicer enforces before work reaches the engine.

    Attributes:
        max_prompt_tokens: longest prompt accepted, tokens.
        max_new_tokens: largest ``max_new_tokens`` accepted, tokens.
        default_new_tokens: used when the request leaves it 0.
        max_prompt_chars: longest raw prompt / chat text accepted before tokenising, characters.
    """

    def __init__(self, max_prompt_tokens: int = 4096, max_new_tokens: int = 1024, default_new_tokens: int = 128) -> None:
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.default_new_tokens = default_new_tokens
        self.max_prompt_chars = max_prompt_tokens * 16


class NodeServicer(node_pb2_grpc.NodeServicer):
    """Implements the Node service over an :class:`Engine` and an :class:`AdapterStore`.

    ``swarm_link`` is set by the node when it runs a swarm (``None``: a standalone node).
    ``chain`` is set by the node to take payments (``None``: every call is free, GetUsage is refused).
    """

    swarm_link: SwarmLink | None = None
    chain: NodeChain | None = None

    def __init__(self, engine: Engine, store: AdapterStore, limits: ServingLimits, device: str) -> None:
        self.engine = engine
        self.store = store
        self.limits = limits
        self.device = device

    # ----- helpers -----

    @staticmethod
    async def _abort(context, code: grpc.StatusCode, message: str):
        await context.abort(code, message)

    async def _known_cid(self, raw: str, context) -> CatalogEntry:
        try:
            cid = cid_text(raw)
        except InvalidCID as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        entry = self.store.catalog.get(cid)
        if entry is None:
            await self._abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"adapter {cid} is not known to this node; publish it (openlora-node publish) or check the CID",
            )
        return entry

    def _sampling(self, s: pb.SamplingParams) -> SamplingParams:
        params = SamplingParams(
            max_new_tokens=s.max_new_tokens or self.limits.default_new_tokens,
            temperature=s.temperature if s.HasField("temperature") else 1.0,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            top_k=s.top_k,
            seed=s.seed if s.HasField("seed") else None,
            stop=tuple(s.stop),
        )
        params.validate(self.limits.max_new_tokens)
        return params

    def _prompt_ids(self, request: pb.GenerateRequest) -> list[int]:
        rm = self.engine.rm
        kind = request.WhichOneof("input")
        if kind is None:
            raise ValueError("set either prompt or chat")
        if kind == "prompt":
            if not request.prompt:
                raise ValueError("prompt is empty")
            if len(request.prompt) > self.limits.max_prompt_chars:
                raise ValueError(f"prompt is longer than {self.limits.max_prompt_chars} characters")
            ids = rm.encode_prompt(request.prompt)
        else:
            msgs = request.chat.messages
            if not msgs:
                raise ValueError("chat has no messages")
            bad = [m.role for m in msgs if m.role not in _ROLES]
            if bad:
                raise ValueError(f"chat role {bad[0]!r} is not one of {sorted(_ROLES)}")
            if sum(len(m.content) for m in msgs) > self.limits.max_prompt_chars:
                raise ValueError(f"chat is longer than {self.limits.max_prompt_chars} characters")
            ids = rm.encode_chat([{"role": m.role, "content": m.content} for m in msgs])
        if len(ids) > self.limits.max_prompt_tokens:
            raise ValueError(f"prompt is {len(ids)} tokens; this node accepts up to {self.limits.max_prompt_tokens}")
        return ids

    def _info(self, e: CatalogEntry) -> pb.AdapterInfo:
        status = _STATE[e.state]
        if e.state is AdapterState.READY and self.engine.slots.slot_of(e.cid) is not None:
            status = pb.ADAPTER_STATUS_RESIDENT
        info = pb.AdapterInfo(cid=e.cid, status=status, reason=e.reason, detail=e.detail, name=e.name)
        if e.state is AdapterState.REJECTED:
            info.retryable = RejectReason(e.reason).retryable
        try:
            m = parse_manifest(e.manifest) if e.manifest else None
        except AdapterRejected:  # recorded by an older node (pre-signature schema); its next load rejects it
            m = None
        if m is not None:
            targets = m.peft.target_modules
            info.base_model = m.base.name
            info.base_fingerprint = m.base.fingerprint
            info.r = m.peft.r
            info.lora_alpha = float(m.peft.lora_alpha)
            info.target_modules.extend([targets] if isinstance(targets, str) else targets)
            info.files.extend(pb.AdapterFile(name=f.name, cid=f.cid, size=f.size) for f in m.files)
            info.manifest_json = e.manifest.decode()
            info.publisher = m.publisher
            info.price_per_1k_tokens = m.price_per_1k_tokens
            info.royalty_bps = m.royalty_bps
            info.created_at = m.created_at
        return info

    # ----- RPCs -----

    async def _resolve_adapter(self, raw: str, context) -> str | None:
        """The canonical CID of a servable adapter (``None`` for the base), or abort.

        An adapter this node lacks (unknown, or only announced) is fetched from the swarm
        first when the node has one (``swarm_link``).
        """
        if not raw:
            return None
        try:
            cid = cid_text(raw)
        except InvalidCID as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        entry = self.store.catalog.get(cid)
        if self.swarm_link is not None and _fetchable(entry):
            try:
                await self.swarm_link.fetch(cid)
            except AdapterUnavailable as e:
                if entry is None or entry.state is not AdapterState.REJECTED:
                    await self._abort(context, grpc.StatusCode.NOT_FOUND, str(e))
                # a damaged local copy no peer could replace: answer with the rejection below
            except AdapterRejected as e:
                await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"adapter {cid} was rejected ({e})")
        entry = await self._known_cid(cid, context)
        if entry.state is AdapterState.REJECTED:
            await self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"adapter {entry.cid} was rejected ({entry.reason}): {entry.detail}",
            )
        if entry.state is not AdapterState.READY:
            await self._abort(
                context, grpc.StatusCode.UNAVAILABLE, f"adapter {cid} is {entry.state.value} on this node; retry shortly"
            )
        return entry.cid

    async def Generate(self, request: pb.GenerateRequest, context):
        adapter = await self._resolve_adapter(request.adapter, context)
        try:
            sampling = self._sampling(request.sampling)
            ids = self._prompt_ids(request)
        except (SamplingError, ValueError) as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        price = await self._price_call(adapter, len(ids), sampling.max_new_tokens, context)
        # From here on the call is recorded in the ledger (when paid): every way out below closes it.
        call = await self._open_call(request, price, context)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req = GenerationRequest(ids, sampling, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), adapter)
        delivered = 0  # completion tokens whose text reached the client
        try:
            try:
                self.engine.submit(req)
            except QueueFull as e:
                await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            except ValueError as e:
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
            while True:
                ev = await events.get()
                if isinstance(ev, TextDelta):
                    yield pb.GenerateResponse(text=ev.text)
                    delivered += ev.tokens
                elif isinstance(ev, Finished):
                    done = pb.GenerateDone(
                        usage=pb.Usage(prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens),
                        finish_reason=_FINISH[ev.reason],
                        adapter=adapter or "",
                        ttft_ms=ev.ttft_ms or 0.0,
                    )
                    if call is not None:
                        # A call the engine cut short (node stopping) bills what it delivered, like a cancel.
                        completion = delivered if ev.reason is FinishReason.CANCELLED else ev.completion_tokens
                        receipt = self._close_call(call, ev.prompt_tokens, completion)
                        call = None
                        if receipt is not None:
                            done.receipt.CopyFrom(wire.receipt_to_pb(receipt))
                    yield pb.GenerateResponse(done=done)
                    return
                elif isinstance(ev, Failed):
                    code, msg = _failure_status(ev.error, adapter)
                    metadata = ()
                    if call is not None:
                        receipt = self._close_call(call, len(ids), delivered)
                        call = None
                        if receipt is not None:
                            metadata = ((wire.RECEIPT_KEY, wire.receipt_to_pb(receipt).SerializeToString()),)
                    await context.abort(code, msg, trailing_metadata=metadata)
        except asyncio.CancelledError:
            self.engine.cancel(req.request_id)
            raise
        finally:
            if call is not None:  # refused by the engine, cancelled by the client, or the stream was closed
                self._close_call(call, len(ids), delivered)

    # ----- payment (see the module doc) -----

    @staticmethod
    async def _refuse(context, error: PaymentError):
        await context.abort(
            grpc.StatusCode[error.status], str(error), trailing_metadata=((wire.PAYMENT_ERROR_KEY, type(error).__name__),)
        )

    async def _price_call(self, adapter: str | None, prompt_tokens: int, max_new_tokens: int, context) -> CallPrice | None:
        """The call's price (``None``: this node takes no payments), or abort."""
        if self.chain is None:
            return None
        terms = None
        if adapter is not None:
            manifest = self.store.manifest(adapter)
            if manifest is None:
                await self._abort(
                    context, grpc.StatusCode.UNAVAILABLE, f"adapter {adapter} is not verified on this node yet; retry shortly"
                )
            terms = AdapterTerms(manifest.publisher, manifest.price_wei, manifest.royalty_bps)
        try:
            return await asyncio.to_thread(self.chain.payments.price_call, adapter, terms, prompt_tokens, max_new_tokens)
        except PaymentError as e:
            await self._refuse(context, e)
        except ChainError as e:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot price the call: the chain did not answer: {e}")

    async def _open_call(self, request: pb.GenerateRequest, price: CallPrice | None, context) -> Authorization | None:
        """Checks the request's voucher and records the paid call, durably (``None``: a free call), or abort."""
        if price is None or not price.required:
            return None
        signed = None
        if request.HasField("voucher"):
            try:
                signed = wire.voucher_from_pb(request.voucher)
            except PaymentError as e:
                await self._refuse(context, e)
        payments = self.chain.payments
        opening = asyncio.get_running_loop().run_in_executor(None, payments.open_call, signed, price)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The client left while the ledger recorded the call: release its reservation once it is recorded.
            opening.add_done_callback(lambda f: _void_if_opened(payments, f))
            raise
        except PaymentError as e:
            await self._refuse(context, e)
        except ChainError as e:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot check the voucher: the chain did not answer: {e}")

    def _close_call(self, call: Authorization, prompt_tokens: int, completion_tokens: int):
        """Bills prompt + ``completion_tokens`` (nothing, voided, when no completion token was delivered)."""
        tokens = prompt_tokens + completion_tokens if completion_tokens else 0
        return self.chain.payments.close_call(call, tokens)

    async def GetQuote(self, request: pb.GetQuoteRequest, context):
        adapter = await self._resolve_adapter(request.adapter, context)
        try:
            max_new = self._sampling(pb.SamplingParams(max_new_tokens=request.max_new_tokens)).max_new_tokens
            ids = self._prompt_ids(request)
        except (SamplingError, ValueError) as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if request.client and not is_checksum_address(request.client):
            await self._abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"client must be a checksummed address, got {request.client!r}"
            )
        if self.chain is None:
            return pb.Quote(adapter=adapter or "", prompt_tokens=len(ids), max_new_tokens=max_new, max_cost_wei="0")
        price = await self._price_call(adapter, len(ids), max_new, context)
        info = self.chain.info
        quote = pb.Quote(
            payment_required=price.required,
            adapter=adapter or "",
            prompt_tokens=len(ids),
            max_new_tokens=max_new,
            price_per_1k_tokens="0",
            publisher_price_per_1k="0",
            node_fee_per_1k=str(info.node_fee_per_1k),
            max_cost_wei=str(price.max_cost),
            node_address=info.node_address,
            chain_id=info.chain_id,
            channels=info.channels,
        )
        if price.quote is not None:
            q = price.quote
            quote.price_per_1k_tokens = str(q.price_per_1k_tokens)
            quote.publisher_price_per_1k = str(q.publisher_price_per_1k)
            quote.publisher = q.publisher
            quote.royalty_bps = q.royalty_bps
        if request.client:
            try:
                view = await asyncio.to_thread(self.chain.payments.channel_view, request.client)
            except ChainError as e:
                await self._abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot read the channel: the chain did not answer: {e}")
            st = view.state
            quote.channel.CopyFrom(
                pb.ChannelState(
                    epoch=st.epoch, deposited=str(st.deposited), redeemed=str(st.redeemed), withdraw_at=st.withdraw_at,
                    charged_total="0", committed="0",
                )  # fmt: skip
            )
            if view.ledger is not None:
                totals, latest = view.ledger
                quote.channel.latest_voucher.CopyFrom(wire.voucher_to_pb(latest))
                quote.channel.charged_total = str(totals.charged)
                quote.channel.committed = str(totals.committed)
        return quote

    async def GetUsage(self, request: pb.GetUsageRequest, context):
        if self.chain is None:
            await self._abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "this node runs without a chain: no usage is recorded"
            )
        cid = None
        if request.adapter:
            try:
                cid = cid_text(request.adapter)
            except InvalidCID as e:
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            rows = await asyncio.to_thread(self.chain.payments.usage, cid)
        except ContractRevert as e:
            if e.error != "UnknownAdapter":
                raise
            await self._abort(
                context, grpc.StatusCode.NOT_FOUND, f"adapter {cid} is not registered on chain: no usage is recorded for it"
            )
        except ChainError as e:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot read usage: the chain did not answer: {e}")
        return pb.GetUsageResponse(
            adapters=[
                pb.AdapterUsage(
                    adapter=r.adapter, calls=r.calls, tokens=r.tokens, amount_wei=str(r.amount_wei),
                    publisher_earnings_wei=str(r.publisher_earnings_wei),
                )  # fmt: skip
                for r in rows
            ]
        )

    async def PublishAdapter(self, request_iterator, context):
        manifest_raw: bytes | None = None
        cid = ""
        files: dict[str, bytearray] = {}
        total = 0
        limit = self.store.base.max_adapter_bytes
        async for part in request_iterator:
            kind = part.WhichOneof("part")
            if kind == "header":
                if manifest_raw is not None or files:
                    await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "send exactly one header, as the first message")
                if not part.header.manifest:
                    await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _UNSIGNED)
                manifest_raw = bytes(part.header.manifest)
                # Refuse a bad manifest before reading megabytes of chunks.
                try:
                    cid, manifest = await asyncio.to_thread(self.store.check_manifest, manifest_raw)
                except AdapterRejected as e:
                    await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _rejected(e, manifest_cid(manifest_raw)))
                if part.header.name and part.header.name != manifest.name:
                    await self._abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"header name {part.header.name!r} differs from the signed manifest's name {manifest.name!r}; leave it empty",
                    )
            elif kind == "chunk":
                if manifest_raw is None:
                    await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _UNSIGNED)
                path = part.chunk.path
                if not _PLAIN_NAME.match(path) or path in (".", ".."):
                    await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"file name {path!r} must be a plain file name")
                total += len(part.chunk.data)
                if total > limit:
                    await self._abort(
                        context, grpc.StatusCode.INVALID_ARGUMENT, f"adapter rejected: size_limit: upload exceeds {limit} bytes"
                    )
                files.setdefault(path, bytearray()).extend(part.chunk.data)
        if manifest_raw is None:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _UNSIGNED)
        try:
            await asyncio.to_thread(self.store.publish, manifest_raw, {k: bytes(v) for k, v in files.items()})
        except AdapterRejected as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _rejected(e, cid))
        log.info("published adapter %s (%s) by %s", cid, manifest.name or "unnamed", manifest.publisher)
        if self.swarm_link is not None:
            self.swarm_link.announce(cid)
        return pb.PublishAdapterResponse(cid=cid, adapter=self._info(self.store.catalog.get(cid)))

    async def GetAdapter(self, request: pb.GetAdapterRequest, context):
        return self._info(await self._known_cid(request.cid, context))

    async def ListAdapters(self, request, context):
        return pb.ListAdaptersResponse(adapters=[self._info(e) for e in self.store.catalog.list()])

    async def GetNodeInfo(self, request, context):
        eng = self.engine
        stats = eng.stats()
        base = self.store.base
        return pb.NodeInfo(
            version=__version__,
            base_model=base.name,
            base_fingerprint=base.fingerprint,
            dtype=str(eng.rm.dtype).removeprefix("torch."),
            device=self.device,
            slots=pb.SlotInfo(
                capacity=eng.slots.capacity,
                resident=eng.slots.resident(),
                host_cached=len(eng.host),
                max_rank=base.max_rank,
            ),
            running=stats["running"],
            waiting=stats["waiting"],
            adapters_known=len(self.store.catalog.list()),
            chain=self._chain_info(),
            p2p=await self._p2p_info(),
        )

    async def _p2p_info(self) -> pb.P2PInfo | None:
        if self.swarm_link is None:
            return None
        swarm = self.swarm_link.swarm
        peers = await asyncio.to_thread(swarm.connected_peers)
        return pb.P2PInfo(
            peer_id=swarm.peer_id, multiaddr=swarm.multiaddr, peers=len(peers), nodes_known=len(swarm.peer_table())
        )

    def _chain_info(self) -> pb.ChainInfo | None:
        if self.chain is None:
            return None
        i = self.chain.info
        return pb.ChainInfo(
            chain_id=i.chain_id, rpc_url=i.rpc_url, registry=i.registry, channels=i.channels, node_address=i.node_address,
            node_fee_per_1k=str(i.node_fee_per_1k), embedded=i.embedded, withdraw_timeout_s=i.withdraw_timeout_s,
        )  # fmt: skip


def _void_if_opened(payments, opening: asyncio.Future) -> None:
    """Voids the call ``opening`` recorded, if it recorded one (its client is gone)."""
    if not opening.cancelled() and opening.exception() is None and opening.result() is not None:
        payments.void(opening.result())


def _rejected(error: AdapterRejected, cid: str) -> str:
    """The INVALID_ARGUMENT message of a refused publish: reason first, then the adapter CID."""
    return f"adapter rejected: {error} (adapter {cid})"


def _failure_status(error: Exception, adapter: str | None) -> tuple[grpc.StatusCode, str]:
    """Map an engine-side failure to a status code and message."""
    if isinstance(error, AdapterRejected):
        return grpc.StatusCode.FAILED_PRECONDITION, f"adapter {adapter} was rejected at load ({error})"
    if isinstance(error, AdapterNotFound):
        return grpc.StatusCode.NOT_FOUND, f"adapter {adapter} is not available on this node: {error}"
    if isinstance(error, NoFreeSlot):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
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
