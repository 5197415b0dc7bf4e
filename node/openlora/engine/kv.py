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

A decode step appends one column. transformers' ``DynamicLayer`` appends by concatenation, copying the
whole cache every step; :class:`HeadroomLayer` keeps each layer's keys/values as views into a buffer
with spare columns, so a step writes one column in place and the buffer is copied only every
``HEADROOM`` steps, or when a join or a leave rebuilds the batch::

    buffer  [B, heads, L + HEADROOM, d]   ████████████████░░░░░░░░   keys = buffer[:, :, :L]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

HEADROOM = 128  # spare columns per buffer: a copy every 128 decode steps, a few MiB of memory


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [width, 0]
    return F.pad(t, pad)


class HeadroomLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values (``[B, kv_heads, L, d]``) are views into a buffer with
    :data:`HEADROOM` spare columns, stored as ``dtype`` (``None``: the model's).

    Anything that replaces ``keys``/``values`` with a tensor of its own (``KVBatch.join``/``keep``) is
    noticed at the next ``update``, which moves them into a new buffer.
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self._store_dtype = dtype
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        if self._store_dtype is not None:
            self.dtype = self._store_dtype

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, kv_heads, t, d]`` states; return the layer's keys and values ``[B, kv_heads, L + t, d]``."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.keys.shape[-2] if self.keys.numel() else 0
        end = held + key_states.shape[-2]
        if not self._fits(key_states, end):
            shape = (*key_states.shape[:2], end + HEADROOM, key_states.shape[-1])
            self._buffers = tuple(torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(2))
            if held:
                self._buffers[0][:, :, :held].copy_(self.keys)
                self._buffers[1][:, :, :held].copy_(self.values)
        kb, vb = self._buffers
        kb[:, :, held:end].copy_(key_states)
        vb[:, :, held:end].copy_(value_states)
        self.keys, self.values = kb[:, :, :end], vb[:, :, :end]
        return self.keys, self.values

    def _fits(self, states: torch.Tensor, end: int) -> bool:
        """Whether the current buffers still back ``keys``/``values`` and have room up to column ``end``."""
        if self._buffers is None:
            return False
        kb = self._buffers[0]
        if kb.shape[0] != states.shape[0] or kb.shape[-2] < end:
            return False
        if not self.keys.numel():
            return True
        return self.keys.data_ptr() == kb.data_ptr() and self.keys.stride() == kb.stride() and self.values.data_ptr() == self._buffers[1].data_ptr()


def new_cache(config, dtype: torch.dtype | None = None):
    """A ``DynamicCache`` for ``config`` whose full-attention layers are :class:`HeadroomLayer` storing
    ``dtype`` (``None``: the model's); sliding-window layers stay transformers' own."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.layers = [HeadroomLayer(dtype) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


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
