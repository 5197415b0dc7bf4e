"""The node's durable list of adapters it knows, each with an explicit lifecycle state.

    (unknown) ──► AVAILABLE ──► FETCHING ──► VERIFYING ──► READY ──(in a device slot)──► RESIDENT*
                  (announced)  ◄─┘ fetch failed      │           │
                     │             │                 │           │
                     └─────────────┴─────────────────┴───────────┴──► REJECTED (reason, detail)
                                                        │ only if the reason is retryable
                     FETCHING / VERIFYING / READY ◄─────┘ (reasons.py)

A local publish may complete an adapter while a fetch of it is in flight (FETCHING ──► READY); the fetch then
finds it READY and leaves it so (``set_state(..., unless=...)`` compares and sets in one transaction).

AVAILABLE: a peer announced it and its manifest passed the checks (signature, base), but its
files are not here yet; the first request for it fetches them.

``RESIDENT`` is not stored: it is READY plus "the slot manager holds it now". A rejection is
remembered by CID with its typed reason so the same bad adapter is refused at once next time
and ``GetAdapter`` can say why; a retryable one (a corrupt or absent local copy, a node limit)
may be verified again. SQLite in WAL mode; every method is one short transaction and
safe to call from any thread.

Adapters only announced (AVAILABLE) are bounded: past ``max_announced`` the least recently
learned of them are forgotten (:meth:`Catalog.forget_announced`); an entry this node fetched,
verified, published, serves or rejected is never evicted. A forgotten adapter is learned again
from its next announcement, or fetched on the first request for it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .reasons import RejectReason

MAX_ANNOUNCED = 2000  # AVAILABLE (announced, never fetched) entries kept at most

class AdapterState(str, Enum):
    """Stored lifecycle state of an adapter on this node."""

    AVAILABLE = "available"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    READY = "ready"
    REJECTED = "rejected"


_ALLOWED = {
    None: {AdapterState.AVAILABLE, AdapterState.FETCHING, AdapterState.VERIFYING, AdapterState.READY, AdapterState.REJECTED},
    AdapterState.AVAILABLE: {
        AdapterState.AVAILABLE, AdapterState.FETCHING, AdapterState.VERIFYING, AdapterState.READY, AdapterState.REJECTED
    },
    AdapterState.FETCHING: {
        AdapterState.AVAILABLE, AdapterState.FETCHING, AdapterState.VERIFYING, AdapterState.READY, AdapterState.REJECTED
    },
    AdapterState.VERIFYING: {AdapterState.READY, AdapterState.REJECTED},
    AdapterState.READY: {AdapterState.READY, AdapterState.REJECTED},
    AdapterState.REJECTED: {AdapterState.REJECTED},
}
_RETRY = {AdapterState.REJECTED, AdapterState.FETCHING, AdapterState.VERIFYING, AdapterState.READY}


class BadTransition(RuntimeError):
    """A state change the lifecycle does not allow (a programming error, not bad input)."""


@dataclass(frozen=True)
class CatalogEntry:
    """One adapter as the catalog knows it.

    Attributes:
        cid: adapter ID (manifest CID).
        state: lifecycle state.
        reason / detail: rejection reason code and explanation (empty otherwise).
        name: the publisher's adapter name (from the manifest, if known).
        manifest: canonical manifest bytes once verified, else ``None``.
        updated_at: unix seconds of the last change.
    """

    cid: str
    state: AdapterState
    reason: str
    detail: str
    name: str
    manifest: bytes | None
    updated_at: float


class Catalog:
    """Adapter lifecycle states persisted in ``<data dir>/catalog.sqlite``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS adapters (
                 cid TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
                 detail TEXT NOT NULL DEFAULT '', name TEXT NOT NULL DEFAULT '', manifest BLOB,
                 updated_at REAL NOT NULL)"""
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def get(self, cid: str) -> CatalogEntry | None:
        """The entry for ``cid`` or ``None``."""
        with self._lock:
            return self._entry_of(cid)

    def _entry_of(self, cid: str) -> CatalogEntry | None:
        row = self._db.execute(
            "SELECT cid, state, reason, detail, name, manifest, updated_at FROM adapters WHERE cid = ?", (cid,)
        ).fetchone()
        return _entry(row) if row else None

    def count(self) -> int:
        """Entries in the catalog."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM adapters").fetchone()[0]

    def page(self, limit: int, after: tuple[float, str] | None = None) -> list[CatalogEntry]:
        """At most ``limit`` entries, most recently changed first, starting after the entry whose
        ``(updated_at, cid)`` is ``after`` (keyset paging: an entry changed while a client pages
        moves to the front, so that listing may miss it; the next one shows it)."""
        query = "SELECT cid, state, reason, detail, name, manifest, updated_at FROM adapters"
        args: tuple = ()
        if after is not None:
            query += " WHERE updated_at < ? OR (updated_at = ? AND cid > ?)"
            args = (after[0], after[0], after[1])
        with self._lock:
            rows = self._db.execute(query + " ORDER BY updated_at DESC, cid LIMIT ?", (*args, limit)).fetchall()
        return [_entry(r) for r in rows]

    def forget_announced(self, keep: int = MAX_ANNOUNCED) -> int:
        """Delete AVAILABLE entries beyond the ``keep`` most recently learned; returns how many went."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM adapters WHERE cid IN (SELECT cid FROM adapters WHERE state = ? "
                "ORDER BY updated_at DESC, cid LIMIT -1 OFFSET ?)",
                (AdapterState.AVAILABLE.value, keep),
            )
            return cur.rowcount

    def list(self) -> list[CatalogEntry]:
        """Every entry, most recently changed first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT cid, state, reason, detail, name, manifest, updated_at FROM adapters ORDER BY updated_at DESC"
            ).fetchall()
        return [_entry(r) for r in rows]

    def set_state(
        self,
        cid: str,
        state: AdapterState,
        *,
        reason: str = "",
        detail: str = "",
        name: str | None = None,
        manifest: bytes | None = None,
        unless: frozenset[AdapterState] = frozenset(),
    ) -> CatalogEntry:
        """Move ``cid`` to ``state`` (creating the entry if new).

        Args:
            unless: states to leave alone: when ``cid`` is in one of them, nothing changes and its entry is
                returned (checked and set in one transaction, so a concurrent change cannot slip in between).

        Raises:
            BadTransition: the lifecycle forbids the move (e.g. leaving REJECTED for a reason
                that is not retryable).
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT state, name, manifest, reason FROM adapters WHERE cid = ?", (cid,)).fetchone()
                current = AdapterState(row[0]) if row else None
                if current in unless:
                    self._db.execute("ROLLBACK")
                    return self._entry_of(cid)
                allowed = _ALLOWED[current]
                if current is AdapterState.REJECTED and RejectReason(row[3]).retryable:
                    allowed = _RETRY
                if state not in allowed:
                    raise BadTransition(f"{cid}: {current} -> {state} is not allowed")
                keep_name = name if name is not None else (row[1] if row else "")
                keep_manifest = manifest if manifest is not None else (row[2] if row else None)
                now = time.time()
                self._db.execute(
                    "INSERT OR REPLACE INTO adapters (cid, state, reason, detail, name, manifest, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (cid, state.value, reason, detail, keep_name, keep_manifest, now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return CatalogEntry(cid, state, reason, detail, keep_name, keep_manifest, now)


def _entry(row) -> CatalogEntry:
    return CatalogEntry(row[0], AdapterState(row[1]), row[2], row[3], row[4], row[5], row[6])
