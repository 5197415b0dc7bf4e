"""The swarm catalog: every verified adapter this node learned, and which peers have it.

    <data dir>/swarm.sqlite
      adapters(cid PK, manifest, base_fingerprint, name, learned_at, local)
      providers(cid, peer_id, seen_at)      peers that announced the adapter or said they hold it

Only entries that passed ``validate.verify_adapter`` are stored, and only those made for
this node's base (the caller filters). ``local`` marks adapters whose blocks this node holds
(published here or fetched completely): catalog sync tells peers so. It survives restarts, so
a node knows the catalog before its first peer connects. SQLite in WAL mode; every method is
one short transaction and safe from any thread.

Records this node does not hold are bounded (``max_remote``): past it, those least recently
announced (latest provider ``seen_at``) are forgotten with their providers; ``local`` ones never are.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..adapters.catalog import MAX_ANNOUNCED


@dataclass(frozen=True)
class CatalogRecord:
    """One adapter known to the swarm layer.

    Attributes:
        cid: canonical adapter CID (manifest CIDv1).
        manifest: canonical manifest bytes (verified against ``cid``).
        base_fingerprint / name: copied from the manifest for queries.
        learned_at: when this node first learned it, unix seconds.
        local: whether this node holds all of its blocks.
        providers: peer IDs known to have it, most recently seen first.
    """

    cid: str
    manifest: bytes
    base_fingerprint: str
    name: str
    learned_at: float
    local: bool
    providers: tuple[str, ...]


class SwarmCatalog:
    """Verified adapters and their providers, persisted in SQLite.

    Args:
        path: database file (its folder is created).
        max_remote: records of adapters this node does not hold, kept at most.

    Raises:
        sqlite3.Error: the file cannot be opened as a database.
    """

    def __init__(self, path: str | Path, max_remote: int = MAX_ANNOUNCED) -> None:
        self.max_remote = max_remote
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """CREATE TABLE IF NOT EXISTS adapters (
                 cid TEXT PRIMARY KEY, manifest BLOB NOT NULL, base_fingerprint TEXT NOT NULL,
                 name TEXT NOT NULL, learned_at REAL NOT NULL, local INTEGER NOT NULL DEFAULT 0);
               CREATE TABLE IF NOT EXISTS providers (
                 cid TEXT NOT NULL, peer_id TEXT NOT NULL, seen_at REAL NOT NULL,
                 PRIMARY KEY (cid, peer_id));"""
        )

    def add(
        self,
        cid: str,
        manifest: bytes,
        base_fingerprint: str,
        name: str,
        provider: str | None = None,
        local: bool = False,
    ) -> bool:
        """Record a verified adapter (idempotent), optionally with a provider.

        Args:
            cid: canonical adapter CID.
            manifest: its verified manifest bytes.
            base_fingerprint / name: from the manifest.
            provider: a peer ID known to hold it.
            local: this node holds all of its blocks (never reset to False by a later add).

        Returns:
            Whether the adapter was new to the catalog.
        """
        now = time.time()
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO adapters VALUES (?, ?, ?, ?, ?, ?)",
                (cid, manifest, base_fingerprint, name, now, int(local)),
            )
            if local:
                self._db.execute("UPDATE adapters SET local = 1 WHERE cid = ?", (cid,))
            if provider is not None:
                self._db.execute("INSERT OR REPLACE INTO providers VALUES (?, ?, ?)", (cid, provider, now))
            if cur.rowcount == 1 and not local:
                self._forget_remote()
            return cur.rowcount == 1

    def _forget_remote(self) -> None:
        """Drop the least recently announced records beyond ``max_remote`` among those not held here."""
        stale = self._db.execute(
            "SELECT a.cid FROM adapters a LEFT JOIN providers p ON p.cid = a.cid WHERE a.local = 0 "
            "GROUP BY a.cid ORDER BY MAX(COALESCE(p.seen_at, a.learned_at)) DESC, a.cid LIMIT -1 OFFSET ?",
            (self.max_remote,),
        ).fetchall()
        for (cid,) in stale:
            self._db.execute("DELETE FROM providers WHERE cid = ?", (cid,))
            self._db.execute("DELETE FROM adapters WHERE cid = ?", (cid,))

    def get(self, cid: str) -> CatalogRecord | None:
        """The record of ``cid``, or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT cid, manifest, base_fingerprint, name, learned_at, local FROM adapters WHERE cid = ?",
                (cid,),
            ).fetchone()
            return None if row is None else self._record(row)

    def records(self, limit: int | None = None) -> list[CatalogRecord]:
        """All records, most recently learned first (at most ``limit``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT cid, manifest, base_fingerprint, name, learned_at, local FROM adapters "
                "ORDER BY learned_at DESC, cid LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            return [self._record(r) for r in rows]

    def _record(self, row: tuple) -> CatalogRecord:
        providers = self._db.execute(
            "SELECT peer_id FROM providers WHERE cid = ? ORDER BY seen_at DESC, peer_id", (row[0],)
        ).fetchall()
        return CatalogRecord(
            cid=row[0],
            manifest=bytes(row[1]),
            base_fingerprint=row[2],
            name=row[3],
            learned_at=row[4],
            local=bool(row[5]),
            providers=tuple(p for (p,) in providers),
        )

    def close(self) -> None:
        """Close the database (further calls raise ``sqlite3.ProgrammingError``)."""
        with self._lock:
            self._db.close()
