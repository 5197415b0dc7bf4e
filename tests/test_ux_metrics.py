"""The node's Prometheus metrics (openlora.metrics) without a node: bounded adapter labels, one registry
per node, the load / call / engine hooks, and the text format a scraper reads.

The same series from a real node after real calls are checked in test_ux_http.py.
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from openlora.adapters.reasons import AdapterRejected, RejectReason
from openlora.metrics import BASE, OTHER, UNRESOLVED, AdapterLabels, NodeMetrics


def samples(m: NodeMetrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``m``'s registry, parsed back from the text a scrape returns."""
    text = m.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def labels(**kv: str) -> frozenset:
    return frozenset(kv.items())


@pytest.mark.parametrize("bound", [1, 3])
def test_adapter_labels_are_bounded(bound):
    label = AdapterLabels(bound)
    cids = [f"bafk{i}" for i in range(bound + 2)]
    assert [label(c) for c in cids] == cids[:bound] + [OTHER, OTHER]
    assert [label(c) for c in cids] == cids[:bound] + [OTHER, OTHER]  # stable on repeat
    assert label(None) == BASE


def test_adapter_labels_refuse_zero():
    with pytest.raises(ValueError, match="max_adapters must be ≥ 1"):
        AdapterLabels(0)


def test_each_node_has_its_own_registry():
    a, b = NodeMetrics(4), NodeMetrics(4)
    a.outcome("grpc", "bafkA", "OK")
    assert samples(a)[("openlora_requests_total", labels(api="grpc", adapter="bafkA", code="OK"))] == 1
    assert ("openlora_requests_total", labels(api="grpc", adapter="bafkA", code="OK")) not in samples(b)
    assert not [m for m in REGISTRY.collect() if m.name.startswith("openlora_")]


def test_outcome_before_resolution_is_unresolved():
    m = NodeMetrics(1)
    m.outcome("http", None, "NOT_FOUND", resolved=False)
    m.outcome("http", None, "OK")
    s = samples(m)
    assert s[("openlora_requests_total", labels(api="http", adapter=UNRESOLVED, code="NOT_FOUND"))] == 1
    assert s[("openlora_requests_total", labels(api="http", adapter=BASE, code="OK"))] == 1


def test_finished_counts_tokens_and_latencies_in_seconds():
    m = NodeMetrics(2)
    m.finished("bafkA", prompt_tokens=30, completion_tokens=4, ttft_ms=120.0, itl_ms=(40.0, 45.0, 50.0))
    m.finished("bafkA", prompt_tokens=10, completion_tokens=0, ttft_ms=None, itl_ms=())
    s = samples(m)
    assert s[("openlora_tokens_total", labels(adapter="bafkA", kind="prompt"))] == 40
    assert s[("openlora_tokens_total", labels(adapter="bafkA", kind="completion"))] == 4
    assert s[("openlora_ttft_seconds_count", labels(adapter="bafkA"))] == 1
    assert s[("openlora_ttft_seconds_sum", labels(adapter="bafkA"))] == pytest.approx(0.12)
    assert s[("openlora_itl_seconds_count", labels(adapter="bafkA"))] == 3
    assert s[("openlora_itl_seconds_bucket", labels(adapter="bafkA", le="0.04"))] == 1


def test_timed_load_records_latency_and_rejections():
    m = NodeMetrics(2)

    def load(cid: str) -> str:
        if cid == "bad":
            raise AdapterRejected(RejectReason.HASH_MISMATCH, "block changed")
        if cid == "gone":
            raise OSError("disk")
        return f"adapter {cid}"

    timed = m.timed_load(load)
    assert timed("bafkA") == "adapter bafkA"
    with pytest.raises(AdapterRejected):
        timed("bad")
    with pytest.raises(OSError):
        timed("gone")
    s = samples(m)
    assert s[("openlora_adapter_load_seconds_count", labels(adapter="bafkA"))] == 1
    assert s[("openlora_adapter_rejections_total", labels(stage="load", reason="hash_mismatch"))] == 1
    assert ("openlora_adapter_load_seconds_count", labels(adapter="bad")) not in s


def test_engine_gauges_are_read_at_scrape_time():
    m = NodeMetrics(1)
    state = {"running": 0, "waiting": 0, "loading": 0}
    m.watch_engine(lambda: state)
    state.update(running=3, waiting=7, loading=1)
    s = samples(m)
    assert s[("openlora_running", labels())] == 3
    assert s[("openlora_queue_waiting", labels())] == 7
    assert s[("openlora_adapter_loads_in_flight", labels())] == 1


def test_cache_lookups_by_tier_and_result():
    m = NodeMetrics(1)
    for tier, hit in (("device", True), ("device", False), ("host", False), ("device", True)):
        m.cache_lookup(tier, hit)
    s = samples(m)
    assert s[("openlora_cache_lookups_total", labels(tier="device", result="hit"))] == 2
    assert s[("openlora_cache_lookups_total", labels(tier="device", result="miss"))] == 1
    assert s[("openlora_cache_lookups_total", labels(tier="host", result="miss"))] == 1
