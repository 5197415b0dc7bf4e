"""Local processes for the demo, tests and soak runs: ``openlora-node start`` on a free loopback port,
and a stand-alone dev chain.

    node = NodeProcess(Path(".data/demo"), "--dtype", "float32")
    print(node.address)        # 127.0.0.1:PORT from the ready line
    ...
    node.stop()                # SIGTERM, then SIGKILL after a grace period
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

READY = re.compile(r"ready on (\S+:\d+)")
BIN = Path(sys.executable).parent


class NodeProcess:
    """A node daemon started with ``--port 0``; ``address`` is parsed from its ready line.

    Args:
        data_dir: the node's data dir.
        args: extra ``openlora-node start`` flags.
        timeout: seconds to wait for the ready line.
        program: the command that takes ``start`` and its flags (default: ``openlora-node``; a test runs a
            script that wraps it).
    """

    def __init__(self, data_dir: Path, *args: str, timeout: float = 180.0, program: tuple[str, ...] = ()) -> None:
        cmd = [*(program or (str(BIN / "openlora-node"),)), "start", "--port", "0", "--data-dir", str(data_dir), *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self.address = ""
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"node did not become ready (rc={self.proc.returncode}):\n" + "".join(self.stderr[-30:]))

    def _pump(self, stream, sink: list[str], watch: bool) -> None:
        for line in stream:
            sink.append(line)
            m = READY.search(line) if watch else None
            if m:
                self.address = m.group(1)
                self.ready_line = line
                self._ready.set()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def cli(*args: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``openlora`` or ``openlora-node`` (first arg) from this interpreter's environment (``env``: variables
    added to this process's).

    Returns:
        The completed process with text stdout/stderr.

    Raises:
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
    """
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


class ChainProcess:
    """``python -m openlora.chain.rpc_server``: an in-process EVM in a process of its own, so it outlives the
    nodes that use it (``--chain-rpc URL --contracts FILE``) and several nodes can share it.

    Args:
        deployment_file: where the contracts' addresses are written (the ``--contracts`` file).

    Raises:
        RuntimeError: the chain did not start.
    """

    def __init__(self, deployment_file: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openlora.chain.rpc_server"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"chain process did not start: {self.proc.stderr.read()}")
        data = json.loads(line)
        self.url = data.pop("url")
        deployment_file.write_text(json.dumps(data))
        self.deployment_file = deployment_file

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
