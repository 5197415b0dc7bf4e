"""A block source backed by a Kubo daemon's RPC API (``--ipfs-api URL``), for operators who run one.

    KuboRpcSource("http://127.0.0.1:5001").get_blocks([cid, …])
      POST {url}/api/v0/block/get?arg=<cid>&timeout=<N>s     (Kubo RPC accepts POST only)
        200 ──► the bytes, at most the largest block size (longer bodies are cut off and
                refused by the verifier)
        other status ──► "Kubo does not have it"
        connection error ──► SourceUnavailable

Nothing from Kubo is trusted: ``fetch.fetch_dag`` verifies every block against its CID before
storing it, exactly as for peers. Works under trio and asyncio (httpx on anyio), so the node can
use it with or without the libp2p thread.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import anyio
import httpx

from ..content.reader import MAX_BLOCK_SIZE
from .errors import SourceUnavailable
from .fetch import TIER_FALLBACK


class KuboRpcSource:
    """Blocks from one Kubo RPC endpoint.

    Args:
        url: the RPC base URL, e.g. ``http://127.0.0.1:5001``.
        timeout_s: per block, seconds (also passed to Kubo as its ``timeout`` option).
        parallel: blocks requested at once.

    Raises:
        ValueError: ``url`` is not an http(s) URL with a host, or a bound is not positive.
    """

    def __init__(self, url: str, timeout_s: float = 30.0, parallel: int = 8) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--ipfs-api must be an http(s) URL such as http://127.0.0.1:5001, got {url!r}")
        if timeout_s <= 0 or parallel < 1:
            raise ValueError(f"timeout_s must be > 0 and parallel >= 1, got {timeout_s!r}, {parallel!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.parallel = parallel
        self.name = f"kubo-rpc:{self.url}"
        self.tier = TIER_FALLBACK  # Kubo may search its whole network before saying no

    async def get_blocks(self, cids: list[str]) -> dict[str, bytes]:
        """Requested CID → the bytes Kubo returned (absent: Kubo answered with an error).

        Raises:
            SourceUnavailable: Kubo cannot be reached or the connection broke.
        """
        found: dict[str, bytes] = {}
        limiter = anyio.CapacityLimiter(self.parallel)
        failures: list[Exception] = []

        async def one(client: httpx.AsyncClient, cid: str) -> None:
            async with limiter:
                try:
                    block = await self._get(client, cid)
                except httpx.HTTPError as e:
                    failures.append(e)
                    return
            if block is not None:
                found[cid] = block

        async with httpx.AsyncClient(timeout=self.timeout_s + 5.0) as client, anyio.create_task_group() as tg:
            for cid in cids:
                tg.start_soon(one, client, cid)
        if failures and not found:
            raise SourceUnavailable(f"{self.name} failed: {failures[0]}") from failures[0]
        return found

    async def _get(self, client: httpx.AsyncClient, cid: str) -> bytes | None:
        params = {"arg": cid, "timeout": f"{self.timeout_s:g}s"}
        async with client.stream("POST", f"{self.url}/api/v0/block/get", params=params) as resp:
            if resp.status_code != 200:
                return None
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BLOCK_SIZE:
                    break  # too large for any block: the verifier refuses it
            return bytes(body)
