"""Publisher keys: an Ethereum secp256k1 key in an encrypted keystore file (Web3 Secret Storage v3).

    openlora-node keys new [--out PATH]   Account.create() ─► Account.encrypt(scrypt) ─► PATH (0600)
    openlora-node keys show [PATH]        the address recorded in the file
    openlora-node publish … [--key PATH]  PATH + passphrase ─► Account.decrypt ─► signs the manifest

Where the key is: ``--key PATH``, else ``$OPENLORA_KEY``, else ``~/.openlora/publisher.json``.
The passphrase comes from ``$OPENLORA_KEY_PASSPHRASE`` when set (scripts, CI), else from a
hidden prompt. The file format and KDF are eth-account's (geth-compatible keystore v3, scrypt
n=2^18, r=8, p=1 by default: ~0.8 s and 256 MiB to open here, by design), so the same file
works in any Ethereum wallet that imports keystores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

KEY_ENV = "OPENLORA_KEY"
PASSPHRASE_ENV = "OPENLORA_KEY_PASSPHRASE"
DEFAULT_KEY_PATH = Path("~/.openlora/publisher.json")
SCRYPT_N = 2**18  # eth-keyfile's (and geth's) standard scrypt cost


class KeystoreError(ValueError):
    """A keystore cannot be created, read or opened; the message says what to do."""


def default_key_path() -> Path:
    """``$OPENLORA_KEY`` if set, else ``~/.openlora/publisher.json`` (user home expanded)."""
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else DEFAULT_KEY_PATH.expanduser()


def env_passphrase() -> str | None:
    """The passphrase from ``$OPENLORA_KEY_PASSPHRASE``, or ``None`` when unset."""
    return os.environ.get(PASSPHRASE_ENV)


def create_keystore(path: Path, passphrase: str, *, scrypt_n: int = SCRYPT_N) -> str:
    """Make a new publisher key and write it encrypted to ``path`` (mode 0600, parents 0700).

    Args:
        path: where the keystore JSON goes; must not exist.
        passphrase: non-empty.
        scrypt_n: scrypt cost parameter N (a power of two); lower it only for throwaway keys.

    Returns:
        The new key's checksummed address.

    Raises:
        KeystoreError: ``path`` exists, or the passphrase is empty.
        OSError: the file cannot be written.
    """
    if not passphrase:
        raise KeystoreError("the passphrase must not be empty")
    if path.exists():
        raise KeystoreError(f"{path} already exists; move it away or choose another path with --out")
    account = Account.create()
    write_keystore(path, account, passphrase, scrypt_n=scrypt_n)
    return account.address


def write_keystore(path: Path, account: LocalAccount, passphrase: str, *, scrypt_n: int = SCRYPT_N) -> None:
    """Write ``account``'s key encrypted to a new keystore file (mode 0600, parents 0700).

    Args:
        path: must not exist.
        passphrase: may be empty only for development keys (the file mode is then its only protection).
        scrypt_n: scrypt cost parameter N (a power of two).

    Raises:
        FileExistsError: ``path`` exists.
        OSError: the file cannot be written.
    """
    keystore = Account.encrypt(account.key, passphrase, kdf="scrypt", iterations=scrypt_n)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keystore, f)


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no publisher key at {path}; create one with `openlora-node keys new --out {path}`") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeystoreError(f"{path} is not a keystore JSON file") from None
    if not isinstance(data, dict) or "crypto" not in data or not isinstance(data.get("address"), str):
        raise KeystoreError(f"{path} is not an Ethereum keystore (v3) file")
    return data


def keystore_address(path: Path) -> str:
    """The checksummed address a keystore file records (read without decrypting).

    Raises:
        KeystoreError: missing or not a keystore.
    """
    data = _read(path)
    try:
        return to_checksum_address("0x" + data["address"].removeprefix("0x"))
    except ValueError:
        raise KeystoreError(f"{path} records an invalid address {data['address']!r}") from None


def load_account(path: Path, passphrase: str) -> LocalAccount:
    """Decrypt a keystore into a signing account.

    Raises:
        KeystoreError: missing file, not a keystore, or wrong passphrase.
    """
    data = _read(path)
    try:
        key = Account.decrypt(data, passphrase)
    except ValueError:
        raise KeystoreError(f"wrong passphrase for {path} (or the file is damaged)") from None
    return Account.from_key(key)
