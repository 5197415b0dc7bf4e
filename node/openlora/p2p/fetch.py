"""Fetch an adapter (or any UnixFS file DAG) by CID from untrusted sources, verifying every block.

    fetch_adapter(cid)
      manifest block ──fetch_dag──► validate_manifest(raw) ──► base fingerprint == ours
      each file CID ──fetch_dag(size = the manifest's)──► all blocks stored
    fetch_dag(root)                                   one round per DAG level:
      missing = store.missing(root, size) ──► spread over the sources of the best tier left for each
                                        block (round robin, batches of 16); the root must
                                        declare ``size`` before any child is asked for
      with a survey (who else fetches this DAG, who holds what; refreshed every SURVEY_S), a level
      is fetched as a swarm (BitTorrent's piece picking, bitswap's HAVE); requests start when a
      source has room. Alone: a provider gets SOLO_BLOCKS per request. Among co-fetchers:
        a block some co-fetcher holds ──► one of them at random, one block per request, at most
                                          TRADE_INFLIGHT such requests at once (short queues)
        a block nobody holds or is being sent, this fetcher's to get (``Census.mine``: each falls to one
                                          fetcher, by hashing) ──► a provider, one block and one
                                          request at a time, so ten fetchers ask it for ten
                                          different blocks and then trade them
        any other block ──► wait for a copy to show up (the fetcher it falls to asks for it); idle
                                          for STALL_S ──► a provider
      each answer: block ──store.put (sha2-256 == CID?)──► stored
                   wrong bytes / oversized ──► on_bad_block(source) and drop the source
                   absent ──► that source lacks that CID; another is asked
                   source error (timeout, transport) ──► drop the source
      until missing is empty, or a CID has no source left (FetchFailed)

A source is anything with ``name``, ``tier`` and ``async get_blocks(cids) -> {cid: bytes}``: a peer over
``/openlora/blocks`` or bitswap, or a Kubo RPC endpoint. Written on anyio, so the same code runs
in the libp2p thread (trio) and in the node's asyncio loop (e.g. Kubo RPC alone). Disk work
(hashing, writing, walking the DAG) runs in worker threads.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from ..adapters.manifest import Manifest
from ..adapters.reasons import AdapterRejected, RejectReason
from ..content.blockstore import BlockStore
from ..content.cid import RAW, cid_text, parse_cid
from ..content.errors import BlockHashMismatch, InvalidCID, LimitExceeded, SizeMismatch
from .errors import FetchFailed, FetchTimeout, SourceUnavailable
from .validate import ManifestValidator

BATCH_BLOCKS = 16  # CIDs per request (= blocks.MAX_BLOCKS_PER_REQUEST)
PARALLEL_PER_SOURCE = 2  # requests in flight per source
TIER_PROVIDER = 0  # known to hold the adapter (it announced it, or said so in catalog sync)
TIER_PEER = 1  # a peer that may hold it and answers "don't have" at once
TIER_FALLBACK = 2  # slow to say no: bitswap-only peers (wait out a timeout), Kubo RPC
SOLO_BLOCKS = 4  # blocks per request to a provider while no co-fetcher is known
TRADE_INFLIGHT = 2  # among co-fetchers: requests in flight to sources other than providers (short holder queues)
STALL_S = 2.0  # among co-fetchers, nothing in flight this long: a provider is asked for any block, one at a time
SURVEY_S = 1.0  # how often a fetch asks again who else is fetching and who holds what


class BlockSource(Protocol):
    """Where blocks can come from; nothing it returns is trusted before verification.

    Attributes:
        name: shown in stats and errors.
        tier: preference, lowest first (``TIER_PROVIDER``, ``TIER_PEER``, ``TIER_FALLBACK``): a
            block is asked of the sources of the lowest tier that has any left for it.
    """

    name: str
    tier: int

    async def get_blocks(self, cids: list[str]) -> dict[str, bytes]:
        """Requested CID → bytes offered for it (CIDs it lacks are absent).

        Raises:
            SourceUnavailable: the source failed as a whole for this request.
        """
        ...


BadBlockHandler = Callable[[BlockSource, str, Exception], None]
"""Called with (source, cid, error) when a source offered bytes that are not that block."""



@dataclass(frozen=True)
class Census:
    """What a survey found about the blocks still missing.

    Attributes:
        holders: CID → names of sources other than providers seen to hold it during this fetch
            (by their own answer, or named by the peer that sent it to them).
        sent: CID → peers a provider is sending it to now (copies on their way into the swarm).
        cofetchers: names of the peers fetching the DAG besides this one.
        me: this fetcher's name among them.
    """

    holders: dict[str, set[str]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    cofetchers: tuple[str, ...] = ()
    me: str = ""

    def mine(self, cid: str) -> bool:
        """Whether ``cid`` falls to this fetcher to get from a provider: to the fetcher whose name
        hashes highest with it (rendezvous hashing, Thaler & Ravishankar 1998), so fetchers that
        know different subsets of each other disagree only about the blocks of those they miss."""
        return not self.cofetchers or max((self.me, *self.cofetchers), key=lambda n: _weight(cid, n)) == self.me

    def rarity(self, cid: str) -> int:
        """Copies of ``cid`` in the swarm or on their way there, as far as this census knows."""
        return len(self.holders.get(cid, ())) + self.sent.get(cid, 0)


@functools.lru_cache(maxsize=65536)
def _weight(cid: str, name: str) -> bytes:
    # asked for every missing block and fetcher at each planning pass (twice); the answer never changes
    return hashlib.sha256(f"{cid} {name}".encode()).digest()


Survey = Callable[[str, list[str]], Awaitable[Census]]
"""Asked at the start of each DAG level, and every SURVEY_S while a level is fetched as a swarm, with
(the DAG's root, the CIDs still missing). Best effort: it answers an empty ``Census`` rather than
fail."""


@dataclass
class FetchStats:
    """What a fetch did.

    Attributes:
        blocks / bytes: blocks stored and their bytes.
        rounds: ``missing()`` rounds (DAG levels) that needed fetching.
        seconds: wall time.
        by_source: source name → blocks stored from it.
        bad_blocks: blocks refused (wrong hash or too large).
        dropped: names of sources dropped for failing or lying.
    """

    blocks: int = 0
    bytes: int = 0
    rounds: int = 0
    seconds: float = 0.0
    by_source: dict[str, int] = field(default_factory=dict)
    bad_blocks: int = 0
    dropped: list[str] = field(default_factory=list)

    def add(self, other: FetchStats) -> None:
        """Accumulate ``other`` into this (seconds excepted)."""
        self.blocks += other.blocks
        self.bytes += other.bytes
        self.rounds += other.rounds
        self.bad_blocks += other.bad_blocks
        for name, n in other.by_source.items():
            self.by_source[name] = self.by_source.get(name, 0) + n
        self.dropped += [d for d in other.dropped if d not in self.dropped]


@dataclass(frozen=True)
class FetchedAdapter:
    """An adapter whose manifest and file blocks are all in the local store, verified.

    Attributes:
        cid: canonical adapter CID.
        manifest_bytes / manifest: the validated manifest.
        stats: what the fetch did (zero blocks when everything was local already).
    """

    cid: str
    manifest_bytes: bytes
    manifest: Manifest
    stats: FetchStats


@contextmanager
def _first_error() -> Iterator[None]:
    # anyio task groups raise ExceptionGroups; callers expect the typed error itself.
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        # a real error wins over the cancellations it caused in sibling tasks
        raise next((e for e in leaves if isinstance(e, Exception)), leaves[0]) from None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in _leaves(e)]
    return [error]


class _DagFetch:
    def __init__(
        self,
        store: BlockStore,
        sources: Sequence[BlockSource],
        on_bad_block: BadBlockHandler | None,
        survey: Survey | None,
    ) -> None:
        self.store = store
        self.sources = list(sources)
        self.on_bad_block = on_bad_block
        self.survey = survey
        self.by_name = {s.name: i for i, s in enumerate(self.sources)}
        self.limiters = [anyio.CapacityLimiter(PARALLEL_PER_SOURCE) for _ in self.sources]
        self.dead: set[int] = set()
        self.lacks: dict[str, set[int]] = defaultdict(set)
        self.level = 0  # blocks in the level being fetched
        self.stats = FetchStats()

    async def run(self, root: str, size: int | None) -> FetchStats:
        while missing := await anyio.to_thread.run_sync(self.store.missing, root, size):
            self.stats.rounds += 1
            with _first_error():
                if self.survey is None:
                    await self._tiered(missing)
                else:
                    await self._swarm(root, missing, await self.survey(root, missing))
        return self.stats

    async def _tiered(self, missing: list[str]) -> None:
        plan: dict[int, list[str]] = defaultdict(list)
        for n, cid in enumerate(missing):
            candidates = self._usable(cid)
            if not candidates:
                raise FetchFailed(self._unavailable(missing), missing)
            best = min(self.sources[i].tier for i in candidates)
            candidates = [i for i in candidates if self.sources[i].tier == best]
            plan[candidates[n % len(candidates)]].append(cid)
        async with anyio.create_task_group() as tg:
            for i, cids in plan.items():
                for k in range(0, len(cids), BATCH_BLOCKS):
                    tg.start_soon(self._batch, i, cids[k : k + BATCH_BLOCKS])

    async def _swarm(self, root: str, missing: list[str], census: Census) -> None:
        # See the module docstring. The survey is refreshed beside the requests, so a fetch that started
        # alone learns of co-fetchers who came later; a request ending or a new census wakes the planner.
        survey = self.survey
        assert survey is not None
        pending, busy = set(missing), set[str]()
        self.level = len(missing)
        inflight: Counter[int] = Counter()
        wake = anyio.Event()
        moved = anyio.current_time()  # when a request last started or ended

        async def request(i: int, cids: list[str]) -> None:
            nonlocal moved
            try:
                pending.difference_update(await self._batch(i, cids))
            finally:
                busy.difference_update(cids)
                inflight[i] -= 1
                moved = anyio.current_time()
                wake.set()

        async def surveyor() -> None:  # beside the requests: a slow answer must not hold them up
            nonlocal census
            while True:
                await anyio.sleep(SURVEY_S)
                census = await survey(root, sorted(pending))
                wake.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(surveyor)
            while pending:
                wake = anyio.Event()
                stalled = not busy and anyio.current_time() - moved >= STALL_S
                while batches := self._plan(sorted(pending - busy), census, inflight, stalled):
                    moved = anyio.current_time()
                    for i, cids in batches.items():
                        inflight[i] += 1
                        busy.update(cids)
                        tg.start_soon(request, i, cids)
                if not busy and (left := [cid for cid in sorted(pending) if not self._usable(cid)]):
                    raise FetchFailed(self._unavailable(left), left)  # nothing runs, and no source is left for these
                await wake.wait()  # a request ends, or the survey is refreshed
            tg.cancel_scope.cancel()

    def _plan(self, idle: list[str], census: Census, inflight: Counter[int], stalled: bool) -> dict[int, list[str]]:
        """At most one new request per source with room (see ``_room`` and ``_pick``)."""
        batches: dict[int, list[str]] = defaultdict(list)

        def order(cid: str) -> tuple[int, ...]:
            # a provider's blocks rarest first, this fetcher's own first among equals; co-fetchers' blocks in
            # random order, so that fetchers seeing the same census spread over the holders instead of queueing
            # at the holder of the rarest
            return (0,) if census.holders.get(cid) else (1, census.rarity(cid), not census.mine(cid))

        for cid in sorted(random.sample(idle, len(idle)), key=order):
            holding = [i for h in census.holders.get(cid, ()) if (i := self.by_name.get(h)) is not None]
            i = self._pick(cid, holding, census, inflight, batches, stalled)
            if i is not None:
                batches[i].append(cid)
        return batches

    def _room(self, i: int, census: Census) -> tuple[int, int]:
        """(requests in flight, blocks per request) source ``i`` may have. Among co-fetchers, a
        provider or a peer gets one block and one request at a time: answers come back a block at
        a time, and a copy moves on as soon as it lands. Alone, a provider gets SOLO_BLOCKS per
        request: few enough that a fetch which learns of co-fetchers midway has little stuck in one
        slow answer; other sources get whole batches."""
        tier = self.sources[i].tier
        if census.cofetchers and tier in (TIER_PROVIDER, TIER_PEER):
            return 1, 1
        return PARALLEL_PER_SOURCE, SOLO_BLOCKS if tier == TIER_PROVIDER else BATCH_BLOCKS

    def _pick(
        self,
        cid: str,
        holding: list[int],
        census: Census,
        inflight: Counter[int],
        batches: dict[int, list[str]],
        stalled: bool,
    ) -> int | None:
        usable = self._usable(cid)

        def room(i: int) -> bool:
            requests, blocks = self._room(i, census)
            return len(batches[i]) < blocks if i in batches else inflight[i] < requests

        holding = [i for i in holding if i in usable]
        trading = sum(inflight[i] + (i in batches) for i in range(len(self.sources)) if self.sources[i].tier != TIER_PROVIDER)
        free = [i for i in holding if room(i)] if trading < TRADE_INFLIGHT else []
        if free:  # at random among the least busy: every fetcher sees about the same holders
            least = min(inflight[i] for i in free)
            return random.choice([i for i in free if inflight[i] == least])
        if not usable:
            return None
        best = min(self.sources[i].tier for i in usable)
        if best == TIER_PROVIDER and census.cofetchers and self.level > 1 and not stalled:
            if holding or census.sent.get(cid) or not census.mine(cid):
                # the provider's link is for blocks nobody has, each asked for once: co-fetchers that see the same
                # census and pick at the same moment would pick the same ones, so each takes the blocks that fall
                # to it and waits for the others' copies (a level of one block: nothing to share out)
                return None
        free = [i for i in usable if self.sources[i].tier == best and room(i)]
        return min(free, key=lambda i: (inflight[i], len(batches.get(i, ())))) if free else None

    def _usable(self, cid: str) -> list[int]:
        return [i for i in range(len(self.sources)) if i not in self.dead and i not in self.lacks[cid]]

    def _unavailable(self, missing: list[str]) -> str:
        if not self.sources:
            return (
                f"{len(missing)} block(s) of the DAG (first {missing[0]}) are not local and there is "
                f"no source to ask (no peer connected, no --ipfs-api)"
            )
        tried = ", ".join(s.name for s in self.sources)
        return (
            f"{len(missing)} block(s) of the DAG (first {missing[0]}) are not available from any "
            f"source; tried: {tried}; dropped: {', '.join(self.stats.dropped) or 'none'}"
        )

    def _drop(self, i: int) -> None:
        if i not in self.dead:
            self.dead.add(i)
            self.stats.dropped.append(self.sources[i].name)

    async def _batch(self, i: int, cids: list[str]) -> list[str]:
        """Ask source ``i`` for ``cids``; returns those it stored (verified)."""
        source = self.sources[i]
        stored: list[str] = []
        async with self.limiters[i]:
            if i in self.dead:
                return stored
            try:
                offered = await source.get_blocks(cids)
            except SourceUnavailable:
                self._drop(i)
                return stored
        for cid in cids:
            block = offered.get(cid)
            if block is None:
                self.lacks[cid].add(i)
                continue
            try:
                await anyio.to_thread.run_sync(self.store.put, cid, block)
            except (BlockHashMismatch, LimitExceeded) as e:
                self.stats.bad_blocks += 1
                self._drop(i)
                if self.on_bad_block is not None:
                    self.on_bad_block(source, cid, e)
                continue
            stored.append(cid)
            self.stats.blocks += 1
            self.stats.bytes += len(block)
            self.stats.by_source[source.name] = self.stats.by_source.get(source.name, 0) + 1
        return stored


async def fetch_dag(
    store: BlockStore,
    root: str,
    sources: Sequence[BlockSource],
    *,
    on_bad_block: BadBlockHandler | None = None,
    timeout_s: float | None = None,
    size: int | None = None,
    survey: Survey | None = None,
) -> FetchStats:
    """Fetch every missing block of the DAG under ``root`` into ``store``, verified.

    Args:
        store: where verified blocks go (``store.put`` checks each hash).
        root: the DAG's root CID (a raw block is a DAG of one).
        sources: tried by tier, round robin within a tier; a source that fails or lies is
            dropped for this fetch.
        on_bad_block: told about every refused block (to penalise its source).
        timeout_s: overall deadline, seconds (``None``: no deadline; sources time out on
            their own).
        size: the file's size in bytes when known (an adapter's manifest says it): the root must
            declare exactly that, checked once the root is stored and before any child is fetched.
        survey: peers fetching the same DAG and what they hold (see ``Survey``); ``None``: every
            block from the sources by tier.

    Raises:
        FetchFailed: some blocks are not available from any remaining source.
        FetchTimeout: not done within ``timeout_s``.
        InvalidCID, UnsupportedCID, InvalidDag, LimitExceeded: the DAG itself is unusable.
        SizeMismatch: the root declares another size than ``size``.
    """
    started = time.perf_counter()
    job = _DagFetch(store, sources, on_bad_block, survey)
    with anyio.move_on_after(math.inf if timeout_s is None else timeout_s) as scope:
        stats = await job.run(root, size)
    if scope.cancelled_caught:
        left = await anyio.to_thread.run_sync(store.missing, root)
        raise FetchTimeout(f"fetching {root} timed out after {timeout_s:g} s with {len(left)} block(s) missing", left)
    stats.seconds = time.perf_counter() - started
    return stats


async def fetch_adapter(
    store: BlockStore,
    cid: str,
    sources: Sequence[BlockSource],
    validate_manifest: ManifestValidator,
    base_fingerprint: str,
    *,
    on_bad_block: BadBlockHandler | None = None,
    timeout_s: float | None = None,
    survey: Survey | None = None,
) -> FetchedAdapter:
    """Fetch an adapter by its manifest CID: the manifest, then every block of every file.

    Args:
        store: the node's block store.
        cid: the adapter ID (CIDv1, raw codec).
        sources: see :func:`fetch_dag`.
        validate_manifest: the node's manifest check (raises on a bad manifest).
        base_fingerprint: this node's base; an adapter for another base is refused before
            any of its files is fetched.
        on_bad_block: see :func:`fetch_dag`.
        timeout_s: deadline for the whole adapter, seconds.
        survey: see :func:`fetch_dag`.

    Raises:
        InvalidCID: ``cid`` is not a CIDv1 with the raw codec.
        AdapterRejected: BAD_MANIFEST (the validator's refusal), BASE_MISMATCH, MANIFEST_MISMATCH
            (a file's DAG root declares another size than the manifest: refused before its
            children are fetched).
        FetchFailed, FetchTimeout: blocks unavailable or too slow (``missing`` lists them).
    """
    parsed = parse_cid(cid)
    if parsed.version != 1 or parsed.codec.code != RAW:
        raise InvalidCID(f"adapter ID {cid} must be a CIDv1 with the raw codec (bafk…), as PublishAdapter returns")
    cid = cid_text(parsed)
    deadline = math.inf if timeout_s is None else anyio.current_time() + timeout_s

    def left() -> float | None:
        return None if timeout_s is None else max(deadline - anyio.current_time(), 0.0)

    total = FetchStats()
    started = time.perf_counter()
    try:
        return await _fetch_adapter(store, cid, sources, validate_manifest, base_fingerprint, on_bad_block, left, total, survey)
    except FetchTimeout as e:
        # fetch_dag knows only the time that was left for its part; the caller asked for ``timeout_s``.
        raise FetchTimeout(
            f"fetching adapter {cid} timed out after {timeout_s:g} s with {len(e.missing)} block(s) missing "
            f"(first {e.missing[0] if e.missing else '?'})",
            e.missing,
        ) from None
    finally:
        total.seconds = time.perf_counter() - started


async def _fetch_adapter(
    store: BlockStore,
    cid: str,
    sources: Sequence[BlockSource],
    validate_manifest: ManifestValidator,
    base_fingerprint: str,
    on_bad_block: BadBlockHandler | None,
    left: Callable[[], float | None],
    total: FetchStats,
    survey: Survey | None,
) -> FetchedAdapter:
    total.add(await fetch_dag(store, cid, sources, on_bad_block=on_bad_block, timeout_s=left(), survey=survey))
    raw = await anyio.to_thread.run_sync(store.get, cid)
    try:
        manifest = validate_manifest(raw)
    except AdapterRejected:
        raise
    except Exception as e:  # the hook may raise anything; all of it means "refuse"
        raise AdapterRejected(RejectReason.BAD_MANIFEST, str(e)) from None
    if manifest.base.fingerprint != base_fingerprint:
        raise AdapterRejected(
            RejectReason.BASE_MISMATCH,
            f"adapter {cid} was made for base {manifest.base.name} ({manifest.base.fingerprint}); "
            f"this node serves {base_fingerprint}",
        )
    for f in manifest.files:
        try:
            total.add(
                await fetch_dag(store, f.cid, sources, on_bad_block=on_bad_block, timeout_s=left(), size=f.size, survey=survey)
            )
        except SizeMismatch as e:
            raise AdapterRejected(RejectReason.MANIFEST_MISMATCH, f"{f.name}: {e} (the size the manifest lists)") from None
    return FetchedAdapter(cid, raw, manifest, total)
