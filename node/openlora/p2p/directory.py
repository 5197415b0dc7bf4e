"""``/openlora/nodes/1.0.0``: a client that knows one multiaddr asks that node which nodes it knows.

    client (ephemeral libp2p host) ──dial MULTIADDR──► node
        NodesRequest{v, adapter?} ──► NodesResponse{v, nodes: [NodeStatus…], adapter_base?, accused,
                                                     adapter_features?}
                                      (the node's own fresh status first, then its peer table
                                       without the nodes it holds evidence against;
                                       adapter_base: the base fingerprint of ``adapter`` in the
                                       node's verified catalog, when it knows the adapter;
                                       accused: the account addresses of those nodes;
                                       adapter_features: the PEFT features the adapter needs, when
                                       the node holds its config)
    client: pick_node(nodes, base, adapter, accused, adapter_features) ──► gRPC address

The client trusts the node it chose to dial (the connection is authenticated by Noise); every
status is schema-checked again on arrival. Routing stays the client's decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Annotated, Literal, NamedTuple

import trio
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.request_response import RequestContext, RequestResponse, RequestResponseConfig, RequestResponseError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import MessageRejected, SwarmError
from .host import build_host, listen_multiaddr, parse_peer_multiaddr
from .messages import MAX_FEATURES, MAX_STATUS_BYTES, NodeStatus, encode
from .peers import PeerEntry
from .validate import check_status

log = logging.getLogger(__name__)

NODES_PROTOCOL = TProtocol("/openlora/nodes/1.0.0")
MAX_NODES = 256
MAX_ACCUSED = 1024
_MAX_RESPONSE_BYTES = MAX_NODES * MAX_STATUS_BYTES


class NodesRequest(BaseModel):
    """Which nodes do you know? ``adapter``: a CID whose base the client wants to learn;
    ``base``: a base fingerprint whose nodes the answering node first looks up in the DHT."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    v: Literal[1]
    adapter: Annotated[str, Field(max_length=128)] | None = None
    base: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None


class NodesResponse(BaseModel):
    """The answering node's own status first, then the statuses of its peer table; ``accused``: the accounts
    of nodes it holds evidence against (left out of ``nodes``); ``adapter_features``: the PEFT features the
    adapter asked about needs (``None``: unknown to this node)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    v: Literal[1]
    nodes: Annotated[list[NodeStatus], Field(max_length=MAX_NODES)]
    adapter_base: Annotated[str, Field(max_length=80)] | None = None
    accused: Annotated[list[Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]], Field(max_length=MAX_ACCUSED)] = []
    adapter_features: Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]], Field(max_length=MAX_FEATURES)] | None = None


class Directory(NamedTuple):
    """A node's answer as the client uses it.

    Attributes:
        entries: the nodes it knows, its own first.
        adapter_base: the base fingerprint of the adapter asked about, if it knows the adapter.
        accused: accounts of nodes it holds evidence against: a client routes to none of them.
        adapter_features: the PEFT features the adapter needs, as that node read them from its config
            (empty when it does not know: routing then asks for the base alone).
    """

    entries: list[PeerEntry]
    adapter_base: str | None
    accused: frozenset[str]
    adapter_features: tuple[str, ...] = ()


class NodesCodec:
    """``request_response`` codec for the directory protocol."""

    def encode_request(self, request: NodesRequest) -> bytes:
        """Compact JSON."""
        return encode(request)

    def decode_request(self, payload: bytes) -> NodesRequest:
        """Raises pydantic.ValidationError on a bad request."""
        return NodesRequest.model_validate_json(payload)

    def encode_response(self, response: NodesResponse) -> bytes:
        """Compact JSON."""
        return encode(response)

    def decode_response(self, payload: bytes) -> NodesResponse:
        """Raises MessageRejected on a bad answer."""
        try:
            return NodesResponse.model_validate_json(payload)
        except ValidationError as e:
            raise MessageRejected("malformed", f"bad nodes response: {e.errors()[0]['msg']}") from None


CODEC = NodesCodec()


def serve_directory(
    rr: RequestResponse,
    own_status: Callable[[], NodeStatus | None],
    peers: Callable[[], list[NodeStatus]],
    adapter_base: Callable[[str], str | None],
    is_banned: Callable[[object], bool],
    timeout_s: float,
    find_base: Callable[[str], Awaitable[object]] | None = None,
    accused: Callable[[], Collection[str]] = frozenset,
    adapter_features: Callable[[str], tuple[str, ...] | None] = lambda cid: None,
) -> None:
    """Answer ``/openlora/nodes/1.0.0`` on ``rr``.

    Args:
        own_status: this node's current status (``None`` if it publishes none).
        peers: statuses of the peer table.
        adapter_base: base fingerprint of an adapter in this node's verified catalog, or ``None``.
        is_banned: refuse banned peers.
        timeout_s: per exchange, seconds.
        find_base: looks the nodes of a base up (the DHT) into the peer table, for requests
            that name a ``base``; ``None``: answer from the table as it is.
        accused: account addresses of the nodes this node holds evidence against (left out, and listed).
        adapter_features: PEFT features an adapter needs, from its config in this node's store, or ``None``.
    """
    config = RequestResponseConfig(timeout=timeout_s, max_request_size=512, max_response_size=_MAX_RESPONSE_BYTES)

    async def answer(request: NodesRequest, ctx: RequestContext) -> NodesResponse:
        if is_banned(ctx.peer_id):
            raise RequestResponseError(f"peer {ctx.peer_id} is banned")
        if request.base is not None and find_base is not None:
            await find_base(request.base)
        own = await trio.to_thread.run_sync(own_status)
        nodes = ([own] if own is not None else []) + [s for s in peers() if own is None or s.peer_id != own.peer_id]
        base = await trio.to_thread.run_sync(adapter_base, request.adapter) if request.adapter else None
        features = await trio.to_thread.run_sync(adapter_features, request.adapter) if request.adapter else None
        bad = accused()
        nodes = [s for s in nodes if s.node_address not in bad]
        return NodesResponse(
            v=1, nodes=nodes[:MAX_NODES], adapter_base=base, accused=sorted(bad)[:MAX_ACCUSED],
            adapter_features=None if features is None else list(features),
        )  # fmt: skip

    rr.set_handler(NODES_PROTOCOL, answer, CODEC, config)


async def request_status(rr: RequestResponse, peer: ID, timeout_s: float) -> NodeStatus:
    """Ask a connected ``peer`` for its own status (node side; the DHT's base lookups use it).

    The first status of the answer must be the peer's own and passes the gossip checks
    (``validate.check_status`` with the connection's authenticated peer as origin): a peer
    cannot vouch for another node this way.

    Raises:
        MessageRejected: the answer has no status of the peer's own, or it fails the checks.
        RequestResponseError: the peer does not answer the protocol in ``timeout_s`` seconds.
    """
    config = RequestResponseConfig(timeout=timeout_s, max_request_size=512, max_response_size=_MAX_RESPONSE_BYTES)
    response = await rr.send_request(peer, [NODES_PROTOCOL], NodesRequest(v=1), CODEC, config)
    if not response.nodes:
        raise MessageRejected("malformed", f"peer {peer} publishes no status")
    return check_status(encode(response.nodes[0]), peer.to_base58(), int(time.time() * 1000))


def query_nodes(
    multiaddr: str, adapter: str | None = None, timeout_s: float = 15.0, base: str | None = None
) -> Directory:
    """Ask the node at ``multiaddr`` for the nodes it knows (client side; blocking); with
    ``base``, the node first looks that base's nodes up in the DHT.

    Starts a throwaway libp2p host (fresh secp256k1 key, listening on 127.0.0.1 only), dials
    the node, asks once, and closes.

    Returns:
        The :class:`Directory`: the node's own entry first; ``adapter_base`` is the base fingerprint of
        ``adapter`` if the node knows that adapter; ``accused`` the accounts it holds evidence against;
        ``adapter_features`` the PEFT features that adapter needs, if the node holds its config.

    Raises:
        InvalidMultiaddr: ``multiaddr`` is not ``/ip4/…/tcp/N/p2p/PEERID``.
        SwarmError: the node cannot be reached or did not answer in ``timeout_s`` seconds.
    """
    info = parse_peer_multiaddr(multiaddr)
    config = RequestResponseConfig(timeout=timeout_s, max_request_size=512, max_response_size=_MAX_RESPONSE_BYTES)

    async def ask() -> NodesResponse:
        listen = listen_multiaddr("127.0.0.1", 0)
        host = build_host(create_new_key_pair(), listen)
        async with host.run([listen]):
            with trio.fail_after(timeout_s):
                await host.connect(info)
                rr = RequestResponse(host)
                return await rr.send_request(info.peer_id, [NODES_PROTOCOL], NodesRequest(v=1, adapter=adapter, base=base), CODEC, config)

    try:
        response = trio.run(ask)
    except (trio.TooSlowError, OSError, RequestResponseError, MessageRejected) as e:
        raise SwarmError(f"could not get the node list from {multiaddr}: {e or type(e).__name__}") from None
    except Exception as e:  # libp2p raises many transport/negotiation types when a dial fails
        raise SwarmError(f"could not reach {multiaddr}: {type(e).__name__}: {e}") from None
    now = time.time()
    return Directory(
        [PeerEntry.from_status(s, now) for s in response.nodes], response.adapter_base, frozenset(response.accused),
        tuple(response.adapter_features or ()),
    )  # fmt: skip
