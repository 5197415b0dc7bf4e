"""The swarm scale test, CI size: 12 p2p-only peer processes on 127.0.0.1 (scripts/swarm_sim.py).

What is asserted is functional: every peer is reached by every announcement, every DHT lookup
finds the provider before and after a quarter of the peers is killed and replaced, the ten
concurrent fetches end with the bytes the provider holds, and no peer's memory runs away. The
timings the script prints are read from its table (README, Swarm), never asserted here. The
script stops every peer process it started, by PID, before it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from openlora.p2p.host import HIGH_WATER, LOW_WATER

ROOT = Path(__file__).resolve().parent.parent
PEER_RSS_LIMIT_MIB = 1024  # a p2p-only peer sits near 150 MiB; a leak over the run would show


def test_a_12_peer_swarm_reaches_everyone_finds_every_provider_and_survives_churn(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "swarm_sim.py"), "--peers", "12", "--lookups", "12",
         "--announcements", "3", "--settle", "2", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failures"] == []
    assert result["reach"]["missed"] == 0 and result["reach"]["reached"] == 3 * 11
    assert result["dht"]["failed"] == 0 and result["dht"]["lookups"] == 12
    assert result["fetch"]["bytes_equal"] and result["fetch"]["fetchers"] == 10
    assert result["churn"]["killed"] == 3 and result["churn"]["joined"] == 3
    assert result["after_churn"]["failed"] == 0 and result["after_churn"]["lookups"] == 12
    assert result["churn"]["rss_max_mib"] < PEER_RSS_LIMIT_MIB
    assert "gossip reach p50 / p99" in proc.stdout  # the table is printed
    assert result["water"] == [LOW_WATER, HIGH_WATER]  # the driver's copy of the node's connection defaults
