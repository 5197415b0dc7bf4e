"""The benchmark scripts run end to end and keep their JSON contracts (issue 3).

Tiny workloads: this checks that the scripts work and report every figure, not how fast anything
is (performance is read from the scripts' own output, never asserted in tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVING_KEYS = {"tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"}


def _run(script: str, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_bench_serving_reports_every_system_and_the_ratios(tmp_path, base_source):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    _run(
        "bench_serving.py", "--requests", "4", "--adapters", "3", "--concurrency", "2", "--prompt-len", "8",
        "--output-len", "3", "--threads", "2", "--vllm-eager", "--rounds", "2", "--json", str(out), "--plot", str(png),
    )  # fmt: skip
    result = json.loads(out.read_text())
    for system in ("base", "engine", "peft_mixed", "peft_swap", "vllm_nolora", "vllm_base", "vllm", "vllm_stock"):
        assert SERVING_KEYS <= result[system].keys(), system
        rounds = result[system]["tokens_per_s_rounds"]
        assert len(rounds) == 2 and all(t > 0 for t in rounds), system
        assert result[system]["tokens_per_s"] == pytest.approx(sum(rounds) / 2)  # the median of two
        assert result[system]["tokens"] == 4 * 3
    assert set(result["ratios"]) == {
        "mixed_vs_best_base", "engine_vs_base", "base_vs_vllm_nolora", "engine_vs_peft_mixed", "engine_vs_peft_swap",
        "vllm_vs_engine", "vllm_vs_vllm_nolora", "vllm_base_vs_vllm_nolora", "vllm_vs_vllm_stock",
    }  # fmt: skip
    tps = {name: result[name]["tokens_per_s"] for name in result if name not in ("ratios", "best", "workload")}
    best_mixed, best_base = max(("engine", "vllm"), key=tps.get), max(("base", "vllm_nolora", "vllm_base"), key=tps.get)
    assert result["best"] == {"mixed": best_mixed, "base": best_base}
    pairs = {
        "mixed_vs_best_base": (best_mixed, best_base), "engine_vs_base": ("engine", "base"),
        "base_vs_vllm_nolora": ("base", "vllm_nolora"), "vllm_vs_vllm_nolora": ("vllm", "vllm_nolora"),
        "vllm_base_vs_vllm_nolora": ("vllm_base", "vllm_nolora"), "vllm_vs_vllm_stock": ("vllm", "vllm_stock"),
    }  # fmt: skip
    for name, (a, b) in pairs.items():
        assert result["ratios"][name] == pytest.approx(tps[a] / tps[b]), name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_adapters_reports_memory_and_swap_time(tmp_path, base_source):
    out = tmp_path / "adapters.json"
    _run("bench_adapters.py", "--adapters", "6", "--slots", "2", "--swaps", "12", "--json", str(out))
    result = json.loads(out.read_text())
    assert result["adapters"] == 6
    assert result["adapter_file_bytes"] > 0 and isinstance(result["rss_growth_vs_adapter_bytes"], float)
    for key in ("publish_ms_p50", "load_verify_ms_p50", "swap_ms_p50", "swap_ms_p99"):
        assert result[key] > 0, key
    assert result["swap_ms_p99"] >= result["swap_ms_p50"]


def test_profile_step_prints_both_tables_with_the_kernels_it_ran(base_source):
    from openlora.engine import cpu_kernels

    out = _run("profile_step.py", "--rows", "2", "--prompt-len", "4", "--steps", "1", "--top", "40")
    base, _, adapters = out.partition("== 2 distinct adapters")
    assert base.startswith("== base rows: decode step median") and adapters.startswith(": decode step median")
    if cpu_kernels.available():  # a bf16 base on a CPU that builds the kernels: both on the step's path
        assert "openlora_cpu::decode_attention" in base and "openlora_cpu::bgmv" not in base
        assert "openlora_cpu::bgmv" in adapters


def test_bench_slots_prints_both_layouts_and_the_bytes_they_reserve(tmp_path, base_source):
    out = tmp_path / "slots.json"
    text = _run("bench_slots.py", "--mix", "4:3,16:1", "--targets", "all", "--prompt-len", "4", "--steps", "1", "--json", str(out))
    assert "one bucket" in text and "rank buckets" in text
    result = json.loads(out.read_text())
    one, buckets = result["layouts"]["one bucket"], result["layouts"]["rank buckets"]
    assert (one["layout"], buckets["layout"]) == ("16:4", "4:3,16:1")
    # every adaptable linear targeted: an exact bucket holds an adapter in exactly its own bytes
    assert buckets["slot_vs_own_bytes_by_rank"] == pytest.approx({"4": 1.0, "16": 1.0})
    assert one["slot_vs_own_bytes_by_rank"] == pytest.approx({"4": 4.0, "16": 1.0})
    # pools: 1 + 3·4 + 16 rank rows against 1 + 4·16 (plus one float32 scaling per slot and layer)
    assert result["pool_bytes_buckets_vs_one"] == pytest.approx(29 / 65, rel=1e-3)
    assert one["decode_step_ms"] > 0 and buckets["decode_step_ms"] > 0


@pytest.mark.slow
def test_bench_structured_reports_each_system_and_the_ratios(tmp_path, base_source):
    out = tmp_path / "structured.json"
    _run("bench_structured.py", "-n", "4", "-c", "2", "--output-len", "6", "--rounds", "1", "--json", str(out))
    result = json.loads(out.read_text())
    for system in ("free", "json_schema", "mixed"):
        assert SERVING_KEYS <= result[system].keys() and result[system]["tokens"] > 0, system
    assert 0 < result["free"]["tokens"] <= 4 * 6  # each free row as long as its constrained twin
    for name in ("json_schema_vs_free", "mixed_vs_free"):
        system = name.removesuffix("_vs_free")
        want = result[system]["tokens_per_s"] / result["free"]["tokens_per_s"]
        assert result["ratios"][name]["tokens_per_s"] == pytest.approx(want), name
