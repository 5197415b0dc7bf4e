"""Composition per request: one call, 2–4 adapters with weights, served as the exact weighted sum of their deltas.

    parts [(cid_i, w_i)] ─► Composition: checked, canonical (parts sorted by CID, weights in ppm)
                             id "cidA*0.7+cidB*0.3" keys the derived adapter in the engine's caches and slots
    each part ─► the node's verification pipeline ─► LoraAdapter_i  (A_i [r_i, in], B_i [out, r_i], scaling s_i)
    derived, per target module (``compose``):
        A = [w_1·s_1·A_1; …; w_n·s_n·A_n]   [Σ r_i, in]      ranks concatenated
        B = [B_1, …, B_n]                   [out, Σ r_i]
        scaling 1                    so  B·A·x = Σ_i w_i · s_i · B_i·A_i·x,  the weighted sum of the parts' deltas

This is PEFT's ``add_weighted_adapter(combination_type="cat")`` (peft 0.21, ``tuners/lora/model.py``): each
part's A times its weight and its scaling, ranks concatenated, ``lora_alpha = r`` so the scaling is 1. The derived
adapter is an ordinary :class:`LoraAdapter`, so it takes an ordinary slot and one forward mixes composed, plain
and base rows (no merged copy of the base). Its rank is the sum of the parts' ranks and must fit the slots.

Weights are exact decimals with at most 6 places, held as integer parts per million (ppm): the engine multiplies
by ``ppm / 10**6`` and payments split integer token counts by ppm (``part_tokens``), so client, node and chain agree.
They need not sum to 1 (PEFT does not require it either); the price scales with them:

    a composed call billed T tokens ─► weighted tokens ceil(T · Σ w_i) ─► split exactly by weight (split_exact):
        part i: floor(that · w_i / Σw) tokens, the remainder (< number of parts) to the largest weight
    ─► each part is billed its tokens at its own adapter's price, on its own voucher and receipt, so settlement,
       royalties and ``openlora usage`` attribute every part as an ordinary call to that adapter
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where a derived adapter is built: payments use this module's arithmetic alone
    from .peft_format import LoraAdapter

MIN_PARTS = 2
MAX_PARTS = 4
PPM = 1_000_000  # weight units per 1.0
MAX_PART_WEIGHT_PPM = 4 * PPM  # a part's weight at most 4: keeps w·s within a few times a published scaling
_PART_SEP, _WEIGHT_SEP = "+", "*"  # neither occurs in a CID (base32 / base58btc text)


class CompositionError(ValueError):
    """A composition the node refuses; the message says what to fix (INVALID_ARGUMENT)."""


def weight_ppm(weight: float | str) -> int:
    """A part's weight in parts per million.

    Args:
        weight: a number (a float is read as its shortest decimal text, so 0.7 is 700000 ppm) or decimal text.

    Raises:
        CompositionError: not a number, not finite, ≤ 0, above 4, or more than 6 decimal places.
    """
    try:
        d = Decimal(repr(weight) if isinstance(weight, float) else str(weight).strip())
    except InvalidOperation:
        raise CompositionError(f"weight {weight!r} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise CompositionError(f"weight {weight!r} must be a finite number above 0")
    q = d * PPM
    if q != q.to_integral_value():
        raise CompositionError(f"weight {weight!r} has more than 6 decimal places")
    if q > MAX_PART_WEIGHT_PPM:
        raise CompositionError(f"weight {weight!r} is above the largest accepted weight {MAX_PART_WEIGHT_PPM / PPM:g}")
    return int(q)


def _weight_text(ppm: int) -> str:
    whole, frac = divmod(ppm, PPM)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Composition:
    """A checked composition: ``parts`` are ``(canonical CID, weight in ppm)``, sorted by CID, 2–4 distinct.

    Build one with :meth:`of` (or :meth:`parse` for the text form); the constructor does not check.
    """

    parts: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, parts: Sequence[tuple[str, float | str]]) -> Composition:
        """Check and canonicalise ``(cid, weight)`` pairs.

        Raises:
            CompositionError: fewer than 2 or more than 4 parts, a bad CID, the same adapter twice, a bad weight
                (see :func:`weight_ppm`); the message names the part.
        """
        # here, not at module level: the client SDK imports this module at start, and the CID codec's package
        # loads libp2p's protobufs (half a second)
        from ..content.cid import cid_text
        from ..content.errors import InvalidCID

        if not MIN_PARTS <= len(parts) <= MAX_PARTS:
            raise CompositionError(f"a composition names {MIN_PARTS} to {MAX_PARTS} adapters; got {len(parts)}")
        out: dict[str, int] = {}
        for i, (raw, weight) in enumerate(parts):
            try:
                cid = cid_text(raw)
            except InvalidCID as e:
                raise CompositionError(f"part {i + 1}: {e}") from None
            if cid in out:
                raise CompositionError(f"part {i + 1}: adapter {cid} appears twice; name each adapter once")
            try:
                out[cid] = weight_ppm(weight)
            except CompositionError as e:
                raise CompositionError(f"part {i + 1} ({cid}): {e}") from None
        return cls(tuple(sorted(out.items())))

    @classmethod
    def parse(cls, text: str) -> Composition:
        """The text form ``cidA*0.7+cidB*0.3`` (HTTP ``model``, and :attr:`id`).

        Raises:
            CompositionError: more than ``MAX_PARTS`` parts (refused before any part is read), a part without
                ``*weight``, or as :meth:`of`.
        """
        return cls.of(split_text(text))

    @property
    def id(self) -> str:
        """Canonical text (sorted parts, shortest weights): the derived adapter's key in the engine."""
        return join_text((cid, _weight_text(w)) for cid, w in self.parts)

    @property
    def cids(self) -> tuple[str, ...]:
        """The parts' CIDs, in canonical order."""
        return tuple(cid for cid, _ in self.parts)

    @property
    def weights(self) -> tuple[float, ...]:
        """The parts' weights as the engine multiplies by them (``ppm / 10**6``)."""
        return tuple(w / PPM for _, w in self.parts)


def split_text(text: str) -> list[tuple[str, str]]:
    """The ``(adapter, weight text)`` pairs of the text form ``refA*0.7+refB*0.3``, in the order written; neither
    the references nor the weights are checked (:meth:`Composition.of` does), so a client can resolve names first.

    Raises:
        CompositionError: more than ``MAX_PARTS`` parts (refused before any part is read), or a part that is not
            ``REF*WEIGHT``.
    """
    items = text.split(_PART_SEP, MAX_PARTS)  # a stranger's text: never split past what can be served
    if len(items) > MAX_PARTS:
        raise CompositionError(f"a composition names {MIN_PARTS} to {MAX_PARTS} adapters; got more than {MAX_PARTS}")
    pairs = []
    for item in items:
        ref, sep, weight = item.rpartition(_WEIGHT_SEP)
        if not sep or not ref.strip():
            raise CompositionError(f"composition part {item!r} is not CID*WEIGHT (e.g. bafy...*0.5)")
        pairs.append((ref.strip(), weight))
    return pairs


def join_text(pairs: Iterable[tuple[str, float | str]]) -> str:
    """The text form of ``(adapter, weight)`` pairs, in the order given; a float weight is written as its shortest
    decimal text (``repr``), which :func:`weight_ppm` reads back as the same value."""
    return _PART_SEP.join(f"{ref}{_WEIGHT_SEP}{w!r}" if isinstance(w, float) else f"{ref}{_WEIGHT_SEP}{w}" for ref, w in pairs)


def is_composition(adapter: str | None) -> bool:
    """Whether an engine adapter key is a composition id (a plain CID never holds ``*``)."""
    return adapter is not None and _WEIGHT_SEP in adapter


def split_exact(total: int, weights_ppm: Sequence[int]) -> list[int]:
    """Split the integer ``total`` by weight, exactly: part ``i`` gets ``floor(total · w_i / Σw)`` and the remainder
    (fewer units than there are parts) goes to the part with the largest weight, the first (smallest CID) of equal
    ones.

    Raises:
        ValueError: a negative total, no weights or a weight ≤ 0.
    """
    if total < 0 or not weights_ppm or min(weights_ppm) <= 0:
        raise ValueError(f"cannot split {total} by weights {list(weights_ppm)}")
    whole = sum(weights_ppm)
    shares = [total * w // whole for w in weights_ppm]
    shares[_remainder_part(weights_ppm)] += total - sum(shares)
    return shares


def _remainder_part(weights_ppm: Sequence[int]) -> int:
    return max(range(len(weights_ppm)), key=lambda i: (weights_ppm[i], -i))


def part_tokens(tokens: int, weights_ppm: Sequence[int]) -> list[int]:
    """A composed call's billed tokens attributed to its parts: the weighted count ``ceil(tokens · Σw)`` (w in units
    of 1.0) split exactly by weight (:func:`split_exact`). Each part is billed its tokens at its adapter's own price,
    so part ``i`` costs ``price_i × w_i`` per 1000 tokens of the call, up to the rounding stated there.

    Raises:
        ValueError: as :func:`split_exact`.
    """
    return split_exact(-(-tokens * sum(weights_ppm) // PPM), weights_ppm)


def part_token_bounds(max_tokens: int, weights_ppm: Sequence[int]) -> list[int]:
    """The most tokens :func:`part_tokens` attributes to each part for any count from 0 to ``max_tokens``: what each
    part's payment is authorised for. Floors grow with the count, but the remainder part's share can shrink and grow
    again, by less than the number of parts: its bound adds ``parts - 1``.

    Raises:
        ValueError: as :func:`split_exact`.
    """
    weighted = -(-max_tokens * sum(weights_ppm) // PPM)
    bounds = [weighted * w // sum(weights_ppm) for w in weights_ppm]
    bounds[_remainder_part(weights_ppm)] += len(weights_ppm) - 1
    return bounds


def _extras(obj, known: set[str]) -> list[str]:
    """Fields of a parsed adapter (or module) beyond plain LoRA that hold something (DoRA, bias, …): anything but
    ``None``, ``False`` or an empty container (a tensor always counts)."""
    return [f.name for f in dataclasses.fields(obj) if f.name not in known and _holds(getattr(obj, f.name))]


def _holds(value) -> bool:
    if value is None or value is False:
        return False
    return not (isinstance(value, (dict, list, tuple, set, frozenset, str)) and len(value) == 0)


def compose(parts: Sequence[tuple[LoraAdapter, float]], max_rank: int, name: str = "") -> LoraAdapter:
    """The derived adapter whose delta is ``Σ w_i · s_i · B_i A_i`` (module docstring), in float32.

    Args:
        parts: each part's verified adapter and weight (``Composition.weights``), in canonical order.
        max_rank: the engine's slot rank.
        name: the composition id, for messages.

    Returns:
        A :class:`LoraAdapter`: per module A ``[Σ r_i, in]`` and B ``[out, Σ r_i]`` float32, scaling 1.0, over the
        union of the parts' modules (a module only some parts target concatenates only theirs).

    Raises:
        CompositionError: the summed rank exceeds ``max_rank`` (the message names each part's rank), or a part
            carries more than plain LoRA (DoRA, bias, …), whose output is not a sum of low-rank deltas.
    """
    import torch

    from .peft_format import LoraAdapter, ModuleLoRA

    for i, (adapter, _) in enumerate(parts):
        extra = _extras(adapter, {"config", "modules"}) + sorted(
            {e for m in adapter.modules.values() for e in _extras(m, {"a", "b", "scaling"})}
        )
        if extra:
            raise CompositionError(f"part {i + 1} of {name or 'the composition'} uses {', '.join(extra)}: only plain LoRA adapters compose")
    ranks = [a.max_rank for a, _ in parts]
    names = sorted({n for a, _ in parts for n in a.modules})
    modules: dict[str, ModuleLoRA] = {}
    for n in names:
        held = [(a.modules[n], w) for a, w in parts if n in a.modules]
        # PEFT's order of operations (A · weight · scaling, in float32), so the product rounds as PEFT's does
        a_cat = torch.cat([m.a.to(torch.float32) * w * m.scaling for m, w in held], dim=0)
        b_cat = torch.cat([m.b.to(torch.float32) for m, _ in held], dim=1)
        if a_cat.shape[0] > max_rank:
            raise CompositionError(
                f"{name or 'the composition'} has rank {a_cat.shape[0]} (module {n}; the parts' ranks are "
                f"{' + '.join(map(str, ranks))}) above this node's max LoRA rank {max_rank}: compose fewer or smaller adapters"
            )
        modules[n] = ModuleLoRA(a_cat.contiguous(), b_cat.contiguous(), 1.0)
    rank = max((m.a.shape[0] for m in modules.values()), default=0)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": names, "composition": name}
    return LoraAdapter(config=config, modules=modules)
