"""The node's durable payment record: vouchers, receipts and settlement batches in SQLite (WAL, fsync on commit).

Life of a call (the caller's contract: ``authorize`` returns before the first token streams):

    authorize(voucher, quote, max_tokens, channel)   one transaction: check the voucher (vouchers.check_voucher),
        │                                            keep it if it is the channel's latest, reserve max cost,
        │                                            insert a *pending* receipt. Committed to disk on return.
        ├─ finalize(id, tokens) → SignedReceipt      pending → *final*: cost = ceil(tokens × price / 1000),
        │                                            unused reservation released, receipt signed by the node.
        └─ void(id)                                  pending → *void*: the call produced nothing, costs nothing.

A receipt still pending when the ledger is opened belongs to a call cut off by a crash: the client never got
its receipt, so it is voided (the node forgoes it) and its reservation released.

Settlement (driven by ``settlement.Settler``) moves final receipts into batches:

    plan_claims()       per channel epoch: unsettled final receipts → one claim of
                        claimed_total = settled + their costs, on the channel's latest voucher, with per-adapter
                        usage entries (calls, tokens, amount), each on the latest voucher naming its adapter
    record_batch()      the claims, the signed settle transaction (raw bytes, hash, nonce) and the receipts'
                        batch link, in one transaction, *before* the transaction is sent
    batch_settled()     the transaction succeeded: the channels' ``settled`` move to the claimed totals
    batch_failed()      it reverted or can never be mined: the receipts return to the unsettled pool
    forfeit()           the client withdrew before the node settled an epoch: those receipts are lost
    set_aside()         the chain refuses a channel's claim (simulated alone): it stays out of batches, with its
                        reason, until the client's next voucher replaces the refused one

Only one batch is open at a time, so ``settled`` always equals what the chain has redeemed for the channel.
Amounts are wei and stored as decimal TEXT (they overflow SQLite's 64-bit INTEGER).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount

from .contracts import SignedTx
from .errors import LedgerError
from .pricing import Quote, cost_wei
from .records import ChannelState, Eip712Domain, Receipt, Redemption, SignedReceipt, SignedVoucher, UsageEntry, Voucher
from .vouchers import check_voucher, sign_receipt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (
    client TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    amount TEXT NOT NULL,           -- latest accepted voucher amount
    signature BLOB NOT NULL,        -- the client's signature of that voucher
    committed TEXT NOT NULL,        -- charged + max cost of pending calls
    charged TEXT NOT NULL,          -- sum of final receipts' costs
    settled TEXT NOT NULL,          -- what settled batches redeemed on chain
    PRIMARY KEY (client, epoch)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'settled', 'failed')),
    tx_hash BLOB NOT NULL,
    raw_tx BLOB NOT NULL,
    nonce INTEGER NOT NULL,
    gas_used INTEGER,
    created_ms INTEGER NOT NULL,
    closed_ms INTEGER
);
CREATE TABLE IF NOT EXISTS batch_claims (
    batch INTEGER NOT NULL REFERENCES batches(id),
    client TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    claimed_total TEXT NOT NULL,
    PRIMARY KEY (batch, client, epoch)
);
CREATE TABLE IF NOT EXISTS receipts (
    id INTEGER PRIMARY KEY,         -- the receipt's sequence number
    client TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    adapter BLOB NOT NULL,
    cid TEXT NOT NULL,
    publisher TEXT NOT NULL,
    price_per_1k TEXT NOT NULL,
    max_tokens INTEGER NOT NULL,
    max_cost TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'final', 'void', 'forfeit')),
    tokens INTEGER,
    cost TEXT,
    charged_total TEXT,
    signature BLOB,
    batch INTEGER REFERENCES batches(id),
    created_ms INTEGER NOT NULL,
    finalized_ms INTEGER
);
CREATE INDEX IF NOT EXISTS receipts_unsettled ON receipts (state, batch);
CREATE INDEX IF NOT EXISTS receipts_lane ON receipts (client, epoch, adapter);
CREATE TABLE IF NOT EXISTS lane_vouchers (
    client TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    adapter BLOB NOT NULL,
    amount TEXT NOT NULL,           -- the latest accepted voucher naming this adapter: its cumulative amount,
    price_per_1k TEXT NOT NULL,     -- its price,
    adapter_amount TEXT NOT NULL,   -- what it authorises for the adapter on the epoch
    signature BLOB NOT NULL,        -- and the client's signature (settlement backs the adapter's usage with it)
    PRIMARY KEY (client, epoch, adapter)
);
CREATE TABLE IF NOT EXISTS set_aside (
    client TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    amount TEXT NOT NULL,           -- the channel's latest voucher amount when its claim failed simulation
    reason TEXT NOT NULL,           -- the decoded contract error
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (client, epoch, amount)
);
"""

# unsettled final receipts whose channel's latest voucher was not set aside (a newer voucher is tried again)
_CLAIMABLE = (
    "state = 'final' AND batch IS NULL AND NOT EXISTS (SELECT 1 FROM set_aside a JOIN channels c"
    " ON c.client = a.client AND c.epoch = a.epoch AND c.amount = a.amount"
    " WHERE a.client = receipts.client AND a.epoch = receipts.epoch)"
)


@dataclass(frozen=True)
class Authorization:
    """A paid call in flight: receipt ``receipt_id`` reserves ``max_cost`` wei for up to ``max_tokens`` tokens."""

    receipt_id: int
    client: str
    epoch: int
    max_tokens: int
    max_cost: int
    quote: Quote


@dataclass(frozen=True)
class ChannelClaim:
    """What one channel epoch's unsettled final receipts add up to, ready to redeem."""

    voucher: SignedVoucher
    claimed_total: int
    receipt_ids: tuple[int, ...]
    usage: tuple[UsageEntry, ...]

    @property
    def client(self) -> str:
        return self.voucher.voucher.client

    @property
    def epoch(self) -> int:
        return self.voucher.voucher.epoch

    def redemption(self) -> Redemption:
        return Redemption(self.voucher, self.claimed_total, self.usage)


@dataclass(frozen=True)
class OpenBatch:
    """A recorded settlement batch whose transaction's fate is not yet known to the ledger."""

    id: int
    tx: SignedTx
    claims: tuple[tuple[str, int, int], ...]  # (client, epoch, claimed_total)


@dataclass(frozen=True)
class ChannelTotals:
    """The ledger's view of one channel epoch, wei."""

    client: str
    epoch: int
    latest_amount: int
    committed: int
    charged: int
    settled: int


@dataclass(frozen=True)
class ReceiptTotals:
    """Sums over receipts of one adapter: calls, tokens, wei."""

    calls: int
    tokens: int
    amount: int


def _now_ms() -> int:
    return int(time.time() * 1000)


class Ledger:
    """The SQLite ledger of one node (one ``Ledger`` per file per process; it voids the previous run's pending
    receipts when opened). Thread safe: every method runs under one lock, in one SQLite transaction.

    Args:
        path: the database file (created with its parent folder).
        node: the node's account; signs receipts.
        domain: EIP-712 domain of the PaymentChannels deployment vouchers are for.
        chain_tag: identifies the chain instance (e.g. its genesis block hash), so a ledger is never reused
            against a fresh embedded chain that happens to have the same chain id and contract address.

    Raises:
        LedgerError: the file was made for another node, chain, deployment or chain instance.
    """

    def __init__(self, path: str | Path, node: LocalAccount, domain: Eip712Domain, chain_tag: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.node = node
        self.domain = domain
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before authorize() returns, so tokens never stream for an unrecorded call.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        binding = {
            "node": node.address,
            "chain_id": str(domain.chain_id),
            "contract": domain.verifying_contract,
            "chain_tag": chain_tag,
        }
        try:
            with self._transaction() as db:
                stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if stored and stored != binding:
                    raise LedgerError(f"ledger {self.path} belongs to {stored}, not {binding}; use another ledger file")
                if not stored:
                    db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", binding.items())
                self._void_pending(db)
        except LedgerError:
            self._db.close()
            raise

    def close(self) -> None:
        """Closes the database; the ledger is unusable afterwards."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _void_pending(self, db: sqlite3.Connection) -> None:
        for client, epoch, max_cost in db.execute(
            "SELECT client, epoch, max_cost FROM receipts WHERE state = 'pending'"
        ).fetchall():
            self._add_committed(db, client, epoch, -int(max_cost))
        db.execute("UPDATE receipts SET state = 'void', finalized_ms = ? WHERE state = 'pending'", (_now_ms(),))

    @staticmethod
    def _add_committed(db: sqlite3.Connection, client: str, epoch: int, delta: int, charged: int = 0) -> None:
        committed, was_charged = db.execute(
            "SELECT committed, charged FROM channels WHERE client = ? AND epoch = ?", (client, epoch)
        ).fetchone()
        db.execute(
            "UPDATE channels SET committed = ?, charged = ? WHERE client = ? AND epoch = ?",
            (str(int(committed) + delta), str(int(was_charged) + charged), client, epoch),
        )

    # -- calls --------------------------------------------------------------------------------------------

    def authorize(self, signed: SignedVoucher, quote: Quote, max_tokens: int, channel: ChannelState) -> Authorization:
        """Checks ``signed`` for a call of up to ``max_tokens`` tokens at ``quote`` and records it, durably.

        Args:
            channel: the channel's current on-chain state (``PaymentChannels.channel(client, node)``).

        Raises:
            ValueError: ``max_tokens`` < 1.
            PaymentError: the voucher does not pay for the call (see ``vouchers.check_voucher``).
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        v = signed.voucher
        max_cost = quote.cost_wei(max_tokens)
        with self._transaction() as db:
            # Keyed by the chain's epoch, not the voucher's: check_voucher refuses any other, and an untrusted
            # uint64 must not reach SQLite (above 2^63 - 1 it overflows INTEGER).
            row = db.execute(
                "SELECT amount, committed FROM channels WHERE client = ? AND epoch = ?", (v.client, channel.epoch)
            ).fetchone()
            latest, committed = (int(row[0]), int(row[1])) if row else (0, 0)
            check_voucher(
                signed,
                domain=self.domain,
                node=self.node.address,
                channel=channel,
                latest_amount=latest,
                committed=committed,
                max_cost=max_cost,
                adapter=quote.adapter_id,
                price_per_1k_tokens=quote.price_per_1k_tokens,
                adapter_committed=self._lane_committed(db, v.client, channel.epoch, quote.adapter_id),
            )
            db.execute(
                "INSERT OR REPLACE INTO lane_vouchers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    v.client,
                    v.epoch,
                    v.adapter,
                    str(v.cumulative_amount),
                    str(v.price_per_1k_tokens),
                    str(v.adapter_amount),
                    signed.signature,
                ),
            )
            if row is None:
                db.execute(
                    "INSERT INTO channels VALUES (?, ?, ?, ?, ?, '0', '0')",
                    (v.client, v.epoch, str(v.cumulative_amount), signed.signature, str(max_cost)),
                )
            else:
                db.execute(
                    "UPDATE channels SET amount = ?, signature = ?, committed = ? WHERE client = ? AND epoch = ?",
                    (str(v.cumulative_amount), signed.signature, str(committed + max_cost), v.client, v.epoch),
                )
            receipt_id = db.execute(
                "INSERT INTO receipts (client, epoch, adapter, cid, publisher, price_per_1k, max_tokens, max_cost,"
                " state, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (
                    v.client,
                    v.epoch,
                    quote.adapter_id,
                    quote.cid,
                    quote.publisher,
                    str(quote.price_per_1k_tokens),
                    max_tokens,
                    str(max_cost),
                    _now_ms(),
                ),
            ).lastrowid
        return Authorization(receipt_id, v.client, v.epoch, max_tokens, max_cost, quote)

    @staticmethod
    def _lane_committed(db: sqlite3.Connection, client: str, epoch: int, adapter: bytes) -> int:
        """Wei charged on ``adapter`` in the channel epoch plus the max cost of its calls in flight."""
        return sum(
            int(cost if state == "final" else max_cost)
            for state, cost, max_cost in db.execute(
                "SELECT state, cost, max_cost FROM receipts WHERE client = ? AND epoch = ? AND adapter = ?"
                " AND state IN ('pending', 'final')",
                (client, epoch, adapter),
            )
        )

    def _lane_voucher(self, db: sqlite3.Connection, client: str, epoch: int, adapter: bytes) -> SignedVoucher:
        amount, price, adapter_amount, signature = db.execute(
            "SELECT amount, price_per_1k, adapter_amount, signature FROM lane_vouchers"
            " WHERE client = ? AND epoch = ? AND adapter = ?",
            (client, epoch, adapter),
        ).fetchone()
        voucher = Voucher(client, self.node.address, epoch, int(amount), bytes(adapter), int(price), int(adapter_amount))
        return SignedVoucher(voucher, bytes(signature))

    def _latest_voucher(self, db: sqlite3.Connection, client: str, epoch: int, amount: str) -> SignedVoucher:
        """The channel epoch's latest voucher (cumulative ``amount``): the latest of its own adapter too."""
        (adapter,) = db.execute(
            "SELECT adapter FROM lane_vouchers WHERE client = ? AND epoch = ? AND amount = ?", (client, epoch, amount)
        ).fetchone()
        return self._lane_voucher(db, client, epoch, bytes(adapter))

    def finalize(self, receipt_id: int, tokens: int, serving: bytes = bytes(32)) -> SignedReceipt:
        """Bills ``tokens`` tokens for the pending call ``receipt_id`` and returns the node-signed receipt, which
        binds ``serving``: the 32-byte digest of the call's serving record (zeros: a call cut off, no record).

        Raises:
            ValueError: ``tokens`` is not in 1..max_tokens (use ``void`` for a call that produced nothing).
            LedgerError: the receipt does not exist or is not pending.
        """
        with self._transaction() as db:
            row = self._pending(db, receipt_id)
            client, epoch, adapter, publisher, price, max_tokens, max_cost = row
            if not 1 <= tokens <= max_tokens:
                raise ValueError(f"tokens must be 1..{max_tokens} (the authorised maximum), got {tokens}")
            cost = cost_wei(tokens, int(price))
            self._add_committed(db, client, epoch, cost - int(max_cost), charged=cost)
            (charged,) = db.execute(
                "SELECT charged FROM channels WHERE client = ? AND epoch = ?", (client, epoch)
            ).fetchone()
            receipt = Receipt(
                node=self.node.address,
                client=client,
                epoch=epoch,
                sequence=receipt_id,
                adapter=bytes(adapter),
                publisher=publisher,
                tokens=tokens,
                cost=cost,
                charged_total=int(charged),
                serving=serving,
            )
            signed = sign_receipt(self.node, receipt, self.domain)
            db.execute(
                "UPDATE receipts SET state = 'final', tokens = ?, cost = ?, charged_total = ?, signature = ?,"
                " finalized_ms = ? WHERE id = ?",
                (tokens, str(cost), charged, signed.signature, _now_ms(), receipt_id),
            )
        return signed

    def void(self, receipt_id: int) -> None:
        """Cancels the pending call ``receipt_id`` (nothing was served); its reservation is released.

        Raises:
            LedgerError: the receipt does not exist or is not pending.
        """
        with self._transaction() as db:
            client, epoch, *_, max_cost = self._pending(db, receipt_id)
            self._add_committed(db, client, epoch, -int(max_cost))
            db.execute("UPDATE receipts SET state = 'void', finalized_ms = ? WHERE id = ?", (_now_ms(), receipt_id))

    @staticmethod
    def _pending(db: sqlite3.Connection, receipt_id: int) -> tuple:
        row = db.execute(
            "SELECT state, client, epoch, adapter, publisher, price_per_1k, max_tokens, max_cost FROM receipts"
            " WHERE id = ?",
            (receipt_id,),
        ).fetchone()
        if row is None:
            raise LedgerError(f"no receipt {receipt_id}")
        if row[0] != "pending":
            raise LedgerError(f"receipt {receipt_id} is {row[0]}, not pending")
        return row[1:]

    # -- settlement ---------------------------------------------------------------------------------------

    def unsettled_count(self) -> int:
        """Final receipts not yet in a batch (those of a set-aside claim not counted)."""
        with self._lock:
            (count,) = self._db.execute(f"SELECT COUNT(*) FROM receipts WHERE {_CLAIMABLE}").fetchone()
            return count

    def plan_claims(self, max_channels: int) -> list[ChannelClaim]:
        """Claims for the unsettled final receipts of up to ``max_channels`` channel epochs (oldest first).

        Raises:
            LedgerError: a batch is still open (its outcome decides what is settled).
        """
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM batches WHERE state = 'open'").fetchone():
                raise LedgerError("a settlement batch is still open; resolve it before planning another")
            rows = db.execute(
                f"SELECT id, client, epoch, adapter, tokens, cost FROM receipts WHERE {_CLAIMABLE} ORDER BY id"
            ).fetchall()
            groups: dict[tuple[str, int], list[tuple]] = {}
            for rid, client, epoch, adapter, tokens, cost in rows:
                key = (client, epoch)
                if key in groups or len(groups) < max_channels:
                    groups.setdefault(key, []).append((rid, bytes(adapter), tokens, int(cost)))
            claims = []
            for (client, epoch), receipts in groups.items():
                amount, settled = db.execute(
                    "SELECT amount, settled FROM channels WHERE client = ? AND epoch = ?", (client, epoch)
                ).fetchone()
                usage: dict[bytes, list[int]] = {}
                for _, adapter, tokens, cost in receipts:
                    entry = usage.setdefault(adapter, [0, 0, 0])
                    entry[0] += 1
                    entry[1] += tokens
                    entry[2] += cost
                claims.append(
                    ChannelClaim(
                        voucher=self._latest_voucher(db, client, epoch, amount),
                        claimed_total=int(settled) + sum(r[3] for r in receipts),
                        receipt_ids=tuple(r[0] for r in receipts),
                        usage=tuple(
                            UsageEntry(self._lane_voucher(db, client, epoch, a), *totals) for a, totals in usage.items()
                        ),
                    )
                )
            return claims

    def record_batch(self, claims: Sequence[ChannelClaim], tx: SignedTx) -> int:
        """Records a batch (before its transaction is sent); returns its id.

        Raises:
            LedgerError: a claimed receipt was meanwhile batched or is no longer final.
        """
        with self._transaction() as db:
            batch_id = db.execute(
                "INSERT INTO batches (state, tx_hash, raw_tx, nonce, created_ms) VALUES ('open', ?, ?, ?, ?)",
                (tx.tx_hash, tx.raw, tx.nonce, _now_ms()),
            ).lastrowid
            for claim in claims:
                db.execute(
                    "INSERT INTO batch_claims VALUES (?, ?, ?, ?)",
                    (batch_id, claim.client, claim.epoch, str(claim.claimed_total)),
                )
                ids = claim.receipt_ids
                marks = ",".join("?" * len(ids))
                updated = db.execute(
                    f"UPDATE receipts SET batch = ? WHERE id IN ({marks}) AND state = 'final' AND batch IS NULL",
                    (batch_id, *ids),
                ).rowcount
                if updated != len(ids):
                    raise LedgerError(f"receipts of {claim.client} epoch {claim.epoch} changed since planning")
        return batch_id

    def open_batches(self) -> list[OpenBatch]:
        """Batches whose transaction outcome is not recorded yet (at most one)."""
        with self._lock:
            batches = self._db.execute(
                "SELECT id, raw_tx, tx_hash, nonce FROM batches WHERE state = 'open' ORDER BY id"
            ).fetchall()
            return [
                OpenBatch(
                    id=bid,
                    tx=SignedTx(bytes(raw), bytes(tx_hash), nonce),
                    claims=tuple(
                        (client, epoch, int(total))
                        for client, epoch, total in self._db.execute(
                            "SELECT client, epoch, claimed_total FROM batch_claims WHERE batch = ?", (bid,)
                        )
                    ),
                )
                for bid, raw, tx_hash, nonce in batches
            ]

    def batch_settled(self, batch_id: int, gas_used: int) -> None:
        """The batch's transaction succeeded: its channels' settled totals become the claimed totals."""
        with self._transaction() as db:
            self._close_batch(db, batch_id, "settled", gas_used)
            db.execute(
                "UPDATE channels SET settled = (SELECT claimed_total FROM batch_claims c WHERE c.batch = ?"
                " AND c.client = channels.client AND c.epoch = channels.epoch)"
                " WHERE (client, epoch) IN (SELECT client, epoch FROM batch_claims WHERE batch = ?)",
                (batch_id, batch_id),
            )

    def batch_failed(self, batch_id: int) -> None:
        """The batch's transaction reverted or can never be mined: its receipts become unsettled again."""
        with self._transaction() as db:
            self._close_batch(db, batch_id, "failed", None)
            db.execute("UPDATE receipts SET batch = NULL WHERE batch = ?", (batch_id,))

    @staticmethod
    def _close_batch(db: sqlite3.Connection, batch_id: int, state: str, gas_used: int | None) -> None:
        updated = db.execute(
            "UPDATE batches SET state = ?, gas_used = ?, closed_ms = ? WHERE id = ? AND state = 'open'",
            (state, gas_used, _now_ms(), batch_id),
        ).rowcount
        if updated != 1:
            raise LedgerError(f"batch {batch_id} is not open")

    def forfeit(self, client: str, epoch: int) -> int:
        """Marks the unsettled final receipts of a channel epoch the client already closed as forfeit.

        Returns:
            how many receipts were forfeited.
        """
        with self._transaction() as db:
            return db.execute(
                "UPDATE receipts SET state = 'forfeit' WHERE client = ? AND epoch = ? AND state = 'final'"
                " AND batch IS NULL",
                (client, epoch),
            ).rowcount

    def set_aside(self, claim: ChannelClaim, reason: str) -> None:
        """Keeps ``claim`` out of settlement because the chain refuses it (``reason``: the decoded revert), so
        that it cannot revert every batch. Its receipts stay final and unsettled: the channel is tried again
        once the client's next voucher (a higher amount) replaces the one that failed."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO set_aside VALUES (?, ?, ?, ?, ?)",
                (claim.client, claim.epoch, str(claim.voucher.voucher.cumulative_amount), reason, _now_ms()),
            )

    def set_aside_claims(self) -> list[tuple[str, int, int, str]]:
        """Every claim ever set aside: (client, epoch, voucher amount in wei, reason), oldest first."""
        with self._lock:
            return [
                (client, epoch, int(amount), reason)
                for client, epoch, amount, reason in self._db.execute(
                    "SELECT client, epoch, amount, reason FROM set_aside ORDER BY created_ms, client"
                )
            ]

    # -- views --------------------------------------------------------------------------------------------

    def channel_totals(self) -> list[ChannelTotals]:
        """The ledger's view of every channel epoch it has seen."""
        with self._lock:
            return [
                ChannelTotals(client, epoch, int(amount), int(committed), int(charged), int(settled))
                for client, epoch, amount, committed, charged, settled in self._db.execute(
                    "SELECT client, epoch, amount, committed, charged, settled FROM channels ORDER BY client, epoch"
                )
            ]

    def channel(self, client: str, epoch: int) -> tuple[ChannelTotals, SignedVoucher] | None:
        """The ledger's view of one channel epoch and the latest voucher it accepted there; ``None`` when the
        node never accepted a voucher on it."""
        with self._lock:
            row = self._db.execute(
                "SELECT amount, committed, charged, settled FROM channels WHERE client = ? AND epoch = ?",
                (client, epoch),
            ).fetchone()
            if row is None:
                return None
            amount, committed, charged, settled = row
            totals = ChannelTotals(client, epoch, int(amount), int(committed), int(charged), int(settled))
            return totals, self._latest_voucher(self._db, client, epoch, amount)

    def lane(self, client: str, epoch: int, adapter: bytes) -> tuple[int, SignedVoucher] | None:
        """Wei charged for ``adapter`` (32-byte id) in the channel epoch and the latest voucher accepted for it;
        ``None`` when the node accepted none for it (a client resumes its per-adapter amount from this)."""
        with self._lock:
            if self._db.execute(
                "SELECT 1 FROM lane_vouchers WHERE client = ? AND epoch = ? AND adapter = ?", (client, epoch, adapter)
            ).fetchone() is None:
                return None
            charged = sum(
                int(cost)
                for (cost,) in self._db.execute(
                    "SELECT cost FROM receipts WHERE client = ? AND epoch = ? AND adapter = ? AND state = 'final'",
                    (client, epoch, adapter),
                )
            )
            return charged, self._lane_voucher(self._db, client, epoch, adapter)

    def receipt_totals(self, settled_only: bool = True) -> dict[bytes, ReceiptTotals]:
        """Per adapter id: calls, tokens and wei of final receipts (only those in settled batches by default)."""
        query = "SELECT r.adapter, r.tokens, r.cost FROM receipts r LEFT JOIN batches b ON r.batch = b.id"
        query += " WHERE r.state = 'final'" + (" AND b.state = 'settled'" if settled_only else "")
        totals: dict[bytes, list[int]] = {}
        with self._lock:
            for adapter, tokens, cost in self._db.execute(query):
                entry = totals.setdefault(bytes(adapter), [0, 0, 0])
                entry[0] += 1
                entry[1] += tokens
                entry[2] += int(cost)
        return {adapter: ReceiptTotals(*entry) for adapter, entry in totals.items()}
