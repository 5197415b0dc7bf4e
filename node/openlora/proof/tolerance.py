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

The distance alone cannot see a cheat that keeps most of the adapter (half its scale, a module or half its
rank dropped): on an adapter whose effect is a few times bf16 rounding, such a cheat moves the commitment about
as far as rounding does. What tells them apart is the direction. Every such cheat computes the base plus part
of the adapter's effect, so its error points back along that effect; rounding, another engine or another
batch does not know the adapter. With one more float32 prefill through the bare base, per committed entry

    Δ_ji = reference_j[id_ji] − base_j[id_ji]           (the adapter's effect on that entry, nats)
    e_ji = committed_ji − reference_j[id_ji]             (the node's error)
    n_ji = probe_j[id_ji] − reference_j[id_ji]           (the bf16 probe's error: a sample of honest noise)

    S    = Σ_j Σ_i e_ji Δ_ji                              (the error projected on the adapter's effect)
    β    = S / ‖Δ‖²                                       (share of the effect the node left out, negated)
    z    = S / sqrt( max(Σ_j (Σ_i n_ji Δ_ji)², f² Σ_j (Σ_i |Δ_ji|)²) + q² ‖Δ‖² )
           (f = NOISE_FLOOR: rounding taken as at least that, per token, as if its k entries moved together;
            q: the sd of the committed values' 1/64-nat rounding)

To first order in the adapter's effect: the bare base gives β ≈ −1, another adapter ≈ −1 (its own effect is
unrelated), half scale ≈ −½, a dropped module ≈ −⟨Δ_module, Δ⟩ / ‖Δ‖², a rank truncation ≈ −(the dropped
directions' share); an honest engine β ≈ 0, with an sd the probe measures per token (rounding is correlated
within a token and from token to token in size, not in sign, so the variance is summed over tokens, not over
entries). The call fails when z < −PROJECTION_Z_LIMIT (far beyond what rounding of this size explains) AND
β < −PROJECTION_BETA_LIMIT (a material part of the effect is missing: a systematic honest bias of a few
per cent — bf16 accumulating the adapter's small update — cannot fail a call however long it is). A cheat that
removes less than PROJECTION_BETA_LIMIT of the effect passes this test by design; so does one whose error is
not along Δ. Both cases are measured by ``scripts/bench_proof.py``: one (layer, module) of 120 dropped, and half
the rank of a trained adapter (whose top half keeps ~98 % of the update: β ≈ −0.01, the distance ratio 1.1–2.2,
about what rounding moves the call — only the ratio test sees the larger ones). A call without an adapter has
Δ = 0: only the distance applies.

The limits' origin: z is a sum over tokens of independent roundings, about normal when it is honest; −6 is
P ≈ 1e-9 there, and leaves a factor 1.5 for an engine noisier than the probe (honest distance ratios measured
0.8–1.34) before an honest call could reach −4. Measured (bench_proof.py, ≤ 32 tokens, 2026-12-07): 60 honest
calls (torch bf16 batched / solo / 1 thread, vLLM bf16; adapters moving the output 0.5–2.8 nats) z −2.9..+3.5,
β −0.03..+0.04; 12 more on adapters moving it ~0.1 nat (≈ rounding) β −0.20..+0.30 with |z| ≤ 2.2 — so neither
limit alone would do. Cheats: the bare base β ≈ −1 (z −8..−16), half scale β −0.47..−0.73 (z to −67).

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
from dataclasses import dataclass

import torch

from .encoding import VALUE_SCALE, Commitment

CAP = 4.0  # nats: most one entry can add to a distance
RATIO_LIMIT = 1.5  # the node's distance over the probe's, above which a call fails
NOISE_FLOOR = 0.02  # nats: the probe's distance is taken as at least this (quantization is 1/64 nat)
ABS_PASS = 0.03  # nats: a distance this small passes without the probe
ABS_FAIL = 1.0  # nats: a distance this large fails without the probe
GREEDY_GAP = 1.0  # nats: a greedy token this close to the reference's argmax is a near-tie
MIN_TEMPERATURE = 0.5
SAMPLING_Z_LIMIT = 5.0
QUANT_SD = 1.0 / (VALUE_SCALE * math.sqrt(12.0))  # nats: sd of a committed value's rounding (uniform, 1/64 nat)
PROJECTION_Z_LIMIT = 6.0  # z below −6: P < 1e-9 under a normal; the slack covers engines noisier than the probe
PROJECTION_BETA_LIMIT = 0.1  # a call fails only when ≥ 10 % of the adapter's effect is missing


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


@dataclass(frozen=True)
class Projection:
    """The node's error projected on the adapter's effect (module doc).

    Attributes:
        beta: ``S / ‖Δ‖²`` (≈ 0 honest, −½ half scale, −1 the bare base).
        z: ``S`` over its honest sd, as the probe measures it.
        probe_beta: the probe's own ``β`` (what rounding alone gives this call; reported, not tested).
        effect: the adapter's effect, rms of ``Δ`` over the committed entries (nats).
        noise: the probe's error, rms of ``n`` over the committed entries (nats).
    """

    beta: float
    z: float
    probe_beta: float
    effect: float
    noise: float

    @property
    def fails(self) -> bool:
        """Whether the error points back along the adapter's effect beyond both limits."""
        return self.z < -PROJECTION_Z_LIMIT and self.beta < -PROJECTION_BETA_LIMIT


def adapter_projection(committed: Commitment, reference: torch.Tensor, base: torch.Tensor, probe: torch.Tensor) -> Projection:
    """``β`` and ``z`` of the node's error along the adapter's effect (module doc).

    Args:
        committed: the decoded commitment (``m ≥ 1`` tokens × ``k`` entries).
        reference / base / probe: ``[m, V]`` float32 log-probabilities: the float32 reference with the adapter,
            the float32 bare base, the bf16 probe with the adapter.

    Returns:
        The projection; ``beta``, ``z`` and ``probe_beta`` are 0 when the adapter changes none of the committed
        entries (``‖Δ‖ = 0``: nothing to project on).
    """
    ids = torch.tensor(committed.ids, dtype=torch.long)
    claimed = torch.tensor(committed.logprobs, dtype=torch.float32)
    r = reference.gather(1, ids)
    delta = (r - base.gather(1, ids)).clamp(-CAP, CAP)
    e = (claimed - r).clamp(-CAP, CAP)
    n = (probe.gather(1, ids) - r).clamp(-CAP, CAP)
    norm2 = float((delta * delta).sum())
    entries = delta.numel()
    effect, noise = math.sqrt(norm2 / entries), float(n.pow(2).mean().sqrt())
    if norm2 == 0.0:
        return Projection(0.0, 0.0, 0.0, effect, noise)
    s = float((e * delta).sum())
    measured = float((n * delta).sum(dim=1).pow(2).sum())
    floor = NOISE_FLOOR**2 * float(delta.abs().sum(dim=1).pow(2).sum())
    var = max(measured, floor) + QUANT_SD**2 * norm2
    return Projection(s / norm2, s / math.sqrt(var), float((n * delta).sum()) / norm2, effect, noise)
