"""Pay per call, attribute per adapter: the node's chain layer.

    client                                  node                                        chain
    ──────                                  ────                                        ─────
    Payer.deposit ── signed raw tx ────────────────────────────────────────────────►  PaymentChannels.deposit
    GetQuote ─────────────────────────────► NodePayments.price_call ── AdapterRegistry ►  publisher price + royalty
    Payer.pay(max cost, adapter, price)
      → EIP-712 voucher ──────────────────► NodePayments.open_call
                                              vouchers.check_voucher + Ledger (SQLite,
                                              WAL, fsync) ── persisted before tokens ──
                                            … stream tokens …
    Payer.accept(receipt) ◄──────────────── NodePayments.close_call → node-signed receipt
                                            Settler: every N calls / T s, one tx ─────►  PaymentChannels.settle
                                              (exactly once across kill -9)              royalty → publisher,
                                                                                         rest → node,
                                                                                         AdapterUsage events
    openlora usage ─────────────────────────────────────── attribution.usage_report ─►  per-adapter totals

Modules, one job each:

    backends      where the chain is: embedded (eth-tester + py-evm) or any JSON-RPC URL (anvil, a network)
    rpc_server    the embedded chain over HTTP on 127.0.0.1, for clients in other processes (raw txs only)
    contracts     artifacts, deployment, typed wrappers, local signing, decoded custom-error reverts
    records       the plain data types (vouchers, receipts, channel state, usage)
    vouchers      EIP-712 vouchers and receipts; the node's voucher check
    pricing       quotes and costs (wei per 1k tokens, rounded up)
    ledger        the node's durable record of vouchers, receipts and settlement batches
    settlement    batched, crash-safe settlement
    payments      the node-side gate the API calls (quote, authorize, finalize, void)
    payer         the client side (deposit, vouchers, receipt checks)
    pinning       which contracts a client trusts (pinned deployment, code equal to the artifacts)
    audit         a client's check of what a node charged and claimed, from its signed receipts
    attribution   reading the on-chain usage record
    errors        typed errors; PaymentError subclasses name the gRPC status to answer with
    wire          vouchers and receipts ↔ their ``openlora.v1`` protobuf messages
    node_key      the node's own account (keystore, generated on first start)
    service       the chain side of a running node: chain, key, ledger, settler, gate; start and stop
"""
