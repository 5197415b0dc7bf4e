"""The running batch's key/value cache, with rows that join and leave between decode steps.

Rows are left-padded to a common length ``L``; each row's real tokens are contiguous at the
right, so a 2-D attention mask plus explicit per-row ``position_ids`` is all the model needs::

    row 0   . . . . a a a a a a a     (mask 0 0 0 0 1 1 1 1 1 1 1)
    row 1   b b b b b b b b b b b
    row 2   . . . . . . . c c c c

A join pads the narrower side on the left and concatenates along the batch axis; a leave
selects the remaining rows and trims columns that are padding in every row. This is
continuous batching (Orca, Yu et al., OSDI 2022) over transformers' ``DynamicCache``, whose
per-layer tensors are ``[B, heads, L, head_dim]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [width, 0]
    return F.pad(t, pad)


class KVBatch:
    """A ``DynamicCache`` and its ``[B, L]`` attention mask for the rows currently decoding."""

    def __init__(self, cache, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask  # int64 [B, L], 1 = real token

    @property
    def size(self) -> int:
        """Rows in the batch."""
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        """Padded length ``L`` in tokens."""
        return self.mask.shape[1]

    def next_positions(self) -> torch.Tensor:
        """``[B, 1]`` position id of each row's next token (its count of real tokens)."""
        return self.mask.sum(dim=-1, keepdim=True)

    def grow(self) -> torch.Tensor:
        """Append one real column for the token about to be decoded; return the new mask."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], dim=1)
        return self.mask

    def join(self, other: KVBatch) -> None:
        """Append ``other``'s rows after this batch's rows (both are left-padded).

        All or nothing: every joined tensor is built before any is assigned, so an allocation
        failure (``MemoryError``, or torch's ``RuntimeError`` out of memory) leaves this batch as it was.
        """
        w = max(self.width, other.width)
        joined = [
            tuple(
                torch.cat([_pad_left(getattr(mine, kv), w - self.width, 2), _pad_left(getattr(theirs, kv), w - other.width, 2)])
                for kv in ("keys", "values")
            )
            for mine, theirs in zip(self.cache.layers, other.cache.layers)
        ]
        mask = torch.cat([_pad_left(self.mask, w - self.width, 1), _pad_left(other.mask, w - other.width, 1)])
        for layer, (keys, values) in zip(self.cache.layers, joined):
            layer.keys, layer.values = keys, values
        self.mask = mask

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order) and drop columns that became padding everywhere."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, idx)
        real = self.mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else self.width
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, start:]
            layer.values = layer.values.index_select(0, idx)[:, :, start:]


def left_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack token lists for a prefill.

    Returns:
        ``input_ids [B, L]``, ``mask [B, L]`` (int64, 1 = real), ``position_ids [B, L]``.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    pos = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    return ids, mask, pos
