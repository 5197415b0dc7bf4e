"""The embedded chain as a JSON-RPC endpoint on 127.0.0.1, so other processes can use it with plain web3.

    client process ── HTTP POST {"method": "eth_sendRawTransaction", ...} ──► ChainRpcServer (node process)
                                                                             └─► the node's EmbeddedChain

Clients sign their own transactions (deposit, withdraw) and send them raw; the server never holds a key and
refuses every method that would use one (``eth_sendTransaction``, ``eth_sign``, ``personal_*``) or change the
chain's rules (``evm_*``). Requests go through the same eth-tester provider (and lock) as the node's own web3,
and answers are JSON-RPC 2.0 with quantities hex-encoded, as a real node gives them.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from web3 import Web3

from .backends import EmbeddedChain

#: Methods a client needs to read the chain, estimate, and send its own signed transactions.
ALLOWED_METHODS = frozenset(
    {
        "web3_clientVersion",
        "net_version",
        "eth_chainId",
        "eth_blockNumber",
        "eth_gasPrice",
        "eth_maxPriorityFeePerGas",
        "eth_feeHistory",
        "eth_getBalance",
        "eth_getCode",
        "eth_getStorageAt",
        "eth_getTransactionCount",
        "eth_getBlockByNumber",
        "eth_getBlockByHash",
        "eth_getTransactionByHash",
        "eth_getTransactionReceipt",
        "eth_getLogs",
        "eth_call",
        "eth_estimateGas",
        "eth_sendRawTransaction",
    }
)
#: Largest request body accepted, bytes.
MAX_BODY_BYTES = 1 << 20


def _to_json(value: Any) -> Any:
    """eth-tester results → JSON-RPC encoding: ints as hex quantities, bytes as hex data."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} as JSON-RPC")


def _error(request_id: Any, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class ChainRpcServer:
    """Serves ``chain`` on ``http://127.0.0.1:<port>`` (port 0: any free one) until ``stop()``.

    Usable as a context manager. ``url`` is set once started.
    """

    def __init__(self, chain: EmbeddedChain, port: int = 0) -> None:
        # A web3 without user middleware: requests pass only eth-tester's own request/response formatting.
        raw = Web3(chain.provider, middleware=[])
        self._request = chain.provider.request_func(raw, raw.middleware_onion)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> str:
        """Starts serving in a background thread; returns the URL."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openlora-chain-rpc", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ChainRpcServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle(self, request: Any) -> dict:
        """Answers one JSON-RPC request object."""
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error(None, -32600, "invalid request: expected an object with a string 'method'")
        request_id, method = request.get("id"), request["method"]
        if method not in ALLOWED_METHODS:
            return _error(request_id, -32601, f"method {method} is not served (sign transactions locally)")
        params = request.get("params", [])
        if not isinstance(params, list):
            return _error(request_id, -32602, "params must be a list")
        try:
            response = self._request(method, params)
        except Exception as exc:  # eth-tester validation errors (bad nonce, bad params) become RPC errors
            return _error(request_id, -32000, f"{type(exc).__name__}: {exc}")
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        if "error" in response:
            answer["error"] = response["error"]
        else:
            answer["result"] = _to_json(response.get("result"))
        return answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(413, _error(None, -32600, f"request body above {MAX_BODY_BYTES} bytes"))
                    return
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    self._send(400, _error(None, -32700, "parse error: body is not JSON"))
                    return
                if isinstance(body, list):
                    self._send(200, [server.handle(r) for r in body])
                else:
                    self._send(200, server.handle(body))

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per request would drown the node's log

        return Handler


def main(argv: list[str] | None = None) -> None:
    """``python -m openlora.chain.rpc_server``: a stand-alone dev chain (an embedded chain in its own process,
    e.g. to outlive a node killed in a test). Deploys the contracts from dev account 0, prints one JSON line
    ``{"url", "chain_id", "registry", "channels"}`` and serves on 127.0.0.1 until SIGINT/SIGTERM."""
    import argparse
    import signal

    from .backends import dev_accounts, embedded_chain
    from .contracts import deploy_contracts

    parser = argparse.ArgumentParser(prog="python -m openlora.chain.rpc_server", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--withdraw-timeout-s", type=int, default=3600, help="PaymentChannels withdraw timeout")
    args = parser.parse_args(argv)

    chain = embedded_chain()
    deployment = deploy_contracts(chain, dev_accounts(1)[0], args.withdraw_timeout_s)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ChainRpcServer(chain, args.port) as server:
        print(json.dumps({"url": server.url, **json.loads(deployment.to_json())}), flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
