"""gRPC servicer for ``openlora.v1.Node``: turns requests into engine work and errors into statuses.

Every bad input ends in a status code with a message that says what to fix, and nothing about
one request can stop the node from serving the others:

    unknown adapter CID          NOT_FOUND
    malformed CID / prompt / sampling                      INVALID_ARGUMENT
    publish refused (unsigned, bad manifest, bad files)    INVALID_ARGUMENT "adapter rejected: <reason>: …"
    adapter rejected (earlier, or at load)                 FAILED_PRECONDITION + reason
    queue full / every slot busy                           RESOURCE_EXHAUSTED
"""

from __future__ import annotations

import asyncio
import logging
import re

import grpc

from .. import __version__
from ..adapters.catalog import AdapterState, CatalogEntry
from ..adapters.manifest import parse_manifest
from ..adapters.reasons import AdapterRejected, RejectReason
from ..adapters.store import AdapterNotFound, AdapterStore, manifest_cid
from ..content.cid import cid_text
from ..content.errors import InvalidCID
from ..engine.sampling import SamplingError, SamplingParams
from ..engine.scheduler import Engine, Failed, FinishReason, Finished, GenerationRequest, QueueFull, TextDelta
from ..engine.slots import NoFreeSlot
from ..v1 import node_pb2 as pb
from ..v1 import node_pb2_grpc

log = logging.getLogger(__name__)

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_STATE = {
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
    """Implements the Node service over an :class:`Engine` and an :class:`AdapterStore`."""

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
        """The canonical CID of a servable adapter (``None`` for the base), or abort."""
        if not raw:
            return None
        entry = await self._known_cid(raw, context)
        if entry.state is AdapterState.REJECTED:
            await self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"adapter {entry.cid} was rejected ({entry.reason}): {entry.detail}",
            )
        return entry.cid

    async def Generate(self, request: pb.GenerateRequest, context):
        adapter = await self._resolve_adapter(request.adapter, context)
        try:
            sampling = self._sampling(request.sampling)
            ids = self._prompt_ids(request)
        except (SamplingError, ValueError) as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req = GenerationRequest(ids, sampling, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), adapter)
        try:
            self.engine.submit(req)
        except QueueFull as e:
            await self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except ValueError as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            while True:
                ev = await events.get()
                if isinstance(ev, TextDelta):
                    yield pb.GenerateResponse(text=ev.text)
                elif isinstance(ev, Finished):
                    done = pb.GenerateDone(
                        usage=pb.Usage(prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens),
                        finish_reason=_FINISH[ev.reason],
                        adapter=adapter or "",
                        ttft_ms=ev.ttft_ms or 0.0,
                    )
                    yield pb.GenerateResponse(done=done)
                    return
                elif isinstance(ev, Failed):
                    code, msg = _failure_status(ev.error, adapter)
                    await self._abort(context, code, msg)
        except asyncio.CancelledError:
            self.engine.cancel(req.request_id)
            raise

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
            dtype=str(base.dtype).removeprefix("torch."),
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
        )


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
