"""Adapter references a person types: a CID, or the name its publisher gave it (``medical``).

    adapter_cid("medical", node.list_adapters())  ─► "bafkrei…"   (the one usable adapter of that name)
    adapter_cid("bafkrei…", [])                   ─► "bafkrei…"   (a CID passes through, canonical)

Names are not unique across publishers: a name that matches several usable adapters is refused with their
CIDs, so a call never goes to an adapter the caller did not mean. Rejected adapters never match a name.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..v1 import node_pb2 as pb

#: what a CID looks like, for messages that refuse a string that is neither a CID nor a known name
CID_SHAPE = "a CID looks like 'bafkrei…' (CIDv1, 59 characters) or 'Qm…' (CIDv0, 46 characters)"
#: the statuses a name may resolve to: the adapter can serve (now, after a load, or after a fetch by CID)
_USABLE = {pb.ADAPTER_STATUS_READY, pb.ADAPTER_STATUS_RESIDENT, pb.ADAPTER_STATUS_AVAILABLE}


class AdapterNameError(ValueError):
    """``ref`` is not a CID and names no usable adapter, or names several; the message says what to do."""


def looks_like_cid(ref: str) -> bool:
    """Whether ``ref`` parses as a CID (``content.cid.parse_cid``)."""
    from ..content.cid import parse_cid
    from ..content.errors import InvalidCID

    try:
        parse_cid(ref)
    except InvalidCID:
        return False
    return True


def adapter_cid(ref: str, adapters: Iterable[pb.AdapterInfo], node: str = "ADDR") -> str:
    """The CID ``ref`` stands for: ``ref`` itself when it is a CID, else the one usable adapter named ``ref``.

    Args:
        ref: a CID or an adapter name.
        adapters: the node's adapters (``NodeClient.list_adapters``); not read when ``ref`` is a CID.
        node: the node's address, for the command the message suggests.

    Raises:
        AdapterNameError: no usable adapter has that name (the message says what a CID looks like and which
            command lists the adapters), or several have (the message lists their CIDs).
    """
    if looks_like_cid(ref):
        from ..content.cid import cid_text

        return cid_text(ref)
    named = [a.cid for a in adapters if a.name == ref and a.status in _USABLE]
    if len(named) == 1:
        return named[0]
    if named:
        raise AdapterNameError(f"{len(named)} adapters on {node} are named {ref!r}; pass one CID: {', '.join(named)}")
    raise AdapterNameError(
        f"no adapter on {node} is named {ref!r}, and it is not a CID ({CID_SHAPE}); "
        f"`openlora adapters --node {node}` lists the adapters, with their names"
    )
