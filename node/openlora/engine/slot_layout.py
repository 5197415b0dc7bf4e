"""Device slots by rank: how many adapters of which rank a node holds, and where their rows sit.

    --rank-buckets 8:4,64:2  ─►  slot   0 │ 1  2  3  4 │ 5   6
                                 rank   – │ 8  8  8  8 │ 64  64
    one layer's pool rows        0 (zeros, padding) │ 1‥8 9‥16 17‥24 25‥32 │ 33‥96 97‥160

Torch-free (the settings validate ``--rank-buckets`` with it); ``engine.lora`` sizes its pools by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SlotLayout:
    """Which rank each device slot holds and where its rows sit in a layer's pool (see the module doc).

    Attributes:
        buckets: ``(rank, slots)`` pairs, ranks strictly ascending; slots are numbered from 1 bucket by
            bucket, smallest rank first.
    """

    buckets: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        ranks = [r for r, _ in self.buckets]
        if not self.buckets or any(r < 1 or n < 1 for r, n in self.buckets) or ranks != sorted(set(ranks)):
            raise ValueError(f"rank buckets must be (rank ≥ 1, slots ≥ 1) pairs with rising ranks, got {self.buckets}")

    @classmethod
    def uniform(cls, n_adapters: int, r_max: int) -> SlotLayout:
        """``n_adapters`` slots of rank ``r_max`` (vLLM's ``max_loras`` × ``max_lora_rank``)."""
        return cls(((r_max, n_adapters),))

    @classmethod
    def parse(cls, text: str) -> SlotLayout:
        """``"8:24,64:6,256:2"`` (rank:slots, comma-separated, any order) → a layout.

        Raises:
            ValueError: not of that form, a rank given twice, or a zero.
        """
        pairs = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
            if m is None:
                raise ValueError(f"rank bucket {part.strip()!r} is not RANK:SLOTS (e.g. 8:24,64:6,256:2)")
            pairs.append((int(m[1]), int(m[2])))
        if len({r for r, _ in pairs}) != len(pairs):
            raise ValueError(f"rank buckets {text!r} name a rank twice")
        return cls(tuple(sorted(pairs)))

    @property
    def n_adapters(self) -> int:
        """Adapter slots (slot 0, the base, not counted)."""
        return sum(n for _, n in self.buckets)

    @property
    def r_max(self) -> int:
        """The largest rank any slot holds."""
        return self.buckets[-1][0]

    @property
    def rows(self) -> int:
        """Rank rows of one layer's pool, the padding row included."""
        return 1 + sum(r * n for r, n in self.buckets)

    def groups(self) -> list[tuple[int, int, int, int]]:
        """Per bucket ``(first slot, slots, rank, first pool row)``."""
        out, slot, row = [], 1, 1
        for rank, n in self.buckets:
            out.append((slot, n, rank, row))
            slot, row = slot + n, row + rank * n
        return out

    def capacity(self) -> list[int]:
        """Rank each slot holds, indexed by slot (slot 0: 0)."""
        return [0] + [rank for rank, n in self.buckets for _ in range(n)]

    def offset(self) -> list[int]:
        """First pool row of each slot, indexed by slot (slot 0: the padding row, 0)."""
        return [0] + [row + i * rank for _, n, rank, row in self.groups() for i in range(n)]
