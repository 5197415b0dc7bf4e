"""When and how long a client waits before trying a call again: exponential backoff with full jitter.

    attempt 1 ─✗ UNAVAILABLE / RESOURCE_EXHAUSTED ─► sleep U(0, min(max, initial·mult⁰)) ─► attempt 2 ─✗ ─►
    sleep U(0, min(max, initial·mult¹)) ─► … ─► attempt max_attempts ─✗ ─► the error is raised

Full jitter is "Exponential Backoff and Jitter" (M. Brooker, AWS Architecture Blog, 2015): a random sleep
between 0 and the capped exponential spreads clients that failed together, so they do not come back together.

Rules (the same for ``NodeClient`` and ``AsyncNodeClient``):

- Only UNAVAILABLE (node not reachable, or an adapter still being fetched) and RESOURCE_EXHAUSTED (the node's
  queue is full) are retried; every other status is an answer and is raised at once. (gRPC also reports a
  message over its size limit as RESOURCE_EXHAUSTED; such a call fails again within the policy's few attempts.)
- A stream is retried only before it delivered anything: once a token (or the final message) arrived, an error
  is raised, never hidden behind a second, different completion.
- A paid call is retried only when its request never left this process: UNAVAILABLE from gRPC's connection
  attempt (:func:`never_sent`). A node that saw the voucher may have opened the call in its ledger (and a
  RESOURCE_EXHAUSTED or UNAVAILABLE it answered comes after that), so such a call is not sent again; the next
  quote reports what the node booked.

Why a loop here rather than gRPC's built-in retries (``grpc.service_config`` with a ``retryPolicy``, gRFC A6,
which also jitters fully): the service config is per method, so it cannot treat a paid ``Generate`` apart from a
free one, and it retries whatever status it is given even when the node already saw the voucher; its
``maxAttempts`` is capped at 5 and its decisions are not observable. A loop shared by both clients applies the
rules above, and its delays are testable with a seeded RNG. The channel's own reconnect backoff is bounded by
the same policy (:meth:`RetryPolicy.channel_options`), else a retry would be failed fast from a stale
connection failure while gRPC waits (up to 120 s by default) before dialling again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")

#: status codes worth another attempt (see the module docstring)
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# gRPC core's status when no connection could be picked for the call: the request was never sent
_NOT_SENT = "failed to connect to all addresses"


def never_sent(error: grpc.RpcError) -> bool:
    """Whether ``error`` is gRPC failing to connect, i.e. the request never left this process."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and (error.details() or "").startswith(_NOT_SENT)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a client retries (see the module docstring for which calls).

    Args:
        max_attempts: attempts in all, the first included (1: never retry).
        initial_backoff_s: cap of the first sleep, in seconds.
        max_backoff_s: cap of every sleep, in seconds.
        multiplier: growth of the cap per retry.

    Raises:
        ValueError: a value out of range (attempts < 1, backoffs <= 0, max below initial, multiplier < 1).
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (1 turns retries off), got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 < initial_backoff_s <= max_backoff_s, got {self.initial_backoff_s} and {self.max_backoff_s}"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries: every error is raised at once."""
        return cls(max_attempts=1)

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Seconds to sleep before retry number ``retry`` (0 for the first): uniform in
        ``[0, min(max_backoff_s, initial_backoff_s * multiplier**retry)]`` (full jitter)."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry)
        return rng.uniform(0.0, cap)

    def delay(self, error: grpc.RpcError, attempts: int, rng: random.Random, *, paid: bool = False) -> float | None:
        """Seconds to wait before trying again after ``error`` ended attempt number ``attempts`` (from 1), or
        ``None`` when the error must be raised (not retryable, a paid call that may have reached the node, or
        no attempts left)."""
        if attempts >= self.max_attempts or error.code() not in RETRYABLE or (paid and not never_sent(error)):
            return None
        return self.backoff_s(attempts - 1, rng)

    def channel_options(self) -> list[tuple[str, int]]:
        """gRPC channel options that make the channel dial again within this policy's backoff (ms)."""
        if self.max_attempts == 1:
            return []
        initial_ms = max(1, int(self.initial_backoff_s * 1000))
        return [
            ("grpc.initial_reconnect_backoff_ms", initial_ms),
            ("grpc.min_reconnect_backoff_ms", initial_ms),
            ("grpc.max_reconnect_backoff_ms", max(initial_ms, int(self.max_backoff_s * 1000))),
        ]


def call_with_retry(policy: RetryPolicy, rng: random.Random, call: Callable[[], T]) -> T:
    """``call()`` (one unary gRPC call), tried again after a retryable error as ``policy`` says.

    Raises:
        grpc.RpcError: the last attempt's error.
    """
    attempts = 1
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            delay = policy.delay(e, attempts, rng)
            if delay is None:
                raise
        time.sleep(delay)
        attempts += 1


async def acall_with_retry(policy: RetryPolicy, rng: random.Random, call: Callable[[], Awaitable[T]]) -> T:
    """The asyncio twin of :func:`call_with_retry`.

    Raises:
        grpc.RpcError: the last attempt's error.
    """
    attempts = 1
    while True:
        try:
            return await call()
        except grpc.RpcError as e:
            delay = policy.delay(e, attempts, rng)
            if delay is None:
                raise
        await asyncio.sleep(delay)
        attempts += 1
