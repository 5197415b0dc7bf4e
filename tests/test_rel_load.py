"""The load case in CI: ``scripts/soak.py`` as a subprocess, small (40 clients, 10 adapters, 20 s).

The soak starts a real node, publishes random adapters through the SDK and drives concurrent streaming
Generate calls (see its docstring; docs/RELIABILITY.md "Load"). Here the node's queue is kept small
(``--max-batch 8 --max-waiting 8``: 16 calls in the node at most, against 40 clients), so backpressure
(RESOURCE_EXHAUSTED) must happen, and every other way a call can end is checked from the figures the soak
writes with ``--json``. The full run (200 clients, 50 adapters, 120 s) is ``scripts/soak``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"
CLIENTS, MAX_BATCH, MAX_WAITING = 40, 8, 8
# A 20 s run is too short to see a memory trend through the node's RSS swings (hundreds of MiB for a
# few seconds, then back): the trend is the full soak's check (scripts/soak, docs/RELIABILITY.md L4).
# Here memory must only stay bounded.
NO_TREND_CHECK = "1e9"
MAX_RSS_MIB = 4096


def soak(*args: str, timeout: float = 400.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SOAK), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The soak's exit code, printed report and JSON figures."""
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    proc = soak(
        "--clients", str(CLIENTS), "--adapters", "10", "--duration", "20", "--max-tokens", "8",
        "--max-batch", str(MAX_BATCH), "--max-waiting", str(MAX_WAITING), "--cancel-share", "0.3",
        "--call-timeout", "90", "--max-rss-slope", NO_TREND_CHECK, "--json", str(out),
    )  # fmt: skip
    assert out.exists(), f"no figures written (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.returncode, proc.stdout, json.loads(out.read_text())


def test_rel_load_passes_every_check(run):
    rc, stdout, fig = run
    assert rc == 0, stdout
    assert stdout.rstrip().endswith("soak: PASS")
    assert all(fig["checks"].values()), fig["checks"]


def test_rel_load_only_allowed_codes(run):
    _, stdout, fig = run
    assert fig["unexpected"] == {}, fig["unexpected_samples"]
    assert set(fig["codes"]) == {"OK", "CANCELLED", "RESOURCE_EXHAUSTED"}
    assert fig["adapters_served"] >= 2, "calls should spread over several adapters"


def test_rel_load_every_call_accounted(run):
    _, _, fig = run
    ended = fig["completed"] + fig["cancelled"] + sum(fig["refused"].values())
    assert ended == fig["requests"]
    assert fig["hung"] == 0
    assert fig["tokens"] >= fig["completed"]  # every completed call produced at least one token


def test_rel_load_backpressure(run):
    """40 clients against room for 16 calls: some are refused with RESOURCE_EXHAUSTED, not queued without bound."""
    _, _, fig = run
    assert fig["refused"].get("backpressure", 0) > 0, fig["refused"]
    assert "rate_limit" not in fig["refused"], "each soak client has its own key and stays far below the rate limit"


def test_rel_load_cancel_midway(run):
    _, _, fig = run
    # 0.3 of the accepted calls (20-60 here): that none is cancelled has a chance of about 0.7**20 ≈ 1e-3
    assert fig["cancelled"] > 0, "--cancel-share 0.3 should cancel some calls under load"
    c = fig["cancel_check"]
    assert c == {"streams": 5, "cancelled": 5, "rows_freed": True, "served_after": True}


def test_rel_load_memory_bounded_and_clean_shutdown(run):
    _, _, fig = run
    rss = fig["rss_mib"]
    assert rss["samples"] >= 10, "RSS is sampled every second of the load"
    assert rss["max"] < MAX_RSS_MIB
    assert fig["node_exit_code"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clients", "0"], "--clients must be ≥ 1"),
        (["--rank", "9"], "--rank must be in 1..8"),
        (["--cancel-share", "1.5"], "--base-share and --cancel-share must be in [0, 1]"),
    ],
)
def test_rel_load_bad_flags(args, message):
    proc = soak(*args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr


def _soak_module():
    """scripts/soak.py imported as module ``soak`` (registered first: its dataclasses look themselves up)."""
    if "soak" not in sys.modules:
        spec = importlib.util.spec_from_file_location("soak", SOAK)
        sys.modules["soak"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["soak"])
    return sys.modules["soak"]


@pytest.mark.parametrize("leak_mib_per_min, spike_at_end", [(0, False), (0, True), (60, False), (60, True)])
def test_rel_load_floor_slope_sees_leaks_not_spikes(leak_mib_per_min, spike_at_end):
    """120 one-second samples at 1800 MiB + a leak, with +800 MiB jumps of 5 s twice a minute (as the node shows
    under load); the floor's slope is the leak, whichever second the jumps happen to end on."""
    soak = _soak_module()
    samples = []
    for t in range(120):
        mib = 1800 + leak_mib_per_min * t / 60
        if t % 30 >= 25 or (spike_at_end and t >= 116):
            mib += 800
        samples.append((float(t), int(mib * 2**20)))
    assert soak.rss_floor_slope(samples) == pytest.approx(leak_mib_per_min, abs=5)
