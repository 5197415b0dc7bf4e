"""``NodeClient``: a blocking connection to one node (what the CLI uses).

Every call goes through :func:`retry.call_with_retry` (unary) or a restartable :class:`GenerationStream`, so
the retry rules of retry.py hold for each of them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from ..v1 import node_pb2 as pb
from ..v1 import node_pb2_grpc
from .builders import generate_request, publish_requests, quote_request, signed_manifest
from .retry import RetryPolicy, call_with_retry
from .streams import GenerationStream

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount


class NodeClient:
    """A synchronous connection to one node.

    Args:
        address: ``host:port`` of the node's gRPC server.
        timeout: deadline of each attempt of a call, in seconds (``None``: no deadline).
        retry: when to try a failed call again (default ``RetryPolicy()``; ``RetryPolicy.none()``: never).

    Every method raises ``grpc.RpcError`` with the node's status code and message when the call fails (after
    the retries the policy allows).
    """

    def __init__(self, address: str, timeout: float | None = None, retry: RetryPolicy | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._channel = grpc.insecure_channel(address, options=self.retry.channel_options())
        self._stub = node_pb2_grpc.NodeStub(self._channel)
        self._rng = random.Random()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (ends the calls still running on it)."""
        self._channel.close()

    def _unary(self, method, request):
        return call_with_retry(self.retry, self._rng, lambda: method(request, timeout=self.timeout))

    def _stream(self, request: pb.GenerateRequest) -> GenerationStream:
        """A free ``Generate`` call of ``request``, restarted as the policy allows until it delivers."""

        def start():
            return self._stub.Generate(request, timeout=self.timeout)

        return GenerationStream(start(), start, self.retry, self._rng)

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
    ) -> GenerationStream:
        """Start a completion (arguments: :func:`openlora.client.generate_request`).

        Returns:
            A :class:`GenerationStream`; iterate it for text. A call that must be paid fails with
            FAILED_PRECONDITION: use :class:`openlora.client.PaidSession`.
        """
        req = generate_request(
            prompt, messages=messages, raw=raw, adapter=adapter, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop, response_format=response_format,
        )  # fmt: skip
        return self._stream(req)

    def quote(self, request: pb.GenerateRequest, client: LocalAccount | None = None) -> pb.Quote:
        """The price of ``request`` (see :func:`generate_request`); with ``client`` (its key signs the request)
        also the state of that client's channel with this node."""
        return self._unary(self._stub.GetQuote, quote_request(request, client))

    def usage(self, adapter: str | None = None) -> list[pb.AdapterUsage]:
        """Settled on-chain usage of ``adapter`` (a CID), or of every registered adapter."""
        return list(self._unary(self._stub.GetUsage, pb.GetUsageRequest(adapter=adapter or "")).adapters)

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
        manifest, files = signed_manifest(
            folder, self.node_info(), signer, name,
            price_per_1k_tokens=price_per_1k_tokens, royalty_bps=royalty_bps, created_at=created_at,
        )  # fmt: skip
        # publishing is idempotent (the CID is the manifest's hash), so a retry sends the whole stream again
        return call_with_retry(
            self.retry, self._rng, lambda: self._stub.PublishAdapter(publish_requests(manifest, files), timeout=self.timeout)
        )

    def get_adapter(self, cid: str) -> pb.AdapterInfo:
        """Status and manifest summary of one adapter."""
        return self._unary(self._stub.GetAdapter, pb.GetAdapterRequest(cid=cid))

    def list_adapters(self) -> list[pb.AdapterInfo]:
        """Every adapter the node knows, most recently changed first (every page of ListAdapters)."""
        adapters: list[pb.AdapterInfo] = []
        tokens: set[str] = set()
        token = ""
        while True:
            page = self._unary(self._stub.ListAdapters, pb.ListAdaptersRequest(page_token=token))
            adapters.extend(page.adapters)
            token = page.next_page_token
            if not token or token in tokens:  # a node repeating a token would page for ever
                return adapters
            tokens.add(token)

    def node_info(self) -> pb.NodeInfo:
        """The node's base model, fingerprint, slots and load."""
        return self._unary(self._stub.GetNodeInfo, pb.GetNodeInfoRequest())

    def verify(self, call: pb.ServedCall) -> pb.VerifyResponse:
        """Have this node check a served call (``stream.served``): valid, or the failing check and, when the
        failure blames the serving node, evidence signed by this node (which it also gossips)."""
        return self._unary(self._stub.Verify, pb.VerifyRequest(call=call))
