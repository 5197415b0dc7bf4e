"""Demo: one node, one resident base model, three domain adapters addressed by CID.

Starts ``openlora-node`` on a free loopback port (data in .data/demo), publishes the medical,
legal and finance adapters from tests/fixtures/adapters (signed by a throwaway publisher key;
real publishers make theirs with `openlora-node keys new`), asks the same question of the base
model and of each adapter (greedy, streamed), then stops the node.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from eth_account import Account

from openlora.client import NodeClient
from openlora.local import NodeProcess

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ROOT / "tests" / "fixtures" / "adapters"
DOMAINS = ("medical", "legal", "finance")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".data" / "demo")
    ap.add_argument("--question", default=json.loads((ROOT / "scripts" / "demo_data" / "eval.json").read_text())["shared"][0])
    ap.add_argument("--max-tokens", type=int, default=80)
    args = ap.parse_args()

    print("starting openlora-node (first run converts the base model once, ~20 s) ...", flush=True)
    t0 = time.monotonic()
    node = NodeProcess(args.data_dir)
    print(node.ready_line.strip(), f"({time.monotonic() - t0:.1f} s)\n", flush=True)
    try:
        with NodeClient(node.address, timeout=300) as client:
            publisher = Account.create()
            cids = {}
            for domain in DOMAINS:
                cids[domain] = client.publish(ADAPTERS / domain, publisher, name=domain).cid
                print(f"published {domain:8s} {cids[domain]}")
            print(f"\nQuestion: {args.question}\n")
            for label, cid in [("base model", None)] + [(f"{d} adapter", cids[d]) for d in DOMAINS]:
                print(f"── {label} " + "─" * (60 - len(label)))
                stream = client.generate(args.question, adapter=cid, temperature=0, max_new_tokens=args.max_tokens)
                for text in stream:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                u = stream.done.usage
                print(f"\n   [{u.completion_tokens} tokens, ttft {stream.done.ttft_ms:.0f} ms]\n")
    finally:
        node.stop()
        print("node stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
