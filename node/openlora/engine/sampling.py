"""Per-request sampling and incremental detokenisation.

Each batch row carries its own :class:`SamplingParams` and RNG, so rows with different
temperatures, top-p/top-k and seeds share one forward pass and still draw exactly what they
would draw alone (a seeded request is reproducible whatever else is in the batch).

Greedy rows (temperature 0) take ``argmax``; the rest ``softmax(logits / T)`` filtered by
top-k, then nucleus top-p (Holtzman et al., "The Curious Case of Neural Text Degeneration",
arXiv 1904.09751), then one multinomial draw with the row's ``torch.Generator``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 128


class SamplingError(ValueError):
    """Sampling parameters out of range; the message names the field and the allowed range."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request turns logits into tokens.

    Attributes:
        max_new_tokens: tokens to generate at most (≥ 1).
        temperature: 0 for greedy; otherwise logits are divided by it (0 < T ≤ 10).
        top_p: nucleus mass kept, 0 < p ≤ 1 (1 = off).
        top_k: keep the k most likely tokens (0 = off).
        seed: RNG seed; ``None`` draws a fresh one.
        stop: strings that end the completion when they appear (excluded from the output).
        ignore_eos: keep generating past EOS tokens (benchmarks with a fixed output length).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def validate(self, max_new_tokens_limit: int) -> None:
        """Check every field; raise :class:`SamplingError` naming the first bad one."""
        if not 1 <= self.max_new_tokens <= max_new_tokens_limit:
            raise SamplingError(f"max_new_tokens must be in 1..{max_new_tokens_limit}, got {self.max_new_tokens}")
        if not (0.0 <= self.temperature <= 10.0) or self.temperature != self.temperature:
            raise SamplingError(f"temperature must be in [0, 10], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be ≥ 0, got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise SamplingError(f"seed must be in [0, 2^63), got {self.seed}")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise SamplingError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(self.stop)}")
        for s in self.stop:
            if not s or len(s) > MAX_STOP_LENGTH:
                raise SamplingError(f"stop sequences must be 1..{MAX_STOP_LENGTH} characters, got {s!r}")

    @property
    def greedy(self) -> bool:
        """True when the row takes argmax."""
        return self.temperature == 0.0

    def generator(self) -> torch.Generator:
        """A CPU RNG seeded from ``seed`` (or a fresh random seed)."""
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        return g


def sample_next(logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator | None]) -> list[int]:
    """Pick the next token of every row.

    Args:
        logits: ``[B, V]`` last-position logits, any float dtype.
        params: one :class:`SamplingParams` per row.
        gens: one RNG per row (``None`` for greedy rows).

    Returns:
        ``B`` token ids.
    """
    out = logits.argmax(dim=-1).tolist()
    for i, p in enumerate(params):
        if p.greedy:
            continue
        # shifted so the largest logit is 0: a tiny temperature then gives -inf, not inf - inf = nan
        row = logits[i].float()
        row = (row - row.max()) / p.temperature
        if p.top_k:
            kth = torch.topk(row, min(p.top_k, row.numel())).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            drop = sorted_p.cumsum(0) - sorted_p >= p.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        out[i] = int(torch.multinomial(probs, 1, generator=gens[i]).item())
    return out


class Detokenizer:
    """Turns a growing list of token ids into text deltas, honouring stop strings.

    Text that might still become a stop string, or ends in an incomplete UTF-8 sequence
    (U+FFFD from a split byte-level token), is held back until it is settled.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self._tok = tokenizer
        self._stop = stop
        self.ids: list[int] = []
        self._sent = 0  # characters already emitted
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one generated token; return the new text that is safe to stream (maybe ``""``)."""
        self.ids.append(token_id)
        text = self._tok.decode(self.ids, skip_special_tokens=True)
        cut = len(text)
        for s in self._stop:
            at = text.find(s, max(0, self._sent - len(s) + 1))
            if at != -1 and at < cut:
                cut = at
                self.stopped = True
        if self.stopped:
            delta = text[self._sent:cut]
            self._sent = cut
            return delta
        hold = 0
        if text.endswith("\ufffd"):
            hold = len(text) - len(text.rstrip("\ufffd"))
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        end = max(self._sent, len(text) - hold)
        delta = text[self._sent:end]
        self._sent = end
        return delta

    def flush(self) -> str:
        """Text still held back when generation ends for a reason other than a stop string."""
        if self.stopped:
            return ""
        text = self._tok.decode(self.ids, skip_special_tokens=True)
        delta = text[self._sent:]
        self._sent = len(text)
        return delta
