"""``AsyncNodeClient``: the asyncio twin of ``NodeClient`` over ``grpc.aio``, for callers that serve many
requests at once (a web backend, an agent loop) from one event loop.

    async with AsyncNodeClient("127.0.0.1:50051") as node:
        async for text in node.generate("What helps a sore throat?", adapter=cid, temperature=0):
            print(text, end="")

Same methods, arguments, request builders (builders.py), retry rules (retry.py) and stream semantics
(streams.py) as the sync client; each method is a coroutine, and ``generate`` returns an async iterator.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from ..v1 import node_pb2 as pb
from ..v1 import node_pb2_grpc
from .builders import generate_request, publish_requests, quote_request, signed_manifest
from .retry import RetryPolicy, acall_with_retry
from .streams import AsyncGenerationStream

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount


class AsyncNodeClient:
    """An asyncio connection to one node; create it inside the event loop that uses it.

    Args:
        address: ``host:port`` of the node's gRPC server.
        timeout: deadline of each attempt of a call, in seconds (``None``: no deadline).
        retry: when to try a failed call again (default ``RetryPolicy()``; ``RetryPolicy.none()``: never).

    Every method raises ``grpc.RpcError`` (``grpc.aio.AioRpcError``) with the node's status code and message
    when the call fails (after the retries the policy allows).
    """

    def __init__(self, address: str, timeout: float | None = None, retry: RetryPolicy | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._channel = grpc.aio.insecure_channel(address, options=self.retry.channel_options())
        self._stub = node_pb2_grpc.NodeStub(self._channel)
        self._rng = random.Random()

    async def __aenter__(self) -> AsyncNodeClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (ends the calls still running on it)."""
        await self._channel.close()

    async def _unary(self, method, request):
        return await acall_with_retry(self.retry, self._rng, lambda: method(request, timeout=self.timeout))

    def _stream(self, request: pb.GenerateRequest) -> AsyncGenerationStream:
        """A free ``Generate`` call of ``request``, restarted as the policy allows until it delivers."""

        def start():
            return self._stub.Generate(request, timeout=self.timeout)

        return AsyncGenerationStream(start(), start, self.retry, self._rng)

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
        stop: str | tuple[str, ...] = (),
        response_format: pb.ResponseFormat | None = None,
    ) -> AsyncGenerationStream:
        """Start a completion (arguments: :func:`openlora.client.generate_request`); not a coroutine.

        Returns:
            An :class:`AsyncGenerationStream`: ``async for text in stream`` or ``await stream.text()``. A call
            that must be paid fails with FAILED_PRECONDITION: use :class:`openlora.client.AsyncPaidSession`.
        """
        req = generate_request(
            prompt, messages=messages, raw=raw, adapter=adapter, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop, response_format=response_format,
        )  # fmt: skip
        return self._stream(req)

    async def quote(self, request: pb.GenerateRequest, client: LocalAccount | None = None) -> pb.Quote:
        """The price of ``request``; with ``client`` (an address) also that client's channel state."""
        return await self._unary(self._stub.GetQuote, quote_request(request, client))

    async def usage(self, adapter: str | None = None) -> list[pb.AdapterUsage]:
        """Settled on-chain usage of ``adapter`` (a CID), or of every registered adapter."""
        return list((await self._unary(self._stub.GetUsage, pb.GetUsageRequest(adapter=adapter or ""))).adapters)

    async def publish(
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

        Arguments and errors: :meth:`openlora.client.NodeClient.publish`.
        """
        manifest, files = signed_manifest(
            folder, await self.node_info(), signer, name,
            price_per_1k_tokens=price_per_1k_tokens, royalty_bps=royalty_bps, created_at=created_at,
        )  # fmt: skip
        return await acall_with_retry(
            self.retry, self._rng, lambda: self._stub.PublishAdapter(publish_requests(manifest, files), timeout=self.timeout)
        )

    async def get_adapter(self, cid: str) -> pb.AdapterInfo:
        """Status and manifest summary of one adapter."""
        return await self._unary(self._stub.GetAdapter, pb.GetAdapterRequest(cid=cid))

    async def list_adapters(self) -> list[pb.AdapterInfo]:
        """Every adapter the node knows, most recently changed first (every page of ListAdapters)."""
        adapters: list[pb.AdapterInfo] = []
        tokens: set[str] = set()
        token = ""
        while True:
            page = await self._unary(self._stub.ListAdapters, pb.ListAdaptersRequest(page_token=token))
            adapters.extend(page.adapters)
            token = page.next_page_token
            if not token or token in tokens:  # a node repeating a token would page for ever
                return adapters
            tokens.add(token)

    async def node_info(self) -> pb.NodeInfo:
        """The node's base model, fingerprint, slots and load."""
        return await self._unary(self._stub.GetNodeInfo, pb.GetNodeInfoRequest())

    async def verify(self, call: pb.ServedCall) -> pb.VerifyResponse:
        """Have this node check a served call (``stream.served``): valid, or the failing check and, when the
        failure blames the serving node, evidence signed by this node (which it also gossips)."""
        return await self._unary(self._stub.Verify, pb.VerifyRequest(call=call))
