"""The chain side of a running node: the chain, the node's account, its ledger and settler, the payment gate.

    embedded (no chain flags)                                  --chain-rpc URL --contracts FILE
    ─────────────────────────                                  ────────────────────────────────
    eth-tester chain in this process (unique genesis)          rpc_chain(URL)
    deploy AdapterRegistry + PaymentChannels from dev acct 0   the Deployment in FILE; chain id and code checked
    fund the node's account from dev account 0                 (the operator funds it; a warning when empty)
    ChainRpcServer on 127.0.0.1:PORT: clients and publishers
    send their own signed transactions there
                       └───────────────────── then, both ─────────────────────┘
    node key (``node_key.node_account``)
    ledger  DATA/ledger/<chain id>-<genesis hash>-<PaymentChannels>.sqlite
            (a fresh embedded chain has a fresh genesis, so it never meets the ledger of a dead one)
    Settler.start: resolve the open batch, reconcile with the chain, then settle every N calls / T seconds
    NodePayments: what the API calls around each call

    stop: Settler.stop(settle=True) (what is owed is settled while the chain is still up) → RPC server → ledger
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..adapters.keys import KeystoreError
from ..config import ChainSettings
from .backends import Chain, dev_accounts, embedded_chain, rpc_chain
from .contracts import AdapterRegistry, Deployment, PaymentChannels, deploy_contracts, send_value
from .errors import ChainError
from .ledger import Ledger
from .node_key import NODE_KEY_FILE, node_account, node_key_passphrase
from .payments import NodePayments
from .rpc_server import ChainRpcServer
from .settlement import Settler

log = logging.getLogger(__name__)

#: Wei a fresh dev node account receives on the embedded chain (gas for settlements).
DEV_NODE_FUNDS_WEI = 1_000 * 10**18


@dataclass(frozen=True)
class ChainInfo:
    """What a client needs to pay this node (``NodeInfo.chain``).

    Attributes:
        rpc_url: where clients send their own signed transactions (the embedded chain's RPC server, or the URL
            the node uses).
        registry / channels: contract addresses; ``channels`` is the vouchers' EIP-712 verifying contract.
        node_fee_per_1k: wei per 1000 tokens added to every publisher's price.
        withdraw_timeout_s: seconds between a client's withdraw request and its refund.
    """

    chain_id: int
    rpc_url: str
    registry: str
    channels: str
    node_address: str
    node_fee_per_1k: int
    embedded: bool
    withdraw_timeout_s: int


class NodeChain:
    """The node's chain services, from ``start()`` to ``stop()``.

    Args:
        settings: the chain settings.
        data_dir: the node's data folder (ledger, default node key).

    Attributes (after ``start``): ``payments`` (the gate the API calls), ``info``, ``ledger_path``, ``account`` (the
    node's key: it signs receipts and serving records).
    """

    def __init__(self, settings: ChainSettings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.payments: NodePayments | None = None
        self.info: ChainInfo | None = None
        self.account = None
        self.ledger_path: Path | None = None
        self._server: ChainRpcServer | None = None
        self._ledger: Ledger | None = None
        self._settler: Settler | None = None

    def start(self) -> None:
        """Connects (or creates) the chain, opens key and ledger, reconciles and starts settling.

        Raises:
            ChainError: the chain cannot be reached, the deployment file is wrong, the node key cannot be opened,
                the ledger belongs to another node, or the ledger and the chain disagree.
        """
        s = self.settings
        try:
            account = node_account(s.node_key or self.data_dir / NODE_KEY_FILE, node_key_passphrase())
        except (KeystoreError, OSError) as exc:
            raise ChainError(f"node key: {exc}") from exc
        self.account = account
        if s.embedded:
            chain, deployment = self._embedded(account.address)
        else:
            chain, deployment = self._rpc(account.address)
        channels = PaymentChannels(chain, deployment.channels)
        genesis = chain.genesis_hash
        self.ledger_path = (
            self.data_dir / "ledger" / f"{deployment.chain_id}-{genesis[2:18]}-{deployment.channels[2:10].lower()}.sqlite"
        )
        self._ledger = Ledger(self.ledger_path, account, channels.domain, genesis)
        timeout = channels.withdraw_timeout_s
        if s.settle_every_seconds * 2 > timeout:
            log.warning(
                "settling every %.0f s leaves little of the %d s withdraw timeout: receipts of a channel closed "
                "before they are settled are lost",
                s.settle_every_seconds,
                timeout,
            )
        self._settler = Settler(
            self._ledger, channels, account, every_calls=s.settle_every_calls, every_seconds=s.settle_every_seconds
        )
        self._settler.start()
        registry = AdapterRegistry(chain, deployment.registry)
        self.payments = NodePayments(
            registry, channels, self._ledger, s.node_fee_per_1k, self._settler, credit_limit_wei=s.credit_limit_wei
        )
        rpc_url = self._server.url if self._server is not None else s.rpc_url
        self.info = ChainInfo(
            deployment.chain_id,
            rpc_url,
            deployment.registry,
            deployment.channels,
            account.address,
            s.node_fee_per_1k,
            s.embedded,
            timeout,
        )

    def _embedded(self, node_address: str) -> tuple[Chain, Deployment]:
        chain = embedded_chain()
        deployer = dev_accounts(1)[0]
        deployment = deploy_contracts(chain, deployer, self.settings.withdraw_timeout_s)
        if chain.w3.eth.get_balance(node_address) < DEV_NODE_FUNDS_WEI:
            send_value(chain, deployer, node_address, DEV_NODE_FUNDS_WEI)
        try:
            self._server = ChainRpcServer(chain, self.settings.port)
        except OSError as exc:
            raise ChainError(f"cannot serve the embedded chain on 127.0.0.1:{self.settings.port}: {exc}") from exc
        self._server.start()
        return chain, deployment

    def _rpc(self, node_address: str) -> tuple[Chain, Deployment]:
        s = self.settings
        assert s.rpc_url is not None and s.contracts is not None  # ChainSettings guarantees both
        try:
            deployment = Deployment.from_json(s.contracts.read_text())
        except (OSError, ValueError) as exc:
            raise ChainError(f"--contracts {s.contracts}: {exc}") from exc
        try:
            chain = rpc_chain(s.rpc_url)
        except ValueError as exc:
            raise ChainError(str(exc)) from exc
        if deployment.chain_id != chain.chain_id:
            raise ChainError(
                f"--contracts {s.contracts} is for chain {deployment.chain_id}, but {s.rpc_url} is chain {chain.chain_id}"
            )
        for name, address in (("AdapterRegistry", deployment.registry), ("PaymentChannels", deployment.channels)):
            if not chain.w3.eth.get_code(address):
                raise ChainError(f"no {name} contract at {address} on {s.rpc_url}; deploy with `openlora-node chain deploy`")
        if chain.w3.eth.get_balance(node_address) == 0:
            log.warning("node account %s holds no ETH on %s: settlement needs gas; fund it", node_address, s.rpc_url)
        return chain, deployment

    def stop(self) -> None:
        """Settles what is owed (when the chain answers), then stops the RPC server and closes the ledger."""
        if self._settler is not None:
            try:
                self._settler.stop(settle=True)
            except ChainError:
                log.exception("final settlement failed; the ledger keeps the receipts for the next start")
            self._settler = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
