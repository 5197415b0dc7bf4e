"""Checks ``Node.start`` makes for the operator, each failing or warning with the command to run next.

    ports_free(host, [(port, "--port"), …])        before the base model loads: a busy port fails in a second,
                                                   not after the model has loaded
    warn_forgotten_registrations(catalog, …)       once the embedded chain is up: priced adapters it has never seen
"""

from __future__ import annotations

import errno
import logging
import socket

from .adapters.catalog import AdapterState, Catalog

log = logging.getLogger(__name__)


def ports_free(host: str, ports: list[tuple[int, str]]) -> None:
    """Fails when a listener holds one of ``ports`` on ``host`` (port 0, "any free one", is skipped).

    The test bind sets SO_REUSEADDR, as the servers do, so a port left in TIME_WAIT by a node that just stopped
    counts as free; only a live listener makes the bind fail. The servers bind again for real afterwards.

    Args:
        host: the listen address.
        ports: (port, the flag that sets it) pairs.

    Raises:
        RuntimeError: a port is in use; the message names it and its flag.
    """
    for port, flag in ports:
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise RuntimeError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror}") from exc
                who = f"`openlora info --node {host}:{port}` asks it" if flag == "--port" else "its HTTP API"
                raise RuntimeError(
                    f"port {port} on {host} is in use (another openlora-node? {who}); set {flag} to a free port, "
                    f"or {flag} 0 for any free one"
                ) from exc


def warn_forgotten_registrations(catalog: Catalog, node_address: str) -> list[str]:
    """On a fresh embedded chain: warn about the catalog's priced adapters, which the chain has never registered.

    The embedded dev chain lives and dies with the node, so every registration made on it before a restart is
    gone: without a node fee those adapters are now served free, with one they are refused. Call only when the
    node runs the embedded chain.

    Args:
        catalog: the node's catalog (verified adapters carry their signed manifest).
        node_address: the gRPC ``host:port``, for the commands the warning suggests.

    Returns:
        ``name (CID)`` of each such adapter (empty: nothing logged).
    """
    from .adapters.manifest import parse_manifest

    lost = []
    for entry in catalog.list():
        if entry.state is AdapterState.READY and entry.manifest is not None and parse_manifest(entry.manifest).price_wei > 0:
            lost.append(f"{entry.name or '?'} ({entry.cid})")
    if lost:
        log.warning(
            "the embedded dev chain is new at every start, and %d priced adapter(s) in the catalog are not registered "
            "on it, so they are served free (refused with a node fee): %s; register each again with `openlora-node "
            "register CID --node %s --key PUBLISHER_KEY`, or keep one chain across restarts: run `anvil`, deploy once "
            "with `openlora-node chain deploy --chain-rpc http://127.0.0.1:8545 --key DEPLOYER_KEY --out "
            "deployment.json` and start with `--chain-rpc http://127.0.0.1:8545 --contracts deployment.json`",
            len(lost),
            ", ".join(lost),
            node_address,
        )
    return lost
