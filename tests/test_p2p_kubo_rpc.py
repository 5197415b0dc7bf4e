"""Fetching adapters through a Kubo RPC endpoint, every block verified (openlora.p2p.kubo_rpc,
openlora.p2p.fetch under asyncio).

The endpoint is a real HTTP server on 127.0.0.1 answering Kubo's ``POST /api/v0/block/get``
from a real block store; one variant corrupts blocks, one has none, one is too slow.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from openlora.adapters.manifest import parse_manifest
from openlora.adapters.reasons import AdapterRejected
from openlora.content import BlockNotFound, BlockStore, InvalidCID
from openlora.p2p import FetchFailed, FetchTimeout
from openlora.p2p.fetch import fetch_adapter
from openlora.p2p.kubo_rpc import KuboRpcSource
from test_p2p_swarm import FP, OTHER_FP, make_adapter, validate


def kubo_server(store: BlockStore, corrupt: bool = False, delay_s: float = 0.0) -> ThreadingHTTPServer:
    """A minimal Kubo RPC: POST /api/v0/block/get?arg=CID answers the block or Kubo's 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            url = urlsplit(self.path)
            cid = parse_qs(url.query).get("arg", [""])[0]
            if url.path != "/api/v0/block/get":
                return self._reply(404, b"404 page not found")
            time.sleep(delay_s)
            try:
                block = store.get(cid)
            except BlockNotFound:
                return self._reply(500, b'{"Message":"block was not found locally (offline)","Code":0,"Type":"error"}')
            if corrupt and len(block) > 1000:
                block = block[:-1] + bytes([block[-1] ^ 0xFF])
            self._reply(200, block)

        def do_GET(self) -> None:  # noqa: N802
            self._reply(405, b"405 - Method Not Allowed")  # Kubo's RPC refuses GET

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start Kubo-like servers; returns their URLs; all are shut down at the end."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(store: BlockStore, **kwargs: object) -> str:
        server = kubo_server(store, **kwargs)  # type: ignore[arg-type]
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def origin(tmp_path: Path) -> tuple[BlockStore, str, bytes]:
    store = BlockStore(tmp_path / "kubo")
    cid, weights = make_adapter(store, 1_200_000)
    return store, cid, weights


def fetch(local: BlockStore, cid: str, sources: list, bad: list | None = None, timeout_s: float | None = 30):  # type: ignore[no-untyped-def]
    def on_bad(source, block_cid, error):  # type: ignore[no-untyped-def]
        if bad is not None:
            bad.append((source.name, block_cid, type(error).__name__))

    return asyncio.run(fetch_adapter(local, cid, sources, validate, FP, on_bad_block=on_bad, timeout_s=timeout_s))


def test_an_adapter_is_fetched_from_kubo_rpc_and_verified(serve, origin, tmp_path: Path) -> None:
    store, cid, weights = origin
    local = BlockStore(tmp_path / "local")
    fetched = fetch(local, cid, [KuboRpcSource(serve(store))])
    assert local.cat(fetched.manifest.file("adapter_model.safetensors").cid) == weights
    assert fetched.stats.blocks == 1 + 1 + 1 + 5 and fetched.stats.bad_blocks == 0  # 1.2 MB = 5 leaves


def test_a_lying_endpoint_is_reported_and_another_serves(serve, origin, tmp_path: Path) -> None:
    store, cid, weights = origin
    liar, honest = KuboRpcSource(serve(store, corrupt=True)), KuboRpcSource(serve(store))
    local, bad = BlockStore(tmp_path / "local"), []
    fetched = fetch(local, cid, [liar, honest], bad)
    assert local.cat(fetched.manifest.file("adapter_model.safetensors").cid) == weights
    assert bad and all(name == liar.name and err == "BlockHashMismatch" for name, _, err in bad)
    # the liar's small blocks were genuine and are kept (they verified); its leaves were not
    assert fetched.stats.dropped == [liar.name] and honest.name in fetched.stats.by_source


def test_only_liars_means_the_fetch_fails_and_nothing_bad_is_stored(serve, origin, tmp_path: Path) -> None:
    store, cid, _ = origin
    local = BlockStore(tmp_path / "local")
    with pytest.raises(FetchFailed, match="not available from any source") as err:
        fetch(local, cid, [KuboRpcSource(serve(store, corrupt=True))])
    assert err.value.missing
    for block_cid in err.value.missing:
        assert not local.has(block_cid)


@pytest.mark.parametrize("kind", ["empty", "unreachable"])
def test_an_endpoint_without_the_blocks_fails_clearly(serve, origin, tmp_path: Path, kind: str) -> None:
    store, cid, _ = origin
    if kind == "empty":
        url = serve(BlockStore(tmp_path / "empty"))
    else:
        url = serve(store)
        # nothing listens on the port once the server is gone
        url = url.rsplit(":", 1)[0] + ":1"
    with pytest.raises(FetchFailed) as err:
        fetch(BlockStore(tmp_path / "local"), cid, [KuboRpcSource(url, timeout_s=2)])
    assert err.value.missing == [cid]


def test_a_slow_endpoint_hits_the_deadline(serve, origin, tmp_path: Path) -> None:
    store, cid, _ = origin
    with pytest.raises(FetchTimeout, match="timed out"):
        fetch(BlockStore(tmp_path / "local"), cid, [KuboRpcSource(serve(store, delay_s=3))], timeout_s=0.5)


def test_an_adapter_for_another_base_is_refused_before_its_files(serve, tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "kubo")
    cid, _ = make_adapter(store, 600_000, fingerprint=OTHER_FP)
    local = BlockStore(tmp_path / "local")
    with pytest.raises(AdapterRejected, match="base_mismatch"):
        fetch(local, cid, [KuboRpcSource(serve(store))])
    weights = parse_manifest(store.get(cid)).file("adapter_model.safetensors").cid
    assert not local.has(weights)


def test_adapter_ids_must_be_cidv1_raw(serve, origin, tmp_path: Path) -> None:
    store, cid, _ = origin
    weights_root = parse_manifest(store.get(cid)).file("adapter_model.safetensors").cid  # dag-pb
    with pytest.raises(InvalidCID, match="raw codec"):
        fetch(BlockStore(tmp_path / "local"), weights_root, [KuboRpcSource(serve(store))])


@pytest.mark.parametrize("url", ["127.0.0.1:5001", "ftp://127.0.0.1:5001", "http://", ""])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="--ipfs-api"):
        KuboRpcSource(url)
