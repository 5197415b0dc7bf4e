"""Reading the on-chain attribution record: settled usage per adapter, from storage or from events.

Two views that anyone can cross-check without trusting a node:

    usage_report()      PaymentChannels.usage(adapterId) totals for every adapter in AdapterRegistry
                        (what ``openlora usage`` prints)
    usage_events()      the AdapterUsage events they are the sum of: one per (redemption, adapter), naming the
                        node and the client; ``AdapterRegistered`` maps each adapterId back to its CID string and publisher
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .contracts import AdapterRegistry, PaymentChannels, adapter_id, canonical_cid
from .errors import ContractRevert


@dataclass(frozen=True)
class UsageRow:
    """One adapter's settled usage: ``adapter`` is the manifest CID, ``publisher`` who registered it (an adapter
    is a (publisher, CID) pair on chain); wei amounts.

    ``as_json()`` gives the keys of ``openlora usage --json``: adapter, publisher, calls, tokens,
    publisher_earnings_wei.
    """

    adapter: str
    calls: int
    tokens: int
    amount_wei: int
    publisher_earnings_wei: int
    publisher: str = ""

    def as_json(self) -> dict:
        data = asdict(self)
        del data["amount_wei"]
        return data


@dataclass(frozen=True)
class UsageEvent:
    """One ``AdapterUsage`` event: usage of ``adapter`` (32-byte id) by ``client`` on ``node``."""

    adapter: bytes
    node: str
    client: str
    calls: int
    tokens: int
    amount: int
    publisher_amount: int
    block_number: int


def usage_report(registry: AdapterRegistry, channels: PaymentChannels, cid: str | None = None) -> list[UsageRow]:
    """Settled usage of every registration of ``cid`` (one per publisher that registered it), or of every
    registered adapter, in registration order.

    Raises:
        ValueError: ``cid`` is not a CID.
        ContractRevert: ``UnknownAdapter`` when nobody registered ``cid``.
    """
    wanted = canonical_cid(cid) if cid is not None else None
    rows = []
    for key in registry.adapter_ids():
        info = registry.adapter(key)
        if wanted is not None and info.cid != wanted:
            continue
        usage = channels.usage(key)
        rows.append(
            UsageRow(info.cid, usage.calls, usage.tokens, usage.amount, usage.publisher_earnings, info.publisher)
        )
    if wanted is not None and not rows:
        raise ContractRevert("UnknownAdapter", (wanted,))
    return rows


def usage_events(
    channels: PaymentChannels, from_block: int = 0, cid: str | None = None, publisher: str | None = None
) -> list[UsageEvent]:
    """``AdapterUsage`` events since ``from_block`` (of ``publisher``'s adapter ``cid`` only, when both are
    given), oldest first.

    Raises:
        ValueError: only one of ``cid`` and ``publisher`` is given.
    """
    if (cid is None) != (publisher is None):
        raise ValueError("an adapter is named by its CID and its publisher together")
    filters = {"adapter": adapter_id(cid, publisher)} if cid is not None else {}
    logs = channels.contract.events.AdapterUsage.get_logs(from_block=from_block, argument_filters=filters)
    return [
        UsageEvent(
            adapter=bytes(e["args"]["adapter"]),
            node=e["args"]["node"],
            client=e["args"]["client"],
            calls=e["args"]["calls"],
            tokens=e["args"]["tokens"],
            amount=e["args"]["amount"],
            publisher_amount=e["args"]["publisherAmount"],
            block_number=e["blockNumber"],
        )
        for e in logs
    ]
