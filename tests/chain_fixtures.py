"""Shared pieces of the chain tests: a fresh deployment on the embedded chain, anvil on 127.0.0.1, CIDs.

Test modules import the fixtures they use by name, with those they depend on
(``from chain_fixtures import base_world, world``).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from multiformats import CID, multihash

from openlora.chain.backends import Chain, dev_accounts, embedded_chain
from openlora.chain.contracts import AdapterRegistry, Deployment, PaymentChannels, deploy_contracts

ROOT = Path(__file__).resolve().parents[1]
# The platform's binary package (anvil-linux-amd64, anvil-darwin-arm64, ...); run directly so that killing the
# process kills anvil itself, not the npm wrapper script.
ANVIL = next((ROOT / "contracts" / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"), Path("no-anvil"))
WITHDRAW_TIMEOUT_S = 3600


#: the address of ``World.publisher`` (every world's dev accounts are the same five)
PUBLISHER = dev_accounts(5)[2].address


def make_cid(label: str) -> str:
    """A CIDv1 (raw, sha2-256) string for ``label``'s bytes: stands in for a manifest CID."""
    return str(CID("base32", 1, "raw", multihash.digest(label.encode(), "sha2-256")))


@dataclass
class World:
    """A fresh deployment and named dev accounts."""

    chain: Chain
    deployment: Deployment
    registry: AdapterRegistry
    channels: PaymentChannels
    deployer: LocalAccount
    node: LocalAccount
    publisher: LocalAccount
    client: LocalAccount
    other: LocalAccount  # a second client, or a second node

    def register(self, label: str = "adapter", price_per_1k: int = 1000, royalty_bps: int = 2500) -> str:
        cid = make_cid(label)
        self.registry.register(self.publisher, cid, price_per_1k, royalty_bps)
        return cid


def build_world(chain: Chain) -> World:
    deployer, node, publisher, client, other = dev_accounts(5)
    deployment = deploy_contracts(chain, deployer, WITHDRAW_TIMEOUT_S)
    return World(
        chain,
        deployment,
        AdapterRegistry(chain, deployment.registry),
        PaymentChannels(chain, deployment.channels),
        deployer,
        node,
        publisher,
        client,
        other,
    )


@pytest.fixture(scope="session")
def base_world() -> World:
    """One embedded chain per test session with AdapterRegistry and PaymentChannels deployed."""
    return build_world(embedded_chain())


@pytest.fixture
def world(base_world: World):
    """``base_world`` as freshly deployed: the chain is reverted to a snapshot after each test."""
    provider = base_world.chain.provider
    with provider.lock:
        snapshot = provider.ethereum_tester.take_snapshot()
    yield base_world
    with provider.lock:
        provider.ethereum_tester.revert_to_snapshot(snapshot)


@pytest.fixture
def anvil_url(tmp_path):
    """anvil (from contracts/node_modules) on 127.0.0.1, a free port, default dev mnemonic; killed after."""
    if not ANVIL.is_file():
        pytest.fail(f"{ANVIL} is missing: run scripts/setup-contracts")
    log = tmp_path / "anvil.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(ANVIL), "--host", "127.0.0.1", "--port", "0", "--hardfork", "cancun"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(r"Listening on (127\.0\.0\.1:\d+)", log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"anvil did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield f"http://{m.group(1)}"
    finally:
        proc.kill()
        proc.wait()
