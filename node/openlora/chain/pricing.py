"""What a call costs: the publisher's price from the registry plus this node's fee, per 1000 tokens.

    price_per_1k_tokens = publisher_price_per_1k (AdapterRegistry) + node_fee_per_1k (node setting)
    cost_wei(tokens)    = ceil(tokens × price_per_1k_tokens / 1000)
    max cost of a call  = cost_wei(max tokens)          what the client's voucher must newly authorise
    charged             = cost_wei(tokens actually billed) <= max cost

Rounding up keeps every billed call above zero wei; because ``cost_wei`` is monotonic, the charge never exceeds
the authorised max cost. Which tokens count (prompt + generated is the natural choice) is the caller's choice;
it must use the same count for the max and the actual.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contracts import AdapterRegistry, adapter_id
from .errors import AdapterNotPayable, ContractRevert


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


def make_quote(registry: AdapterRegistry, cid: str, node_fee_per_1k: int) -> Quote:
    """Reads the adapter's terms from the registry and prices calls to it on this node.

    Raises:
        ValueError: ``cid`` is not a CID, ``node_fee_per_1k`` is negative, or the total price is zero (a free
            call cannot be settled, so it cannot be attributed either).
        AdapterNotPayable: the adapter is not registered, or its publisher revoked it.
    """
    if node_fee_per_1k < 0:
        raise ValueError(f"node fee must be >= 0 wei per 1k tokens, got {node_fee_per_1k}")
    key = adapter_id(cid)
    try:
        info = registry.adapter(key)
    except ContractRevert as exc:
        if exc.error == "UnknownAdapter":
            raise AdapterNotPayable(
                f"adapter {cid} is not registered on chain; its publisher must register it"
            ) from exc
        raise
    if info.revoked_at:
        raise AdapterNotPayable(f"adapter {cid} was revoked by its publisher {info.publisher}; it is not served")
    if info.price_per_1k_tokens + node_fee_per_1k == 0:
        raise ValueError(f"adapter {cid} would be free on this node; set a node fee above 0 wei per 1k tokens")
    return Quote(key, info.cid, info.publisher, info.royalty_bps, info.price_per_1k_tokens, node_fee_per_1k)
