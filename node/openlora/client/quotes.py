"""The client's own price of a paid call, from the chain, never the node's arithmetic (README "Economics").

    price per 1k  = publisher price (AdapterRegistry, under the (publisher, CID) the quote names)
                  + node fee (at most the client's cap: ``max_node_fee_per_1k``, else the fee the node
                    announced when the session first connected, so it cannot be raised mid-session)
    max tokens    = prompt tokens + max new tokens, where
                      max new tokens <= what the request asked (the node's default only when it asked 0,
                                       and then at most DEFAULT_MAX_NEW_TOKENS_CAP)
                      prompt tokens <= UTF-8 bytes of the input + TEMPLATE_TOKENS_PER_MESSAGE per chat message
                                       + TEMPLATE_TOKENS: tokenizers of byte-level BPE / byte-fallback models
                                       never make more tokens than bytes, plus the template's special tokens
    max cost      = cost_wei(max tokens, price per 1k)

    a composition (``cidA*0.7+cidB*0.3``): max tokens split by weight (``part_token_bounds``, the node's own rule);
    each paid part = a call of its bound of tokens to its adapter, priced as above; max cost = the parts' sum

The publisher is the one the adapter's signed manifest names (``manifest_publisher``: the manifest's bytes hash to
the CID and carry the publisher's signature), so a node cannot route the payment to someone else's registration
of the CID. A quote that names another node, chain, PaymentChannels or publisher than the session's, an
unregistered or revoked adapter, another price, royalty or max cost is refused with ``UntrustedQuote`` before
anything is signed. The
receipt is then checked against the voucher's price (``Payer.accept``): cost == cost_wei(tokens, price) and
tokens <= max tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..adapters.composition import Composition, CompositionError, part_token_bounds
from ..chain.contracts import AdapterRegistry, PaymentChannels, adapter_id, canonical_cid
from ..chain.errors import ContractRevert, UntrustedQuote
from ..chain.pricing import cost_wei
from ..v1 import node_pb2 as pb

#: most new tokens accepted when the request left max_new_tokens to the node's default (0)
DEFAULT_MAX_NEW_TOKENS_CAP = 4096
#: special tokens a chat template may add per message (role markers, separators), and once per prompt
TEMPLATE_TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS = 64


@dataclass(frozen=True)
class CheckedPrice:
    """A paid call's terms as this client computed them: ``adapter`` (32-byte id), ``price_per_1k_tokens`` (wei),
    ``max_tokens`` (tokens), ``max_cost`` (wei)."""

    adapter: bytes
    price_per_1k_tokens: int
    max_tokens: int
    max_cost: int


def prompt_token_bound(request: pb.GenerateRequest) -> int:
    """The most prompt tokens ``request``'s input can tokenize to (module doc)."""
    if request.WhichOneof("input") == "chat":
        messages = request.chat.messages
        text = sum(len(m.role.encode()) + len(m.content.encode()) for m in messages)
        return text + TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS
    return len(request.prompt.encode()) + TEMPLATE_TOKENS


def manifest_publisher(cid: str, info: pb.AdapterInfo) -> str:
    """The publisher of adapter ``cid`` as its signed manifest (``info.manifest_json``, from ``GetAdapter``)
    proves: the manifest's bytes must hash to ``cid`` and be signed by the publisher they name.

    Raises:
        UntrustedQuote: the manifest is missing, is not ``cid``'s, or its signature does not hold.
    """
    from ..adapters.manifest import parse_manifest
    from ..adapters.reasons import AdapterRejected
    from ..adapters.signing import check_signature
    from ..content.cid import RAW, cid_text, make_cid

    raw = info.manifest_json.encode()
    if not raw or cid_text(make_cid(raw, RAW)) != canonical_cid(cid):
        raise UntrustedQuote(f"the node's manifest for {cid} is missing or is not that CID's")
    try:
        manifest = parse_manifest(raw)
        check_signature(manifest)
    except AdapterRejected as exc:
        raise UntrustedQuote(f"the manifest of {cid} does not hold: {exc}") from exc
    return manifest.publisher


def check_quote(
    quote: pb.Quote,
    request: pb.GenerateRequest,
    *,
    registry: AdapterRegistry,
    channels: PaymentChannels,
    node: str,
    publisher: str,
    max_node_fee_per_1k: int,
) -> CheckedPrice:
    """This client's price of ``request`` if ``quote`` agrees with it (module doc).

    Args:
        registry / channels: the contracts this session pinned (``chain.pinning``).
        node: the node's address this session pays.
        publisher: the adapter's publisher, from its signed manifest (``manifest_publisher``).
        max_node_fee_per_1k: the most node fee accepted, wei per 1000 tokens.

    Raises:
        UntrustedQuote: the quote disagrees with the chain or the request; the message says where.
        ChainError: the chain cannot be reached.
    """
    _check_payee(quote, channels, node)
    cid = _quoted_cid(quote, request.adapter)
    key, price = _check_terms(quote, cid, publisher, registry, max_node_fee_per_1k)
    max_tokens = _check_tokens(quote, request)
    return _priced(quote, key, price, max_tokens)


def check_composed_quote(
    quote: pb.Quote,
    request: pb.GenerateRequest,
    *,
    registry: AdapterRegistry,
    channels: PaymentChannels,
    node: str,
    publishers: Mapping[str, str],
    max_node_fee_per_1k: int,
) -> tuple[CheckedPrice | None, ...]:
    """This client's price of each part of the composed ``request`` (its ``adapters``) if ``quote`` agrees with it:
    the call's token bound as in :func:`check_quote`, split by weight (``part_token_bounds``, the node's own rule),
    and each paid part priced as a call of its bound of tokens to its adapter.

    Args:
        publishers: each paid part's publisher by CID, from its signed manifest (``manifest_publisher``).
        (the rest as :func:`check_quote`)

    Returns:
        per part, in canonical (CID) order, its checked price; ``None`` for a part the node serves free (it gets
        no voucher, so the node cannot bill it).

    Raises:
        UntrustedQuote: the quote, or one part's, disagrees with the chain or the request; the message names it.
        CompositionError: ``request.adapters`` is not a composition.
        ChainError: the chain cannot be reached.
    """
    comp = Composition.of([(p.cid, p.weight) for p in request.adapters])
    _check_payee(quote, channels, node)
    try:
        quoted = Composition.parse(quote.adapter).id
    except CompositionError as exc:
        raise UntrustedQuote(f"quote for {quote.adapter!r}, not a composition: {exc}") from exc
    if quoted != comp.id:
        raise UntrustedQuote(f"quote is for {quoted}, the request is for {comp.id}")
    max_tokens = _check_tokens(quote, request)
    bounds = part_token_bounds(max_tokens, [w for _, w in comp.parts])
    if [p.adapter for p in quote.parts] != list(comp.cids):
        raise UntrustedQuote(f"quote prices parts {[p.adapter for p in quote.parts]}; the request's are {list(comp.cids)}")
    out: list[CheckedPrice | None] = []
    for part, cid, bound in zip(quote.parts, comp.cids, bounds):
        _check_payee(part, channels, node)
        if not part.payment_required:
            out.append(None)
            continue
        key, price = _check_terms(part, cid, publishers[cid], registry, max_node_fee_per_1k)
        if (part.prompt_tokens, part.max_new_tokens) != (bound, 0):
            raise UntrustedQuote(
                f"quote bills part {cid} up to {part.prompt_tokens} + {part.max_new_tokens} tokens; its share of "
                f"{max_tokens} tokens is at most {bound}"
            )
        out.append(_priced(part, key, price, bound))
    total = sum(p.max_cost for p in out if p is not None)
    if _wei(quote.max_cost_wei, "max_cost_wei") != total:
        raise UntrustedQuote(f"quote asks a max cost of {quote.max_cost_wei} wei; its parts cost {total} wei")
    return tuple(out)


def _check_payee(quote: pb.Quote, channels: PaymentChannels, node: str) -> None:
    named = (quote.node_address, quote.chain_id, quote.channels)
    if named != (node, channels.chain.chain_id, channels.address):
        raise UntrustedQuote(
            f"quote names node {named[0]} on chain {named[1]} with PaymentChannels {named[2]}; this session pays "
            f"{node} on chain {channels.chain.chain_id} with {channels.address}"
        )


def _quoted_cid(quote: pb.Quote, asked: str) -> str:
    """The quote's adapter in canonical form, checked to be ``asked``."""
    try:
        quoted, asked = canonical_cid(quote.adapter), canonical_cid(asked)
    except ValueError as exc:
        raise UntrustedQuote(f"quote for an adapter that is not a CID: {exc}") from exc
    if quoted != asked:
        raise UntrustedQuote(f"quote is for adapter {quoted}, the request is for {asked}")
    return quoted


def _check_terms(
    quote: pb.Quote, cid: str, publisher: str, registry: AdapterRegistry, max_node_fee_per_1k: int
) -> tuple[bytes, int]:
    """The adapter id and price per 1k tokens (publisher price + node fee) of a quote for ``cid``, checked against
    the signed manifest's publisher, the registry and the fee cap."""
    if quote.publisher != publisher:
        raise UntrustedQuote(f"quote pays {quote.publisher!r} as publisher; the signed manifest names {publisher}")
    try:
        key = adapter_id(cid, quote.publisher)
        info = registry.adapter(key)
    except (ValueError, ContractRevert) as exc:
        raise UntrustedQuote(f"adapter {cid} is not registered by {quote.publisher!r} on chain: {exc}") from exc
    if info.revoked_at:
        raise UntrustedQuote(f"adapter {cid} was revoked by its publisher; refusing to pay for it")
    fee = _wei(quote.node_fee_per_1k, "node_fee_per_1k")
    if fee > max_node_fee_per_1k:
        raise UntrustedQuote(
            f"the node asks a fee of {fee} wei per 1k tokens, above this client's cap of {max_node_fee_per_1k}"
        )
    price = info.price_per_1k_tokens + fee
    quoted = (_wei(quote.publisher_price_per_1k, "publisher_price_per_1k"), quote.royalty_bps)
    if quoted != (info.price_per_1k_tokens, info.royalty_bps) or _wei(quote.price_per_1k_tokens, "price") != price:
        raise UntrustedQuote(
            f"quote asks {quote.price_per_1k_tokens} wei per 1k ({quoted[0]} publisher + {fee} node fee, "
            f"{quoted[1]} bps); the registry says {info.price_per_1k_tokens} wei and {info.royalty_bps} bps"
        )
    return key, price


def _check_tokens(quote: pb.Quote, request: pb.GenerateRequest) -> int:
    """The most tokens the call can bill (prompt + new), once the quote's counts fit what ``request`` asked."""
    wanted = request.sampling.max_new_tokens
    if not 0 < quote.max_new_tokens <= (wanted or DEFAULT_MAX_NEW_TOKENS_CAP):  # fewer: the context was short
        raise UntrustedQuote(
            f"quote counts {quote.max_new_tokens} new tokens; the request asked {wanted or 'the default'}"
            + ("" if wanted else f" (at most {DEFAULT_MAX_NEW_TOKENS_CAP} accepted)")
        )
    bound = prompt_token_bound(request)
    if not 0 < quote.prompt_tokens <= bound:
        raise UntrustedQuote(f"quote counts {quote.prompt_tokens} prompt tokens; this input has at most {bound}")
    return quote.prompt_tokens + quote.max_new_tokens


def _priced(quote: pb.Quote, key: bytes, price: int, max_tokens: int) -> CheckedPrice:
    """The checked price of ``max_tokens`` tokens at ``price`` once the quote's max cost is exactly theirs."""
    max_cost = cost_wei(max_tokens, price)
    if _wei(quote.max_cost_wei, "max_cost_wei") != max_cost:
        raise UntrustedQuote(
            f"quote asks a max cost of {quote.max_cost_wei} wei; {max_tokens} tokens at {price} wei per 1k cost "
            f"{max_cost} wei"
        )
    return CheckedPrice(key, price, max_tokens, max_cost)


def _wei(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise UntrustedQuote(f"quote.{what} is not a decimal number of wei: {text!r}")
    return int(text)
