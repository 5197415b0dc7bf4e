"""Demo of the whole marketplace on one machine (everything on 127.0.0.1).

    dev chain ─ one in-process EVM in its own process (python -m openlora.chain.rpc_server)
    node A    ─ joins the chain; fee 3e12 wei per 1k tokens
    node B    ─ joins the chain and the swarm through A; fee 1e12 (the cheaper one)
    publisher ─ signs and publishes the medical, legal and finance adapters on A at a price per 1k tokens
                and a royalty, and registers them on chain
    client    ─ knows only A's multiaddr: asks the swarm which node to use (B: cheaper; B has never seen
                the adapters and fetches them from A by CID, verifying every block), opens a payment
                channel to B, and asks the same question of the base model and of each adapter, paying
                per call with vouchers
    at the end: the on-chain attribution per adapter (settled calls, tokens, publisher earnings)

The accounts are dev accounts of the public dev mnemonic (funded on the dev chain only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from openlora.adapters.keys import write_keystore
from openlora.chain.backends import dev_accounts
from openlora.client import NodeClient, PaidSession, register_adapter, route
from openlora.local import ChainProcess, NodeProcess

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ROOT / "tests" / "fixtures" / "adapters"
DOMAINS = ("medical", "legal", "finance")
PRICE = {"medical": 4 * 10**12, "legal": 6 * 10**12, "finance": 5 * 10**12}  # wei per 1000 tokens
ROYALTY_BPS = 7000  # the publisher's share of each settled call of its adapter
FEE_A, FEE_B = 3 * 10**12, 10**12
DEPOSIT = 10**16  # wei the client escrows for node B


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".data" / "demo")
    ap.add_argument("--question", default=json.loads((ROOT / "scripts" / "demo_data" / "eval.json").read_text())["shared"][0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--engine", choices=["torch", "vllm"], default="torch", help="the engine both nodes serve with")
    args = ap.parse_args()

    shutil.rmtree(args.data_dir, ignore_errors=True)  # a fresh chain each run: start the nodes fresh too
    args.data_dir.mkdir(parents=True)
    publisher, client_key, key_a, key_b = (dev_accounts(7)[i] for i in (1, 2, 5, 6))
    for name, account in (("node-a", key_a), ("node-b", key_b)):
        write_keystore(args.data_dir / f"{name}-key.json", account, "", scrypt_n=2**10)

    say("starting a dev chain, then node A and node B (the first start converts the base model once, ~20 s) ...")
    chain = ChainProcess(args.data_dir / "contracts.json")
    nodes: list[NodeProcess] = []
    try:
        chain_flags = ("--chain-rpc", chain.url, "--contracts", str(chain.deployment_file), "--engine", args.engine)
        a = NodeProcess(
            args.data_dir / "a", *chain_flags, "--node-key", str(args.data_dir / "node-a-key.json"),
            "--node-fee-per-1k", str(FEE_A), timeout=420,
        )  # fmt: skip
        nodes.append(a)
        a_multiaddr = a.ready_line.split("p2p=")[1].split()[0]
        b = NodeProcess(
            args.data_dir / "b", *chain_flags, "--node-key", str(args.data_dir / "node-b-key.json"),
            "--node-fee-per-1k", str(FEE_B), "--bootstrap", a_multiaddr, "--settle-every-calls", "3",
            "--settle-every-seconds", "5", timeout=420,
        )  # fmt: skip
        nodes.append(b)
        say(f"  chain   {chain.url}")
        say(f"  node A  gRPC {a.address}  {a_multiaddr}")
        say(f"  node B  gRPC {b.address}  bootstrapped to A\n")

        cids: dict[str, str] = {}
        with NodeClient(a.address, timeout=120) as node_a:
            for domain in DOMAINS:
                resp = node_a.publish(ADAPTERS / domain, publisher, name=domain, price_per_1k_tokens=PRICE[domain], royalty_bps=ROYALTY_BPS)
                cids[domain] = resp.cid
                register_adapter(node_a, resp.cid, publisher)
                say(f"publisher: published {domain:8s} {resp.cid}  ({PRICE[domain]:.0e} wei/1k tokens, royalty {ROYALTY_BPS / 100:.0f}%), registered on chain")

        entry = route(a_multiaddr, cids["medical"])
        say(f"\nclient: the swarm suggests {entry.grpc_address} (fee {entry.node_fee_per_1k_wei:.0e} wei/1k tokens, load {entry.load:.2f})")
        with NodeClient(entry.grpc_address, timeout=300) as node:
            session = PaidSession(node, client_key)
            session.open_channel(DEPOSIT)
            say(f"client: deposited {DEPOSIT:.0e} wei in a payment channel to that node\n")
            say(f"Question: {args.question}\n")
            for label, cid in [("base model", None)] + [(f"{d} adapter", cids[d]) for d in DOMAINS]:
                say(f"── {label} " + "─" * (66 - len(label)))
                t0 = time.monotonic()
                stream = session.generate(args.question, adapter=cid, temperature=0, max_new_tokens=args.max_tokens)
                for text in stream:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                u = stream.done.usage
                paid = f", paid {stream.receipt.cost} wei (receipt signed by the node)" if getattr(stream, "receipt", None) else ", free"
                say(f"\n   [{u.prompt_tokens}+{u.completion_tokens} tokens, {time.monotonic() - t0:.1f} s{paid}]\n")

            fetched = sum("fetched from the swarm and verified" in line for line in b.stderr)
            say(f"node B fetched {fetched} adapter(s) from the swarm by CID, every block verified")
            say("waiting for the node to settle the calls on chain ...")
            deadline = time.monotonic() + 60
            while True:
                usage = {u.adapter: u for u in node.usage()}
                if all(usage.get(c) and usage[c].calls for c in cids.values()) or time.monotonic() > deadline:
                    break
                time.sleep(1)
        say("\nOn-chain attribution (AdapterUsage events, settled in one transaction per batch):\n")
        say(f"{'adapter':9s} {'CID':61s} {'calls':>5s} {'tokens':>7s} {'publisher earned (wei)':>23s}")
        for domain, cid in cids.items():
            u = usage.get(cid)
            say(f"{domain:9s} {cid:61s} {u.calls if u else 0:5d} {u.tokens if u else 0:7d} {u.publisher_earnings_wei if u else '0':>23s}")
    finally:
        for node in reversed(nodes):
            node.stop()
        chain.stop()
        say("\nnodes and chain stopped")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENLORA_KEY_PASSPHRASE", "")
    raise SystemExit(main())
