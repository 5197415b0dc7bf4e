"""What an engine hands the proof while it decodes: each generated token and the top-k of its distribution.

    engine step (torch: its logits; vLLM: SamplingParams(logprobs=k), raw log-probabilities)
        row r sampled token t  ─►  request.proof.add(t, top-k ids, their log-probabilities)
    call ends ─► proof.tokens (the completion ids)  +  proof.ids / proof.logprobs  ─► commitment

Both engines expose this: the torch engine has the logits of every row, vLLM returns per-token
log-probabilities of the *raw* logits (``logprobs_mode="raw_logprobs"``, before temperature, top-p
and top-k), which is what :func:`top_logprobs` computes here. So one commitment format serves both,
and the verifier recomputes the same quantity from one prefill (``proof.reference``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Entries kept per generated token (the commitment encodes them; ``proof.encoding``).
TOP_K = 4


class TopLogprobs:
    """One request's collector: the engine calls :meth:`add` once per generated token, in order.

    Args:
        k: entries per token (≤ the vocabulary size).

    Attributes:
        tokens: generated token ids (the completion, a final EOS included).
        ids: per token, the ``k`` most likely token ids under the serving model, most likely first.
        logprobs: their natural-log probabilities (float, ≤ 0), same order.
    """

    __slots__ = ("k", "tokens", "ids", "logprobs")

    def __init__(self, k: int = TOP_K) -> None:
        self.k = k
        self.tokens: list[int] = []
        self.ids: list[list[int]] = []
        self.logprobs: list[list[float]] = []

    def add(self, token: int, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        """Record one generated token and the top-k (ids, log-probabilities) of the distribution it came from.

        Raises:
            ValueError: not exactly ``k`` ids and ``k`` log-probabilities.
        """
        if len(ids) != self.k or len(logprobs) != self.k:
            raise ValueError(f"expected {self.k} ids and log-probabilities, got {len(ids)} and {len(logprobs)}")
        self.tokens.append(int(token))
        self.ids.append([int(i) for i in ids])
        self.logprobs.append([float(v) for v in logprobs])


def top_logprobs(logits: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The ``k`` most likely ids of every row and their log-probabilities, as plain lists.

    Args:
        logits: ``[B, V]`` raw logits of one step, any float dtype (log-softmax is taken in float32).
        k: entries per row.

    Returns:
        ``(ids, logprobs)``: ``B`` lists of ``k`` ints and ``B`` lists of ``k`` floats, most likely first.
    """
    values, ids = torch.topk(logits, k, dim=-1)
    lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    return ids.tolist(), (values.float() - lse).tolist()
