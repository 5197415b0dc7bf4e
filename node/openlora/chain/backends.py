"""Where the chain lives: in this process (embedded) or behind a JSON-RPC URL.

    embedded_chain()   eth-tester + py-evm in process. Ten dev accounts, derived from the public dev mnemonic
                       (the one anvil and hardhat use), hold 1,000,000 ETH each. Other processes reach it through
                       ``openlora.chain.rpc_server`` and sign their own transactions.
    rpc_chain(url)     any EVM JSON-RPC endpoint (anvil in tests, a real network in production).

Both hand back a ``Chain`` whose ``w3`` speaks the same web3 API, so everything above (contracts, settlement)
is written once. Reverts look the same on both: the embedded provider answers like a JSON-RPC node would
(``{"code": 3, "message": "execution reverted", "data": "0x<selector><args>"}``), so web3 raises
``ContractCustomError`` with the revert data in both cases.

A JSON-RPC endpoint that stops answering (refused, reset, timed out) raises ``ChainUnreachable`` from every call,
so callers can tell an outage (run on credit, retry later) from a chain that answered no.

Transactions are always signed locally (``eth_sendRawTransaction``): no key ever leaves the process that owns it.
"""

from __future__ import annotations

import ast
import os
import threading
from abc import ABC, abstractmethod
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.types import RPCEndpoint, RPCResponse

from .errors import ChainError, ChainUnreachable

#: The well-known development mnemonic (anvil's and hardhat's default). Its keys are public: dev chains only.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
#: BIP-44 path prefix of the dev accounts; account i is ``f"{DEV_HD_PATH}/{i}"``.
DEV_HD_PATH = "m/44'/60'/0'/0"
DEV_ACCOUNT_COUNT = 10


def dev_accounts(count: int = DEV_ACCOUNT_COUNT) -> list[LocalAccount]:
    """The first ``count`` accounts of ``DEV_MNEMONIC``: funded on the embedded chain and on a default anvil.

    Raises:
        ValueError: ``count`` is not in 1..DEV_ACCOUNT_COUNT (only those are funded).
    """
    if not 1 <= count <= DEV_ACCOUNT_COUNT:
        raise ValueError(f"count must be 1..{DEV_ACCOUNT_COUNT}, got {count}")
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(DEV_MNEMONIC, account_path=f"{DEV_HD_PATH}/{i}") for i in range(count)]


class Chain(ABC):
    """A connected EVM chain.

    Attributes:
        w3: the web3 client; safe to share between threads.
        url: the JSON-RPC URL for ``"rpc"`` chains, ``None`` for the embedded one.
        fixed_gas: gas limit given to every transaction instead of estimating it, or ``None`` to estimate.
    """

    fixed_gas: int | None = None

    def __init__(self, w3: Web3, url: str | None = None) -> None:
        self.w3 = w3
        self.url = url
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        """The EIP-155 chain id (read once)."""
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        return self._chain_id

    @property
    def genesis_hash(self) -> str:
        """Hex hash of block 0: tells two chain instances with one chain id apart (each embedded chain is new)."""
        return "0x" + bytes(self.w3.eth.get_block(0)["hash"]).hex()

    def block_timestamp(self) -> int:
        """Timestamp of the latest block, unix seconds."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    @abstractmethod
    def advance_time(self, seconds: int) -> None:
        """Dev chains only: moves the clock so that the next transaction runs ``seconds`` (or more) later.

        Raises:
            ChainError: the chain does not support time travel (a real network).
        """


class EmbeddedChain(Chain):
    """eth-tester + py-evm in this process; see ``embedded_chain``."""

    # eth-tester estimates gas by a binary search (~15 EVM runs, most of a transaction's time); a fixed limit
    # (half the 30M block gas limit) plus one eth_call to catch reverts is several times faster. Only gas
    # used is paid.
    fixed_gas = 15_000_000

    def __init__(self, provider: _EmbeddedProvider) -> None:
        super().__init__(Web3(provider))
        self.provider = provider

    def advance_time(self, seconds: int) -> None:
        tester = self.provider.ethereum_tester
        with self.provider.lock:
            tester.time_travel(self.block_timestamp() + int(seconds))


class RpcChain(Chain):
    """A chain behind an HTTP JSON-RPC URL; see ``rpc_chain``."""

    def advance_time(self, seconds: int) -> None:
        try:
            self.w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [int(seconds)])
            response = self.w3.provider.make_request(RPCEndpoint("evm_mine"), [])
        except Exception as exc:  # any transport or RPC failure means: this chain cannot time travel
            raise ChainError(f"{self.url} does not support evm_increaseTime/evm_mine: {exc}") from exc
        if "error" in response:
            raise ChainError(f"{self.url} refused evm_mine: {response['error']}")


class _EmbeddedProvider(EthereumTesterProvider):
    """eth-tester provider that is safe across threads and reports reverts like a JSON-RPC node."""

    def __init__(self) -> None:
        from eth_tester import EthereumTester, PyEVMBackend

        # Random extra data makes every embedded chain's genesis (and so its hash) unique, even for two
        # started within the same second: the node keys its ledger by that hash.
        genesis = PyEVMBackend.generate_genesis_params(overrides={"extra_data": os.urandom(32)})
        backend = PyEVMBackend(genesis_parameters=genesis, mnemonic=DEV_MNEMONIC, hd_path=DEV_HD_PATH)
        super().__init__(EthereumTester(backend))
        # py-evm and eth-tester are not thread safe; every request (from this process's web3 or from the RPC
        # server's threads) goes through this lock.
        self.lock = threading.RLock()

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        from eth_tester.exceptions import TransactionFailed

        with self.lock:
            try:
                return super().make_request(method, params)
            except TransactionFailed as exc:
                return _revert_response(exc)


def _revert_response(exc: Exception) -> RPCResponse:
    # web3's eth-tester glue re-raises reverts as text; the revert data sits on the original exception, as
    # bytes (transactions, gas estimates) or as the repr of those bytes (eth_call: eth-tester applies str()).
    original = exc.__context__ if exc.__context__ is not None else exc
    raw = original.args[0] if original.args else b""
    if isinstance(raw, Exception):
        raw = raw.args[0] if raw.args else b""
    if isinstance(raw, str) and raw.startswith(("b'", 'b"')):
        raw = ast.literal_eval(raw)  # web3 parses eth-tester's CCIP reverts the same way
    error: dict[str, Any] = {"code": 3, "message": "execution reverted"}
    if isinstance(raw, bytes):
        error["data"] = "0x" + raw.hex()
    else:
        error["message"] = f"execution reverted: {raw}"
    return {"jsonrpc": "2.0", "id": 0, "error": error}  # type: ignore[typeddict-item]


class _RpcProvider(HTTPProvider):
    """web3's HTTP provider, with transport failures raised as ``ChainUnreachable``."""

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        try:
            return super().make_request(method, params)
        except requests.RequestException as exc:
            raise ChainUnreachable(f"the chain RPC {self.endpoint_uri} did not answer {method}: {exc}") from exc


def embedded_chain() -> EmbeddedChain:
    """A fresh in-process chain (post-merge, Prague rules) with ``dev_accounts()`` funded and a genesis hash
    no other embedded chain shares."""
    return EmbeddedChain(_EmbeddedProvider())


def rpc_chain(url: str, timeout_s: float = 30.0) -> RpcChain:
    """Connects to the EVM JSON-RPC endpoint at ``url`` (http/https).

    Raises:
        ValueError: ``url`` is not an http(s) URL.
        ChainError: nothing answers ``eth_chainId`` there.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"chain RPC URL must start with http:// or https://, got {url!r}")
    w3 = Web3(_RpcProvider(url, request_kwargs={"timeout": timeout_s}))
    chain = RpcChain(w3, url)
    try:
        _ = chain.chain_id
    except Exception as exc:  # connection refused, timeout, not JSON-RPC: all mean "no chain there"
        raise ChainError(f"no EVM JSON-RPC endpoint answers at {url}: {exc}") from exc
    return chain
