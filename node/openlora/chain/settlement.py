"""Batched settlement that pays everything owed exactly once, whenever the node dies.

    every N finalized calls or T seconds (or settle_now()):
        resolve()   the open batch, if any (left by a crash or a slow chain):
                      its tx has a receipt   → status 1: batch_settled   status 0: batch_failed
                      no receipt, nonce used → can never be mined:       batch_failed
                      no receipt otherwise   → send the *same* signed tx again and wait
        prepare()   plan claims, check each channel on chain (epoch moved on → forfeit; redeemed ≠ settled
                    → SettlementError), simulate each claim alone (reverts → set aside with its reason, so one
                    bad claim cannot stall every channel), sign one settle tx, record it in the ledger
                    ← before sending
        submit()    send it, wait for its receipt
        record()    batch_settled / batch_failed

Exactly once, because (1) the signed transaction is stored before it is sent and only ever re-sent as the same
bytes (same nonce and hash), so at most one copy can be mined; (2) a batch is only abandoned when its nonce was
consumed by another transaction, so it can never be mined later; (3) the contract pays a channel only above
what it already redeemed and only when usage entries sum to exactly the new delta, so even a stray duplicate
would revert rather than pay or attribute twice. A kill -9 anywhere leaves the ledger in a state ``resolve``
understands: nothing recorded (receipts simply stay unsettled), recorded but unsent, sent, or mined.

When the chain cannot be reached (or a batch is not mined in time) the background loop retries with exponential
backoff: ``retry_min_s``, doubling up to ``every_seconds``, and back to the normal rhythm after a success. An
open batch is retried too (the same signed bytes), even when no new receipt waits.

``recover()`` runs at start: it resolves the open batch, then checks every channel's on-chain ``redeemed`` against
the ledger's ``settled`` and refuses to run (SettlementError) when they differ.

T must stay well below PaymentChannels' ``withdrawTimeout``: the node has that long to settle after a client
requests a withdrawal, and receipts of an epoch the client closed are forfeit.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3.types import TxReceipt

from .contracts import (
    PaymentChannels,
    broadcast,
    sender_lock,
    sign_call,
    tx_receipt,
    wait_receipt,
)
from .errors import ChainError, ChainUnreachable, ContractRevert, SettlementError
from .ledger import ChannelClaim, Ledger, OpenBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettledBatch:
    """Outcome of one settlement transaction."""

    batch_id: int
    tx_hash: bytes
    redemptions: int
    gas_used: int
    ok: bool


class Settler:
    """Settles a node's ledger on chain in batches, from a background thread or on demand.

    Args:
        ledger: the node's ledger.
        channels: the PaymentChannels deployment the ledger's vouchers are for.
        node: the node's account; signs settlement transactions (and must be the ledger's node).
        every_calls: settle once this many calls are final and unsettled (N).
        every_seconds: settle at least this often while anything is unsettled (T, seconds).
        max_redemptions: channels per transaction (bounds its gas; the rest goes in the next batch).
        tx_timeout_s: seconds to wait for a settlement transaction to be mined.
        retry_min_s: first delay after a failed attempt, seconds (doubles per failure, up to ``every_seconds``).

    Attributes:
        failures: consecutive failed attempts of the background loop (0 again after a success).
        set_aside: claims this settler set aside because their simulation reverted (``Ledger.set_aside_claims``
            lists them all, with the reasons).

    Raises:
        ValueError: a threshold is below 1, ``retry_min_s`` is not above 0, or ``node`` is not the ledger's
            node.
    """

    def __init__(
        self,
        ledger: Ledger,
        channels: PaymentChannels,
        node: LocalAccount,
        *,
        every_calls: int = 50,
        every_seconds: float = 30.0,
        max_redemptions: int = 100,
        tx_timeout_s: float = 120.0,
        retry_min_s: float = 1.0,
    ) -> None:
        if every_calls < 1 or every_seconds <= 0 or max_redemptions < 1 or retry_min_s <= 0:
            raise ValueError("every_calls and max_redemptions must be >= 1, every_seconds and retry_min_s > 0")
        if node.address != ledger.node.address:
            raise ValueError(f"settler account {node.address} is not the ledger's node {ledger.node.address}")
        self.ledger = ledger
        self.channels = channels
        self.node = node
        self.every_calls = every_calls
        self.every_seconds = every_seconds
        self.max_redemptions = max_redemptions
        self.tx_timeout_s = tx_timeout_s
        self.retry_min_s = retry_min_s
        self.failures = 0  # consecutive failed attempts of the background loop
        self.set_aside = 0  # claims set aside by this settler because the chain refuses them
        self._retry_at: float | None = None
        self._run_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_settle = time.monotonic()

    # -- steps (public so that crash tests can stop between any two) ------------------------------------

    def resolve(self) -> bool:
        """Settles the fate of the open batch, if any. Returns True when no batch is left open.

        Raises:
            ChainError: the chain cannot be reached.
        """
        for batch in self.ledger.open_batches():
            # Nonce first, receipt second: a transaction mined in between shows up in the receipt, so a used
            # nonce without a receipt really means another transaction took it.
            used = self.channels.chain.w3.eth.get_transaction_count(self.node.address, "latest")
            receipt = tx_receipt(self.channels.chain, batch.tx.tx_hash)
            if receipt is None:
                if used > batch.tx.nonce:
                    log.warning("settlement batch %d can never be mined (nonce %d reused)", batch.id, batch.tx.nonce)
                    self.ledger.batch_failed(batch.id)
                    continue
                broadcast(self.channels.chain, batch.tx)
                try:
                    receipt = wait_receipt(self.channels.chain, batch.tx.tx_hash, self.tx_timeout_s)
                except ChainError:
                    return False
            self.record(batch, receipt)
        return True

    def prepare(self) -> OpenBatch | None:
        """Plans, checks, signs and records the next batch (not sent). ``None`` when nothing is owed.

        Raises:
            SettlementError: a channel's on-chain ``redeemed`` differs from the ledger, or the batch would
                revert (the decoded contract error is the cause).
            LedgerError: a batch is still open.
        """
        claims = [c for c in self.ledger.plan_claims(self.max_redemptions) if self._claimable(c) and self._accepted(c)]
        if not claims:
            return None
        chain = self.channels.chain
        call = self.channels.settle_call([c.redemption() for c in claims])
        with sender_lock(self.node.address):
            nonce = chain.w3.eth.get_transaction_count(self.node.address, "pending")
            try:
                tx = sign_call(chain, self.node, call, nonce=nonce)
            except ContractRevert as exc:
                raise SettlementError(f"settlement of {len(claims)} channels would revert: {exc}") from exc
            batch_id = self.ledger.record_batch(claims, tx)
        return OpenBatch(batch_id, tx, tuple((c.client, c.epoch, c.claimed_total) for c in claims))

    def _claimable(self, claim: ChannelClaim) -> bool:
        state = self.channels.channel(claim.client, self.node.address)
        if state.epoch != claim.epoch:
            lost = self.ledger.forfeit(claim.client, claim.epoch)
            log.warning(
                "client %s withdrew epoch %d before it was settled: %d receipts forfeit",
                claim.client,
                claim.epoch,
                lost,
            )
            return False
        settled = claim.claimed_total - sum(u.amount for u in claim.usage)
        if state.redeemed != settled:
            raise SettlementError(
                f"channel {claim.client} epoch {claim.epoch}: chain redeemed {state.redeemed} wei, the ledger "
                f"settled {settled} wei; another process is settling for this node, or the ledger is not this chain's"
            )
        return True

    def _accepted(self, claim: ChannelClaim) -> bool:
        """Simulates ``claim`` alone; one the chain refuses is set aside (logged, counted in ``set_aside`` and
        in the ledger) so that it cannot revert the batch of every other channel."""
        try:
            self.channels.simulate_settle(self.node.address, [claim.redemption()])
        except ContractRevert as exc:
            self.ledger.set_aside(claim, str(exc))
            self.set_aside += 1
            log.error(
                "settlement claim of %s epoch %d (%d wei on voucher %d) set aside, the chain refuses it: %s",
                claim.client,
                claim.epoch,
                claim.claimed_total,
                claim.voucher.voucher.cumulative_amount,
                exc,
            )
            return False
        return True

    def submit(self, batch: OpenBatch) -> TxReceipt:
        """Sends the batch's transaction and waits until it is mined.

        Raises:
            ChainError: it could not be sent or was not mined in time (the batch stays open: ``resolve``).
        """
        broadcast(self.channels.chain, batch.tx)
        return wait_receipt(self.channels.chain, batch.tx.tx_hash, self.tx_timeout_s)

    def record(self, batch: OpenBatch, receipt: TxReceipt) -> SettledBatch:
        """Writes the mined transaction's outcome to the ledger."""
        ok = receipt["status"] == 1
        if ok:
            self.ledger.batch_settled(batch.id, receipt["gasUsed"])
        else:
            log.error("settlement batch %d reverted on chain; its receipts go back to the next batch", batch.id)
            self.ledger.batch_failed(batch.id)
        self._last_settle = time.monotonic()
        return SettledBatch(batch.id, batch.tx.tx_hash, len(batch.claims), receipt["gasUsed"], ok)

    # -- driving ----------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Start-up reconciliation: resolve the open batch, then check every channel against the chain.

        Raises:
            SettlementError: the open batch cannot be resolved yet, or on-chain ``redeemed`` differs from the
                ledger's ``settled`` for a channel epoch that is still current.
        """
        with self._run_lock:
            if not self.resolve():
                raise SettlementError("the open settlement batch is not mined yet; retry recover() later")
            for totals in self.ledger.channel_totals():
                state = self.channels.channel(totals.client, self.node.address)
                if state.epoch == totals.epoch and state.redeemed != totals.settled:
                    raise SettlementError(
                        f"channel {totals.client} epoch {totals.epoch}: chain redeemed {state.redeemed} wei but "
                        f"the ledger settled {totals.settled} wei"
                    )

    def settle_now(self) -> SettledBatch | None:
        """Resolves the open batch, then settles up to ``max_redemptions`` channels in one transaction.

        Returns:
            the batch's outcome, or ``None`` when nothing was owed (or the open batch is still pending).
        """
        with self._run_lock:
            if not self.resolve():
                return None
            batch = self.prepare()
            if batch is None:
                return None
            return self.record(batch, self.submit(batch))

    def notify(self) -> None:
        """Tells the settler a call was finalized; wakes it when ``every_calls`` are waiting."""
        if self.ledger.unsettled_count() >= self.every_calls:
            self._wake.set()

    def start(self) -> None:
        """Runs ``recover()``, then settles in a background thread until ``stop()`` (at once if ``every_calls``
        receipts are already waiting, e.g. left by a node that was killed)."""
        self.recover()
        self.notify()
        self._thread = threading.Thread(target=self._loop, name="openlora-settler", daemon=True)
        self._thread.start()

    def stop(self, settle: bool = True) -> None:
        """Stops the background thread; with ``settle``, settles what is owed one last time."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if settle:
            while (result := self.settle_now()) is not None and result.ok:
                pass

    def _loop(self) -> None:
        while not self._stopping.is_set():
            next_at = self._retry_at if self._retry_at is not None else self._last_settle + self.every_seconds
            self._wake.wait(timeout=max(0.0, next_at - time.monotonic()))
            self._wake.clear()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            if self._retry_at is not None and now < self._retry_at:
                continue  # woken by a new receipt while backing off
            waiting = self.ledger.unsettled_count()
            overdue = now - self._last_settle >= self.every_seconds
            retrying = self._retry_at is not None
            if waiting >= self.every_calls or retrying or (waiting and overdue):
                try:
                    self.settle_now()
                    failed = bool(self.ledger.open_batches())  # sent but not mined in time
                except ChainUnreachable as exc:  # an outage: expected, no traceback
                    log.warning("settlement attempt %d: %s", self.failures + 1, exc)
                    failed = True
                except ChainError:
                    log.exception("settlement attempt %d failed", self.failures + 1)
                    failed = True
                if failed:
                    self.failures += 1
                    # capped exponent: a days-long outage must not overflow the float
                    delay = min(self.every_seconds, self.retry_min_s * 2 ** min(self.failures - 1, 32))
                    self._retry_at = time.monotonic() + delay
                    continue
                self.failures = 0
                self._retry_at = None
                if self.ledger.unsettled_count() >= self.every_calls:
                    self._wake.set()  # more than one batch was waiting (max_redemptions): go on at once
            elif overdue:
                self._last_settle = time.monotonic()  # nothing owed: start the next period
