"""Python client SDK for an openlora node, sync and async (the CLI's ``openlora`` commands use it).

    with NodeClient("127.0.0.1:50051") as node:
        signer = load_account(default_key_path(), passphrase)       # openlora.adapters.keys
        cid = node.publish("tests/fixtures/adapters/medical", signer).cid
        stream = node.generate("What helps a sore throat?", adapter=cid, temperature=0)
        for text in stream:
            print(text, end="")
        print(stream.done.usage.completion_tokens)

    async with AsyncNodeClient("127.0.0.1:50051", retry=RetryPolicy(max_attempts=6)) as node:
        async for text in node.generate("What helps a sore throat?", adapter=cid):
            print(text, end="")

Proof of serving (README): every finished call comes with the node's signed serving record; a client keeps it
(``stream.served``) and has a verifier node check some of them.

    checker = SpotChecker(NodeClient(verifier_address), rate=0.05)
    response = checker.check(stream.served, node.node_info().chain.node_address)   # None when not drawn
    route(swarm, cid, accused=checker.accused)          # never again to a node caught cheating

Paying (README "Economics"): a ``PaidSession`` (``AsyncPaidSession``) holds the client's key in this process
and pays a node per call.

    session = PaidSession(node, load_account(key_path, passphrase))
    session.open_channel(10**15)        # deposit: a transaction signed here, sent to the chain's JSON-RPC
    stream = session.generate("What helps a sore throat?", adapter=cid, max_new_tokens=64)
    print(stream.text(), stream.receipt.cost)   # the node-signed receipt, checked: cost <= the quote

The parts, one job each:

    builders.py  arguments ─► protobuf requests (shared by both clients)
    retry.py     RetryPolicy: which failures are retried, full-jitter exponential backoff
    streams.py   Generate streams (sync/async, free/paid) and the receipt booking of a paid call
    sync.py      NodeClient          aio.py   AsyncNodeClient
    paying.py    PaidSession, AsyncPaidSession, on-chain registration helpers
    swarm.py     route / aroute: pick a node through the libp2p swarm (never an accused one)
    spotcheck.py SpotChecker: verify a fraction of the calls on a verifier node

Imports only grpc and the generated stubs at import time (no torch); ``publish`` adds the torch-free manifest
code and eth-account, paying adds eth-account and web3, routing adds libp2p. Errors are ``grpc.RpcError`` with
the node's status code and message.
"""

from .aio import AsyncNodeClient
from .builders import PUBLISH_CHUNK_BYTES, adapter_files, chat_messages, generate_request, publish_requests, quote_request
from .paying import AsyncPaidSession, PaidSession, node_contracts, payment_error, register_adapter, revoke_adapter
from .retry import RETRYABLE, RetryPolicy, never_sent
from .spotcheck import SpotChecker, Unaccountable
from .streams import AsyncGenerationStream, AsyncPaidStream, GenerationStream, PaidStream
from .swarm import aroute, route
from .sync import NodeClient

__all__ = [
    "PUBLISH_CHUNK_BYTES",
    "RETRYABLE",
    "AsyncGenerationStream",
    "AsyncNodeClient",
    "AsyncPaidSession",
    "AsyncPaidStream",
    "GenerationStream",
    "NodeClient",
    "PaidSession",
    "PaidStream",
    "RetryPolicy",
    "SpotChecker",
    "Unaccountable",
    "adapter_files",
    "aroute",
    "chat_messages",
    "generate_request",
    "never_sent",
    "node_contracts",
    "payment_error",
    "publish_requests",
    "quote_request",
    "register_adapter",
    "revoke_adapter",
    "route",
]
