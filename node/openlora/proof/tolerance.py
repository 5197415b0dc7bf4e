"""The statistical tests a verifier runs, and their limits (measured by ``scripts/bench_proof.py``).

Commitment distance (the TOPLOC idea of a tolerance on recomputed activations, Ong et al., arXiv 2501.16007,
on log-probabilities as LOGIC-style checks do):

    for every completion position j and every committed entry i (the node's top-k ids):
        e_ji = | committed logprob_ji − reference logprob_j[id_ji] |        (nats)
    d(committed, reference) = mean over (j, i) of min(e_ji, CAP)

An honest engine differs from the float32 reference by rounding — bf16 values, other kernels, batch shapes,
thread counts — and how far rounding moves a call depends on the call: a completion that passes near-ties
moves more. So the verifier measures it on the call itself: it recomputes the same prefill in bfloat16 (the
probe) and compares the node's distance with the probe's:

    d32    = d(committed, float32 reference)
    noise  = d(probe's log-probabilities at the committed ids, float32 reference)
    ratio  = d32 / max(noise, NOISE_FLOOR)          fails when ratio > RATIO_LIMIT

A model other than the claimed one — the bare base, another adapter, the adapter scaled or without a module, a
coarser base — moves the distribution on top of rounding. Shortcuts that need no probe: d32 ≤ ABS_PASS
passes (closer than bf16 rounding ever is), d32 ≥ ABS_FAIL fails (farther than any honest engine was measured).

Greedy calls: every token must be the reference's argmax, or within ``GREEDY_GAP`` nats of it (a near-tie
honest rounding can flip).

Sampled calls (LOGIC-style likelihood test): with q_j = softmax(reference_j / T'), T' = max(T, MIN_TEMPERATURE),

    s_j = log q_j(token_j),   E_j = Σ q_j log q_j,   V_j = Σ q_j (log q_j)² − E_j²
    z   = Σ (s_j − E_j) / sqrt(Σ V_j)

is about N(0, 1) when the tokens were drawn from q (top-p / top-k truncation only raises s_j), and very
negative when they were drawn from another distribution. The call fails when z < −SAMPLING_Z_LIMIT.
``MIN_TEMPERATURE`` keeps the test from reading engine rounding as evidence at temperatures near 0.
"""

from __future__ import annotations

import math

import torch

from .encoding import Commitment

CAP = 4.0  # nats: most one entry can add to a distance
RATIO_LIMIT = 1.5  # the node's distance over the probe's, above which a call fails
NOISE_FLOOR = 0.02  # nats: the probe's distance is taken as at least this (quantization is 1/64 nat)
ABS_PASS = 0.03  # nats: a distance this small passes without the probe
ABS_FAIL = 1.0  # nats: a distance this large fails without the probe
GREEDY_GAP = 1.0  # nats: a greedy token this close to the reference's argmax is a near-tie
MIN_TEMPERATURE = 0.5
SAMPLING_Z_LIMIT = 5.0


def commitment_distance(committed: Commitment, reference: torch.Tensor) -> float:
    """``d``: the mean capped error of the committed entries against ``reference`` (module doc).

    Args:
        committed: the decoded commitment (``m`` tokens × ``k`` entries).
        reference: ``[m, V]`` float32 log-probabilities.

    Returns:
        The distance in nats (0 for an empty commitment).
    """
    if not committed.ids:
        return 0.0
    ids = torch.tensor(committed.ids, dtype=torch.long)
    claimed = torch.tensor(committed.logprobs, dtype=torch.float32)
    return float((claimed - reference.gather(1, ids)).abs().clamp(max=CAP).mean())


def probe_noise(committed: Commitment, reference: torch.Tensor, probe: torch.Tensor) -> float:
    """``noise``: how far the probe's log-probabilities at the committed ids are from the reference's (nats).

    Args:
        committed: the decoded commitment (its ids are used).
        reference / probe: ``[m, V]`` float32 log-probabilities of the float32 reference and the bf16 probe.
    """
    if not committed.ids:
        return 0.0
    ids = torch.tensor(committed.ids, dtype=torch.long)
    return float((probe.gather(1, ids) - reference.gather(1, ids)).abs().clamp(max=CAP).mean())


def commitment_ratio(distance: float, noise: float) -> float:
    """``ratio``: the node's distance over the probe's (the probe's floored at ``NOISE_FLOOR``)."""
    return distance / max(noise, NOISE_FLOOR)


def greedy_gaps(completion: list[int], reference: torch.Tensor) -> torch.Tensor:
    """How far below the reference's argmax each token of a greedy completion is (nats, ≥ 0); a token counts as a
    miss above ``GREEDY_GAP``.

    Args:
        completion: ``m`` token ids.
        reference: ``[m, V]`` float32 reference log-probabilities.

    Returns:
        ``[m]`` float32 gaps.
    """
    tokens = torch.tensor(completion, dtype=torch.long)[:, None]
    return reference.max(dim=1).values - reference.gather(1, tokens)[:, 0]


def sampling_z(completion: list[int], reference: torch.Tensor, temperature: float) -> float:
    """The log-likelihood z-score of a sampled completion (module doc).

    Args:
        completion: ``m`` token ids.
        reference: ``[m, V]`` float32 reference log-probabilities (temperature 1).
        temperature: the call's sampling temperature (> 0).
    """
    logq = torch.log_softmax(reference / max(temperature, MIN_TEMPERATURE), dim=-1)
    q = logq.exp()
    s = logq.gather(1, torch.tensor(completion, dtype=torch.long)[:, None])[:, 0]
    plogq = torch.where(q > 0, q * logq, torch.zeros_like(q))
    e = plogq.sum(dim=1)
    v = (torch.where(q > 0, q * logq * logq, torch.zeros_like(q)).sum(dim=1) - e * e).clamp(min=0)
    return float((s - e).sum() / math.sqrt(float(v.sum()) + 1e-6))
