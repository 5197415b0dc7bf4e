"""Command-line contract details that need no running node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openlora.local import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "content, version, expected",
    [
        (b"hello world\n", 0, "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
        (b"hello world\n", 1, "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"),
        # multi-chunk vectors from tests/test_content_vectors.py (Kubo 0.22 / ipfs-unixfs-importer)
        (None, 0, "QmWnCbs47pGQrDVorJocwnRoMFEMuSLHFECNGZ4GMMcBg1"),
        (None, 1, "bafybeigjfbxmmnz6svot6hg7pzraq6ytjnzpdeetwkcxbihjnp3nuwm35u"),
    ],
)
def test_cid_command_prints_what_kubo_prints(tmp_path, content, version, expected):
    import random

    path = tmp_path / "f"
    path.write_bytes(content if content is not None else random.Random(5242880).randbytes(5242880))
    args = ["openlora-node", "cid", str(path)] + (["--cid-version", "1"] if version else [])
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n"


def test_cid_command_refuses_bad_input(tmp_path):
    out = cli("openlora-node", "cid", str(tmp_path / "missing"))
    assert out.returncode == 2 and "is not a file" in out.stderr
    (tmp_path / "f").write_bytes(b"x")
    out = cli("openlora-node", "cid", str(tmp_path / "f"), "--cid-version", "2")
    assert out.returncode == 2 and "--cid-version must be 0 or 1" in out.stderr


def test_client_commands_do_not_import_torch():
    code = "import sys, openlora.cli, openlora.client; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_client_reports_unreachable_node_in_one_line():
    out = cli("openlora", "adapters", "--node", "127.0.0.1:1", timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("error: no node answers at 127.0.0.1:1: start one with `openlora-node start --port 1`")
    assert out.stderr.count("\n") == 1


def test_generated_stubs_are_fresh():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
