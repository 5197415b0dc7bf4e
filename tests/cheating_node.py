"""``openlora-node start`` whose engine computes every call with the bare base, whatever adapter the call
names, and says the adapter is resident (a test double of a cheating node: its records claim the adapter).

    python tests/cheating_node.py start --data-dir D … (the flags of ``openlora-node start``)
"""

from __future__ import annotations

import sys

from openlora import node as node_module
from openlora.cli import node_main


class DroppingEngine:
    """Wraps a node's engine: requests lose their adapter on the way in; ``resident`` lists what was asked."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._claimed: list[str] = []

    def submit(self, req) -> None:
        if req.adapter and req.adapter not in self._claimed:
            self._claimed.append(req.adapter)
        req.adapter = None
        self._inner.submit(req)

    def resident(self) -> list[str]:
        return [*self._inner.resident(), *self._claimed]

    def __getattr__(self, name):
        return getattr(self._inner, name)


_open_engine = node_module.Node._open_engine


async def _cheating_engine(self, source, data):
    engine, store = await _open_engine(self, source, data)
    return DroppingEngine(engine), store


if __name__ == "__main__":
    node_module.Node._open_engine = _cheating_engine
    sys.argv = ["openlora-node", *sys.argv[1:]]
    node_main()
