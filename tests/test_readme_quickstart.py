"""README's "By hand: a first session", run as written: the node of its first code block, then every line of its
second, in the repository root.

Two things move so that the run cannot meet a node someone left running: the data dir (``.data/quickstart`` becomes
a temporary folder) and the port (the node gets ``OPENLORA_PORT``, the clients ``OPENLORA_NODE``: the variables the
README documents for ``--port`` and ``--node``). A line whose comment says ``refused`` must fail with the command to
run next; every other line must succeed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## By hand: a first session"


def quickstart_blocks() -> tuple[list[str], list[str]]:
    """The command lines of the section's two ```bash blocks: the node's, then the second terminal's."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) : text.index("\n## ", text.index(SECTION) + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2, blocks
    return tuple([line for line in b.splitlines() if line.strip() and not line.startswith("#")] for b in blocks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_quickstart_works_as_written(tmp_path, monkeypatch):
    (start,), session = quickstart_blocks()
    moved = lambda line: line.replace(".data/quickstart", str(tmp_path))  # noqa: E731
    port = free_port()
    monkeypatch.setenv("OPENLORA_PORT", str(port))
    monkeypatch.setenv("OPENLORA_HTTP_PORT", "0")
    monkeypatch.setenv("OPENLORA_NODE", f"127.0.0.1:{port}")
    monkeypatch.delenv("OPENLORA_KEY_PASSPHRASE", raising=False)
    command = moved(start).split()
    assert command[:2] == [".venv/bin/openlora-node", "start"], command
    node = _start(command, port)
    try:
        exports: list[str] = []
        for line in map(moved, session):
            if line.startswith("export "):
                exports.append(line)
                continue
            out = subprocess.run(
                ["bash", "-c", "; ".join([*exports, line])], cwd=ROOT, capture_output=True, text=True, timeout=300,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if "# refused" in line:
                assert out.returncode == 1, (line, out.stderr)
                assert "openlora channel open" in out.stderr, (line, out.stderr)
                continue
            assert out.returncode == 0, (line, out.stdout, out.stderr)
            if "--adapter medical" in line and "--key" in line:
                assert out.stdout.startswith("Clinical note:"), out.stdout
                assert "cost_wei=" in out.stderr, out.stderr
            if line.strip() == "openlora adapters":
                assert re.search(r"\smedical\s+ready\s", out.stdout), out.stdout
    finally:
        assert _stop(node) == 0


def _start(command: list[str], port: int) -> subprocess.Popen:
    """The README's start line as a process in the repository root; returns once it printed its ready line."""
    proc = subprocess.Popen(
        [str(ROOT / command[0]), *command[1:]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f"ready on 127.0.0.1:{port}" in line:
            break
    else:
        raise AssertionError("the README's node did not start:\n" + "".join(seen[-30:]))
    # keep draining its log, so a full pipe never blocks the node
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL after 30 s; the exit code."""
    proc.terminate()
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()

