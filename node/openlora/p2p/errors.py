"""Typed errors of the swarm layer.

    SwarmError
    ├── SwarmNotRunning      a call needs the libp2p thread, which is not started or has stopped
    ├── SwarmStartError      the host could not start (port taken, bad identity file, ...)
    ├── InvalidMultiaddr     a bootstrap/peer address is malformed (ValueError)
    ├── IdentityError        the key file in the data dir cannot be read as a libp2p private key
    ├── MessageRejected      a gossip message or catalog entry failed validation (ValueError)
    ├── SourceUnavailable    a block source failed as a whole (timeout, transport, protocol)
    └── FetchFailed          blocks could not be fetched from any source
        └── FetchTimeout     ...within the time allowed

Adapter-level refusals (bad manifest, other base) are ``adapters.reasons.AdapterRejected``, so
the node records them with the same reasons whatever path the adapter came by.
"""

from __future__ import annotations


class SwarmError(Exception):
    """Base of every swarm-layer error."""


class SwarmNotRunning(SwarmError, RuntimeError):
    """The swarm thread is not running: call ``start()`` first, or the swarm was stopped."""


class SwarmStartError(SwarmError, RuntimeError):
    """The libp2p host could not start; the message says why (and the cause is chained)."""


class InvalidMultiaddr(SwarmError, ValueError):
    """A multiaddr does not parse or lacks a part we need (e.g. ``/p2p/PEERID``)."""


class IdentityError(SwarmError, ValueError):
    """The peer identity key file exists but is not a usable libp2p private key."""


class MessageRejected(SwarmError, ValueError):
    """A gossip message or catalog entry was refused.

    Attributes:
        reason: stable machine-readable code (``too_large``, ``malformed``, ``forged_cid``,
            ``bad_manifest``, ``wrong_origin``, ``from_future``).
        detail: human-readable explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceUnavailable(SwarmError):
    """A block source failed as a whole for one request (timeout, transport error, protocol not
    supported, HTTP error); the fetcher stops using it for the rest of the fetch."""


class FetchFailed(SwarmError):
    """Some blocks could not be fetched from any source.

    Attributes:
        missing: canonical CIDs still missing when the fetch gave up.
    """

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])


class FetchTimeout(FetchFailed):
    """The fetch did not complete within its deadline."""
