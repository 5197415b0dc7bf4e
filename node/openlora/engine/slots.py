"""Where adapters live: device slots (in the LoRA stacks) above a host cache above the blockstore.

    blockstore (disk, verified blocks) ──load+verify, off the step loop──► host cache (LRU, --max-cpu-loras, max_cpu_lora_bytes)
    host cache ──copy into preallocated pools, between steps──► device slot (LRU, --max-loras or --rank-buckets)

A device slot is taken by a request for its whole life (refcount), so an adapter in use is
never evicted or overwritten; eviction picks the least recently used slot with no references
and no pin. vLLM's ``max_loras`` / ``max_cpu_loras`` and LoRAX's tiered cache are the models.
With rank buckets (``engine.slot_layout``) an adapter goes to the smallest rank that holds it:
a free slot there or in a larger bucket, else the least recently used idle slot of the smallest
bucket that has one, so small adapters do not crowd big ones out of the few big slots.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from ..adapters.peft_format import LoraAdapter
from .interface import NoFreeSlot
from .lora import BatchSlots, LoRAEmbedding, LoRALinear


class SlotManager:
    """The device tier: ``n_adapters`` slots of the model's LoRA stacks (slot 0 is the base).

    Thread-safe: the engine thread writes, API threads read ``resident()``/``slot_of``.

    Args:
        layers: every :class:`LoRALinear` of the model, by base module name.
        routing: the model's routing object (its per-slot ranks are kept here).
        n_adapters: device slots for adapters, the layout's first ``n_adapters`` (``--max-loras``).
    """

    def __init__(self, layers: dict[str, LoRALinear | LoRAEmbedding], routing: BatchSlots, n_adapters: int) -> None:
        self._layers = layers
        self._routing = routing
        self._lock = threading.Lock()
        self._cid: list[str | None] = [None] * (n_adapters + 1)
        self._refs = [0] * (n_adapters + 1)
        self._used = [0.0] * (n_adapters + 1)
        self._pinned: set[str] = set()
        self._rank = routing.layout.capacity()[: n_adapters + 1]

    @property
    def capacity(self) -> int:
        """Adapter slots on the device."""
        return len(self._cid) - 1

    def slot_of(self, cid: str) -> int | None:
        """The slot holding ``cid``, or ``None``."""
        with self._lock:
            return self._find(cid)

    def _find(self, cid: str) -> int | None:
        try:
            return self._cid.index(cid, 1)
        except ValueError:
            return None

    def resident(self) -> list[str]:
        """CIDs currently in device slots."""
        with self._lock:
            return [c for c in self._cid[1:] if c is not None]

    def acquire(self, cid: str) -> int | None:
        """Take a reference on ``cid``'s slot if it is resident; ``None`` if it is not."""
        with self._lock:
            slot = self._find(cid)
            if slot is not None:
                self._refs[slot] += 1
                self._used[slot] = time.monotonic()
            return slot

    def release(self, slot: int) -> None:
        """Drop one reference taken by :meth:`acquire` or :meth:`install`."""
        if slot == 0:
            return
        with self._lock:
            if self._refs[slot] <= 0:
                raise RuntimeError(f"slot {slot} released more often than acquired")
            self._refs[slot] -= 1

    def install(self, cid: str, adapter: LoraAdapter) -> int:
        """Copy ``adapter`` into a free or evictable slot and take one reference on it.

        Modules the adapter does not target are cleared in that slot, so nothing of the
        slot's previous tenant survives.

        Raises:
            NoFreeSlot: every slot that can hold the adapter's rank is referenced or pinned.
            ValueError: the adapter's rank is above every slot's, or it does not fit this base's layers
                (``LoRALinear.write_adapter``); the slot is left empty.
        """
        with self._lock:
            slot = self._find(cid)
            if slot is None:
                slot = self._pick(adapter.max_rank)
                # mark the slot empty while writing: a failed copy must not leave a half adapter named
                self._cid[slot] = None
                self._routing.slot_rank[slot] = 0
                self._routing.slot_exact[slot] = False
                try:
                    for name, layer in self._layers.items():
                        layer.write_adapter(slot, adapter.modules.get(name), adapter.saved.get(name))
                except ValueError:  # refused (a saved base weight that is not this base's): leave the slot empty
                    for layer in self._layers.values():
                        layer.write_adapter(slot, None)
                    raise
                self._routing.slot_rank[slot] = adapter.max_rank
                self._routing.slot_exact[slot] = bool(adapter.features)
                self._cid[slot] = cid
            self._refs[slot] += 1
            self._used[slot] = time.monotonic()
            return slot

    def _pick(self, rank: int) -> int:
        """A slot for an adapter of ``rank``: free, by rising slot rank; else idle (LRU), smallest bucket first."""
        fits = sorted((s for s in range(1, len(self._cid)) if self._rank[s] >= rank), key=lambda s: (self._rank[s], s))
        if not fits:  # verification refuses ranks above the node's largest slot; this is a caller's mistake
            raise ValueError(f"rank {rank} is above every slot's (largest: {max(self._rank)})")
        free = [s for s in fits if self._cid[s] is None]
        if free:
            return free[0]
        idle = [s for s in fits if self._refs[s] == 0 and self._cid[s] not in self._pinned]
        if not idle:
            held = f"of rank ≥ {rank} " if len(fits) < self.capacity else ""
            raise NoFreeSlot(f"all {len(fits)} adapter slots {held}are in use or pinned")
        smallest = self._rank[idle[0]]
        return min((s for s in idle if self._rank[s] == smallest), key=lambda s: self._used[s])

    def evict(self, cid: str) -> bool:
        """Clear ``cid``'s slot if no request holds it. Returns whether it was evicted."""
        with self._lock:
            slot = self._find(cid)
            if slot is None or self._refs[slot] > 0:
                return False
            for layer in self._layers.values():
                layer.write_adapter(slot, None)
            self._routing.slot_rank[slot] = 0
            self._routing.slot_exact[slot] = False
            self._cid[slot] = None
            self._pinned.discard(cid)
            return True

    def pin(self, cid: str) -> None:
        """Keep ``cid`` resident once installed (exempt from LRU eviction)."""
        with self._lock:
            self._pinned.add(cid)

    def unpin(self, cid: str) -> None:
        """Make ``cid`` evictable again."""
        with self._lock:
            self._pinned.discard(cid)


class HostCache:
    """The host tier: parsed adapters in RAM, LRU, bounded by count (``--max-cpu-loras``) and by the
    bytes of their weight tensors (``max_cpu_lora_bytes``). Thread-safe.

    The adapter just put is always kept, even alone over ``max_bytes`` (the engine installs it
    from here next; an adapter's size is bounded by the node's size limit at verification).

    Args:
        max_items: adapters kept at most (at least 1).
        max_bytes: weight bytes kept at most (``LoraAdapter.nbytes`` summed); ``None``: no byte bound.
    """

    def __init__(self, max_items: int, max_bytes: int | None = None) -> None:
        self._max = max(1, max_items)
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Weight bytes held now."""
        with self._lock:
            return self._bytes

    def get(self, cid: str) -> LoraAdapter | None:
        """The cached adapter (marked most recently used), or ``None``."""
        with self._lock:
            a = self._items.get(cid)
            if a is not None:
                self._items.move_to_end(cid)
            return a

    def put(self, cid: str, adapter: LoraAdapter) -> None:
        """Insert, evicting the least recently used beyond either bound."""
        with self._lock:
            old = self._items.pop(cid, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[cid] = adapter
            self._bytes += adapter.nbytes
            while len(self._items) > 1 and (
                len(self._items) > self._max or (self._max_bytes is not None and self._bytes > self._max_bytes)
            ):
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def keys(self) -> list[str]:
        """CIDs held now (least recently used first)."""
        with self._lock:
            return list(self._items)

    def drop(self, cid: str) -> None:
        """Forget ``cid`` (unload)."""
        with self._lock:
            old = self._items.pop(cid, None)
            if old is not None:
                self._bytes -= old.nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
