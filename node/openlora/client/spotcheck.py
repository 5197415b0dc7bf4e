"""Spot checks: a client sends a random fraction of its calls to a verifier node of its choice.

    call ─► stream.served (record signed by the serving node + token ids)
         ─► drawn with probability ``rate``? ─► verifier.Verify(call)
               valid ─► nothing
               fails, blames the node ─► evidence (signed by the verifier, who gossips it)
                                       ─► the node's account joins ``accused``: route(..., accused=…) skips it

A record must be signed by the account of the node the client called (``NodeInfo.chain.node_address``),
else nothing it proves can be held against that node: such a call is refused as unaccountable before any
check. What a spot-check rate costs and what a cheating node risks is in the README ("Proof of serving").
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..v1 import node_pb2 as pb
from .sync import NodeClient


class Unaccountable(ValueError):
    """A served call without a record, or whose record is signed by another account than the node's."""


@dataclass
class SpotChecker:
    """Checks a fraction of a client's calls on a verifier node.

    Args:
        verifier: a connection to the verifying node (any node with the same base, ideally not the one served).
        rate: the share of calls checked, 0..1.
        rng: the draw (seed it for reproducible runs).
        accused: node accounts caught so far (shared with routing; kept across calls).

    Raises:
        ValueError: ``rate`` outside 0..1.
    """

    verifier: NodeClient
    rate: float
    rng: random.Random = field(default_factory=random.Random)
    accused: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in 0..1, got {self.rate}")

    def check(self, call: pb.ServedCall | None, node_address: str, force: bool = False) -> pb.VerifyResponse | None:
        """Draw, and when drawn (or ``force``) verify ``call`` on the verifier.

        Args:
            call: ``stream.served`` of a finished call.
            node_address: the account of the node that served it (``NodeClient.node_info().chain.node_address``).
            force: check whatever the draw.

        Returns:
            The verifier's answer, or ``None`` when the call was not drawn.

        Raises:
            Unaccountable: no record, or a record signed for another account than ``node_address``.
            grpc.RpcError: the verifier could not check it (another base, the adapter unknown to it, …).
        """
        if call is None or not call.HasField("record"):
            raise Unaccountable("the call carries no serving record (cut short?): there is nothing to check")
        if call.record.node != node_address:
            raise Unaccountable(
                f"the record is signed for {call.record.node}, not for the node's account {node_address}: "
                "nothing in it can be held against that node"
            )
        if not force and self.rng.random() >= self.rate:
            return None
        response = self.verifier.verify(call)
        if response.HasField("evidence"):
            self.accused.add(call.record.node)
        return response


ACCUSED_ENV = "OPENLORA_ACCUSED"
DEFAULT_ACCUSED_PATH = Path("~/.openlora/accused.json")


def accused_path() -> Path:
    """Where the CLI keeps the node accounts its spot checks caught: ``$OPENLORA_ACCUSED``, else
    ``~/.openlora/accused.json``."""
    env = os.environ.get(ACCUSED_ENV)
    return Path(env).expanduser() if env else DEFAULT_ACCUSED_PATH.expanduser()


def read_accused(path: Path) -> set[str]:
    """The accounts listed in ``path`` (a JSON list; a missing file is an empty list).

    Raises:
        ValueError: the file is not a JSON list of strings.
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return set()
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, list) or not all(isinstance(a, str) for a in doc):
        raise ValueError(f"{path} must hold a JSON list of node account addresses")
    return set(doc)


def remember_accused(path: Path, address: str) -> None:
    """Add ``address`` to the list in ``path`` (created with its folder)."""
    known = read_accused(path)
    known.add(address)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sorted(known), indent=1) + "\n")
