"""Nodes this node stopped routing to: the evidence that stood its own re-check, kept across restarts.

    Verify (this node found a cheat) ─┐
    /openlora/1/evidence (re-checked) ─┴─► Accusations.add ─► SQLite DATA/accusations.sqlite
    directory answers, pick_node, the status of peers ◄── accused(address) / addresses()

Keyed by the accused node's account address (the key that signed the failing record): that is what a record,
a receipt and a node's status name, and what no other node can sign for.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from ..v1 import node_pb2 as pb

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accusations (
    accused TEXT PRIMARY KEY,      -- checksummed address of the node whose record failed
    verifier TEXT NOT NULL,        -- who signed the evidence
    check_name TEXT NOT NULL,      -- the failing check
    evidence BLOB NOT NULL,        -- the Evidence message (protobuf)
    created_ms INTEGER NOT NULL
);
"""


class Accusations:
    """Accused node addresses and their evidence (thread-safe).

    Args:
        path: the SQLite file (created with its folder); ``None`` keeps them in memory only.
    """

    def __init__(self, path: Path | None = None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._accused = {row[0] for row in self._db.execute("SELECT accused FROM accusations")}

    def add(self, accused: str, verifier: str, evidence: pb.Evidence) -> bool:
        """Record evidence against ``accused``; returns whether it was not accused before (the first evidence
        is kept)."""
        with self._lock:
            if accused in self._accused:
                return False
            self._db.execute(
                "INSERT INTO accusations (accused, verifier, check_name, evidence, created_ms) VALUES (?, ?, ?, ?, ?)",
                (accused, verifier, evidence.check, evidence.SerializeToString(), int(time.time() * 1000)),
            )
            self._accused.add(accused)
            return True

    def accused(self, address: str) -> bool:
        """Whether ``address`` is accused."""
        with self._lock:
            return address in self._accused

    def addresses(self) -> frozenset[str]:
        """Every accused address."""
        with self._lock:
            return frozenset(self._accused)

    def evidence(self, address: str) -> pb.Evidence | None:
        """The evidence kept against ``address``, if any."""
        with self._lock:
            row = self._db.execute("SELECT evidence FROM accusations WHERE accused = ?", (address,)).fetchone()
        return pb.Evidence.FromString(row[0]) if row else None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
