"""gRPC servicer for ``openlora.v1.Node``: turns requests into work for the request core and errors into statuses.

Generate and GetQuote run through ``calls.py`` (shared with the HTTP API, which maps the same
errors to HTTP codes). Every bad input ends in a status code with a message that says what to fix,
and nothing about one request can stop the node from serving the others:

    unknown adapter CID                                    NOT_FOUND
    malformed CID / prompt / sampling / response_format    INVALID_ARGUMENT
    publish refused (unsigned, bad manifest, bad files)    INVALID_ARGUMENT "adapter rejected: <reason>: …"
    adapter rejected (earlier, or at load)                 FAILED_PRECONDITION + reason
    queue full, every slot busy, 4 uploads in flight       RESOURCE_EXHAUSTED
    call not paid for (PaymentError)                       the error's ``status`` + trailing metadata
                                                           ``openlora-payment-error: <error name>``
    paid call cut off after it delivered text              its status + trailing ``openlora-receipt-bin``
    the chain cannot be reached                            UNAVAILABLE

Paying (rules in ``calls.py`` and ``chain/payments.py``): the node-signed receipt of a paid call comes in
``GenerateDone``, with the node's signed serving record and the token ids it covers.

Verify (``proof/``): the call's adapter is resolved like Generate's (fetched from the swarm when missing),
then checked on the node's reference model in a worker thread; the record's signature and the token ids'
hashes are checked first, before any adapter is fetched for a stranger's call:

    a call without a record, token ids outside the vocabulary    INVALID_ARGUMENT
    a record for another base                                    FAILED_PRECONDITION
    the adapter unknown here and on the swarm                    NOT_FOUND
    checked                                                      OK: valid, or the failing check (+ evidence)
"""

from __future__ import annotations

import asyncio
import logging
import re
from contextlib import aclosing

import grpc
from eth_utils import is_checksum_address

from .. import __version__
from ..adapters.catalog import AdapterState, CatalogEntry
from ..adapters.composition import MAX_PARTS, MIN_PARTS, join_text
from ..adapters.manifest import parse_manifest
from ..adapters.reasons import AdapterRejected, RejectReason
from ..adapters.store import manifest_cid
from ..chain import wire
from ..chain.errors import ChainError, ContractRevert
from ..chain.payments import CallPrice, ComposedPrice
from ..chain.quote_auth import quote_auth_error
from ..content.cid import cid_text
from ..content.errors import InvalidCID, StoreFull
from ..engine.interface import FinishReason, TextDelta
from ..engine.structured import Constraint, ConstraintError
from ..proof.verify import CannotVerify, check_record
from ..proof.wire import record_to_pb
from ..v1 import node_pb2 as pb
from ..v1 import node_pb2_grpc
from .calls import CallError, CallInput, Calls
from .uploads import MAX_CONCURRENT_UPLOADS, Upload

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
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
PUBLISH_CHUNK = 1 << 20  # bytes per FileChunk the clients send
# ListAdapters page, at most: an AdapterInfo carries its manifest (≤ 64 KiB), so 100 stay under 8 MiB
LIST_PAGE_SIZE = 100
_UNSIGNED = (
    "unsigned publishing is not accepted: the first message must be a PublishHeader carrying the signed manifest; "
    "create a publisher key with `openlora-node keys new` and publish with `openlora-node publish ADAPTER_DIR --key PATH`"
)


class NodeServicer(node_pb2_grpc.NodeServicer):
    """Implements the Node service over the transport-neutral request core (:class:`Calls`).

    Args:
        calls: the request core (engine, store, limits, chain, swarm link, metrics).

    ``proofs`` is set by the node once its key is open (``proof.service.ProofService``; ``None``: Verify is
    UNAVAILABLE).
    """

    proofs = None

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.engine = calls.engine
        self.store = calls.store
        self._uploads = 0  # PublishAdapter calls in progress (this event loop only touches it)

    # ----- helpers -----

    @staticmethod
    async def _abort(context, code: grpc.StatusCode, message: str):
        await context.abort(code, message)

    @staticmethod
    async def _fail(context, error: CallError):
        """Ends the call with ``error``'s status; payment refusals and cut-off paid calls add trailing metadata."""
        metadata = ()
        if error.payment_error is not None:
            metadata = ((wire.PAYMENT_ERROR_KEY, error.payment_error),)
        elif error.receipt is not None or error.part_receipts:  # a composed call: one entry per part billed
            receipts = (error.receipt,) if error.receipt is not None else error.part_receipts
            metadata = tuple((wire.RECEIPT_KEY, wire.receipt_to_pb(r).SerializeToString()) for r in receipts)
        await context.abort(error.code, str(error), trailing_metadata=metadata)

    def _call_input(self, request, sampling: pb.SamplingParams | None = None) -> CallInput:
        """The transport-neutral form of a GenerateRequest (or the input part of a GetQuoteRequest).

        Raises:
            CallError: more chat messages than the node accepts (counted before they are copied); a malformed
                or oversized response_format (INVALID_ARGUMENT).
        """
        kind = request.WhichOneof("input")
        if kind == "chat":
            self.calls.check_chat_count(len(request.chat.messages))
        prompt = request.prompt if kind == "prompt" else None
        chat = tuple((m.role, m.content) for m in request.chat.messages) if kind == "chat" else None
        if sampling is None:
            return CallInput(adapter=request.adapter, prompt=prompt, chat=chat)
        return CallInput(
            adapter=_adapter_ref(request),
            prompt=prompt,
            chat=chat,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature if sampling.HasField("temperature") else 1.0,
            top_p=sampling.top_p if sampling.HasField("top_p") else 1.0,
            top_k=sampling.top_k,
            seed=sampling.seed if sampling.HasField("seed") else None,
            stop=tuple(sampling.stop),
            voucher=request.voucher if request.HasField("voucher") else None,
            constraint=_constraint(request.response_format) if request.HasField("response_format") else None,
            part_vouchers=tuple((part.cid, part.voucher) for part in request.adapters if part.HasField("voucher")),
        )

    def _info(self, e: CatalogEntry) -> pb.AdapterInfo:
        status = _STATE[e.state]
        if e.state is AdapterState.READY and e.cid in self.engine.resident():
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

    async def Generate(self, request: pb.GenerateRequest, context):
        try:
            async with aclosing(self.calls.generate(self._call_input(request, request.sampling), "grpc")) as items:
                async for item in items:
                    if isinstance(item, TextDelta):
                        yield pb.GenerateResponse(text=item.text)
                        continue
                    ev = item.finished
                    done = pb.GenerateDone(
                        usage=pb.Usage(prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens),
                        finish_reason=_FINISH[ev.reason],
                        adapter=item.adapter or "",
                        ttft_ms=ev.ttft_ms or 0.0,
                    )
                    if item.receipt is not None:
                        done.receipt.CopyFrom(wire.receipt_to_pb(item.receipt))
                    done.part_receipts.extend(wire.receipt_to_pb(r) for r in item.part_receipts)
                    if item.served is not None:
                        done.record.CopyFrom(record_to_pb(item.served))
                        done.prompt_ids.extend(item.prompt_ids)
                        done.completion_ids.extend(item.completion_ids)
                    yield pb.GenerateResponse(done=done)
        except CallError as e:
            await self._fail(context, e)

    async def Verify(self, request: pb.VerifyRequest, context):
        proofs, call = self.proofs, request.call
        if proofs is None:
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, "this node does not verify calls yet; retry shortly")
        if not call.HasField("record"):
            await self._abort(
                context, grpc.StatusCode.INVALID_ARGUMENT,
                "call has no serving record; send the ServedCall `openlora generate --receipt-out` saved",
            )  # fmt: skip
        if call.record.base_fingerprint != self.store.base.fingerprint:
            await self._abort(
                context, grpc.StatusCode.FAILED_PRECONDITION,
                f"the call ran on base {call.record.base_fingerprint or '(none)'}; this node serves "
                f"{self.store.base.fingerprint}: ask a node with that base",
            )  # fmt: skip
        verdict, evidence = check_record(call), None  # a stranger's record: signed and intact before any fetch
        try:
            if verdict is None:
                if call.record.adapter:
                    await self.calls.resolve_adapter(call.record.adapter)
                verdict, evidence = await asyncio.to_thread(proofs.verify, call)
        except CallError as e:
            await self._fail(context, e)
        except CannotVerify as e:
            await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except ValueError as e:  # the reference refuses the token ids (vocabulary, context length)
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"cannot recompute this call: {e}")
        response = pb.VerifyResponse(
            valid=verdict.valid, check=verdict.check, detail=verdict.detail,
            commitment_distance=verdict.distance, probe_noise=verdict.noise, commitment_ratio=verdict.ratio,
            ratio_limit=verdict.limit, sampling_z=verdict.z, greedy_misses=verdict.misses, verify_ms=verdict.verify_ms,
            adapter_projection=verdict.beta, projection_z=verdict.beta_z, adapter_effect=verdict.effect,
        )  # fmt: skip
        if evidence is not None:
            response.evidence.CopyFrom(evidence)
        return response

    async def GetQuote(self, request: pb.GetQuoteRequest, context):
        calls = self.calls
        try:
            adapter = await calls.resolve_adapter(request.adapter)
            max_new = calls.sampling(CallInput(max_new_tokens=request.max_new_tokens)).max_new_tokens
            ids = await asyncio.to_thread(calls.prompt_ids, self._call_input(request))
        except CallError as e:
            await self._fail(context, e)
        if request.client and not is_checksum_address(request.client):
            await self._abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"client must be a checksummed address, got {request.client!r}"
            )
        chain = calls.chain
        if chain is None:
            return pb.Quote(adapter=adapter or "", prompt_tokens=len(ids), max_new_tokens=max_new, max_cost_wei="0")
        try:
            price = await calls.price(adapter, len(ids), max_new)
        except CallError as e:
            await self._fail(context, e)
        if isinstance(price, ComposedPrice):
            quote = pb.Quote(
                payment_required=price.required, adapter=adapter, prompt_tokens=len(ids), max_new_tokens=max_new,
                node_fee_per_1k=str(chain.info.node_fee_per_1k), max_cost_wei=str(price.max_cost),
                node_address=chain.info.node_address, chain_id=chain.info.chain_id, channels=chain.info.channels,
            )  # fmt: skip
            for part in price.parts:  # a part is quoted as a call of its most billed tokens to its adapter
                quote.parts.append(await self._quote(context, request, part.cid, CallPrice(part.quote, part.max_tokens, 0)))
            return quote
        return await self._quote(context, request, adapter, price)

    async def _quote(self, context, request: pb.GetQuoteRequest, adapter: str | None, price: CallPrice) -> pb.Quote:
        """The quote of a call to one adapter (or the base) at ``price``, with the channel when the request names a
        client (aborts UNAVAILABLE when the chain does not answer)."""
        chain = self.calls.chain
        info = chain.info
        quote = pb.Quote(
            payment_required=price.required,
            adapter=adapter or "",
            prompt_tokens=price.prompt_tokens,
            max_new_tokens=price.max_new_tokens,
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
                lane = price.quote.adapter_id if price.quote is not None else None
                view = await asyncio.to_thread(chain.payments.channel_view, request.client, lane)
            except ChainError as e:
                await self._abort(context, grpc.StatusCode.UNAVAILABLE, f"cannot read the channel: the chain did not answer: {e}")
            st = view.state
            quote.channel.CopyFrom(
                pb.ChannelState(
                    epoch=st.epoch, deposited=str(st.deposited), redeemed=str(st.redeemed), withdraw_at=st.withdraw_at,
                    charged_total="0", committed="0",
                )  # fmt: skip
            )
            why = quote_auth_error(request.client, request.issued_at, request.client_signature)
            if why is not None:  # what the chain shows anyone; the ledger's vouchers and totals are the client's
                log.info("quote for %s without its channel's ledger: %s", request.client, why)
            elif view.ledger is not None:
                totals, latest = view.ledger
                quote.channel.latest_voucher.CopyFrom(wire.voucher_to_pb(latest))
                quote.channel.charged_total = str(totals.charged)
                quote.channel.committed = str(totals.committed)
            quote.channel.adapter_charged = "0"
            if why is None and view.lane is not None:
                charged, lane_voucher = view.lane
                quote.channel.adapter_voucher.CopyFrom(wire.voucher_to_pb(lane_voucher))
                quote.channel.adapter_charged = str(charged)
        return quote

    async def GetUsage(self, request: pb.GetUsageRequest, context):
        if self.calls.chain is None:
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
            rows = await asyncio.to_thread(self.calls.chain.payments.usage, cid)
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
                    publisher_earnings_wei=str(r.publisher_earnings_wei), publisher=r.publisher,
                )  # fmt: skip
                for r in rows
            ]
        )

    async def PublishAdapter(self, request_iterator, context):
        # Each upload streams to disk (uploads.py), bounded by its manifest; at most MAX_CONCURRENT_UPLOADS at once.
        if self._uploads >= MAX_CONCURRENT_UPLOADS:
            await self._abort(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{MAX_CONCURRENT_UPLOADS} uploads are in progress on this node; retry later",
            )  # fmt: skip
        self._uploads += 1
        upload: Upload | None = None
        try:
            manifest_raw: bytes | None = None
            cid = ""
            async for part in request_iterator:
                kind = part.WhichOneof("part")
                if kind == "header":
                    if manifest_raw is not None:
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "send exactly one header, as the first message")
                    if not part.header.manifest:
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _UNSIGNED)
                    manifest_raw = bytes(part.header.manifest)
                    # Refuse a bad manifest before reading megabytes of chunks.
                    try:
                        cid, manifest = await asyncio.to_thread(self.store.check_manifest, manifest_raw)
                    except AdapterRejected as e:
                        self.calls.metrics.rejected("publish", e)
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _rejected(e, manifest_cid(manifest_raw)))
                    if part.header.name and part.header.name != manifest.name:
                        await self._abort(
                            context,
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"header name {part.header.name!r} differs from the signed manifest's name {manifest.name!r}; leave it empty",
                        )
                    upload = await asyncio.to_thread(Upload, self.store.blocks.root / "uploads", manifest)
                elif kind == "chunk":
                    if manifest_raw is None:
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _UNSIGNED)
                    path = part.chunk.path
                    if not _PLAIN_NAME.match(path) or path in (".", ".."):
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"file name {path!r} must be a plain file name")
                    try:
                        await asyncio.to_thread(upload.write, path, part.chunk.data)
                    except AdapterRejected as e:
                        await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _rejected(e, cid))
                    except StoreFull as e:
                        await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"cannot store adapter {cid}: {e}")
            if manifest_raw is None:
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _UNSIGNED)
            try:
                await asyncio.to_thread(lambda: self.store.publish(manifest_raw, upload.files()))
            except AdapterRejected as e:
                self.calls.metrics.rejected("publish", e)
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, _rejected(e, cid))
            except StoreFull as e:
                await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"cannot store adapter {cid}: {e}")
        finally:
            self._uploads -= 1
            if upload is not None:
                await asyncio.to_thread(upload.close)
        log.info("published adapter %s (%s) by %s", cid, manifest.name or "unnamed", manifest.publisher)
        if self.calls.swarm_link is not None:
            self.calls.swarm_link.announce(cid)
        return pb.PublishAdapterResponse(cid=cid, adapter=self._info(self.store.catalog.get(cid)))

    async def GetAdapter(self, request: pb.GetAdapterRequest, context):
        try:
            return self._info(await self.calls.known_cid(request.cid))
        except CallError as e:
            await self._fail(context, e)

    async def ListAdapters(self, request, context):
        size = min(request.page_size or LIST_PAGE_SIZE, LIST_PAGE_SIZE)
        after = None
        if request.page_token:
            try:
                stamp, cid = request.page_token.split(" ", 1)
                after = (float(stamp), cid)
            except ValueError:
                await self._abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT,
                    f"page_token {request.page_token[:80]!r} is not one this node gave; start again with an empty token",
                )  # fmt: skip
        entries = await asyncio.to_thread(self.store.catalog.page, size + 1, after)
        token = f"{entries[size - 1].updated_at!r} {entries[size - 1].cid}" if len(entries) > size else ""
        return pb.ListAdaptersResponse(adapters=[self._info(e) for e in entries[:size]], next_page_token=token)

    async def GetNodeInfo(self, request, context):
        eng = self.engine
        stats = eng.stats()
        base = self.store.base
        return pb.NodeInfo(
            version=__version__,
            base_model=base.name,
            base_fingerprint=base.fingerprint,
            dtype=eng.info.dtype,
            device=eng.info.device,
            engine=eng.info.name,
            features=list(eng.info.features),
            slots=pb.SlotInfo(
                capacity=eng.info.slot_capacity,
                resident=eng.resident(),
                host_cached=stats["host_cached"],
                max_rank=base.max_rank,
            ),
            running=stats["running"],
            waiting=stats["waiting"],
            adapters_known=self.store.catalog.count(),
            chain=self._chain_info(),
            p2p=await self._p2p_info(),
        )

    async def _p2p_info(self) -> pb.P2PInfo | None:
        if self.calls.swarm_link is None:
            return None
        swarm = self.calls.swarm_link.swarm
        peers = await asyncio.to_thread(swarm.connected_peers)
        dht = await asyncio.to_thread(swarm.dht_info)
        relay = await asyncio.to_thread(swarm.relay_info)
        return pb.P2PInfo(
            peer_id=swarm.peer_id, multiaddr=swarm.multiaddr, peers=len(peers), nodes_known=len(swarm.peer_table()),
            dht_mode=dht.mode if dht is not None else "off",
            dht_routing_peers=dht.routing_table if dht is not None else 0,
            dht_providing=dht.providing if dht is not None else 0,
            relay_service=relay.service, relay_reservations=relay.reservations, relay_circuits=relay.circuits,
            reached_through=list(relay.reached_through),
        )  # fmt: skip

    def _chain_info(self) -> pb.ChainInfo | None:
        if self.calls.chain is None:
            return None
        i = self.calls.chain.info
        return pb.ChainInfo(
            chain_id=i.chain_id, rpc_url=i.rpc_url, registry=i.registry, channels=i.channels, node_address=i.node_address,
            node_fee_per_1k=str(i.node_fee_per_1k), embedded=i.embedded, withdraw_timeout_s=i.withdraw_timeout_s,
        )  # fmt: skip


def _rejected(error: AdapterRejected, cid: str) -> str:
    """The INVALID_ARGUMENT message of a refused publish: reason first, then the adapter CID."""
    return f"adapter rejected: {error} (adapter {cid})"


def _constraint(fmt: pb.ResponseFormat) -> Constraint | None:
    """The engine's constraint of a GenerateRequest's response_format (``None``: none of its fields set).

    Raises:
        CallError: INVALID_ARGUMENT: a malformed or oversized schema, an empty regex, ``json_object: false``.
    """
    kind = fmt.WhichOneof("format")
    try:
        if kind == "json_schema":
            return Constraint.json_schema(fmt.json_schema)
        if kind == "regex":
            return Constraint.regex(fmt.regex)
        if kind == "json_object" and not fmt.json_object:
            raise ConstraintError("response_format.json_object must be true when set")
    except ConstraintError as e:
        raise CallError(grpc.StatusCode.INVALID_ARGUMENT, f"response_format: {e}") from None
    return Constraint.json_object() if kind == "json_object" else None


def _adapter_ref(request: pb.GenerateRequest) -> str:
    """The call's adapter: ``adapter`` (a CID, "" for the base), or the text form of the ``adapters`` composition
    (``cidA*0.7+cidB*0.3``, checked by ``Calls.resolve_adapter``; a weight's shortest decimal text is its value).

    Raises:
        CallError: INVALID_ARGUMENT when both are set, or more parts than a composition holds (counted before any
            part is read: a stranger's message may carry a hundred thousand).
    """
    if not request.adapters:
        return request.adapter
    if request.adapter:
        raise CallError(grpc.StatusCode.INVALID_ARGUMENT, "set either adapter or adapters (a composition), not both")
    if len(request.adapters) > MAX_PARTS:
        raise CallError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"a composition names {MIN_PARTS} to {MAX_PARTS} adapters; got {len(request.adapters)} in adapters",
        )
    return join_text((part.cid, part.weight) for part in request.adapters)
