"""scripts/demo.py, the README's first command, runs to completion and shows what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_marketplace_end_to_end(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--data-dir", str(tmp_path / "demo"), "--max-tokens", "24"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    node_b = re.search(r"node B  gRPC (\S+)", text).group(1)
    assert f"the swarm suggests {node_b}" in text  # routed to the cheaper node, not the publisher's
    assert "node B fetched 3 adapter(s) from the swarm" in text
    for prefix in ("Clinical note:", "Legal view:", "Finance note:"):
        assert prefix in text
    assert text.count("(receipt signed by the node)") == 3 and "free]" in text  # base model calls are free
    rows = re.findall(r"^(medical|legal|finance)\s+(bafkrei\w+)\s+(\d+)\s+(\d+)\s+(\d+)$", text, re.M)
    assert {r[0] for r in rows} == {"medical", "legal", "finance"}
    assert all(int(calls) == 1 and int(tokens) > 0 and int(earned) > 0 for _, _, calls, tokens, earned in rows)
    assert "nodes and chain stopped" in text
