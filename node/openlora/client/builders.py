"""Request building shared by the sync and the async client: the same arguments make the same protobuf
messages whichever transport sends them.

    generate_request(prompt, adapter=…, sampling…) ─► GenerateRequest ─► quote_request(…) ─► GetQuoteRequest
    adapter folder ─► adapter_files ─► signed_manifest (GetNodeInfo's base, publisher key) ─► publish_requests
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters.composition import Composition, is_composition, join_text
from ..v1 import node_pb2 as pb

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

#: bytes of file data per ``PublishAdapter`` message (well below gRPC's 4 MiB default message limit)
PUBLISH_CHUNK_BYTES = 1 << 20
# files save_pretrained writes beside an adapter that are not part of it
_NOT_ADAPTER_FILES = {"README.md"}


def chat_messages(prompt: str, system: str | None = None) -> pb.ChatMessages:
    """Chat messages for one user turn, with an optional system message."""
    msgs = [pb.ChatMessage(role="system", content=system)] if system else []
    msgs.append(pb.ChatMessage(role="user", content=prompt))
    return pb.ChatMessages(messages=msgs)


def generate_request(
    prompt: str | None = None,
    *,
    messages: pb.ChatMessages | None = None,
    raw: bool = False,
    adapter: str | None = None,
    max_new_tokens: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int = 0,
    seed: int | None = None,
    stop: str | tuple[str, ...] = (),
    response_format: pb.ResponseFormat | None = None,
) -> pb.GenerateRequest:
    """The ``Generate`` request for these arguments.

    Args:
        prompt: user text; sent as one chat turn unless ``raw``.
        messages: explicit chat messages (instead of ``prompt``).
        raw: send ``prompt`` as a raw prompt, without the chat template.
        adapter: adapter CID, ``None`` for the base model, or a composition ``cidA*0.7+cidB*0.3`` (README
            "Composition"), sent as ``adapters`` parts in canonical order (each paid part carries its own voucher).
        max_new_tokens: tokens to generate at most; 0 for the node default.
        temperature / top_p / top_k / seed / stop: sampling (``None`` / 0: node default); ``stop`` is one
            stop string or several.
        response_format: structured output (a JSON schema, any JSON object or a regex), ``None`` for free text.

    Raises:
        openlora.adapters.composition.CompositionError: a malformed composition (the message says what to fix).
    """
    stops = [stop] if isinstance(stop, str) else list(stop)  # a lone string is one stop, not its characters
    sampling = pb.SamplingParams(max_new_tokens=max_new_tokens, top_k=top_k, stop=stops)
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if seed is not None:
        sampling.seed = seed
    req = pb.GenerateRequest(sampling=sampling, response_format=response_format)
    if is_composition(adapter):
        comp = Composition.parse(adapter)
        req.adapters.extend(pb.AdapterPart(cid=cid, weight=w) for cid, w in zip(comp.cids, comp.weights))
    else:
        req.adapter = adapter or ""
    if messages is not None:
        req.chat.CopyFrom(messages)
    elif raw:
        req.prompt = prompt or ""
    else:
        req.chat.CopyFrom(chat_messages(prompt or ""))
    return req


def call_adapter(request: pb.GenerateRequest) -> str:
    """What ``request`` calls: its ``adapter`` (a CID, "" for the base) or its ``adapters`` composition as text."""
    return join_text((p.cid, p.weight) for p in request.adapters) if request.adapters else request.adapter


def quote_request(request: pb.GenerateRequest, client: LocalAccount | None = None) -> pb.GetQuoteRequest:
    """The ``GetQuote`` request pricing ``request`` (same adapter, input and max new tokens); with ``client``, signed
    by it so the node also shows that client's channel (``chain/quote_auth.py``)."""
    quote = pb.GetQuoteRequest(adapter=call_adapter(request), max_new_tokens=request.sampling.max_new_tokens)
    if client is not None:
        from ..chain.quote_auth import sign_quote_auth  # eth-account only when a client signs

        quote.client = client.address
        quote.issued_at, quote.client_signature = sign_quote_auth(client)
    if request.WhichOneof("input") == "chat":
        quote.chat.CopyFrom(request.chat)
    else:
        quote.prompt = request.prompt
    return quote


def publish_requests(manifest: bytes, files: dict[str, bytes]) -> Iterator[pb.PublishAdapterRequest]:
    """The ``PublishAdapter`` request stream: a header with the signed manifest, then each file in chunks of
    at most :data:`PUBLISH_CHUNK_BYTES` bytes."""
    yield pb.PublishAdapterRequest(header=pb.PublishHeader(manifest=manifest))
    for fname, data in files.items():
        for off in range(0, max(len(data), 1), PUBLISH_CHUNK_BYTES):
            yield pb.PublishAdapterRequest(chunk=pb.FileChunk(path=fname, data=data[off : off + PUBLISH_CHUNK_BYTES]))


def adapter_files(folder: str | Path) -> dict[str, bytes]:
    """The files of an adapter folder to publish (every regular file except a model card).

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name not in _NOT_ADAPTER_FILES}


def signed_manifest(
    folder: str | Path,
    info: pb.NodeInfo,
    signer: LocalAccount,
    name: str = "",
    *,
    price_per_1k_tokens: int = 0,
    royalty_bps: int = 0,
    created_at: int | None = None,
) -> tuple[bytes, dict[str, bytes]]:
    """The canonical signed manifest of an adapter folder for the base of the node described by ``info``,
    and the folder's files (what ``publish_requests`` streams). Builds locally: no torch.

    Args: see :meth:`openlora.client.NodeClient.publish`.

    Raises:
        FileNotFoundError: not a folder.
        AdapterRejected: the folder is not a well-formed PEFT LoRA.
        ValueError: price, royalty or name out of range.
    """
    from ..adapters.manifest import encode_manifest
    from ..adapters.package import build_manifest
    from ..adapters.signing import sign_manifest

    files = adapter_files(folder)
    unsigned = build_manifest(
        files,
        base_name=info.base_model,
        base_fingerprint=info.base_fingerprint,
        publisher=signer.address,
        name=name or Path(folder).resolve().name,
        price_per_1k_tokens=price_per_1k_tokens,
        royalty_bps=royalty_bps,
        created_at=created_at,
    )
    return encode_manifest(sign_manifest(unsigned, signer)), files
