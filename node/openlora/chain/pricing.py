"""What a call costs: the publisher's price from the registry plus this node's fee, per 1000 tokens.

    price_per_1k_tokens = publisher_price_per_1k (AdapterRegistry) + node_fee_per_1k (node setting)
    cost_wei(tokens)    = ceil(tokens × price_per_1k_tokens / 1000)
    max cost of a call  = cost_wei(max tokens)          what the client's voucher must newly authorise
    charged             = cost_wei(tokens actually billed) <= max cost

Rounding up keeps every billed call above zero wei; because ``cost_wei`` is monotonic, the charge never exceeds
the authorised max cost. Which tokens count (prompt + generated is the natural choice) is the caller's choice;
it must use the same count for the max and the actual.

A node prices a call to an adapter with ``call_quote``. The publisher's price is the one registered on chain
(settlement pays only registered adapters, at their registered royalty), and the registration must agree with
the adapter's signed manifest (``AdapterTerms``):

    not registered by the manifest's publisher, node fee 0       → free: nothing could be settled for it
    not registered by the manifest's publisher, node fee > 0     → AdapterNotPayable (the fee cannot be settled)
                                  (a registration is keyed by (publisher, CID): one by anybody else is another
                                  adapter, so a squatter is never looked up, never paid, and cannot block it)
    revoked by its publisher                                      → AdapterRevoked (even a free call)
    registered price or royalty differ from the manifest's        → TermsMismatch
    registered price + node fee == 0                              → free
    otherwise                                                     → the Quote
"""

from __future__ import annotations

from dataclasses import dataclass

from .contracts import AdapterRegistry, adapter_id
from .errors import AdapterNotPayable, AdapterRevoked, ContractRevert, TermsMismatch
from .records import AdapterInfo


@dataclass(frozen=True)
class Quote:
    """The price of calls to one adapter on one node.

    Attributes:
        adapter_id: 32-byte registry id; ``cid`` the canonical manifest CID.
        publisher: the registered publisher (the node must check it equals the manifest's publisher).
        royalty_bps: publisher's share of each settled amount, basis points.
        publisher_price_per_1k: wei per 1000 tokens asked by the publisher.
        node_fee_per_1k: wei per 1000 tokens added by the node.
    """

    adapter_id: bytes
    cid: str
    publisher: str
    royalty_bps: int
    publisher_price_per_1k: int
    node_fee_per_1k: int

    @property
    def price_per_1k_tokens(self) -> int:
        """Total wei per 1000 tokens the client pays."""
        return self.publisher_price_per_1k + self.node_fee_per_1k

    def cost_wei(self, tokens: int) -> int:
        """Wei for ``tokens`` tokens, rounded up.

        Raises:
            ValueError: ``tokens`` is negative.
        """
        return cost_wei(tokens, self.price_per_1k_tokens)


def cost_wei(tokens: int, price_per_1k_tokens: int) -> int:
    """ceil(tokens × price_per_1k_tokens / 1000) in wei.

    Raises:
        ValueError: ``tokens`` or the price is negative.
    """
    if tokens < 0 or price_per_1k_tokens < 0:
        raise ValueError(f"tokens and price must be >= 0, got {tokens} tokens at {price_per_1k_tokens} wei/1k")
    return -(-tokens * price_per_1k_tokens // 1000)


def make_quote(registry: AdapterRegistry, cid: str, node_fee_per_1k: int, publisher: str) -> Quote:
    """Reads the terms of ``publisher``'s adapter ``cid`` from the registry and prices calls to it on this node.

    Raises:
        ValueError: ``cid`` is not a CID, ``node_fee_per_1k`` is negative, or the total price is zero (a free
            call cannot be settled, so it cannot be attributed either).
        AdapterNotPayable: the adapter is not registered, or its publisher revoked it.
    """
    _check_fee(node_fee_per_1k)
    info = registration(registry, cid, publisher)
    if info is None:
        raise AdapterNotPayable(_unregistered(cid))
    if info.revoked_at:
        raise AdapterRevoked(_revoked(cid, info))
    if info.price_per_1k_tokens + node_fee_per_1k == 0:
        raise ValueError(f"adapter {cid} would be free on this node; set a node fee above 0 wei per 1k tokens")
    return _quote(info, node_fee_per_1k)


@dataclass(frozen=True)
class AdapterTerms:
    """What an adapter's signed manifest asks: its ``publisher`` (checksummed address), ``price_per_1k_tokens``
    (wei per 1000 tokens) and ``royalty_bps`` (basis points)."""

    publisher: str
    price_per_1k_tokens: int
    royalty_bps: int


def call_quote(registry: AdapterRegistry, cid: str, terms: AdapterTerms, node_fee_per_1k: int) -> Quote | None:
    """Prices calls to adapter ``cid`` whose signed manifest asks ``terms``; ``None`` when they are free.

    The rules are in the module doc: the registry's terms are what is charged and settled, and they must be the
    manifest's, registered by the manifest's publisher.

    Raises:
        ValueError: ``cid`` is not a CID, or ``node_fee_per_1k`` is negative.
        AdapterNotPayable: the node charges a fee and the adapter is not registered.
        TermsMismatch: registered at other terms than the manifest's.
        AdapterRevoked: the publisher revoked the adapter.
    """
    _check_fee(node_fee_per_1k)
    info = registration(registry, cid, terms.publisher)
    if info is None:
        if node_fee_per_1k == 0:
            return None
        raise AdapterNotPayable(_unregistered(cid))
    if info.revoked_at:
        raise AdapterRevoked(_revoked(cid, info))
    registered = (info.price_per_1k_tokens, info.royalty_bps)
    if registered != (terms.price_per_1k_tokens, terms.royalty_bps):
        raise TermsMismatch(
            f"adapter {cid} is registered at {registered[0]} wei per 1k tokens and {registered[1]} bps, but its "
            f"signed manifest asks {terms.price_per_1k_tokens} wei and {terms.royalty_bps} bps; the publisher must "
            "republish it with the registered terms"
        )
    if info.price_per_1k_tokens + node_fee_per_1k == 0:
        return None
    return _quote(info, node_fee_per_1k)


def registration(registry: AdapterRegistry, cid: str, publisher: str) -> AdapterInfo | None:
    """The registry's record of ``publisher``'s adapter ``cid``, ``None`` when that publisher never registered it.

    Raises:
        ValueError: ``cid`` is not a CID or ``publisher`` not an address.
    """
    try:
        return registry.adapter(adapter_id(cid, publisher))
    except ContractRevert as exc:
        if exc.error == "UnknownAdapter":
            return None
        raise


def _check_fee(node_fee_per_1k: int) -> None:
    if node_fee_per_1k < 0:
        raise ValueError(f"node fee must be >= 0 wei per 1k tokens, got {node_fee_per_1k}")


def _quote(info: AdapterInfo, node_fee_per_1k: int) -> Quote:
    return Quote(
        info.adapter_id, info.cid, info.publisher, info.royalty_bps, info.price_per_1k_tokens, node_fee_per_1k
    )


def _unregistered(cid: str) -> str:
    return (
        f"adapter {cid} is not registered on chain, so calls to it cannot be paid; its publisher must register it "
        f"(openlora-node register {cid} --node HOST:PORT --key PUBLISHER_KEY)"
    )


def _revoked(cid: str, info: AdapterInfo) -> str:
    return f"adapter {cid} was revoked by its publisher {info.publisher}; it is not served"
