"""A node's payment side in a subprocess, for kill -9 tests (run by test_chain_settlement.py, not by pytest).

    chain_crash_child.py steps   PLAN  die the process with SIGKILL right after step --die-after
    chain_crash_child.py loop    PLAN  serve the plan with a background settler (every 2 calls) until killed
    chain_crash_child.py recover       reopen the ledger, reconcile, settle everything owed, print a summary

PLAN is a JSON file of calls: {"client", "epoch", "amount", "signature" (hex), "cid", "max_tokens", "tokens"},
signed by the test (the client); this process is only the node. Settings come from the environment:
OPENLORA_TEST_RPC (the test's embedded chain over JSON-RPC), OPENLORA_TEST_REGISTRY, OPENLORA_TEST_CHANNELS,
OPENLORA_TEST_LEDGER, OPENLORA_TEST_NODE_KEY. Every step prints one line and flushes it before going on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from eth_account import Account

from openlora.chain.backends import rpc_chain
from openlora.chain.contracts import AdapterRegistry, PaymentChannels
from openlora.chain.errors import StaleVoucher
from openlora.chain.ledger import Ledger
from openlora.chain.payments import NodePayments
from openlora.chain.records import SignedVoucher, Voucher
from openlora.chain.settlement import Settler

NODE_FEE = 500
STEPS = ("authorized", "finalized", "prepared", "submitted")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["steps", "loop", "recover"])
    parser.add_argument("plan", nargs="?")
    parser.add_argument("--die-after", choices=STEPS)
    args = parser.parse_args()

    env = os.environ
    chain = rpc_chain(env["OPENLORA_TEST_RPC"])
    node = Account.from_key(env["OPENLORA_TEST_NODE_KEY"])
    registry = AdapterRegistry(chain, env["OPENLORA_TEST_REGISTRY"])
    channels = PaymentChannels(chain, env["OPENLORA_TEST_CHANNELS"])
    ledger = Ledger(env["OPENLORA_TEST_LEDGER"], node, channels.domain, chain.genesis_hash)
    every_calls = 2 if args.mode == "loop" else 10**6
    settler = Settler(ledger, channels, node, every_calls=every_calls, every_seconds=3600)
    payments = NodePayments(registry, channels, ledger, NODE_FEE, settler)

    def step(name: str, die: bool = True) -> None:
        print(name, flush=True)
        if die and name == args.die_after:
            os.kill(os.getpid(), signal.SIGKILL)

    if args.mode == "recover":
        settler.recover()
        batches = 0
        while (result := settler.settle_now()) is not None:
            batches += result.ok
        print(json.dumps({"batches": batches}), flush=True)
        return

    plan = json.load(open(args.plan))
    if args.mode == "loop":
        settler.start()
    for i, call in enumerate(plan):
        adapter = bytes.fromhex(call["adapter"])
        voucher = Voucher(call["client"], node.address, call["epoch"], call["amount"], adapter, call["price"], call["amount"])
        try:
            signed = SignedVoucher(voucher, bytes.fromhex(call["signature"]))
            auth = payments.authorize(signed, call["cid"], call["max_tokens"], call["publisher"])
        except StaleVoucher:  # accepted by an earlier run of this plan
            continue
        step("authorized", die=i == len(plan) - 1)
        payments.finalize(auth, call["tokens"])
        step("finalized", die=i == len(plan) - 1)
    if args.mode == "loop":
        settler.stop(settle=True)
        print("done", flush=True)
        return
    batch = settler.prepare()
    step("prepared")
    receipt = settler.submit(batch)
    step("submitted")
    settler.record(batch, receipt)
    print("recorded", flush=True)


if __name__ == "__main__":
    sys.exit(main())
