"""Prometheus metrics of one node: what was served, for which adapter, how fast, and what it paid.

    API call (gRPC or HTTP) ──► api/calls.py ──► requests, tokens, TTFT, ITL, payments   (per adapter)
    engine thread ──────────► cache lookups (device / host tier)                         (per tier)
    adapter load (worker) ──► load latency (per adapter), rejections (per reason)
    scrape (GET /metrics) ──► queue depth and running rows, read from the engine at scrape time

Every node has its own :class:`prometheus_client.CollectorRegistry` (never the process-global one),
so two nodes in one process (tests) keep separate series. Label values are bounded: the first
``max_adapters`` adapter CIDs seen get their own ``adapter`` label, later ones share
``adapter="other"``, the base model is ``adapter="base"`` and a call that failed before its
adapter was resolved is ``adapter="unresolved"`` (so unknown CIDs cannot grow the series count).
Latencies are in seconds and amounts in wei, following Prometheus naming conventions
(https://prometheus.io/docs/practices/naming/).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .adapters.reasons import AdapterRejected

__all__ = ["BASE", "CONTENT_TYPE_LATEST", "OTHER", "UNRESOLVED", "AdapterLabels", "NodeMetrics"]

BASE, OTHER, UNRESOLVED = "base", "other", "unresolved"
# TTFT on this CPU runs from ~50 ms (short prompt, idle) to seconds (long prefill, busy batch).
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# one decode step: ~40 ms at batch 1, ~50 ms at batch 8 here; a GPU step is ~10× shorter.
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0)
_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

T = TypeVar("T")


class AdapterLabels:
    """Maps adapter CIDs to a bounded set of ``adapter`` label values. Thread-safe.

    Args:
        max_adapters: CIDs that get their own label (≥ 1); the rest map to ``"other"``.
    """

    def __init__(self, max_adapters: int) -> None:
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be ≥ 1, got {max_adapters}")
        self.max_adapters = max_adapters
        self._own: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, cid: str | None) -> str:
        """The label of ``cid`` (``None``: the base model)."""
        if cid is None:
            return BASE
        with self._lock:
            if cid in self._own:
                return cid
            if len(self._own) < self.max_adapters:
                self._own.add(cid)
                return cid
        return OTHER


class NodeMetrics:
    """The node's metric families and the thin hooks that update them.

    Args:
        max_adapters: adapters with their own label value (``settings.metrics_max_adapters``).

    Attributes:
        registry: this node's registry (what ``GET /metrics`` renders).
        label: the :class:`AdapterLabels` every per-adapter series goes through.
    """

    def __init__(self, max_adapters: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.label = AdapterLabels(max_adapters)
        r = self.registry
        self.requests = Counter(
            "openlora_requests", "Generate calls by API, adapter and outcome (ok, or the gRPC status name).",
            ["api", "adapter", "code"], registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "openlora_tokens",
            "Tokens processed, by adapter and kind (prompt, completion).",
            ["adapter", "kind"],
            registry=r,
        )
        self.ttft = Histogram(
            "openlora_ttft_seconds",
            "Time from submit to first token, seconds.",
            ["adapter"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "openlora_itl_seconds", "Gap between consecutive tokens of one completion, seconds.", ["adapter"],
            buckets=_ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.load = Histogram(
            "openlora_adapter_load_seconds", "Adapter load into the host tier (blockstore read + verify + parse), seconds.",
            ["adapter"], buckets=_LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.cache = Counter(
            "openlora_cache_lookups", "Adapter lookups per tier (device slots, host RAM) and result (hit, miss).",
            ["tier", "result"], registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "openlora_adapter_rejections", "Adapters refused, by stage (publish, fetch, load) and reason.",
            ["stage", "reason"], registry=r,
        )  # fmt: skip
        self.authorized = Counter(
            "openlora_payment_authorized_wei",
            "Wei reserved by accepted vouchers (each call's max cost).",
            ["adapter"],
            registry=r,
        )
        self.charged = Counter(
            "openlora_payment_charged_wei",
            "Wei billed by node-signed receipts (what calls cost).",
            ["adapter"],
            registry=r,
        )
        self.refusals = Counter(
            "openlora_payment_refusals",
            "Calls refused for payment, by reason (the PaymentError name).",
            ["reason"],
            registry=r,
        )
        self._waiting = Gauge("openlora_queue_waiting", "Requests queued, not yet running.", registry=r)
        self._running = Gauge("openlora_running", "Rows in the running batch.", registry=r)
        self._loading = Gauge("openlora_adapter_loads_in_flight", "Adapter loads in progress.", registry=r)

    def watch_engine(self, stats: Callable[[], dict]) -> None:
        """Read queue depth, running rows and loads from ``stats()`` (``Engine.stats``) at scrape time only."""
        self._waiting.set_function(lambda: stats()["waiting"])
        self._running.set_function(lambda: stats()["running"])
        self._loading.set_function(lambda: stats()["loading"])

    def cache_lookup(self, tier: str, hit: bool) -> None:
        """One adapter lookup in ``tier`` (``"device"`` or ``"host"``); called from the engine thread."""
        self.cache.labels(tier, "hit" if hit else "miss").inc()

    def timed_load(self, load: Callable[[str], T]) -> Callable[[str], T]:
        """``load`` (``cid -> adapter``) that records its latency per adapter and its rejections by reason."""

        def timed(cid: str) -> T:
            t0 = time.perf_counter()
            try:
                adapter = load(cid)
            except AdapterRejected as e:
                self.rejected("load", e)
                raise
            self.load.labels(self.label(cid)).observe(time.perf_counter() - t0)
            return adapter

        return timed

    def rejected(self, stage: str, error: AdapterRejected) -> None:
        """One adapter refused at ``stage`` (``publish``, ``fetch``, ``load``)."""
        self.rejections.labels(stage, error.reason.value).inc()

    def finished(
        self,
        cid: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        ttft_ms: float | None,
        itl_ms: tuple[float, ...],
    ) -> None:
        """A call that ran to its end (or was cut short after it ran): tokens, TTFT and ITL of adapter ``cid``."""
        label = self.label(cid)
        self.tokens.labels(label, "prompt").inc(prompt_tokens)
        self.tokens.labels(label, "completion").inc(completion_tokens)
        if ttft_ms is not None:
            self.ttft.labels(label).observe(ttft_ms / 1000.0)
        itl = self.itl.labels(label)
        for gap in itl_ms:
            itl.observe(gap / 1000.0)

    def outcome(self, api: str, cid: str | None, code: str, resolved: bool = True) -> None:
        """One Generate call ended with ``code`` (``ok`` or a gRPC status name) on ``api`` (``grpc``, ``http``)."""
        self.requests.labels(api, self.label(cid) if resolved else UNRESOLVED, code).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
