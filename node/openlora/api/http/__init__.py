"""The OpenAI-compatible HTTP API and ``/metrics``, served by uvicorn in the node's asyncio loop beside gRPC.

    POST /v1/chat/completions ┐                         ┌─ TextDelta* ─► JSON body, or SSE chunks + data: [DONE]
    POST /v1/completions      ┴─► rate limit ─► model ─► calls.generate ─┤
                                  (per client)  (CID | name | base)     └─ CallError ─► {"error": {message, type, code}}
    GET  /v1/models   verified adapters (id = CID, name = alias) + base
    GET  /v1/quote    ?model=&prompt_tokens=&max_tokens=  → the call's max cost in wei
    GET  /metrics     Prometheus text (the node's own registry)
    GET  /health      200 while serving, 503 otherwise

The request core is ``calls.py`` (the same one gRPC uses); this package only translates. Its errors
map to HTTP codes (:func:`wire.http_status`): 400 bad input, 402 payment required (or not enough), 403
bad voucher, 404 unknown model, 422 adapter rejected, 429 queue full / rate limited, 503 not ready.
An error found before the first token is the response's status, also when streaming (the first
token is awaited before the stream starts); one after it is a last SSE event ``{"error": …}``.

Payment: the client sends its voucher in ``X-OpenLoRA-Voucher`` as JSON with the gRPC Voucher's fields
(``client``, ``node``, ``epoch``, ``cumulative_amount``, ``price_per_1k_tokens`` and ``adapter_amount`` as
decimal strings, ``adapter_id`` and ``signature`` as 0x-hex);
the node-signed receipt comes back in ``X-OpenLoRA-Receipt`` (same JSON shape as the gRPC Receipt, bytes as
0x-hex) or, when streaming, as ``openlora_receipt`` in the last chunk. A composed call's paid parts send theirs in
``X-OpenLoRA-Part-Vouchers`` (``{"<part CID>": voucher}``) and get ``X-OpenLoRA-Part-Receipts`` (a list) or
``openlora_part_receipts``. Every finished call's signed serving
record and token ids come as ``openlora_served`` in the body (the last chunk when streaming): the gRPC
``ServedCall`` in protobuf's JSON mapping, what ``openlora verify`` checks. Wire formats follow OpenAI's
API reference (https://platform.openai.com/docs/api-reference/chat) and the SSE spec (WHATWG HTML §9.2).
"""

from .app import build_app
from .server import HttpServer
from .wire import RECEIPT_HEADER, VOUCHER_HEADER

__all__ = ["RECEIPT_HEADER", "VOUCHER_HEADER", "HttpServer", "build_app"]
