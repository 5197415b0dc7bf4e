"""Publisher keys: encrypted keystore files (adapters/keys.py) and `openlora-node keys new|show`."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from openlora.adapters.keys import KEY_ENV, PASSPHRASE_ENV, KeystoreError, create_keystore, keystore_address, load_account
from openlora.local import BIN

CHEAP = 2**12  # scrypt N for throwaway keys; the CLI always uses the standard 2^18


def test_create_then_load_gives_the_same_address(tmp_path):
    path = tmp_path / "sub" / "key.json"
    address = create_keystore(path, "pw", scrypt_n=CHEAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["crypto"]["kdf"] == "scrypt" and data["crypto"]["kdfparams"]["n"] == CHEAP
    assert keystore_address(path) == address == load_account(path, "pw").address


def test_keystore_errors_say_what_to_do(tmp_path):
    path = tmp_path / "key.json"
    with pytest.raises(KeystoreError, match="no publisher key at .*keys new"):
        load_account(path, "pw")
    with pytest.raises(KeystoreError, match="must not be empty"):
        create_keystore(path, "", scrypt_n=CHEAP)
    create_keystore(path, "pw", scrypt_n=CHEAP)
    with pytest.raises(KeystoreError, match="already exists"):
        create_keystore(path, "pw", scrypt_n=CHEAP)
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        load_account(path, "not it")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(KeystoreError, match="not an Ethereum keystore"):
        keystore_address(tmp_path / "junk.json")
    (tmp_path / "text").write_text("hello")
    with pytest.raises(KeystoreError, match="not a keystore JSON"):
        load_account(tmp_path / "text", "pw")


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, PASSPHRASE_ENV)}
    return subprocess.run(
        [str(BIN / "openlora-node"), *args], capture_output=True, text=True, timeout=120, env={**base, **env}, stdin=subprocess.DEVNULL
    )


def test_keys_new_and_show_through_the_cli(tmp_path):
    path = tmp_path / "publisher.json"
    out = _cli("keys", "new", "--out", str(path), **{PASSPHRASE_ENV: "s3cret"})
    assert out.returncode == 0, out.stderr
    address = out.stdout.strip().splitlines()[-1]
    assert json.loads(path.read_text())["crypto"]["kdfparams"]["n"] == 2**18
    assert load_account(path, "s3cret").address == address
    show = _cli("keys", "show", str(path))
    assert show.returncode == 0 and show.stdout.strip() == address
    by_env = _cli("keys", "show", **{KEY_ENV: str(path)})
    assert by_env.returncode == 0 and by_env.stdout.strip() == address
    again = _cli("keys", "new", "--out", str(path), **{PASSPHRASE_ENV: "s3cret"})
    assert again.returncode == 2 and "already exists" in again.stderr


def test_cli_without_passphrase_or_terminal_says_how_to_give_one(tmp_path):
    out = _cli("keys", "new", "--out", str(tmp_path / "k.json"))
    assert out.returncode == 2 and f"set {PASSPHRASE_ENV}" in out.stderr
    assert not (tmp_path / "k.json").exists()


def test_publish_without_a_key_says_how_to_make_one(tmp_path):
    out = _cli("publish", str(tmp_path), "--node", "127.0.0.1:1", **{KEY_ENV: str(tmp_path / "none.json"), PASSPHRASE_ENV: "x"})
    assert out.returncode == 1
    assert out.stderr.startswith("error: no key at") and "openlora-node keys new" in out.stderr
