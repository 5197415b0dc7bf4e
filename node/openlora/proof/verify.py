"""Checking a served call: the record, the token ids, then one prefill and the statistical tests.

    ServedCall ─► signature        the record recovers to record.node                       ─┐ a failure here
               ─► prompt           sha256(prompt ids) == record.prompt_hash, counts agree    │ is the holder's:
               ─► completion       sha256(completion ids) == record.completion_hash          │ the file was
               ─► base             record.base == this verifier's base (else: cannot check)  ─┘ changed, or the
                                                                                               wrong verifier
               ─► proof            the commitment decodes: k entries for every completion token ─┐ a failure here
               ─► recompute        Reference.logprobs(prompt, completion, adapter)  [m, V]       │ blames the node
               ─► commitment       float32 distance; between the shortcuts, a bf16 probe of the  │ that signed the
                                   same prefill and the ratio of the two ≤ RATIO_LIMIT; with an   │ record: it is
                                   adapter, one base prefill and the error's projection on the   │
                                   adapter's effect (β, z) not pointing back to the base         │
               ─► sampling         greedy: every token the argmax (or within a near-tie);        │ evidence
                                   sampled: log-likelihood z-score above −limit                 ─┘

A constrained call (``record.sampling.constraint``) is checked against the distribution it was drawn from:
the verifier replays the completion through the constraint's grammar (a token it forbids fails ``sampling``)
and restricts every reference row to the tokens allowed there, renormalized, before the commitment, greedy and
z tests — as both engines commit and sample (``engine.structured``).

The first failing check is reported; ``Verdict.blames_node`` says whether the failure is evidence against the
serving node (``proof.evidence``). The tests and their limits are in ``proof.tolerance``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from ..adapters.composition import Composition, compose, is_composition
from ..adapters.peft_format import LoraAdapter
from ..engine.structured import Constraint, ConstraintError, allowed_tokens
from ..v1 import node_pb2 as pb
from .encoding import VALUE_BITS, VALUE_SCALE, ProofFormatError, decode
from .record import RecordError, ids_hash
from .reference import PROBE_DTYPE, Reference
from .tolerance import (
    ABS_FAIL,
    ABS_PASS,
    GREEDY_GAP,
    PROJECTION_BETA_LIMIT,
    PROJECTION_Z_LIMIT,
    RATIO_LIMIT,
    SAMPLING_Z_LIMIT,
    adapter_projection,
    commitment_distance,
    commitment_ratio,
    greedy_gaps,
    probe_noise,
    sampling_z,
)
from .topk import TOP_K
from .wire import record_from_pb

#: Checks whose failure is evidence against the node that signed the record.
BLAMING = ("proof", "commitment", "sampling")


class CannotVerify(RuntimeError):
    """This verifier cannot check the call (another base, an adapter it cannot obtain); not a verdict."""


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`verify_call`.

    Attributes:
        check: the first failing check (``""`` when valid): ``signature``, ``prompt``, ``completion``,
            ``proof``, ``commitment`` or ``sampling``.
        detail: what failed, with the figures (or a summary when valid).
        distance / noise: the commitment's distance to the float32 reference and the bf16 probe's (nats;
            ``noise`` is 0 when a shortcut made the probe unnecessary, both 0 before the recomputation).
        ratio: ``distance`` over the floored ``noise`` (0 without the probe); ``limit`` its bound.
        beta / beta_z: the node's error projected on the adapter's effect: the share of the effect missing
            (negated; ≈ 0 honest, −1 the bare base) and its z-score (``proof.tolerance.adapter_projection``;
            0 without an adapter or without the probe).
        effect: the adapter's effect on the committed entries, rms nats (0 without an adapter or the probe).
        z: the sampling z-score (sampled calls).
        misses / gap: greedy calls: tokens more than ``GREEDY_GAP`` below the reference's argmax, and the largest
            gap of any token (nats).
        verify_ms: the recomputation's time (every prefill), ms.
    """

    check: str
    detail: str
    distance: float = 0.0
    noise: float = 0.0
    ratio: float = 0.0
    limit: float = RATIO_LIMIT
    beta: float = 0.0
    beta_z: float = 0.0
    effect: float = 0.0
    z: float = 0.0
    misses: int = 0
    gap: float = 0.0
    verify_ms: float = 0.0

    @property
    def valid(self) -> bool:
        """Whether every check passed."""
        return not self.check

    @property
    def blames_node(self) -> bool:
        """Whether the failure is evidence against the node that signed the record."""
        return self.check in BLAMING


AdapterSource = Callable[[str], LoraAdapter]
"""Returns the verified, parsed adapter of a CID (raises if it cannot be obtained)."""


def _adapter_of(name: str, adapters: AdapterSource, max_rank: int) -> LoraAdapter:
    """The record's adapter: one CID from ``adapters``, or a composition id (``adapters.composition``: the record
    binds every part and weight) rebuilt from its parts' verified copies exactly as the serving engine built it.

    Raises:
        what ``adapters`` raises; CompositionError (a malformed id, or a rank above ``max_rank``).
    """
    if not is_composition(name):
        return adapters(name)
    comp = Composition.parse(name)
    return compose([(adapters(cid), w) for cid, w in zip(comp.cids, comp.weights)], max_rank, name)


def check_record(call: pb.ServedCall) -> Verdict | None:
    """The checks that need no model: the record's signature, then the token ids against its hashes.

    Cheap (one signature recovery, two hashes): a verifier runs them before it fetches an adapter or
    recomputes anything for a call a stranger sent.

    Returns:
        The first failing check (``signature``, ``prompt`` or ``completion``), or ``None`` when all pass.
    """
    try:
        signed = record_from_pb(call.record)
        signed.check_signature()
    except RecordError as e:
        return Verdict("signature", str(e))
    r = signed.record
    prompt, completion = list(call.prompt_ids), list(call.completion_ids)
    if len(prompt) != r.prompt_tokens or ids_hash(prompt) != r.prompt_hash:
        return Verdict("prompt", "the prompt token ids do not hash to the record's prompt_hash (changed after signing)")
    if len(completion) != r.completion_tokens or ids_hash(completion) != r.completion_hash:
        return Verdict(
            "completion", "the completion token ids do not hash to the record's completion_hash (changed after signing)"
        )
    return None


def verify_call(call: pb.ServedCall, reference: Reference, adapters: AdapterSource) -> Verdict:
    """Run every check on ``call`` (module doc), stopping at the first failure.

    Args:
        call: the served call (record, prompt ids, completion ids).
        reference: this verifier's reference model.
        adapters: where the record's adapter comes from (the verifier's own verified copy).

    Raises:
        CannotVerify: the record names another base, its adapter cannot be obtained here, or its constraint does
            not compile here.
    """
    failed = check_record(call)
    if failed is not None:
        return failed
    r = record_from_pb(call.record).record
    prompt, completion = list(call.prompt_ids), list(call.completion_ids)
    if r.base_fingerprint != reference.fingerprint:
        raise CannotVerify(f"the call ran on base {r.base_fingerprint}; this verifier has {reference.fingerprint}")
    try:
        committed = decode(r.proof, reference.vocab_size)
    except ProofFormatError as e:
        return Verdict("proof", f"the commitment does not decode: {e}")
    if committed.tokens != len(completion) or any(len(row) != TOP_K for row in committed.ids):
        return Verdict(
            "proof", f"the commitment holds {committed.tokens} tokens × {len(committed.ids[0]) if committed.ids else 0} "
            f"entries; the completion has {len(completion)} tokens and the protocol commits {TOP_K} entries each",
        )  # fmt: skip
    if not completion:
        return Verdict("", "an empty completion: nothing to recompute")
    adapter = None
    if r.adapter:
        try:
            adapter = (r.adapter, _adapter_of(r.adapter, adapters, reference.max_rank))
        except Exception as e:  # the source raises its own kinds (not found, rejected, fetch failed)
            raise CannotVerify(f"adapter {r.adapter} cannot be obtained here: {e}") from None
    restrict = None
    if r.sampling.constraint:
        try:
            constraint = Constraint.from_canonical(r.sampling.constraint)
            reference.grammars.check(constraint)  # a stranger's record: bounded in size and compile time
            allowed = allowed_tokens(constraint, reference.grammars, completion)
        except ConstraintError as e:
            raise CannotVerify(f"the record's constraint cannot be checked here: {e}") from None
        if allowed is None:
            return Verdict("sampling", f"the completion breaks the record's {r.sampling.constraint[:80]} constraint")
        restrict = partial(_restricted, allowed=allowed)
    t0 = time.perf_counter()
    ref = reference.logprobs(prompt, completion, adapter)
    if restrict is not None:
        ref = restrict(ref)
    figures = _commitment(committed, ref, reference, prompt, completion, adapter, restrict)
    figures["verify_ms"] = (time.perf_counter() - t0) * 1000.0
    projection_fails = figures.pop("projection_fails")
    where = f"base {r.base_fingerprint[:15]}… with adapter {r.adapter or '(none)'}"
    if figures["ratio"] > RATIO_LIMIT or figures["distance"] >= ABS_FAIL:
        return Verdict(
            "commitment",
            f"the committed log-probabilities are {figures['distance']:.3f} nats from the reference, "
            f"{_times(figures)}: the node did not compute {where} as it claims",
            **figures,
        )
    if projection_fails:
        return Verdict(
            "commitment",
            f"the committed log-probabilities lack {-figures['beta']:.0%} of the adapter's effect "
            f"({figures['effect']:.3f} nats rms; z = {figures['beta_z']:.1f}, limits −{PROJECTION_BETA_LIMIT:.0%} "
            f"and −{PROJECTION_Z_LIMIT}): the node did not compute {where} as it claims",
            **figures,
        )
    summary = f"commitment {figures['distance']:.3f} nats, {_times(figures)}"
    if figures.get("effect"):
        summary += f"; adapter effect {figures['effect']:.3f} nats rms, β = {figures['beta']:+.2f} (z = {figures['beta_z']:.1f})"
    if r.sampling.greedy:
        gaps = greedy_gaps(completion, ref)
        misses, gap = int((gaps > GREEDY_GAP).sum()), float(gaps.max())
        if misses:
            return Verdict(
                "sampling",
                f"{misses} of {len(completion)} greedy tokens are not the reference's most likely token (one is "
                f"{gap:.2f} nats below it; limit {GREEDY_GAP})",
                misses=misses, gap=gap, **figures,
            )  # fmt: skip
        return Verdict("", f"{summary}; every greedy token the argmax (within {gap:.2f} nats)", gap=gap, **figures)
    z = sampling_z(completion, ref, r.sampling.temperature)
    if z < -SAMPLING_Z_LIMIT:
        return Verdict(
            "sampling",
            f"the completion's log-likelihood under the claimed model is z = {z:.2f} (limit −{SAMPLING_Z_LIMIT}): "
            "its tokens were not drawn from the committed distribution",
            z=z, **figures,
        )  # fmt: skip
    return Verdict("", f"{summary}; sampling z = {z:.2f}", z=z, **figures)


def _restricted(logprobs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``[m, V]`` log-probabilities restricted to ``allowed`` (``[m, V]`` bool) and renormalized, floored at the
    commitment's lowest value: a forbidden id an engine committed (fewer than k tokens allowed) reads as equal."""
    floor = -((1 << VALUE_BITS) - 1) / VALUE_SCALE
    return torch.log_softmax(logprobs.masked_fill(~allowed, float("-inf")), dim=-1).clamp(min=floor)


def _commitment(committed, ref, reference: Reference, prompt, completion, adapter, restrict=None) -> dict:
    """The commitment's figures: the float32 distance and, between the shortcuts, the bf16 probe and the ratio;
    with an adapter, the base prefill and the projection on the adapter's effect (``proof.tolerance``). Every
    recomputation goes through ``restrict`` (a constrained call's allowed tokens) when given."""
    distance = commitment_distance(committed, ref)
    figures = {"distance": distance, "noise": 0.0, "ratio": 0.0, "projection_fails": False}
    if distance <= ABS_PASS or distance >= ABS_FAIL:
        return figures
    recompute = restrict or (lambda logprobs: logprobs)
    probe = recompute(reference.logprobs(prompt, completion, adapter, PROBE_DTYPE))
    noise = probe_noise(committed, ref, probe)
    figures.update(noise=noise, ratio=commitment_ratio(distance, noise))
    if adapter is not None and figures["ratio"] <= RATIO_LIMIT:  # a failed ratio needs no third prefill
        p = adapter_projection(committed, ref, recompute(reference.logprobs(prompt, completion, None)), probe)
        figures.update(beta=p.beta, beta_z=p.z, effect=p.effect, projection_fails=p.fails)
    return figures


def _times(figures: dict) -> str:
    if not figures["ratio"]:
        if figures["distance"] <= ABS_PASS:
            return f"closer than bf16 rounding moves any call (≤ {ABS_PASS} nats)"
        return f"beyond any honest engine measured (≥ {ABS_FAIL} nats)"
    return f"{figures['ratio']:.2f}× what bf16 rounding moves this call ({figures['noise']:.3f} nats; limit {RATIO_LIMIT}×)"
