"""Log formats (openlora.logs): text lines as before, JSON lines that parse, and the fetch progress lines."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from openlora.api.swarm_link import _log_fetched
from openlora.logs import configure_logging
from openlora.p2p.fetch import FetchStats


@pytest.fixture
def restore_logging():
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_parse_with_time_level_logger_message_and_extras(restore_logging):
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    log = logging.getLogger("openlora.test")
    log.debug("not shown at info")
    log.info("fetched %s", "bafk1", extra={"cid": "bafk1", "bytes": 5, "path": Path("/x"), "level": "dropped"})
    try:
        raise ValueError("bad block")
    except ValueError:
        log.exception("fetch failed")

    first, second = (json.loads(line) for line in _lines(stream))
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert (first["level"], first["logger"], first["message"]) == ("info", "openlora.test", "fetched bafk1")
    assert (first["cid"], first["bytes"], first["path"]) == ("bafk1", 5, "/x")
    assert first["time"].endswith("Z")
    assert abs(datetime.fromisoformat(first["time"]) - datetime.now().astimezone()) < timedelta(minutes=5)
    assert "exc_info" not in first
    assert second["level"] == "error"
    assert second["exc_info"].startswith("Traceback") and "ValueError: bad block" in second["exc_info"]


def test_json_mode_logs_python_warnings_as_json(restore_logging):
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    warnings.warn("old API", DeprecationWarning, stacklevel=1)
    [line] = _lines(stream)
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and "old API" in record["message"]


def test_text_lines_keep_the_previous_format(restore_logging):
    stream = io.StringIO()
    configure_logging("debug", "text", stream)
    logging.getLogger("openlora.node").debug("stopping", extra={"cid": "ignored in text"})
    [line] = _lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG openlora\.node: stopping", line), line


@pytest.mark.parametrize("level, fmt, expected", [("verbose", "text", "log level must be one of"), ("info", "xml", "log format must be one of")])
def test_unknown_level_or_format_is_refused(level, fmt, expected):
    with pytest.raises(ValueError, match=expected):
        configure_logging(level, fmt)


@pytest.mark.parametrize(
    "stats, rate, expected",
    [
        (FetchStats(blocks=21, bytes=5_000_000, seconds=0.5, by_source={"peerA": 20, "peerB": 1}), 10.0,
         "fetched adapter bafkX: 5000000 bytes in 21 blocks from peerA, peerB in 0.50 s (10.0 MB/s)"),
        (FetchStats(), 0.0, "fetched adapter bafkX: 0 bytes in 0 blocks from the local store in 0.00 s (0.0 MB/s)"),
    ],
)  # fmt: skip
def test_fetch_end_line_has_bytes_blocks_seconds_and_rate(restore_logging, stats, rate, expected):
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    _log_fetched("bafkX", stats)
    [record] = (json.loads(line) for line in _lines(stream))
    assert record["message"] == expected
    assert (record["cid"], record["bytes"], record["blocks"]) == ("bafkX", stats.bytes, stats.blocks)
    assert (record["seconds"], record["mb_per_s"]) == (stats.seconds, rate)


def test_node_logs_json_and_fetch_progress_from_a_peer(tmp_path):
    """Two nodes on loopback: B (``--log-format json``) serves an adapter published on A, and its stderr
    has the fetch's start line (peers) and end line (bytes, blocks, seconds, MB/s) as JSON objects."""
    from eth_account import Account

    from conftest import DEMO_ADAPTERS
    from openlora.client import NodeClient
    from openlora.local import NodeProcess

    args = ("--dtype", "float32", "--threads", "1", "--no-http")
    nodes: list[NodeProcess] = []
    try:
        nodes.append(NodeProcess(tmp_path / "a", *args))
        multiaddr = nodes[0].ready_line.split("p2p=")[1].split()[0]
        nodes.append(NodeProcess(tmp_path / "b", *args, "--bootstrap", multiaddr, "--log-format", "json"))
        with NodeClient(nodes[0].address, timeout=60) as a:
            cid = a.publish(DEMO_ADAPTERS / "medical", Account.from_key(b"\x33" * 32), name="medical").cid
        with NodeClient(nodes[1].address, timeout=120) as b:
            assert b.generate("A sprained wrist?", adapter=cid, temperature=0, max_new_tokens=2).text()
    finally:
        for node in reversed(nodes):
            node.stop()

    records = [json.loads(line) for line in nodes[1].stderr if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    fetch = [r for r in records if r["logger"] == "openlora.api.swarm_link" and r.get("cid") == cid]
    started, done = fetch[0], fetch[1]
    assert started["message"] == f"fetching adapter {cid} from 1 peer(s)" and started["peers"] == 1
    assert done["message"].startswith(f"fetched adapter {cid}: {done['bytes']} bytes in {done['blocks']} blocks")
    assert done["bytes"] > 1_000_000 and done["blocks"] > 1 and done["seconds"] > 0 and done["mb_per_s"] > 0
