"""Python client for an openlora node (the CLI's ``openlora`` commands use it).

    with NodeClient("127.0.0.1:50051") as node:
        cid = node.publish("tests/fixtures/adapters/medical").cid
        stream = node.generate("What helps a sore throat?", adapter=cid, temperature=0)
        for text in stream:
            print(text, end="")
        print(stream.done.usage.completion_tokens)

Imports only grpc and the generated stubs (no torch), so client commands start instantly.
Errors are ``grpc.RpcError`` with the node's status code and message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from .v1 import node_pb2 as pb
from .v1 import node_pb2_grpc

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

    def publish(self, folder: str | Path, name: str = "") -> pb.PublishAdapterResponse:
        """Publish a PEFT LoRA folder; returns the response with the adapter CID.

        Raises:
            FileNotFoundError: not a folder.
            grpc.RpcError: INVALID_ARGUMENT with the rejection reason.
        """
        files = adapter_files(folder)
        name = name or Path(folder).resolve().name

        def parts():
            yield pb.PublishAdapterRequest(header=pb.PublishHeader(name=name))
            for fname, data in files.items():
                for off in range(0, max(len(data), 1), PUBLISH_CHUNK_BYTES):
                    yield pb.PublishAdapterRequest(chunk=pb.FileChunk(path=fname, data=data[off : off + PUBLISH_CHUNK_BYTES]))

        return self._stub.PublishAdapter(parts(), timeout=self.timeout)

    def get_adapter(self, cid: str) -> pb.AdapterInfo:
        """Status and manifest summary of one adapter."""
        return self._stub.GetAdapter(pb.GetAdapterRequest(cid=cid), timeout=self.timeout)

    def list_adapters(self) -> list[pb.AdapterInfo]:
        """Every adapter the node knows."""
        return list(self._stub.ListAdapters(pb.ListAdaptersRequest(), timeout=self.timeout).adapters)

    def node_info(self) -> pb.NodeInfo:
        """The node's base model, fingerprint, slots and load."""
        return self._stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=self.timeout)
