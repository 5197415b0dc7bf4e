"""The torch engine: heterogeneous continuous batching over adapter slots (``--engine torch``).

One thread owns the model. Each turn of its loop::

    take new requests and cancellations ─► finish adapter loads (host cache) ─► admit waiting
    requests whose adapter has (or can take) a device slot ─► prefill them together ─► join the
    running batch ─► one decode step for every running row ─► sample per row ─► stream text ─►
    retire finished rows (slot references dropped, KV rows removed)

Rows of one batch may use different adapters (or none): each row carries its slot index into
the LoRA stacks (``engine.lora``), so the batch shares every base matmul — the heterogeneous
batching of S-LoRA (arXiv 2311.03285) and Punica (arXiv 2310.18547), scheduled at iteration
level as in Orca (OSDI 2022). A composed request (``adapters.composition``) is keyed by its composition id and
served like any adapter: its derived adapter (the parts, each loaded as usual, concatenated) takes one slot.
Adapter loads (blockstore → verify → host cache) run on a thread
pool, never on this loop; a request whose adapter is loading waits while the others decode,
and a failed load fails only the requests for that adapter.

Events go to each request's ``emit`` callback from the engine thread; it must not block. The
interface it implements, and the events, are in ``engine/interface.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..adapters.composition import Composition, compose, is_composition
from ..adapters.peft_format import FEATURES, LoraAdapter
from ..proof.topk import top_logprobs
from .interface import EngineInfo, Failed, FinishReason, Finished, GenerationRequest, NonFiniteLogits, QueueFull, TextDelta
from .kv import KVBatch, left_padded, new_cache
from .model import ResidentModel
from .sampling import Detokenizer, sample_next
from .slots import HostCache, NoFreeSlot, SlotManager
from .structured import masked

log = logging.getLogger(__name__)


class _Row:
    """Engine-side state of a running request."""

    __slots__ = (
        "req", "slot", "detok", "grammar", "gen", "count", "last", "t_first", "t_prev", "itl", "done", "pending", "error"
    )  # fmt: skip

    def __init__(self, req: GenerationRequest, slot: int, codec) -> None:
        self.req = req
        self.slot = slot
        self.detok = Detokenizer(codec.tokenizer, req.sampling.stop)
        # compiled at submit, so this is a cache hit; None (no cost at all) for an unconstrained row
        self.grammar = codec.grammars.matcher(req.constraint) if req.constraint is not None else None
        self.gen = None if req.sampling.greedy else req.sampling.generator()
        self.count = 0
        self.last = 0
        self.t_first: float | None = None
        self.t_prev = 0.0
        self.itl: list[float] = []
        self.done: FinishReason | None = None
        self.pending = 0  # tokens whose text has not been emitted yet
        self.error: Exception | None = None  # set when the row failed alone (it retires with Failed)


class TorchEngine:
    """Continuous-batching generation over one resident base and its adapter slots
    (implements :class:`~openlora.engine.interface.Engine`).

    Args:
        rm: the resident model.
        slots: device tier.
        host: host tier.
        load_adapter: ``cid -> LoraAdapter`` (reads the blockstore, verifies, parses); runs on
            a worker thread; its exception fails the requests for that CID.
        max_batch: rows decoded together at most.
        max_waiting: requests queued (not yet running) at most; beyond it :class:`QueueFull`.
        max_prefill_tokens: prompt tokens admitted in one prefill at most (bounds the pause a
            prefill causes to running rows).
        on_cache: ``(tier, hit)`` per adapter lookup, from the engine thread (metrics): ``("device", …)``
            once per admitted adapter request (hit: already in a slot); ``("host", …)`` once per slot
            install (hit: it was in RAM without a load for it) and once per load started (a miss).
    """

    def __init__(
        self,
        rm: ResidentModel,
        slots: SlotManager,
        host: HostCache,
        load_adapter: Callable[[str], LoraAdapter],
        max_batch: int = 16,
        max_waiting: int = 256,
        max_prefill_tokens: int = 4096,
        on_cache: Callable[[str, bool], None] = lambda tier, hit: None,
    ) -> None:
        self.rm = rm
        self.slots = slots
        self.host = host
        self._load_adapter = load_adapter
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self._on_cache = on_cache
        self._fresh: set[str] = set()  # loaded to the host tier and not installed since (their miss is counted)
        self.codec = rm.codec
        self.info = EngineInfo(
            "torch", str(rm.dtype).removeprefix("torch."), rm.device.type, slots.capacity, rm.max_rank, max_batch, FEATURES
        )
        self._cv = threading.Condition()
        self._inbox: list[GenerationRequest] = []
        self._cancels: set[str] = set()
        self._forgets: set[str] = set()  # revoked: evicted once no running row holds them
        self._wake = False
        self._stopping = False
        self._waiting: deque[GenerationRequest] = deque()
        self._rows: list[_Row] = []
        self._kv: KVBatch | None = None
        self._loads: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="adapter-load")
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._exit_listeners: list[Callable[[], None]] = []

    # ----- API side (any thread) -----

    def start(self) -> None:
        """Start the engine thread."""
        self._thread.start()

    def on_exit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the engine thread) when the engine thread ends before :meth:`stop`
        asked it to: a node whose engine died must stop reporting itself healthy."""
        self._exit_listeners.append(listener)

    @property
    def alive(self) -> bool:
        """Whether the engine thread is running."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the loop; running and waiting requests get ``Finished(CANCELLED)``."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, req: GenerationRequest) -> None:
        """Queue a request.

        Raises:
            ValueError: empty prompt, or prompt + max_new_tokens beyond the context limit, or a constraint that
                does not compile (``structured.ConstraintError``; compiled here, on the caller's thread).
            QueueFull: ``max_waiting`` requests are already queued.
        """
        n = len(req.prompt_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        if n + req.sampling.max_new_tokens > self.codec.max_context:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({req.sampling.max_new_tokens}) exceeds the "
                f"model's context of {self.codec.max_context} tokens"
            )
        if req.constraint is not None:
            self.codec.grammars.compile(req.constraint)
        with self._cv:
            self._check_room()
            self._inbox.append(req)
            self._cv.notify()

    def check_room(self) -> None:
        """Refuse early: whether :meth:`submit` would find room now (the API asks before it prices a call,
        so that refusing under overload costs no chain read or ledger write).

        Raises:
            QueueFull: ``max_waiting`` requests are already queued, or the engine is stopping.
        """
        with self._cv:
            self._check_room()

    def _check_room(self) -> None:
        if self._stopping:
            raise QueueFull("the engine is shutting down")
        if len(self._inbox) + len(self._waiting) >= self.max_waiting:
            raise QueueFull(f"{self.max_waiting} requests already waiting; retry later")

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request; its row is freed before the next step."""
        with self._cv:
            self._cancels.add(request_id)
            self._cv.notify()

    def load_state(self, cid: str) -> str | None:
        """``"loading"`` while ``cid`` is being loaded to the host tier, else ``None``."""
        fut = self._loads.get(cid)
        return "loading" if fut is not None and not fut.done() else None

    def stats(self) -> dict[str, int]:
        """Running rows, waiting requests, loads in flight, host-tier adapters (a snapshot, for node info)."""
        return {
            "running": len(self._rows),
            "waiting": len(self._waiting) + len(self._inbox),
            "loading": len(self._loads),
            "host_cached": len(self.host),
        }

    def resident(self) -> list[str]:
        """CIDs in device slots now (derived adapters of compositions are not adapters of their own: left out)."""
        return [cid for cid in self.slots.resident() if not is_composition(cid)]

    def warm(self, cid: str, adapter: LoraAdapter) -> None:
        """Put a verified, parsed adapter in the host tier (its first request skips the load)."""
        self.host.put(cid, adapter)

    def forget(self, cid: str) -> None:
        """Drop ``cid`` (and every composition that has it as a part) from the host tier now and from its device
        slot once no running row holds it."""
        held = self.host.keys() + self.slots.resident()
        gone = {cid} | {c for c in held if is_composition(c) and cid in Composition.parse(c).cids}
        for c in gone:
            self.host.drop(c)
        with self._cv:
            self._forgets |= gone
            self._cv.notify()

    # ----- engine thread -----

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            for listener in self._exit_listeners if not self._stopping else ():
                try:
                    listener()
                except Exception:
                    log.exception("engine exit listener failed")

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._stopping or self._inbox or self._rows or self._wake or self._cancels or self._forgets):
                        self._cv.wait()
                    if self._stopping:
                        break
                    self._waiting.extend(self._inbox)
                    self._inbox.clear()
                    cancels, self._cancels = self._cancels, set()
                    forgets, self._forgets = self._forgets, set()
                    self._wake = False
                try:
                    if cancels:
                        self._apply_cancels(cancels)
                    if forgets:
                        self._evict(forgets)
                    self._finish_loads()
                    admitted = self._admit()
                    if admitted:
                        self._prefill(admitted)
                    if self._rows:
                        self._decode()
                except Exception as e:  # e.g. out of memory growing the KV mask: fail the batch, keep the loop
                    log.exception("engine step failed")
                    self._fail_batch(e)
        for row in self._rows:
            row.done = FinishReason.CANCELLED
        self._retire()
        for req in list(self._waiting) + self._inbox:
            self._emit(req, Finished(FinishReason.CANCELLED, len(req.prompt_ids), 0))

    def _emit(self, req: GenerationRequest, event: object) -> None:
        try:
            req.emit(event)
        except Exception:  # a dead consumer must not take the engine down
            log.exception("emit failed for request %s; cancelling it", req.request_id)
            with self._cv:
                self._cancels.add(req.request_id)

    def _apply_cancels(self, ids: set[str]) -> None:
        keep = deque()
        for req in self._waiting:
            if req.request_id in ids:
                self._emit(req, Finished(FinishReason.CANCELLED, len(req.prompt_ids), 0))
            else:
                keep.append(req)
        self._waiting = keep
        hit = False
        for row in self._rows:
            if row.req.request_id in ids and row.done is None:
                row.done = FinishReason.CANCELLED
                hit = True
        if hit:
            self._retire()

    def _evict(self, cids: set[str]) -> None:
        """Evict revoked adapters from their slots; one a running row still holds is tried again later."""
        held = {cid for cid in cids if not self.slots.evict(cid) and self.slots.slot_of(cid) is not None}
        if held:
            with self._cv:
                self._forgets |= held

    def _start_load(self, cid: str) -> None:
        self._on_cache("host", False)
        fut = self._pool.submit(self._load_composed if is_composition(cid) else self._load_adapter, cid)
        self._loads[cid] = fut

        def wake(_: Future) -> None:
            with self._cv:
                self._wake = True
                self._cv.notify()

        fut.add_done_callback(wake)

    def _load_composed(self, key: str) -> LoraAdapter:
        """The derived adapter of composition ``key`` (worker thread): each part from the host tier, else through
        the node's loader (the verification pipeline), then concatenated (``adapters.composition.compose``).

        Raises:
            what the loader raises for a part; CompositionError (rank above the slots', a non-plain part).
        """
        comp = Composition.parse(key)
        parts = [(self.host.get(cid) or self._load_adapter(cid), w) for cid, w in zip(comp.cids, comp.weights)]
        return compose(parts, self.rm.max_rank, key)

    def _finish_loads(self) -> None:
        for cid, fut in list(self._loads.items()):
            if not fut.done():
                continue
            del self._loads[cid]
            exc = fut.exception()
            if exc is None:
                self.host.put(cid, fut.result())
                self._fresh.add(cid)
                continue
            log.info("adapter %s failed to load: %s", cid, exc)
            keep = deque()
            for req in self._waiting:
                if req.adapter == cid:
                    self._emit(req, Failed(exc))
                else:
                    keep.append(req)
            self._waiting = keep

    def _admit(self) -> list[tuple[GenerationRequest, int]]:
        room = self.max_batch - len(self._rows)
        budget = self.max_prefill_tokens
        admitted: list[tuple[GenerationRequest, int]] = []
        keep: deque[GenerationRequest] = deque()
        while self._waiting:
            req = self._waiting.popleft()
            n = len(req.prompt_ids)
            if len(admitted) >= room or (admitted and n > budget):
                self._prefetch(req.adapter)
                keep.append(req)
                continue
            slot = self._slot_for(req, busy=bool(self._rows or admitted))
            if slot is None:
                keep.append(req)
                continue
            if slot < 0:  # failed and already answered
                continue
            admitted.append((req, slot))
            budget -= n
        self._waiting = keep
        return admitted

    def _prefetch(self, cid: str | None) -> None:
        """Start loading ``cid`` to the host tier early, so it is ready when a row frees up."""
        if cid and cid not in self._loads and self.slots.slot_of(cid) is None and self.host.get(cid) is None:
            self._start_load(cid)

    def _slot_for(self, req: GenerationRequest, busy: bool) -> int | None:
        """Slot for ``req``: 0 for the base, ≥1 if resident or installable, ``None`` to wait, -1 failed."""
        cid = req.adapter
        if cid is None:
            return 0
        slot = self.slots.acquire(cid)
        if slot is not None:
            self._on_cache("device", True)
            return slot
        adapter = self.host.get(cid)
        if adapter is None:
            self._prefetch(cid)
            return None
        try:
            slot = self.slots.install(cid, adapter)
        except NoFreeSlot as e:
            if busy:
                return None  # a running row will free a slot
            self._emit(req, Failed(e))
            return -1
        except ValueError as e:
            self._emit(req, Failed(e))
            return -1
        self._on_cache("device", False)
        if cid in self._fresh:
            self._fresh.discard(cid)
        else:
            self._on_cache("host", True)
        return slot

    def _forward(self, rows_slots: list[int], **inputs) -> torch.Tensor | None:
        self.rm.routing.set(rows_slots)
        try:
            return self.rm.model(**inputs, use_cache=True).logits[:, -1]
        finally:
            self.rm.routing.clear()

    def _prefill(self, admitted: list[tuple[GenerationRequest, int]]) -> None:
        new_rows = [_Row(req, slot, self.codec) for req, slot in admitted]
        ids, mask, pos = (t.to(self.rm.device) for t in left_padded([r.req.prompt_ids for r in new_rows], self.codec.pad_id))
        cache = new_cache(self.rm.model.config, self.rm.kv_dtype)
        try:
            logits = self._forward(
                [r.slot for r in new_rows],
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                logits_to_keep=1,
            )
        except Exception as e:  # keep serving: only these requests fail
            log.exception("prefill failed")
            for row in new_rows:
                self.slots.release(row.slot)
                self._emit(row.req, Failed(e))
            return
        batch = KVBatch(cache, mask)
        if self._kv is None:
            self._kv = batch
        else:
            try:
                self._kv.join(batch)  # all or nothing (KVBatch.join)
            except (MemoryError, RuntimeError) as e:  # out of memory: fail these requests, the running rows go on
                log.exception("joining %d new rows to the KV cache failed", len(new_rows))
                for row in new_rows:
                    self.slots.release(row.slot)
                    self._emit(row.req, Failed(e))
                return
        self._rows.extend(new_rows)
        self._sample(logits, new_rows)
        self._retire()

    def _decode(self) -> None:
        kv = self._kv
        pos = kv.next_positions()
        mask = kv.grow()
        ids = torch.tensor([[r.last] for r in self._rows], dtype=torch.long, device=self.rm.device)
        try:
            logits = self._forward(
                [r.slot for r in self._rows], input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=kv.cache
            )
        except Exception as e:  # the shared cache may be inconsistent now: fail the batch, keep serving
            log.exception("decode step failed")
            self._fail_batch(e)
            return
        self._sample(logits, self._rows)
        self._retire()

    def _fail_batch(self, error: Exception) -> None:
        """Fail every running row with ``error`` and drop the shared KV cache (the engine keeps serving)."""
        for row in self._rows:
            self.slots.release(row.slot)
            self._emit(row.req, Failed(error))
        self._rows, self._kv = [], None

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> None:
        # A row whose logits are not finite (its adapter overflowed) fails alone; the others sample on.
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        for row, ok in zip(rows, finite):
            if not ok and row.done is None:
                adapter = row.req.adapter or "the base model"
                row.error = NonFiniteLogits(f"{adapter} produced non-finite logits (NaN or Inf) for this prompt")
                row.done = FinishReason.CANCELLED
        rows = [r for r, ok in zip(rows, finite) if ok]
        if not rows:
            return
        if not all(finite):
            logits = logits[torch.tensor(finite, device=logits.device)]
        try:
            # on the CPU: each row's torch.Generator lives there (a [B, V] copy per step on a GPU);
            # a constrained row samples among the tokens its grammar allows, and its proof commits to that
            logits = masked(logits.cpu(), [r.grammar for r in rows])
            tokens = sample_next(logits, [r.req.sampling for r in rows], [r.gen for r in rows])
        except Exception as e:  # a sampling error: fail this batch, never the engine thread
            log.exception("sampling failed")
            self._fail_batch(e)
            return
        proofs = [r.req.proof for r in rows]
        k = max((p.k for p in proofs if p is not None), default=0)
        top = top_logprobs(logits, k) if k else None
        now = time.perf_counter()
        for i, (row, tok) in enumerate(zip(rows, tokens)):
            if row.done is not None:
                continue
            if top is not None and proofs[i] is not None:
                proofs[i].add(tok, top[0][i][: proofs[i].k], top[1][i][: proofs[i].k])
            if row.t_first is None:
                row.t_first = now
            else:
                row.itl.append((now - row.t_prev) * 1000.0)
            row.t_prev = now
            row.count += 1
            row.last = tok
            if row.grammar is not None and not row.grammar.accept(tok):
                row.error = RuntimeError(f"token {tok} broke the request's {row.req.constraint.kind} constraint")
                row.done = FinishReason.CANCELLED
                continue
            # a grammar allows EOS only once complete, and a complete grammar allows nothing else
            if tok in self.codec.eos_ids and (not row.req.sampling.ignore_eos or row.grammar is not None):
                row.done = FinishReason.STOP
                continue
            row.pending += 1
            text = row.detok.push(tok)
            if text:
                self._emit(row.req, TextDelta(text, row.pending))
                row.pending = 0
            if row.detok.stopped:
                row.done = FinishReason.STOP
            elif row.count >= row.req.sampling.max_new_tokens:
                row.done = FinishReason.LENGTH

    def _retire(self) -> None:
        if not any(r.done is not None for r in self._rows):
            return
        keep = []
        for i, row in enumerate(self._rows):
            if row.done is None:
                keep.append(i)
                continue
            self.slots.release(row.slot)
            if row.error is not None:
                self._emit(row.req, Failed(row.error))
                continue
            if row.done is not FinishReason.CANCELLED:
                tail = row.detok.flush()
                if tail:
                    self._emit(row.req, TextDelta(tail, row.pending))
            ttft = (row.t_first - row.req.submitted) * 1000.0 if row.t_first is not None else None
            self._emit(
                row.req,
                Finished(row.done, len(row.req.prompt_ids), row.count, ttft, tuple(row.itl)),
            )
        self._rows = [self._rows[i] for i in keep]
        if keep:
            self._kv.keep(keep)
        else:
            self._kv = None
        if self._waiting:  # freed rows and slots may admit a waiting request: look again
            with self._cv:
                self._wake = True
