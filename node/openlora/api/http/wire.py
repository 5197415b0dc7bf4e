"""What crosses the HTTP boundary: OpenAI request bodies, error objects and codes, voucher and receipt JSON.

    CallError (gRPC code, payment error) ──http_status──► 400 402 403 404 422 429 500 503 + {"error": {…}}
    X-OpenLoRA-Voucher: {"client", "node", "epoch", "cumulative_amount", "adapter_id": "0x…",
                         "price_per_1k_tokens", "adapter_amount", "signature": "0x…"} ──► pb.Voucher
    X-OpenLoRA-Part-Vouchers: {"<part CID>": {voucher as above}, …}  (a composed call's paid parts) ──► part vouchers
    SignedReceipt ──► {"node", "client", …, "cost", "charged_total", "signature": "0x…", "serving": "0x…"}
                      (X-OpenLoRA-Receipt; a composed call: X-OpenLoRA-Part-Receipts, a list, one per part billed)
    CallDone.served ──► "openlora_served": the gRPC ServedCall as protobuf JSON (record + token ids)

Fields follow OpenAI's API reference (https://platform.openai.com/docs/api-reference/chat); this node
implements ``model``, ``messages`` / ``prompt``, ``max_tokens`` (``max_completion_tokens``), ``temperature``,
``top_p``, ``seed``, ``stop``, ``stream``, ``n == 1`` and ``response_format`` (``text``, ``json_object``,
``json_schema``, and the extension ``{"type": "regex", "regex": "…"}``), refuses ``logprobs``, ``tools`` and
``echo``, and ignores the rest.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import grpc
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ...adapters.composition import MAX_PARTS
from ...chain.records import SignedReceipt
from ...engine.interface import FinishReason
from ...engine.structured import Constraint, ConstraintError
from ...v1 import node_pb2 as pb
from ..calls import MAX_CHAT_MESSAGES, CallDone, CallError, CallInput

VOUCHER_HEADER = "X-OpenLoRA-Voucher"
RECEIPT_HEADER = "X-OpenLoRA-Receipt"
PART_VOUCHERS_HEADER = "X-OpenLoRA-Part-Vouchers"
PART_RECEIPTS_HEADER = "X-OpenLoRA-Part-Receipts"
BASE_MODEL = "base"
FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.CANCELLED: "cancelled"}
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
_TYPE = {
    400: "invalid_request_error",
    402: "payment_required",
    403: "permission_error",
    404: "not_found_error",
    422: "adapter_rejected",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


# ----- request bodies (OpenAI's fields this node implements; others are ignored) -----


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    role: str
    content: str | list[_TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _JsonSchema(BaseModel):
    name: str = ""
    schema_: Annotated[dict, Field(alias="schema")] = Field(default_factory=dict)
    strict: bool | None = None  # the node always enforces the schema while decoding, strict or not
    description: str | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``; ``{"type": "regex", "regex": "…"}`` is this node's extension."""

    type: Literal["text", "json_object", "json_schema", "regex"]
    json_schema: _JsonSchema | None = None
    regex: str | None = None

    def constraint(self) -> Constraint | None:
        """The engine's constraint (``None`` for ``text``).

        Raises:
            CallError: INVALID_ARGUMENT: the type's field is missing, or the schema or regex is malformed or too large.
        """
        try:
            if self.type == "json_schema":
                if self.json_schema is None:
                    raise ConstraintError('response_format type "json_schema" needs a "json_schema": {"schema": {…}}')
                return Constraint.json_schema(self.json_schema.schema_)
            if self.type == "regex":
                if self.regex is None:
                    raise ConstraintError('response_format type "regex" needs a "regex" pattern')
                return Constraint.regex(self.regex)
        except ConstraintError as e:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, f"response_format: {e}") from None
        return Constraint.json_object() if self.type == "json_object" else None


class RequestBody(BaseModel):
    """Fields chat and text completions share; ``model`` is an adapter CID, a verified adapter's name, or ``base``."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    logprobs: bool | int | None = None
    response_format: ResponseFormat | None = None

    def call(
        self, adapter: str, voucher: pb.Voucher | None, part_vouchers: tuple[tuple[str, pb.Voucher], ...] = (), **prompt
    ) -> CallInput:
        """The core's input; raises :class:`CallError` for fields this node does not implement."""
        if self.n != 1:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT, f"n must be 1 (one choice per request), got {self.n}")
        if self.logprobs:
            raise CallError(
                grpc.StatusCode.INVALID_ARGUMENT, "logprobs are not supported by this node; leave them unset"
            )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return CallInput(
            adapter=adapter,
            max_new_tokens=self._max_tokens() or 0,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=stop,
            voucher=voucher,
            part_vouchers=part_vouchers,
            constraint=self.response_format.constraint() if self.response_format is not None else None,
            **prompt,
        )

    def _max_tokens(self) -> int | None:
        return self.max_tokens


class ChatBody(RequestBody):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[_Message], Field(min_length=1, max_length=MAX_CHAT_MESSAGES)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list | None = None

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(RequestBody):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False


# ----- wire helpers -----


def http_status(error: CallError) -> int:
    """The HTTP status of a core error: payment refusals are 402 unless the voucher is bad (403) or the
    adapter is not payable (404); other codes by :data:`_HTTP`, 500 for the rest."""
    if error.payment_error is not None and error.code not in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
    ):
        return 503 if error.code is grpc.StatusCode.UNAVAILABLE else 402
    return _HTTP.get(error.code, 500)


def error_body(status: int, message: str, code: str) -> dict:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": _TYPE.get(status, "server_error"), "param": None, "code": code}}


def receipt_json(signed: SignedReceipt) -> dict:
    """A node-signed receipt as JSON: the gRPC Receipt's fields, wei as decimal strings, bytes as 0x-hex."""
    r = signed.receipt
    return {
        "node": r.node, "client": r.client, "epoch": r.epoch, "sequence": r.sequence, "adapter_id": "0x" + r.adapter.hex(),
        "publisher": r.publisher, "tokens": r.tokens, "cost": str(r.cost), "charged_total": str(r.charged_total),
        "signature": "0x" + signed.signature.hex(), "serving": "0x" + r.serving.hex(),
    }  # fmt: skip


def served_json(done) -> dict | None:
    """A finished call's serving record and token ids (``api.calls.CallDone``) as the gRPC ``ServedCall`` in
    protobuf's JSON mapping (``openlora_served``; what ``openlora verify`` checks), ``None`` without a record."""
    if done.served is None:
        return None
    from google.protobuf import json_format

    from ...proof.wire import record_to_pb

    call = pb.ServedCall(record=record_to_pb(done.served), prompt_ids=done.prompt_ids, completion_ids=done.completion_ids)
    return json_format.MessageToDict(call, preserving_proto_field_name=True)


def parse_voucher(text: str) -> pb.Voucher:
    """The ``X-OpenLoRA-Voucher`` header as a gRPC Voucher (its checks run in the core, as for gRPC).

    Raises:
        CallError: PERMISSION_DENIED (``InvalidVoucher``): not a JSON object with the eight fields of the right types.
    """
    try:
        return _voucher(json.loads(text))
    except (ValueError, TypeError, KeyError) as e:
        raise _bad_voucher(VOUCHER_HEADER, "a JSON object with", e) from None


def parse_part_vouchers(text: str) -> tuple[tuple[str, pb.Voucher], ...]:
    """The ``X-OpenLoRA-Part-Vouchers`` header of a composed call, ``{"<part CID>": {voucher}, …}`` (each voucher as
    in ``X-OpenLoRA-Voucher``), as the core's ``(part CID, voucher)`` pairs (their checks run in the core).

    Raises:
        CallError: PERMISSION_DENIED (``InvalidVoucher``): not a JSON object of at most ``MAX_PARTS`` such vouchers.
    """
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or len(data) > MAX_PARTS:
            raise ValueError(f"expected an object of at most {MAX_PARTS} vouchers by part CID")
        return tuple((str(cid), _voucher(v)) for cid, v in data.items())
    except (ValueError, TypeError, KeyError) as e:
        raise _bad_voucher(PART_VOUCHERS_HEADER, 'an object {"<part CID>": voucher, …}, each voucher with', e) from None


def _voucher(data: dict) -> pb.Voucher:
    sig = data["signature"]
    if not isinstance(sig, str) or not sig.startswith("0x"):
        raise ValueError("signature must be 0x-hex")
    adapter = data["adapter_id"]
    if not isinstance(adapter, str) or not adapter.startswith("0x"):
        raise ValueError("adapter_id must be 0x-hex")
    return pb.Voucher(
        client=str(data["client"]), node=str(data["node"]), epoch=int(data["epoch"]),
        cumulative_amount=str(data["cumulative_amount"]), signature=bytes.fromhex(sig[2:]),
        adapter_id=bytes.fromhex(adapter[2:]), price_per_1k_tokens=str(data["price_per_1k_tokens"]),
        adapter_amount=str(data["adapter_amount"]),
    )  # fmt: skip


def _bad_voucher(header: str, shape: str, e: Exception) -> CallError:
    return CallError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{header} must be {shape} client, node, epoch, cumulative_amount, adapter_id (0x-hex), "
        f"price_per_1k_tokens, adapter_amount (decimal wei) and signature (0x-hex): {type(e).__name__}: {e}",
        payment_error="InvalidVoucher",
    )


def receipt_headers(receipt: SignedReceipt | None, part_receipts: tuple[SignedReceipt, ...]) -> dict | None:
    """The response headers carrying a paid call's receipt (``X-OpenLoRA-Receipt``) or a composed call's receipts
    (``X-OpenLoRA-Part-Receipts``, a JSON list, one per part billed); ``None`` when there is none."""
    if receipt is not None:
        return {RECEIPT_HEADER: json.dumps(receipt_json(receipt))}
    if part_receipts:
        return {PART_RECEIPTS_HEADER: json.dumps([receipt_json(r) for r in part_receipts])}
    return None


def receipt_fields(receipt: SignedReceipt | None, part_receipts: tuple[SignedReceipt, ...]) -> dict:
    """The same receipts as body fields (``openlora_receipt`` / ``openlora_part_receipts``), for the last SSE event."""
    if receipt is not None:
        return {"openlora_receipt": receipt_json(receipt)}
    if part_receipts:
        return {"openlora_part_receipts": [receipt_json(r) for r in part_receipts]}
    return {}


def error_response(error: CallError) -> JSONResponse:
    """The OpenAI error response of ``error`` (with the receipt header when a paid call was cut off)."""
    status = http_status(error)
    headers = receipt_headers(error.receipt, error.part_receipts)
    message = str(error) + (PAY_OVER_HTTP if error.payment_error == "PaymentRequired" else "")
    return JSONResponse(error_body(status, message, error.payment_error or error.code.name.lower()), status, headers)


#: how an HTTP client pays, appended to a PaymentRequired refusal (the core's message speaks of gRPC)
PAY_OVER_HTTP = (
    f"; over HTTP: GET /v1/quote?model=…&prompt_tokens=…&max_tokens=… for the max cost, then send the voucher as JSON "
    f'in the {VOUCHER_HEADER} header: {{"client", "node", "epoch", "cumulative_amount" (decimal string), "signature" '
    "(0x-hex EIP-712, openlora.chain.vouchers.sign_voucher)} (a composed call: each paid part's voucher, for the part's "
    f'max cost in the quote\'s "parts", in the {PART_VOUCHERS_HEADER} header as {{"<part CID>": voucher, …}}); deposit '
    "first with `openlora channel open --node GRPC_ADDR --key KEY --amount WEI`"
)


def usage(done: CallDone) -> dict:
    """OpenAI's ``usage`` object of a finished call, tokens."""
    f = done.finished
    return {
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    }
