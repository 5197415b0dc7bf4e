"""Python client for an openlora node (the CLI's ``openlora`` commands use it).

    with NodeClient("127.0.0.1:50051") as node:
        signer = load_account(default_key_path(), passphrase)       # openlora.adapters.keys
        cid = node.publish("tests/fixtures/adapters/medical", signer).cid
        stream = node.generate("What helps a sore throat?", adapter=cid, temperature=0)
        for text in stream:
            print(text, end="")
        print(stream.done.usage.completion_tokens)

Paying (README "Economics"): a ``PaidSession`` holds the client's key in this process and pays a node per call.

    session = PaidSession(node, load_account(key_path, passphrase))
    session.open_channel(10**15)        # deposit: a transaction signed here, sent to the chain's JSON-RPC
    stream = session.generate("What helps a sore throat?", adapter=cid, max_new_tokens=64)
    print(stream.text(), stream.receipt.cost)   # the node-signed receipt, checked: cost <= the quote

    per call:  GetQuote(prompt, client) ─► max cost, channel state ─► Payer signs a voucher for
               what was charged + the calls in flight ─► Generate(voucher) ─► text ─► receipt checked
               (signed by the node, cost <= max cost) ─► its charged total is the base of the next voucher

Imports only grpc and the generated stubs at import time (no torch); ``publish`` adds the
torch-free manifest code and eth-account, paying adds eth-account and web3. Client commands
start instantly. Errors are ``grpc.RpcError`` with the node's status code and message.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from .chain.errors import InvalidReceipt
from .v1 import node_pb2 as pb
from .v1 import node_pb2_grpc

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from .chain.contracts import AdapterRegistry, PaymentChannels
    from .chain.payer import Payer, PendingPayment
    from .chain.records import ChannelState, Receipt

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
    stop: tuple[str, ...] = (),
) -> pb.GenerateRequest:
    """The ``Generate`` request for these arguments (see :meth:`NodeClient.generate`)."""
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
    return req


def quote_request(request: pb.GenerateRequest, client: str = "") -> pb.GetQuoteRequest:
    """The ``GetQuote`` request pricing ``request`` (same adapter, input and max new tokens) for ``client``."""
    quote = pb.GetQuoteRequest(adapter=request.adapter, max_new_tokens=request.sampling.max_new_tokens, client=client)
    if request.WhichOneof("input") == "chat":
        quote.chat.CopyFrom(request.chat)
    else:
        quote.prompt = request.prompt
    return quote


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


def route(swarm: str, adapter: str | None = None, base_fingerprint: str | None = None):
    """Pick the node to call through the swarm: ask the node at ``swarm`` (a libp2p multiaddr)
    which nodes it knows, keep those with the adapter's base, prefer one with the adapter
    resident, then the least loaded (``p2p.peers.pick_node``).

    Args:
        swarm: ``/ip4/…/tcp/N/p2p/PEERID`` of any node (as its ready line prints).
        adapter: the adapter CID the call will use, if any.
        base_fingerprint: the base to require; default: the adapter's base as that node knows
            it, else that node's own base.

    Returns:
        The chosen ``p2p.peers.PeerEntry`` (``.grpc_address`` is what to dial).

    Raises:
        openlora.p2p.errors.SwarmError: the node cannot be reached.
        openlora.p2p.peers.NoNodeAvailable: no known node serves that base.
    """
    from .p2p.directory import query_nodes  # libp2p: loaded only by clients that route by swarm
    from .p2p.peers import pick_node

    entries, adapter_base = query_nodes(swarm, adapter)
    base = base_fingerprint or adapter_base or (entries[0].base_fingerprint if entries else "")
    return pick_node(entries, base, adapter)


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
            A :class:`GenerationStream`; iterate it for text. A call that must be paid fails with
            FAILED_PRECONDITION: use :class:`PaidSession`.
        """
        req = generate_request(
            prompt, messages=messages, raw=raw, adapter=adapter, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop,
        )  # fmt: skip
        return GenerationStream(self._stub.Generate(req, timeout=self.timeout))

    def quote(self, request: pb.GenerateRequest, client: str = "") -> pb.Quote:
        """The price of ``request`` (see :func:`generate_request`); with ``client`` (an address) also the state
        of that client's channel with this node."""
        return self._stub.GetQuote(quote_request(request, client), timeout=self.timeout)

    def usage(self, adapter: str | None = None) -> list[pb.AdapterUsage]:
        """Settled on-chain usage of ``adapter`` (a CID), or of every registered adapter."""
        return list(self._stub.GetUsage(pb.GetUsageRequest(adapter=adapter or ""), timeout=self.timeout).adapters)

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


# ----- paying (the key stays in this process) -----


def payment_error(error: grpc.RpcError) -> str:
    """The name of the payment error a node refused a call with (``"StaleVoucher"``, ...), ``""`` for others."""
    from .chain.wire import PAYMENT_ERROR_KEY

    return dict(error.trailing_metadata() or ()).get(PAYMENT_ERROR_KEY, "")


def node_contracts(info: pb.ChainInfo, rpc_url: str | None = None) -> tuple[AdapterRegistry, PaymentChannels]:
    """The node's contracts over ``rpc_url`` (default: the URL the node advertises, ``NodeInfo.chain.rpc_url``).

    Raises:
        openlora.chain.errors.ChainError: nothing answers there, or it is another chain than the node's.
    """
    from .chain.backends import rpc_chain
    from .chain.contracts import AdapterRegistry, PaymentChannels
    from .chain.errors import ChainError

    url = rpc_url or info.rpc_url
    if not url:
        raise ChainError("the node advertises no chain RPC URL; pass one (--chain-rpc)")
    chain = rpc_chain(url)
    if chain.chain_id != info.chain_id:
        raise ChainError(f"{url} is chain {chain.chain_id}, but the node is paid on chain {info.chain_id}")
    return AdapterRegistry(chain, info.registry), PaymentChannels(chain, info.channels)


def register_adapter(client: NodeClient, cid: str, signer: LocalAccount, rpc_url: str | None = None) -> bool:
    """Registers adapter ``cid`` on the node's chain at the terms of its signed manifest, signed by ``signer``
    (the manifest's publisher), so that calls to it can be paid and attributed.

    Returns:
        ``True`` when registered now, ``False`` when it already was, by ``signer`` at the same terms.

    Raises:
        ValueError: ``signer`` is not the manifest's publisher, or the CID is registered by another account or
            at other terms.
        grpc.RpcError: the node does not know the adapter.
        openlora.chain.errors.ChainError: the chain cannot be reached, or the transaction reverts.
    """
    from .chain.pricing import registration

    info = client.get_adapter(cid)
    if info.publisher != signer.address:
        raise ValueError(f"adapter {cid} is published by {info.publisher}; register it with that key, not {signer.address}")
    price, royalty = int(info.price_per_1k_tokens or 0), info.royalty_bps
    registry, _ = node_contracts(client.node_info().chain, rpc_url)
    existing = registration(registry, info.cid)
    if existing is None:
        registry.register(signer, info.cid, price, royalty)
        return True
    if (existing.publisher, existing.price_per_1k_tokens, existing.royalty_bps) != (signer.address, price, royalty):
        raise ValueError(
            f"adapter {cid} is already registered by {existing.publisher} at {existing.price_per_1k_tokens} wei per 1k "
            f"tokens and {existing.royalty_bps} bps; nodes refuse paid calls to it (republish under a new CID)"
        )
    return False


def revoke_adapter(client: NodeClient, cid: str, signer: LocalAccount, rpc_url: str | None = None) -> None:
    """Revokes adapter ``cid`` on the node's chain (signed by its publisher): nodes refuse new calls to it.

    Raises:
        openlora.chain.errors.ContractRevert: ``UnknownAdapter``, ``NotPublisher`` or ``AlreadyRevoked``.
        openlora.chain.errors.ChainError: the chain cannot be reached.
    """
    registry, _ = node_contracts(client.node_info().chain, rpc_url)
    registry.revoke(signer, cid)


class PaidStream(GenerationStream):
    """The stream of a paid call. Iterating it to the end checks the node's receipt and books its charge.

    Attributes:
        quote: the quote the call was paid by.
        receipt: the node-signed receipt (``chain.records.Receipt``) once the call ended, ``None`` before (and
            for a call cut off before it delivered anything).

    Iteration raises ``chain.errors.InvalidReceipt`` when the receipt is not signed by the node, charges more than
    the quote's max cost, or is missing (only a call the stopping node cut short before any text has none);
    ``grpc.RpcError`` when the call fails (a receipt for the text delivered before the failure is still checked
    and booked).
    """

    def __init__(self, responses, first: pb.GenerateResponse, payer: Payer, payment: PendingPayment, quote: pb.Quote):
        super().__init__(responses)
        self.quote = quote
        self.receipt: Receipt | None = None
        self._first = first
        self._payer = payer
        self._payment = payment
        self._open = True
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[str]:
        try:
            for resp in itertools.chain([self._first], self._responses):
                if resp.HasField("done"):
                    self.done = resp.done
                    if resp.done.HasField("receipt"):
                        self._close(resp.done.receipt)
                    else:
                        self._close(None)
                        # Only a call the node cut short before any text (it was stopping) is free of charge.
                        if resp.done.finish_reason != pb.FINISH_REASON_CANCELLED:
                            raise InvalidReceipt("the node ended a paid call without a receipt")
                else:
                    yield resp.text
        except grpc.RpcError as e:
            from .chain.wire import RECEIPT_KEY

            raw = dict(e.trailing_metadata() or ()).get(RECEIPT_KEY)
            self._close(pb.Receipt.FromString(raw) if raw else None)
            raise
        finally:
            if self._open:  # the consumer stopped early: end the call, its receipt is lost to this client
                self._responses.cancel()
                self._close(None)

    def cancel(self) -> None:
        """Stop the call; the node bills the text it delivered (the next quote reports it)."""
        self._responses.cancel()
        self._close(None)

    def _close(self, receipt: pb.Receipt | None) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        if receipt is None:
            self._payer.refused(self._payment)  # whatever the node billed, the next quote's channel state says
            return
        from .chain.wire import receipt_from_pb

        try:
            self.receipt = self._payer.accept(self._payment, receipt_from_pb(receipt))
        except InvalidReceipt:
            self._payer.refused(self._payment)
            raise


class PaidSession:
    """Pays one node per call from one client key. Thread safe; the key never leaves this process.

    Args:
        client: the node connection.
        account: the client's key (``openlora.adapters.keys.load_account``).
        rpc_url: the chain's JSON-RPC URL (default: the one the node advertises).
        retries: times a call is re-paid when concurrent calls' vouchers reached the node out of order.

    ``generate`` blocks until the node accepted the payment (first text or the end), so that a voucher refused
    as stale can be re-signed and sent again.
    """

    #: refusals a fresh voucher fixes (concurrent calls from this client reached the node out of order)
    RETRY_ON = frozenset({"StaleVoucher", "InsufficientAuthorization"})

    def __init__(self, client: NodeClient, account: LocalAccount, rpc_url: str | None = None, retries: int = 8) -> None:
        self.client = client
        self.account = account
        self.rpc_url = rpc_url
        self.retries = retries
        self._payer: Payer | None = None
        self._lock = threading.Lock()

    def payer(self) -> Payer:
        """The channel's payer (connects to the chain on first use).

        Raises:
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        with self._lock:
            if self._payer is None:
                from .chain.payer import Payer

                info = self.client.node_info().chain
                _, channels = node_contracts(info, self.rpc_url)
                self._payer = Payer(channels, self.account, info.node_address)
            return self._payer

    def open_channel(self, amount_wei: int) -> ChannelState:
        """Deposits ``amount_wei`` into this client's channel with the node (a transaction signed here).

        Raises:
            openlora.chain.errors.ContractRevert: ``ZeroDeposit``; ChainError: not mined (e.g. too little ETH).
        """
        return self.payer().deposit(amount_wei)

    def channel(self) -> ChannelState:
        """This client's channel with the node, as the chain has it."""
        return self.payer().refresh()

    def quote(self, request: pb.GenerateRequest) -> pb.Quote:
        """The price of ``request`` and the state of this client's channel."""
        return self.client.quote(request, self.account.address)

    def generate(self, prompt: str | None = None, **kwargs) -> GenerationStream:
        """Like :meth:`NodeClient.generate` (same arguments), paying when the quote says so.

        Returns:
            a :class:`PaidStream` for a paid call, a plain :class:`GenerationStream` for a free one.

        Raises:
            grpc.RpcError: the node refused the call (``payment_error`` names a payment refusal) or failed it.
            openlora.chain.errors.InvalidReceipt: the node's account of the channel is not backed by this client's
                vouchers.
            openlora.chain.errors.ChainError: the chain cannot be reached.
        """
        from .chain.wire import voucher_to_pb

        request = generate_request(prompt, **kwargs)
        stub, timeout = self.client._stub, self.client.timeout
        attempt = 0
        while True:
            quote = self.quote(request)
            if not quote.payment_required:
                return GenerationStream(stub.Generate(request, timeout=timeout))
            payer = self.payer()
            self._resume(payer, quote.channel)
            payment = payer.pay(int(quote.max_cost_wei))
            request.voucher.CopyFrom(voucher_to_pb(payment.voucher))
            responses = stub.Generate(request, timeout=timeout)
            try:
                first = next(responses)
            except grpc.RpcError as e:
                payer.refused(payment)
                if payment_error(e) not in self.RETRY_ON or attempt == self.retries:
                    raise
                attempt += 1
                continue
            return PaidStream(responses, first, payer, payment, quote)

    @staticmethod
    def _resume(payer: Payer, channel: pb.ChannelState) -> None:
        """Catches the payer up with the node's account of the channel (a new process, or another one paying)."""
        if channel.epoch != payer.epoch:
            payer.refresh()
        if channel.epoch == payer.epoch and channel.HasField("latest_voucher"):
            from .chain.wire import voucher_from_pb, wei

            payer.resume(voucher_from_pb(channel.latest_voucher), wei(channel.charged_total, "charged_total"))
