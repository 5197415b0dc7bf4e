"""A newcomer's first mistakes, made by hand against a real node: each is answered with the command to run next.

    one node subprocess (module), swarm on ◄── openlora / openlora-node subprocesses, as a person types them:
        a publish without a key, a second start on a busy port, a call to no node, an adapter by name or a typo,
        the adapter table, a paid call without a channel (gRPC and HTTP), Ctrl-C in a paid call, a swarm probe,
        --node beside --swarm, --help defaults, and (last) a restart on the embedded chain
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from adapter_corpus import tamper_block
from pay_fixtures import MEDICAL, keys  # noqa: F401  (keys is a fixture)

from openlora.local import BIN, NodeProcess

ROOT = Path(__file__).resolve().parents[1]
PRICE = 1_000_000  # wei per 1k tokens
FLAGS = ("--dtype", "float32", "--threads", "2")


def run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``openlora …`` / ``openlora-node …`` as typed in a terminal without one (stdin closed), in ``env``."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env=env if env is not None else os.environ,
    )  # fmt: skip


def one_line(text: str) -> str:
    """``--help`` text without rich's box and wrapping, so a phrase can be looked for."""
    return re.sub(r"\s+", " ", text.replace("│", " "))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("newcomer")


@pytest.fixture(scope="module")
def node(data_dir):
    proc = NodeProcess(data_dir, *FLAGS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def priced(node, keys):  # noqa: F811
    """A priced, registered copy of the medical adapter, published by CLI under the name ``medical``."""
    out = run("openlora-node", "publish", str(MEDICAL), "--node", node.address, "--key", str(keys["publisher"]),
              "--name", "medical", "--price-per-1k", str(PRICE))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "registered" in out.stderr
    return out.stdout.strip().splitlines()[-1]


def ready_field(node: NodeProcess, name: str) -> str:
    return re.search(rf"\b{name}=(\S+)", node.ready_line).group(1)


# 1. a publish without a key file names the commands that make one, before asking for a passphrase


def test_publish_without_a_key_says_how_to_make_one(node, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENLORA_KEY_PASSPHRASE", "OPENLORA_KEY")}
    env["HOME"] = str(tmp_path)  # no ~/.openlora/publisher.json
    out = run("openlora-node", "publish", str(MEDICAL), "--node", node.address, env=env)
    assert out.returncode == 1
    assert "openlora-node keys new --out" in out.stderr and "openlora-node keys dev 1 --out" in out.stderr
    assert "passphrase" not in out.stderr


# 2. a second start on a busy port fails before the model loads, naming the flag


@pytest.mark.parametrize("flag", ["--port", "--http-port"])
def test_a_busy_port_fails_the_start_before_the_model_loads(node, tmp_path, flag):
    busy = ready_field(node, "http").rpartition(":")[2] if flag == "--http-port" else node.address.rpartition(":")[2]
    ports = ["--port", "0", "--http-port", busy] if flag == "--http-port" else ["--port", busy]
    out = run("openlora-node", "start", *ports, "--data-dir", str(tmp_path), "--no-p2p", *FLAGS)
    assert out.returncode == 1
    assert f"port {busy} on 127.0.0.1 is in use" in out.stderr and f"set {flag} to a free port" in out.stderr
    assert "loaded" not in out.stderr  # the engine logs "base … loaded" once the model is in memory


# 3. no node at the address


def test_a_call_to_no_node_says_how_to_start_one():
    port = free_port()
    out = run("openlora", "adapters", "--node", f"127.0.0.1:{port}", timeout=60)
    assert out.returncode == 1
    assert f"no node answers at 127.0.0.1:{port}" in out.stderr
    assert f"openlora-node start --port {port}" in out.stderr


# 4. an adapter by name on every client path; a typo says what a CID looks like


def test_an_adapter_name_works_where_a_cid_does(node, priced, keys):  # noqa: F811
    out = run("openlora", "generate", "--node", node.address, "--adapter", "medical", "--key", str(keys["squatter"]),
              "--temperature", "0", "--max-tokens", "8", "What helps a cough?")  # fmt: skip
    # a key without a channel: refused, with the command that opens one (item 6 checks the wording)
    assert out.returncode == 1 and "openlora channel open" in out.stderr
    quote = run("openlora", "quote", "--node", node.address, "--adapter", "medical", "hi")
    assert quote.returncode == 0 and f'"pricePer1kTokens": "{PRICE}"' in quote.stdout
    shown = run("openlora", "adapter", "medical", "--node", node.address)
    assert shown.returncode == 0 and priced in shown.stdout
    usage = run("openlora", "usage", "--node", node.address, "--adapter", "medical")
    assert usage.returncode == 0 and usage.stdout.startswith(priced)


def test_an_unknown_name_says_what_a_cid_looks_like(node, priced):
    out = run("openlora", "generate", "--node", node.address, "--adapter", "medicl", "hi")
    assert out.returncode == 2
    assert "no adapter on" in out.stderr and "'medicl'" in out.stderr and "a CID looks like 'bafkrei…'" in out.stderr
    assert f"openlora adapters --node {node.address}" in out.stderr
    assert "Pad bits" not in out.stderr


def test_the_node_describes_a_cid_without_the_decoders_words(node):
    import grpc

    from openlora.client import NodeClient, RetryPolicy

    with NodeClient(node.address, retry=RetryPolicy.none()) as c, pytest.raises(grpc.RpcError) as e:
        c.get_adapter("medical")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected a CIDv0 ('Qm…'" in e.value.details() and "Pad bits" not in e.value.details()


# 5. one table: CID, name, status, reason, in the README's words


def test_adapters_shows_name_status_and_reason_in_one_table(node, data_dir, priced, keys, tmp_path):  # noqa: F811
    import shutil

    from openlora.client import NodeClient

    # a copy whose config differs by a byte: blocks are shared by content, and this one's is about to be damaged
    folder = shutil.copytree(MEDICAL, tmp_path / "tampered")
    (folder / "adapter_config.json").write_text((folder / "adapter_config.json").read_text() + "\n")
    out = run("openlora-node", "publish", str(folder), "--node", node.address, "--key", str(keys["publisher"]),
              "--name", "tampered")  # fmt: skip
    assert out.returncode == 0, out.stderr
    tampered = out.stdout.strip().splitlines()[-1]
    with NodeClient(node.address) as c:
        (config,) = [f.cid for f in c.get_adapter(tampered).files if f.name == "adapter_config.json"]
        tamper_block(data_dir / "blocks", config)
    out = run("openlora", "generate", "--node", node.address, "--adapter", tampered, "hi")
    assert out.returncode == 1 and "hash_mismatch" in out.stderr
    table = run("openlora", "adapters", "--node", node.address)
    assert table.returncode == 0
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()}
    assert rows["CID"] == ["CID", "NAME", "STATUS", "REASON"]
    assert rows[priced] == [priced, "medical", "ready", "-"]
    assert rows[tampered] == [tampered, "tampered", "rejected", "hash_mismatch"]
    quiet = run("openlora", "adapters", "--node", node.address, "-q")
    assert set(quiet.stdout.split()) == {priced, tampered}
    shown = run("openlora", "adapter", priced, "--node", node.address)
    assert '"status": "ready"' in shown.stdout and "ADAPTER_STATUS" not in shown.stdout


# 6. paying: no channel, HTTP without a voucher, Ctrl-C


def test_a_paid_call_without_a_channel_names_channel_open(node, priced, keys):  # noqa: F811
    out = run("openlora", "generate", "--node", node.address, "--adapter", priced, "--key", str(keys["squatter"]), "hi")
    assert out.returncode == 1
    assert f"openlora channel open --node {node.address} --key {keys['squatter']} --amount" in out.stderr
    no_key = run("openlora", "generate", "--node", node.address, "--adapter", priced, "hi")
    assert no_key.returncode == 1
    assert "openlora-node keys dev 2 --out client.json" in no_key.stderr and "openlora channel open" in no_key.stderr


def test_http_402_names_the_voucher_header(node, priced):
    r = httpx.post(f"http://{ready_field(node, 'http')}/v1/chat/completions", timeout=60,
                   json={"model": "medical", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})  # fmt: skip
    assert r.status_code == 402
    message = r.json()["error"]["message"]
    assert "X-OpenLoRA-Voucher" in message and "openlora channel open" in message and "/v1/quote" in message


def test_ctrl_c_in_a_paid_call_says_what_it_was_charged(node, priced, keys):  # noqa: F811
    opened = run("openlora", "channel", "open", "--node", node.address, "--key", str(keys["client"]), "--amount", str(10**16))
    assert opened.returncode == 0, opened.stderr
    # a raw counting prompt runs to --max-tokens: the call is still streaming when Ctrl-C comes
    proc = subprocess.Popen(
        [str(BIN / "openlora"), "generate", "--node", node.address, "--adapter", "medical", "--key", str(keys["client"]),
         "--raw", "--temperature", "0", "--max-tokens", "1000", "1, 2, 3, 4, 5,"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=0, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout.read(1), proc.communicate()[1]  # the first text arrived: the call is paid and running
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    charged = re.search(r"interrupted: the node charged (\d+) wei for the text it delivered", err)
    assert charged, err
    assert 0 < int(charged.group(1)) < 1030 * PRICE // 1000  # below the full call's max cost


# 8. libp2p's records in the node's log; --node beside --swarm


def test_libp2p_records_come_through_our_handler_as_one_line(monkeypatch):
    """What py-libp2p logs when a peer leaves mid-negotiation (a seven-line ERROR) reaches the node's log as one
    timestamped WARNING; before, libp2p's detached logger left it to logging.lastResort: bare, multi-line."""
    import io
    import logging

    import libp2p  # noqa: F401  (its import detaches its logger, as in the node)

    from openlora.logs import configure_logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])  # configure_logging replaces them: pytest's come back
    stream = io.StringIO()
    configure_logging("info", "text", stream)
    try:
        lp = logging.getLogger("libp2p.host.basic_host")
        lp.error("Failed to open stream to peer 16Uiu2HAm:\n  Error: protocol read failed\n  Timeout: 30s")
        logging.getLogger("libp2p.network.auto_connector").info("AUTO_CONNECTOR_STATE: num_connections=0")
    finally:
        logging.getLogger("libp2p").propagate = False  # as libp2p left it, for the tests after this one
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING libp2p\.host\.basic_host: Failed to open stream to peer "
                    r"16Uiu2HAm: Error: protocol read failed; Timeout: 30s$", lines[0]), lines  # fmt: skip


def test_a_swarm_probe_leaves_no_multi_line_dump_in_the_node_log(node):
    multiaddr = ready_field(node, "p2p")
    start = len(node.stderr)
    for _ in range(2):
        assert run("openlora", "nodes", "--swarm", multiaddr).returncode == 0
    deadline = time.monotonic() + 15
    # the node's gossip may try to open a stream to a probe that has left: py-libp2p logs that
    while not any(" libp2p." in line for line in node.stderr[start:]) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = node.stderr[start:]
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING libp2p\.")
    assert all(stamp.match(line) for line in lines if " libp2p." in line), lines
    assert not [line for line in lines if line.startswith((" ", "Failed to open stream"))], lines


def test_node_beside_swarm_is_refused(node):
    out = run("openlora", "generate", "--node", node.address, "--swarm", ready_field(node, "p2p"), "hi")
    assert out.returncode == 2 and "--node and --swarm both say where the call goes" in out.stderr


# 9. --help shows the defaults


def test_help_shows_the_defaults():
    # a terminal wide enough that rich wraps no default in the middle of a path (the layout is rich's)
    wide = {**os.environ, "COLUMNS": "240"}
    gen = one_line(run("openlora", "generate", "--help", env=wide).stdout)
    assert "node default 1.0: samples" in gen and "0 for greedy" in gen
    start = one_line(run("openlora-node", "start", "--help", env=wide).stdout)
    assert "[default: (50051)]" in start and "shared by every data dir. [default: (~/.cache/openlora/" in start


# 10. project files speak of the project


@pytest.mark.parametrize("path", ["requirements.lock", "contracts/README.md", "README.md"])
def test_project_files_speak_of_the_project_only(path):
    text = (ROOT / path).read_text()
    assert "../shared" not in text and not re.search(r"\b[Ii]ssue \d", text) and "the lead" not in text


# 7. last: a restart on the embedded chain warns about the registrations it lost


def test_a_restart_on_the_embedded_chain_names_the_adapters_that_lost_their_registration(node, data_dir, priced):
    assert node.stop() == 0
    again = NodeProcess(data_dir, *FLAGS, "--no-p2p")
    try:
        deadline = time.monotonic() + 10  # logged before the ready line, but the stderr reader may trail stdout's
        while not (found := [line for line in again.stderr if "embedded dev chain is new" in line]) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        again.stop()
    assert found, "".join(again.stderr)
    warning = found[0]
    assert f"medical ({priced})" in warning and "tampered" not in warning  # priced ones only
    assert f"openlora-node register CID --node {again.address}" in warning
    assert "--chain-rpc http://127.0.0.1:8545 --contracts deployment.json" in warning and "anvil" in warning
