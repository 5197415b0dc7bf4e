"""The node's own account: it is named in vouchers, signs receipts and pays the gas of settlement.

    --node-key PATH     an Ethereum keystore (v3) file; default ``DATA_DIR/node-key.json``, created on first start
    passphrase          ``$OPENLORA_NODE_KEY_PASSPHRASE``, else empty

An empty passphrase is for development: the key then lies on disk as good as unencrypted (file mode 0600 is its
only protection), so a generated dev key uses a cheap scrypt cost instead of pretending otherwise. An operator
who earns real money sets the variable (or creates the file with ``openlora-node keys new``) and keeps it safe.
"""

from __future__ import annotations

import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ..adapters.keys import SCRYPT_N, load_account, write_keystore

NODE_KEY_PASSPHRASE_ENV = "OPENLORA_NODE_KEY_PASSPHRASE"
NODE_KEY_FILE = "node-key.json"
#: scrypt cost of a generated key without passphrase (encryption without a secret protects nothing).
EMPTY_PASSPHRASE_SCRYPT_N = 2**10


def node_key_passphrase() -> str:
    """``$OPENLORA_NODE_KEY_PASSPHRASE``, or ``""`` when unset."""
    return os.environ.get(NODE_KEY_PASSPHRASE_ENV, "")


def dev_scrypt_n(passphrase: str) -> int:
    """The standard scrypt cost, or a cheap one for an empty (development) passphrase."""
    return SCRYPT_N if passphrase else EMPTY_PASSPHRASE_SCRYPT_N


def node_account(path: Path, passphrase: str) -> LocalAccount:
    """Opens the node's keystore at ``path``, creating a new key there (mode 0600) when the file is missing.

    Raises:
        adapters.keys.KeystoreError: the file is not a keystore, or ``passphrase`` does not open it.
        OSError: the file cannot be created.
    """
    if not path.exists():
        account = Account.create()
        write_keystore(path, account, passphrase, scrypt_n=dev_scrypt_n(passphrase))
        return account
    return load_account(path, passphrase)

