"""Hostile input, limits: what one HTTP client may hold (api/http/limits.py) and gRPC's per-connection bounds.

One real node subprocess (no p2p, no chain traffic), driven with raw sockets where a client library
would hide what the node does: a body over 8 MiB announced by Content-Length or sent chunked, a
client that never finishes its request head or body, and 1,100 idle sockets against a node whose
descriptor limit is lowered to 1,024 (``prlimit`` on the running process), the slow-client case
that used to take gRPC health down with HTTP.
"""

from __future__ import annotations

import re
import resource
import selectors
import socket
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from openlora.api.http.limits import BODY_TIMEOUT_S, HEAD_TIMEOUT_S, MAX_BODY_BYTES, MAX_CONNECTIONS
from openlora.api.server import MAX_CONCURRENT_STREAMS, MAX_MESSAGE_BYTES
from openlora.local import NodeProcess
from openlora.v1 import node_pb2 as pb
from openlora.v1 import node_pb2_grpc


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    proc = NodeProcess(
        tmp_path_factory.mktemp("http-limits"), "--no-p2p", "--threads", "1", "--max-batch", "1",
        "--client-rate-limit", "0",
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr[-20:])


@pytest.fixture(scope="module")
def http_addr(node) -> tuple[str, int]:
    host, port = re.search(r" http=(\S+):(\d+)", node.ready_line).groups()
    return host, int(port)


def connect(addr: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(addr, timeout=30)
    return s


def read_all(s: socket.socket, timeout: float = 60.0) -> bytes:
    """Everything the node sends until it closes (or ``timeout`` s of silence)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return out


def post_head(length: int | None, chunked: bool = False) -> bytes:
    framing = "transfer-encoding: chunked\r\n" if chunked else f"content-length: {length}\r\n"
    return (
        "POST /v1/completions HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\n" + framing + "\r\n"
    ).encode()


def health_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="openlora.v1.Node"), timeout=20)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_body_cap_is_grpcs_message_cap() -> None:
    assert MAX_BODY_BYTES == MAX_MESSAGE_BYTES == 8 * 1024 * 1024


def test_a_body_announced_over_8_mib_is_413_before_it_is_read(http_addr) -> None:
    with connect(http_addr) as s:
        s.sendall(post_head(MAX_BODY_BYTES + 1))  # not one byte of the body follows
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert f"request body is {MAX_BODY_BYTES + 1} bytes; this node accepts up to {MAX_BODY_BYTES}".encode() in reply


def test_a_chunked_body_over_8_mib_is_413_as_it_arrives(http_addr) -> None:
    chunk = b"x" * (1 << 20)
    with connect(http_addr) as s:
        s.sendall(post_head(None, chunked=True))
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node answered and closed before the client finished
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"this node accepts up to 8388608" in reply


def test_a_client_that_never_finishes_its_head_or_body_is_cut_off(http_addr) -> None:
    silent = connect(http_addr)  # connects and sends nothing
    partial_head = connect(http_addr)
    partial_head.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: node\r\n")  # the head never ends
    partial_body = connect(http_addr)
    partial_body.sendall(post_head(100) + b'{"model":')  # 9 of 100 bytes
    try:
        timeout = BODY_TIMEOUT_S + 30
        assert read_all(silent, timeout) == b""  # closed by the node, not by our timeout
        assert read_all(partial_head, timeout) == b""
        reply = read_all(partial_body, timeout)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert f"request body not received within {BODY_TIMEOUT_S:g} s".encode() in reply
    finally:
        for s in (silent, partial_head, partial_body):
            s.close()
    assert HEAD_TIMEOUT_S < BODY_TIMEOUT_S


def test_1100_idle_sockets_cannot_exhaust_descriptors_or_take_grpc_health_down(node, http_addr) -> None:
    soft, hard = resource.prlimit(node.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(node.proc.pid, resource.RLIMIT_NOFILE, (1024, hard))
    sockets: list[socket.socket] = []
    try:
        for _ in range(1100):
            sockets.append(connect(http_addr))
        # every socket beyond the cap is answered 503 and closed at once: the node keeps its descriptors
        sel = selectors.DefaultSelector()
        for s in sockets:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        closed: set[socket.socket] = set()
        deadline = time.monotonic() + 60
        while len(closed) < len(sockets) - MAX_CONNECTIONS and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                sel.unregister(key.fileobj)
                closed.add(key.fileobj)
        sel.close()
        assert len(closed) >= len(sockets) - MAX_CONNECTIONS
        assert health_serving(node.address)
        with grpc.insecure_channel(node.address) as ch:
            assert node_pb2_grpc.NodeStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=30).base_model
    finally:
        for s in sockets:
            s.close()
        resource.prlimit(node.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    # the held connections are gone: HTTP serves again
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://{http_addr[0]}:{http_addr[1]}/health", timeout=10).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "HTTP did not serve again after the sockets closed"
        time.sleep(0.2)


def test_grpc_limits_concurrent_calls_per_connection(node) -> None:
    """More streams than MAX_CONCURRENT_STREAMS on one connection: the node never sees more at once."""
    request = pb.GenerateRequest(prompt="Tell me a long story.", sampling=pb.SamplingParams(max_new_tokens=1000, temperature=0))
    own = [("grpc.use_local_subchannel_pool", 1)]  # two connections, not one shared subchannel
    with grpc.insecure_channel(node.address, own) as ch, grpc.insecure_channel(node.address, own) as watch:
        stub, info = node_pb2_grpc.NodeStub(ch), node_pb2_grpc.NodeStub(watch)
        calls = [stub.Generate(request, timeout=300) for _ in range(MAX_CONCURRENT_STREAMS + 16)]
        try:
            seen = []  # calls the node holds (some end early at EOS: the peak is what counts)
            for _ in range(25):
                n = info.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=30)
                seen.append(n.running + n.waiting)
                time.sleep(0.2)
            assert MAX_CONCURRENT_STREAMS // 2 < max(seen) <= MAX_CONCURRENT_STREAMS, seen
        finally:
            for c in calls:
                c.cancel()
