"""The PEFT LoRA adapter format: check config and weights against the base, then build per-module weights.

    adapter_config.json ──► LoraConfig (peft) ──► which base modules, which rank/alpha each
    adapter_model.safetensors ──► header checked first (safetensors_header.py: no tensor touched)
                              ──► names, shapes, dtypes vs the base ──► tensors ──► finite?
                        both ──► LoraAdapter {module: (A [r, in], B [out, r], scaling)}

The checks are strict because a permissionless node must never half-apply an adapter: the
set of modules the config targets must equal the set of modules that have weights (no module
silently dropped, none silently extra), every entry of ``target_modules`` must match a module of
this base, every shape must fit the base, and every feature that would change the arithmetic
and that the engine does not implement (DoRA, LoRA bias, trained ``modules_to_save``,
embedding / lm_head targets, …) is refused with a reason instead of ignored. Target matching,
``rank_pattern``/``alpha_pattern`` resolution and ``layers_to_transform`` are PEFT's own
helpers, so we agree with PEFT by construction; PEFT reads several of these fields as regexes with
Python's ``re``, which has no timeout, so each such pattern is first checked for a shape that
cannot backtrack without end (``_check_pattern``). Cheap checks run before expensive ones: the rank
limit before the weights are read, names/shapes/dtypes on the header before any tensor is
materialised.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import re._parser as re_parser  # to inspect a pattern's structure before PEFT runs it
from re._constants import BRANCH, MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT
from dataclasses import dataclass, field
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .package import WEIGHTS_FILE, read_config
from .reasons import AdapterRejected, RejectReason
from .safetensors_header import parse_header

_KEY_PREFIX = "base_model.model."
_FLOAT_DTYPES = ("F16", "BF16", "F32")

# LoraConfig fields whose non-default value changes inference arithmetic in a way this engine
# does not implement. Initialisation-only fields (init_lora_weights, loftq/eva/corda configs)
# are harmless: the weights are what they are.
_UNSUPPORTED = {
    "use_dora": (False, "DoRA (weight-decomposed LoRA)"),
    "bias": ("none", "trained bias terms"),
    "lora_bias": (False, "LoRA bias on lora_B"),
    "modules_to_save": (None, "modules_to_save (fully trained copies of base modules)"),
    "trainable_token_indices": (None, "trainable token embeddings"),
    "fan_in_fan_out": (False, "fan_in_fan_out (Conv1D weight layout)"),
    "target_parameters": (None, "target_parameters (LoRA on raw parameters)"),
    "layer_replication": (None, "layer_replication"),
    "alora_invocation_tokens": (None, "activated LoRA (aLoRA)"),
    "use_qalora": (False, "QA-LoRA"),
    "use_bdlora": (None, "BD-LoRA"),
    "arrow_config": (None, "Arrow routing"),
    "kasa_config": (None, "KaSA"),
    "monteclora_config": (None, "MonteCLoRA"),
    "velora_config": (None, "VeLoRA"),
    "megatron_config": (None, "Megatron parallel layers"),
}


MAX_PATTERN_CHARS = 256
MAX_PATTERN_REPEATS = 2  # * + {m,n} per pattern: matching one module name stays polynomial and small
# Largest effective LoRA scaling (lora_alpha / r, or / sqrt(r) with rsLoRA) accepted. Published
# adapters sit at 0.5–4; a scaling of 1e30 on finite weights overflows the logits to inf, so it is
# refused as a verdict at verification rather than found one batch at a time.
MAX_LORA_SCALING = 64.0
MAX_PATTERN_KEYS = 64  # rank_pattern / alpha_pattern keys: each is tried against every module
_REPEATS = (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT)


def _pattern_shape(parsed) -> tuple[int, bool]:
    """``(repeats, branches?)`` of a parsed regex.

    Raises:
        ValueError: a repeat around a repeat or an alternation (``(.*)*x``, ``(a|ab)+``): the
            shapes that make Python's backtracking ``re`` take exponential time.
    """
    repeats, branch = 0, False
    for op, av in parsed:
        inner, inner_branch = 0, op is BRANCH
        stack = [av]
        while stack:  # the sub-patterns of this item, wherever its arguments hold them
            x = stack.pop()
            if isinstance(x, re_parser.SubPattern):
                r, b = _pattern_shape(x)
                inner, inner_branch = inner + r, inner_branch or b
            elif isinstance(x, (tuple, list)):
                stack.extend(x)
        if op in _REPEATS and av[1] > 1:
            if inner or inner_branch:
                raise ValueError("a repeated group that itself repeats or alternates")
            inner += 1
        repeats, branch = repeats + inner, branch or inner_branch
    return repeats, branch


def _check_pattern(field: str, pattern: str) -> None:
    """Refuse a regex from the config that PEFT's ``re`` could spend unbounded time on.

    PEFT matches ``target_modules`` (a string), ``exclude_modules`` (a string), the keys of
    ``rank_pattern`` / ``alpha_pattern`` and ``layers_pattern`` as regexes against every module
    name; Python's ``re`` has no timeout, so one hostile pattern would pin a CPU forever.

    Raises:
        AdapterRejected: BAD_CONFIG (too long, not a regex, nested repeats, too many repeats).
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"{field} pattern is {len(pattern)} characters; the limit is {MAX_PATTERN_CHARS}")
    try:
        repeats, _ = _pattern_shape(re_parser.parse(pattern))
    except (re.error, ValueError, RecursionError) as e:
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"{field} pattern {pattern!r} is refused: {e}") from None
    if repeats > MAX_PATTERN_REPEATS:
        raise AdapterRejected(
            RejectReason.BAD_CONFIG, f"{field} pattern {pattern!r} has {repeats} repeats; at most {MAX_PATTERN_REPEATS} are accepted"
        )


class _MatchingFields(BaseModel):
    """Types of the config fields the checks below interpret; ``LoraConfig`` itself checks none
    (a ``rank_pattern`` of ``null`` or an ``r`` of ``"8"`` would otherwise fail deep inside PEFT)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    r: Annotated[int, Field(ge=1)] = 8
    lora_alpha: int | float = 8
    target_modules: list[str] | str
    rank_pattern: Annotated[dict[str, Annotated[int, Field(ge=1)]], Field(max_length=MAX_PATTERN_KEYS)] = {}
    alpha_pattern: Annotated[dict[str, int | float], Field(max_length=MAX_PATTERN_KEYS)] = {}
    use_rslora: bool = False
    layers_to_transform: list[Annotated[int, Field(ge=0)]] | Annotated[int, Field(ge=0)] | None = None
    layers_pattern: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None


@dataclass(frozen=True)
class ModuleLoRA:
    """One target module's adapter weights.

    Attributes:
        a: LoRA A, ``[r, in_features]``.
        b: LoRA B, ``[out_features, r]``.
        scaling: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA), as PEFT computes it.
    """

    a: torch.Tensor
    b: torch.Tensor
    scaling: float


@dataclass(frozen=True)
class LoraAdapter:
    """A parsed, checked LoRA adapter ready to copy into a slot.

    Attributes:
        config: the adapter_config.json object as published.
        modules: base module name (``model.layers.0.self_attn.q_proj``) → weights.
    """

    config: dict
    modules: dict[str, ModuleLoRA] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes held by the weight tensors."""
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())

    @property
    def max_rank(self) -> int:
        """Largest rank over modules."""
        return max((m.a.shape[0] for m in self.modules.values()), default=0)


def parse_config(raw: bytes):
    """Parse ``adapter_config.json`` into a PEFT ``LoraConfig``, refusing what we cannot apply.

    Returns:
        ``(config_dict, peft.LoraConfig)``.

    Raises:
        AdapterRejected: BAD_CONFIG (not JSON, not LoRA, unknown, wrong-typed or invalid fields,
            a module regex that is invalid or could backtrack without end: ``_check_pattern``),
            UNSUPPORTED_PEFT (a feature listed in ``_UNSUPPORTED``).
    """
    from peft import LoraConfig

    cfg = read_config(raw)
    if cfg.get("peft_type") != "LORA":
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"peft_type is {cfg.get('peft_type')!r}; only LORA adapters are served")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise AdapterRejected(
            RejectReason.BAD_CONFIG,
            f"unknown adapter_config fields {unknown} (saved by a newer PEFT?); this node runs peft 0.21 and "
            "refuses fields it cannot interpret rather than ignore them",
        )
    for name, (default, what) in _UNSUPPORTED.items():
        value = cfg.get(name)
        if value is not None and value != default and value not in (False, [], {}):
            raise AdapterRejected(RejectReason.UNSUPPORTED_PEFT, f"{what} ({name}={value!r}) is not supported by this node")
    if not cfg.get("target_modules"):
        raise AdapterRejected(RejectReason.BAD_CONFIG, "target_modules is empty")
    try:
        fields = _MatchingFields.model_validate(cfg)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"adapter_config field {where}: {first['msg']}") from None
    # Lists in target_modules / exclude_modules are matched as name suffixes, not as regexes.
    regexes = [(name, getattr(fields, name)) for name in ("target_modules", "exclude_modules") if isinstance(getattr(fields, name), str)]
    layers = fields.layers_pattern
    regexes += [("layers_pattern", p) for p in ([layers] if isinstance(layers, str) else layers or [])]
    regexes += [(name, key) for name in ("rank_pattern", "alpha_pattern") for key in getattr(fields, name)]
    for name, pattern in regexes:
        _check_pattern(name, pattern)
    try:
        lc = LoraConfig(**{k: v for k, v in cfg.items() if k not in ("peft_type", "auto_mapping", "peft_version")})
    except Exception as e:  # PEFT's own checks raise assorted types on hostile values; all mean "bad config"
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"invalid LoRA config: {type(e).__name__}: {e}") from None
    if not isinstance(lc.r, int) or isinstance(lc.r, bool) or lc.r <= 0:
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"r must be a positive integer, got {lc.r!r}")
    return cfg, lc


def _targets(lc, name: str) -> bool:
    from peft.tuners.tuners_utils import check_target_module_exists

    if isinstance(lc.target_modules, str) and lc.target_modules.lower() == "all-linear":
        return True
    return bool(check_target_module_exists(lc, name))  # _ExcludedModule is falsy too


def _expected_modules(lc, base_modules: dict[str, tuple[int, int]]) -> dict[str, tuple[int, float]]:
    """Base modules this config targets, each with its resolved (rank, lora_alpha).

    Raises:
        AdapterRejected: UNSUPPORTED_PEFT (embedding / lm_head target), UNKNOWN_MODULE (no
            module matches, or one entry of a target list matches none of this base's modules).
    """
    from peft.utils.other import get_pattern_key

    if isinstance(lc.target_modules, (list, set)):
        for t in sorted(lc.target_modules):
            if t in ("lm_head", "embed_tokens") or t.endswith((".lm_head", ".embed_tokens")):
                raise AdapterRejected(RejectReason.UNSUPPORTED_PEFT, f"LoRA on {t} (embedding/output head) is not supported")
    kinds = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in base_modules}))
    out: dict[str, tuple[int, float]] = {}
    try:
        for name in base_modules:
            if _targets(lc, name):
                r = lc.rank_pattern.get(get_pattern_key(lc.rank_pattern.keys(), name), lc.r)
                alpha = lc.alpha_pattern.get(get_pattern_key(lc.alpha_pattern.keys(), name), lc.lora_alpha)
                out[name] = (r, alpha)
    except re.error as e:  # PEFT reads target_modules (a string), pattern keys and layers_pattern as regexes
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"a module pattern in the config is not a valid regex: {e}") from None
    if not out:
        raise AdapterRejected(
            RejectReason.UNKNOWN_MODULE, f"target_modules {lc.target_modules!r} match no linear module of the base (it has {kinds})"
        )
    if isinstance(lc.target_modules, (list, set)) and len(lc.target_modules) > 1:
        for t in sorted(lc.target_modules):
            one = copy.copy(lc)
            one.target_modules = {t}
            if not any(_targets(one, n) for n in out):
                raise AdapterRejected(
                    RejectReason.UNKNOWN_MODULE,
                    f"target module {t!r} matches no linear module of this base (it has {kinds}); PEFT would drop it silently",
                )
    return out


def load_adapter(
    config_raw: bytes,
    weights_raw: bytes,
    base_modules: dict[str, tuple[int, int]],
    max_rank: int,
) -> LoraAdapter:
    """Parse and check a PEFT LoRA adapter against a base model.

    Args:
        config_raw: bytes of ``adapter_config.json``.
        weights_raw: bytes of ``adapter_model.safetensors``.
        base_modules: base module name → ``(in_features, out_features)`` of every linear the
            engine can adapt (``engine.lora.inject_lora`` names).
        max_rank: the node's largest servable rank.

    The tensors keep the dtype they were saved in (host memory stays the size of the file);
    copying into a slot converts them (``engine.lora.LoRALinear.write_slot``).

    Raises:
        AdapterRejected: with the first failing check's reason, in this order: BAD_CONFIG /
            UNSUPPORTED_PEFT, UNKNOWN_MODULE, RANK_LIMIT, the header's reasons
            (HEADER_TOO_LARGE, TRUNCATED_FILE, BAD_SAFETENSORS, BAD_DTYPE, BAD_OFFSETS),
            SCALING_LIMIT (a module's effective scaling above :data:`MAX_LORA_SCALING`),
            MISSING_WEIGHTS / BAD_DTYPE / SHAPE_MISMATCH / UNKNOWN_MODULE on the header's
            tensors, NON_FINITE.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    cfg, lc = parse_config(config_raw)
    expected = _expected_modules(lc, base_modules)
    too_big = {n: r for n, (r, _) in expected.items() if r > max_rank}
    if too_big:
        name, r = next(iter(sorted(too_big.items())))
        raise AdapterRejected(RejectReason.RANK_LIMIT, f"rank {r} (module {name}) exceeds this node's max LoRA rank {max_rank}")
    scalings = {n: _scaling(alpha, r, lc.use_rslora) for n, (r, alpha) in expected.items()}
    for name, scaling in sorted(scalings.items()):
        if not math.isfinite(scaling) or abs(scaling) > MAX_LORA_SCALING:
            raise AdapterRejected(
                RejectReason.SCALING_LIMIT,
                f"module {name} has scaling {scaling:g} (lora_alpha / {'sqrt(r)' if lc.use_rslora else 'r'}); "
                f"at most {MAX_LORA_SCALING:g} in magnitude is accepted: lower lora_alpha",
            )

    header = parse_header(weights_raw, WEIGHTS_FILE)
    infos = header.tensors
    for name, (r, _) in sorted(expected.items()):
        in_f, out_f = base_modules[name]
        ka, kb = f"{_KEY_PREFIX}{name}.lora_A.weight", f"{_KEY_PREFIX}{name}.lora_B.weight"
        for key, want in ((ka, (r, in_f)), (kb, (out_f, r))):
            t = infos.get(key)
            if t is None:
                raise AdapterRejected(RejectReason.MISSING_WEIGHTS, f"the config targets {name} but {WEIGHTS_FILE} lacks {key}")
            if t.dtype not in _FLOAT_DTYPES:
                raise AdapterRejected(RejectReason.BAD_DTYPE, f"{key} has dtype {t.dtype}; use F16, BF16 or F32")
            if t.shape != want:
                raise AdapterRejected(
                    RejectReason.SHAPE_MISMATCH,
                    f"{key} has shape {list(t.shape)}, expected {list(want)} for this base and rank {r}",
                )
    wanted = {f"{_KEY_PREFIX}{n}.lora_{ab}.weight" for n in expected for ab in "AB"}
    extra = sorted(set(infos) - wanted)
    if extra:
        raise AdapterRejected(
            RejectReason.UNKNOWN_MODULE,
            f"{WEIGHTS_FILE} has tensors the config does not target or the base does not have: {', '.join(extra[:5])}"
            + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""),
        )

    try:
        tensors = st_load(weights_raw)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:  # the header checks above make this unexpected
        raise AdapterRejected(RejectReason.BAD_SAFETENSORS, f"{WEIGHTS_FILE} cannot be read: {e}") from None
    modules: dict[str, ModuleLoRA] = {}
    for name, (r, alpha) in sorted(expected.items()):
        a = tensors[f"{_KEY_PREFIX}{name}.lora_A.weight"]
        b = tensors[f"{_KEY_PREFIX}{name}.lora_B.weight"]
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterRejected(RejectReason.NON_FINITE, f"{name} has NaN or Inf weights")
        modules[name] = ModuleLoRA(a.contiguous(), b.contiguous(), scalings[name])
    return LoraAdapter(config=cfg, modules=modules)


def _scaling(alpha: float, r: int, rslora: bool) -> float:
    """PEFT's scaling of one module: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (``inf`` on overflow)."""
    try:
        return float(alpha / math.sqrt(r) if rslora else alpha / r)
    except OverflowError:  # an int lora_alpha beyond float range
        return math.inf
