"""The FastAPI app: OpenAI-compatible completions over the request core, models, quote, metrics, health.

Errors found before the first token become the response's status (the first token is awaited
before a stream starts); one after it ends the stream with an ``{"error": …}`` event.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from typing import Annotated

import grpc
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...adapters.catalog import AdapterState
from ...adapters.composition import is_composition
from ...chain.payments import ComposedPrice
from ...chain.pricing import Quote
from ...content.cid import cid_text
from ...content.errors import InvalidCID
from ...engine.interface import TextDelta
from ...metrics import CONTENT_TYPE_LATEST, NodeMetrics
from ..calls import CallDone, CallError, CallInput, Calls
from ..ratelimit import RateLimited, RateLimiter, client_key
from .limits import BodyLimit
from .wire import (
    BASE_MODEL,
    FINISH,
    PART_VOUCHERS_HEADER,
    VOUCHER_HEADER,
    ChatBody,
    CompletionBody,
    RequestBody,
    error_body,
    error_response,
    http_status,
    parse_part_vouchers,
    parse_voucher,
    receipt_fields,
    receipt_headers,
    served_json,
    usage,
)


DISCONNECT_POLL_S = 0.5  # how often a non-streaming call checks that its client is still there


def build_app(calls: Calls, metrics: NodeMetrics, base_name: str, limiter: RateLimiter | None = None) -> FastAPI:
    """The FastAPI app of one node.

    Args:
        calls: the request core (shared with gRPC).
        metrics: rendered by ``GET /metrics``.
        base_name: the base model's name (shown by ``/v1/models`` for ``base``).
        limiter: per-client buckets shared with gRPC (``None``: no limit); the key is the
            ``x-openlora-client`` header, else the caller's IP.

    ``app.state.ready`` (bool) is True while serving; :class:`HttpServer` clears it on stop.
    """
    app = FastAPI(title="openlora-node", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)
    app.state.ready = True

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(
            error_body(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), "invalid_argument"),
            400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def httperror_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail), "http_error"), exc.status_code)

    def admit(request: Request) -> JSONResponse | None:
        """A 503 / 429 response when the call must not run, else ``None``."""
        if not app.state.ready:
            return JSONResponse(error_body(503, "the node is stopping; retry on another node", "unavailable"), 503)
        if limiter is not None:
            host = request.client.host if request.client else "unknown"
            try:
                # the gRPC key form (``ip:<address>``, port dropped): one budget per client across both APIs
                limiter.check(client_key(request.headers.items(), f"ipv4:{host}:0"))
            except RateLimited as e:
                headers = {"Retry-After": str(max(1, round(e.retry_after_s)))}
                return JSONResponse(error_body(429, str(e), "rate_limited"), 429, headers)
        return None

    def adapter_ref(model: str) -> str:
        """The adapter CID ``model`` names ("" for the base): a CID, a verified adapter's name, or ``base``; or a
        composition ``cidA*0.7+cidB*0.3``, passed on as is (``Calls.resolve_adapter`` checks it)."""
        if model == BASE_MODEL:
            return ""
        if is_composition(model):
            return model
        try:
            return cid_text(model)
        except InvalidCID:
            pass
        named = [e.cid for e in calls.store.catalog.list() if e.name == model and e.state is AdapterState.READY]
        if len(named) > 1:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model name {model!r} names {len(named)} adapters; use a CID: {', '.join(named)}",
            )
        if not named:
            raise CallError(
                grpc.StatusCode.NOT_FOUND,
                f"model {model!r} is not an adapter CID, the name of a verified adapter, or {BASE_MODEL!r}; GET /v1/models lists them",
            )
        return named[0]

    async def complete(request: Request, body: RequestBody, prompt: dict, kind: str) -> Response:
        refused = admit(request)
        if refused is not None:
            return refused
        try:
            ref = adapter_ref(body.model)
            header, parts = request.headers.get(VOUCHER_HEADER), request.headers.get(PART_VOUCHERS_HEADER)
            voucher = parse_voucher(header) if header else None
            call = body.call(ref, voucher, parse_part_vouchers(parts) if parts else (), **prompt)
        except CallError as e:
            return error_response(e)
        model = ref or BASE_MODEL
        head = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model,
        }
        items = calls.generate(call, "http")
        if body.stream:
            try:
                first = await anext(items)
            except CallError as e:
                return error_response(e)
            return StreamingResponse(_sse(kind, head, first, items), media_type="text/event-stream")
        text: list[str] = []
        done: CallDone | None = None

        async def collect() -> None:
            nonlocal done
            async with aclosing(items):
                async for item in items:
                    if isinstance(item, TextDelta):
                        text.append(item.text)
                    else:
                        done = item

        # Nothing is sent before the whole answer, so a client that went away is only seen by asking;
        # cancelling frees its row at once and bills only what was generated (as a gRPC cancel does).
        collecting = asyncio.ensure_future(collect())
        try:
            while not (await asyncio.wait({collecting}, timeout=DISCONNECT_POLL_S))[0]:
                if await request.is_disconnected():
                    collecting.cancel()
                    with suppress(asyncio.CancelledError, CallError):
                        await collecting
                    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
            collecting.result()
        except CallError as e:
            return error_response(e)
        finally:
            collecting.cancel()  # no-op once done; ends the call if this handler itself is cancelled
        choice = {"index": 0, "finish_reason": FINISH[done.finished.reason], "logprobs": None}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": "".join(text)}
            obj = "chat.completion"
        else:
            choice["text"] = "".join(text)
            obj = "text_completion"
        headers = receipt_headers(done.receipt, done.part_receipts)
        body = {**head, "object": obj, "choices": [choice], "usage": usage(done)}
        if (served := served_json(done)) is not None:
            body["openlora_served"] = served
        return JSONResponse(body, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatBody) -> Response:
        if body.tools:
            return JSONResponse(
                error_body(400, "tools are not supported by this node; leave them unset", "invalid_argument"), 400
            )
        chat = tuple((m.role, m.text()) for m in body.messages)
        return await complete(request, body, {"chat": chat}, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionBody) -> Response:
        if body.echo:
            return JSONResponse(
                error_body(400, "echo is not supported by this node; leave it unset", "invalid_argument"), 400
            )
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        return await complete(request, body, {"prompt": prompt}, "text")

    @app.get("/v1/models")
    async def models() -> dict:
        data = [{"id": BASE_MODEL, "object": "model", "created": 0, "owned_by": "openlora", "name": base_name}]
        data += [
            {"id": e.cid, "object": "model", "created": int(e.updated_at), "owned_by": "openlora", "name": e.name}
            for e in calls.store.catalog.list()
            if e.state is AdapterState.READY
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/quote")
    async def quote(
        request: Request,
        model: str,
        prompt_tokens: Annotated[int, Query(ge=1)],
        max_tokens: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        refused = admit(request)
        if refused is not None:
            return refused
        try:
            adapter = await calls.resolve_adapter(adapter_ref(model))
            max_new = calls.sampling(CallInput(max_new_tokens=max_tokens)).max_new_tokens
            if prompt_tokens > calls.limits.max_prompt_tokens:
                raise CallError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"prompt_tokens is {prompt_tokens}; this node accepts up to {calls.limits.max_prompt_tokens}",
                )
            price = await calls.price(adapter, prompt_tokens, max_new)
        except CallError as e:
            return error_response(e)
        out = {"model": adapter or BASE_MODEL, "prompt_tokens": prompt_tokens, "max_tokens": max_new}
        if price is None:
            return JSONResponse({**out, "payment_required": False, "max_cost_wei": "0"})
        info = calls.chain.info
        out |= {
            "payment_required": price.required, "max_cost_wei": str(price.max_cost), "node_address": info.node_address,
            "chain_id": info.chain_id, "channels": info.channels, "node_fee_per_1k": str(info.node_fee_per_1k),
        }  # fmt: skip
        if isinstance(price, ComposedPrice):  # per part: what each part's voucher names and covers
            out["parts"] = [
                {"model": p.cid, "max_tokens": p.max_tokens, "max_cost_wei": str(p.max_cost)} | _quote_terms(p.quote)
                for p in price.parts
            ]
        else:
            out |= _quote_terms(price.quote)
        return JSONResponse(out)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> JSONResponse:
        if app.state.ready and calls.engine.alive:
            return JSONResponse({"status": "serving"})
        return JSONResponse({"status": "not_serving"}, 503)

    return app


async def _sse(kind: str, head: dict, first, items: AsyncIterator) -> AsyncIterator[str]:
    """Server-sent events of one call: OpenAI chunk objects, the last with ``usage`` (and the receipt), then [DONE]."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    role_sent = False

    def chunk(item) -> str:
        nonlocal role_sent
        if isinstance(item, TextDelta):
            choice: dict = {"index": 0, "finish_reason": None}
            out: dict = {}
        else:
            choice = {"index": 0, "finish_reason": FINISH[item.finished.reason]}
            out = {"usage": usage(item)}
            out |= receipt_fields(item.receipt, item.part_receipts)
            if (served := served_json(item)) is not None:
                out["openlora_served"] = served
        text = item.text if isinstance(item, TextDelta) else ""
        if kind == "chat":
            delta = {"content": text} if text or not role_sent else {}
            if not role_sent:
                delta["role"] = "assistant"
                role_sent = True
            choice["delta"] = delta
        else:
            choice |= {"text": text, "logprobs": None}
        return f"data: {json.dumps({**head, 'object': obj, 'choices': [choice], **out})}\n\n"

    async with aclosing(items):
        try:
            yield chunk(first)
            async for item in items:
                yield chunk(item)
        except CallError as e:
            body = error_body(http_status(e), str(e), e.payment_error or e.code.name.lower())
            body |= receipt_fields(e.receipt, e.part_receipts)
            yield f"data: {json.dumps(body)}\n\n"
            return
    yield "data: [DONE]\n\n"


def _quote_terms(quote: Quote | None) -> dict:
    """The price, adapter id (what a voucher names) and publisher of a quote (nothing for a free call)."""
    if quote is None:
        return {}
    return {"price_per_1k_tokens": str(quote.price_per_1k_tokens), "adapter_id": "0x" + quote.adapter_id.hex(), "publisher": quote.publisher}
