"""Python client for an openlora node (the CLI's ``openlora`` commands use it).

    with NodeClient("127.0.0.1:50051") as node:
        signer = load_account(default_key_path(), passphrase)       # openlora.adapters.keys
        cid = node.publish("tests/fixtures/adapters/medical", signer).cid
        stream = node.generate("What helps a sore throat?", adapter=cid, temperature=0)
        for text in stream:
            print(text, end="")
        print(stream.done.usage.completion_tokens)

Imports only grpc and the generated stubs at import time (no torch); ``publish`` adds the
torch-free manifest code and eth-account. Client commands start instantly.
Errors are ``grpc.RpcError`` with the node's status code and message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from .v1 import node_pb2 as pb
from .v1 import node_pb2_grpc

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

PUBLISH_CHUNK_BYTES = 1 << 20
# files save_pretrained writes beside an adapter that are not part of it
_NOT_ADAPTER_FILES = {"README.md"}


class GenerationStream:
    """Iterates the text chunks of one ``Generate`` call; ``done`` holds the final message after."""

    def __init__(self, responses) -> None:
        self._responses = responses
        self.done: pb.GenerateDone | None = None

    def __iter__(self) -> Iterator[str]:
        for resp in self._responses:
            if resp.HasField("done"):
                self.done = resp.done
            else:
                yield resp.text

    def text(self) -> str:
        """Consume the stream and return the whole completion."""
        return "".join(self)

    def cancel(self) -> None:
        """Stop the call; the node frees the row at once."""
        self._responses.cancel()


def chat_messages(prompt: str, system: str | None = None) -> pb.ChatMessages:
    """Chat messages for one user turn, with an optional system message."""
    msgs = [pb.ChatMessage(role="system", content=system)] if system else []
    msgs.append(pb.ChatMessage(role="user", content=prompt))
    return pb.ChatMessages(messages=msgs)


def publish_requests(manifest: bytes, files: dict[str, bytes]) -> Iterator[pb.PublishAdapterRequest]:
    """The ``PublishAdapter`` request stream: a header with the signed manifest, then each file in chunks."""
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


class NodeClient:
    """A synchronous connection to one node.

    Args:
        address: ``host:port`` of the node's gRPC server.
        timeout: per-call deadline in seconds (``None``: no deadline).
    """

    def __init__(self, address: str, timeout: float | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = node_pb2_grpc.NodeStub(self._channel)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def generate(
        self,
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
        stop: tuple[str, ...] = (),
    ) -> GenerationStream:
        """Start a completion.

        Args:
            prompt: user text; sent as one chat turn unless ``raw``.
            messages: explicit chat messages (instead of ``prompt``).
            raw: send ``prompt`` as a raw prompt, without the chat template.
            adapter: adapter CID, ``None`` for the base model.
            max_new_tokens: 0 for the node default.
            temperature / top_p / top_k / seed / stop: sampling (``None``: node default).

        Returns:
            A :class:`GenerationStream`; iterate it for text.
        """
        sampling = pb.SamplingParams(max_new_tokens=max_new_tokens, top_k=top_k, stop=list(stop))
        if temperature is not None:
            sampling.temperature = temperature
        if top_p is not None:
            sampling.top_p = top_p
        if seed is not None:
            sampling.seed = seed
        req = pb.GenerateRequest(adapter=adapter or "", sampling=sampling)
        if messages is not None:
            req.chat.CopyFrom(messages)
        elif raw:
            req.prompt = prompt or ""
        else:
            req.chat.CopyFrom(chat_messages(prompt or ""))
        return GenerationStream(self._stub.Generate(req, timeout=self.timeout))

    def publish(
        self,
        folder: str | Path,
        signer: LocalAccount,
        name: str = "",
        *,
        price_per_1k_tokens: int = 0,
        royalty_bps: int = 0,
        created_at: int | None = None,
    ) -> pb.PublishAdapterResponse:
        """Sign and publish a PEFT LoRA folder; returns the response with the adapter CID.

        Asks the node for its base (``GetNodeInfo``), builds the manifest locally (file CIDs,
        PEFT summary; no torch), signs it with ``signer`` (EIP-712, adapters/signing.py) and
        streams the manifest and the files.

        Args:
            folder: the adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
            signer: the publisher's key (``adapters.keys.load_account``); its address becomes
                the manifest's ``publisher``.
            name: adapter name (default: the folder name).
            price_per_1k_tokens: wei per 1000 tokens.
            royalty_bps: publisher's share in basis points (0..10000).
            created_at: unix seconds (default: now).

        Raises:
            FileNotFoundError: not a folder.
            AdapterRejected: the folder is not a well-formed PEFT LoRA (checked before sending).
            ValueError: price, royalty or name out of range.
            grpc.RpcError: INVALID_ARGUMENT with the node's rejection reason.
        """
        from .adapters.manifest import encode_manifest
        from .adapters.package import build_manifest
        from .adapters.signing import sign_manifest

        files = adapter_files(folder)
        info = self.node_info()
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
        manifest = encode_manifest(sign_manifest(unsigned, signer))
        return self._stub.PublishAdapter(publish_requests(manifest, files), timeout=self.timeout)

    def get_adapter(self, cid: str) -> pb.AdapterInfo:
        """Status and manifest summary of one adapter."""
        return self._stub.GetAdapter(pb.GetAdapterRequest(cid=cid), timeout=self.timeout)

    def list_adapters(self) -> list[pb.AdapterInfo]:
        """Every adapter the node knows."""
        return list(self._stub.ListAdapters(pb.ListAdaptersRequest(), timeout=self.timeout).adapters)

    def node_info(self) -> pb.NodeInfo:
        """The node's base model, fingerprint, slots and load."""
        return self._stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=self.timeout)
