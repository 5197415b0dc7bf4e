"""The PEFT LoRA adapter format: check config and weights against the base, then build per-module weights.

    adapter_config.json ──► LoraConfig (peft) ──► which base modules, which rank/alpha each
    adapter_model.safetensors ──► header checked first (safetensors_header.py: no tensor touched)
                              ──► names, shapes, dtypes vs the base ──► tensors ──► finite?
                        both ──► LoraAdapter {module: (A [r, in], B [out, r], scaling)}

The checks are strict because a permissionless node must never half-apply an adapter: the
set of modules the config targets must equal the set of modules that have weights (no module
silently dropped, none silently extra), every entry of ``target_modules`` must match a module of
this base, every shape must fit the base, and every feature that would change the arithmetic
and that no engine implements (trainable token indices, aLoRA, …) is refused with a reason instead
of ignored. DoRA magnitudes, ``lora_B`` biases, LoRA on ``embed_tokens`` / ``lm_head`` and
``modules_to_save`` copies of them are parsed into the adapter (:attr:`LoraAdapter.features` names
them); an engine that cannot serve one refuses the adapter at load. Target matching,
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
    "ensure_weight_tying": (False, "ensure_weight_tying (adapters tied across embed_tokens and lm_head)"),
}
# The input embedding and the output head, by PEFT's names (``peft.utils.constants.EMBEDDING_LAYER_NAMES``):
# LoRA on them and ``modules_to_save`` copies of them are served; any other module is not.
EMBEDDING = "embed_tokens"
HEAD = "lm_head"
# Feature names an engine lists as served (``EngineInfo.features``, the swarm status); plain LoRA needs none.
FEATURES = ("dora", "embed_tokens", "lm_head", "lora_bias", "modules_to_save")


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

    For an embedding (``embed_tokens``) ``in`` is the vocabulary and ``out`` the hidden size, so
    PEFT's ``lora_embedding_A`` / ``lora_embedding_B`` have the shapes of ``a`` / ``b`` below.

    Attributes:
        a: LoRA A, ``[r, in_features]``.
        b: LoRA B, ``[out_features, r]``.
        scaling: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA), as PEFT computes it.
        bias: ``lora_B.bias`` ``[out_features]`` (``lora_bias=True``), else ``None``.
        magnitude: DoRA's ``lora_magnitude_vector`` ``[out_features]`` (``use_dora=True``), else ``None``.
        base_weight: the ``base_layer.weight`` PEFT saves beside LoRA on ``embed_tokens`` / ``lm_head``
            (``[vocab, hidden]``; PEFT loads it over the base's), else ``None``. The engine serves the adapter
            only where it equals its base's weight.
    """

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    bias: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    base_weight: torch.Tensor | None = None

    @property
    def exact_only(self) -> bool:
        """Whether this module needs more than ``x·Aᵀ·Bᵀ·scaling`` (DoRA or a ``lora_B`` bias)."""
        return self.bias is not None or self.magnitude is not None


@dataclass(frozen=True)
class LoraAdapter:
    """A parsed, checked LoRA adapter ready to copy into a slot.

    Attributes:
        config: the adapter_config.json object as published.
        modules: base module name (``model.layers.0.self_attn.q_proj``) → weights.
        saved: ``modules_to_save``: base module name (``model.embed_tokens``, ``lm_head``) → the fully
            trained weight that replaces the base's for this adapter, ``[vocab, hidden]``.
    """

    config: dict
    modules: dict[str, ModuleLoRA] = field(default_factory=dict)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes held by the weight tensors."""
        tensors = [t for m in self.modules.values() for t in (m.a, m.b, m.bias, m.magnitude, m.base_weight) if t is not None]
        return sum(t.nbytes for t in [*tensors, *self.saved.values()])

    @property
    def max_rank(self) -> int:
        """Largest rank over modules."""
        return max((m.a.shape[0] for m in self.modules.values()), default=0)

    @property
    def features(self) -> tuple[str, ...]:
        """The :data:`FEATURES` this adapter needs beyond plain LoRA on linear layers, sorted."""
        have = {"modules_to_save"} if self.saved else set()
        for name, m in self.modules.items():
            have |= {"dora"} if m.magnitude is not None else set()
            have |= {"lora_bias"} if m.bias is not None else set()
            have |= {_role(name)} - {None}
        return tuple(sorted(have))


def config_features(cfg: dict) -> tuple[str, ...]:
    """The :data:`FEATURES` an ``adapter_config.json`` object asks for, sorted (what routing needs to know before
    the weights are fetched; for an adapter that passes :func:`load_adapter` it equals
    :attr:`LoraAdapter.features`, except that a regex ``target_modules`` is read as naming neither the
    embedding nor the head: such an adapter is routed by its base alone, and refused by an engine without them)."""
    targets = cfg.get("target_modules")
    named = [targets] if isinstance(targets, str) else list(targets or ())
    have = {t for t in map(_role, (n for n in named if isinstance(n, str))) if t}
    have |= {"dora"} if cfg.get("use_dora") else set()
    have |= {"lora_bias"} if cfg.get("lora_bias") else set()
    have |= {"modules_to_save"} if cfg.get("modules_to_save") else set()
    return tuple(sorted(have))


def _role(name: str) -> str | None:
    """:data:`EMBEDDING` or :data:`HEAD` for the input embedding / output head, ``None`` for any other module."""
    last = name.rsplit(".", 1)[-1]
    return last if last in (EMBEDDING, HEAD) else None


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
        return _role(name) is None  # PEFT's all-linear leaves out the output head (and embeddings are not linear)
    return bool(check_target_module_exists(lc, name))  # _ExcludedModule is falsy too


def _expected_modules(lc, base_modules: dict[str, tuple[int, int]]) -> dict[str, tuple[int, float]]:
    """Base modules this config targets, each with its resolved (rank, lora_alpha).

    Raises:
        AdapterRejected: UNKNOWN_MODULE (no module matches, or one entry of a target list matches
            none of this base's modules).
    """
    from peft.utils.other import get_pattern_key

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
        base_modules: base module name → ``(in_features, out_features)`` of every module the
            engine can adapt (``engine.lora.inject_lora`` names): the decoder's linears, and the
            input embedding (``in`` = vocabulary) and output head where the engine adapts them.
        max_rank: the node's largest servable rank.

    The tensors keep the dtype they were saved in (host memory stays the size of the file);
    copying into a slot converts them (``engine.lora.LoRALinear.write_slot``).

    Raises:
        AdapterRejected: with the first failing check's reason, in this order: BAD_CONFIG /
            UNSUPPORTED_PEFT, UNKNOWN_MODULE, RANK_LIMIT, the header's reasons
            (HEADER_TOO_LARGE, TRUNCATED_FILE, BAD_SAFETENSORS, BAD_DTYPE, BAD_OFFSETS),
            SCALING_LIMIT (a module's effective scaling above :data:`MAX_LORA_SCALING`),
            MISSING_WEIGHTS / BAD_DTYPE / SHAPE_MISMATCH / UNKNOWN_MODULE on the header's
            tensors (UNSUPPORTED_PEFT for a ``modules_to_save`` copy with a resized vocabulary or
            trained base-layer biases), NON_FINITE.
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

    saved_shapes = _saved_modules(lc, base_modules)
    both = sorted(set(saved_shapes) & set(expected))
    if both:
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"{both[0]} is both a LoRA target and in modules_to_save; choose one")
    header = parse_header(weights_raw, WEIGHTS_FILE)
    infos = header.tensors
    wanted: dict[str, tuple[int, ...]] = {}  # key → shape: every tensor the file must hold
    optional: dict[str, tuple[int, ...]] = {}  # key → shape: tensors PEFT may or may not save
    for name, (r, _) in sorted(expected.items()):
        in_f, out_f = base_modules[name]
        ka, kb = _lora_keys(name)
        wanted |= {ka: (r, in_f), kb: (out_f, r)}
        if lc.lora_bias:
            if _role(name) == EMBEDDING:
                raise AdapterRejected(RejectReason.BAD_CONFIG, f"lora_bias=True on {name}: PEFT has no LoRA bias for embeddings")
            wanted[f"{_KEY_PREFIX}{name}.lora_B.bias"] = (out_f,)
        if lc.use_dora:
            wanted[f"{_KEY_PREFIX}{name}.lora_magnitude_vector"] = (out_f,)
        if _role(name):  # PEFT saves the embedding / head it adapted beside the LoRA weights
            optional[f"{_KEY_PREFIX}{name}.base_layer.weight"] = _full_shape(name, base_modules)
    wanted |= {f"{_KEY_PREFIX}{name}.weight": shape for name, shape in saved_shapes.items()}
    for key, want in sorted({**wanted, **{k: v for k, v in optional.items() if k in infos}}.items()):
        t = infos.get(key)
        if t is None:
            raise AdapterRejected(RejectReason.MISSING_WEIGHTS, f"the config needs {key} but {WEIGHTS_FILE} lacks it")
        if t.dtype not in _FLOAT_DTYPES:
            raise AdapterRejected(RejectReason.BAD_DTYPE, f"{key} has dtype {t.dtype}; use F16, BF16 or F32")
        if t.shape != want:
            if key.endswith(".weight") and key[len(_KEY_PREFIX) : -len(".weight")] in saved_shapes and t.shape[1:] == want[1:]:
                raise AdapterRejected(
                    RejectReason.UNSUPPORTED_PEFT,
                    f"{key} has {t.shape[0]} rows but this base's vocabulary is {want[0]}: a resized vocabulary is not served",
                )
            raise AdapterRejected(
                RejectReason.SHAPE_MISMATCH,
                f"{key} has shape {list(t.shape)}, expected {list(want)} for this base and its rank",
            )
    extra = sorted(set(infos) - set(wanted) - set(optional))
    biases = [k for k in extra if k.endswith(".bias")]
    if biases:
        raise AdapterRejected(
            RejectReason.UNSUPPORTED_PEFT,
            f"trained base-layer biases (bias={lc.bias!r}: {biases[0]}) are not served; this base's adapted layers have none",
        )
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
    for key in sorted(tensors):
        if not torch.isfinite(tensors[key]).all():
            raise AdapterRejected(RejectReason.NON_FINITE, f"{key[len(_KEY_PREFIX):]} has NaN or Inf weights")
    modules: dict[str, ModuleLoRA] = {}
    for name in sorted(expected):
        ka, kb = _lora_keys(name)
        key = f"{_KEY_PREFIX}{name}"
        extras = {
            "bias": tensors.get(f"{key}.lora_B.bias"),
            "magnitude": tensors.get(f"{key}.lora_magnitude_vector"),
            "base_weight": tensors.get(f"{key}.base_layer.weight"),
        }
        extras = {k: v.contiguous() for k, v in extras.items() if v is not None}
        modules[name] = ModuleLoRA(tensors[ka].contiguous(), tensors[kb].contiguous(), scalings[name], **extras)
    saved = {name: tensors[f"{_KEY_PREFIX}{name}.weight"].contiguous() for name in sorted(saved_shapes)}
    return LoraAdapter(config=cfg, modules=modules, saved=saved)


def _lora_keys(name: str) -> tuple[str, str]:
    """The safetensors keys of module ``name``'s LoRA A and B (PEFT names an embedding's differently)."""
    if _role(name) == EMBEDDING:
        return f"{_KEY_PREFIX}{name}.lora_embedding_A", f"{_KEY_PREFIX}{name}.lora_embedding_B"
    return f"{_KEY_PREFIX}{name}.lora_A.weight", f"{_KEY_PREFIX}{name}.lora_B.weight"


def _full_shape(name: str, base_modules: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Shape of the embedding's / head's weight, ``[vocab, hidden]`` (an embedding's ``in`` is the vocabulary)."""
    in_f, out_f = base_modules[name]
    return (in_f, out_f) if _role(name) == EMBEDDING else (out_f, in_f)


def _saved_modules(lc, base_modules: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """``modules_to_save`` resolved to base module names, each with the shape its weight must have.

    Raises:
        AdapterRejected: UNSUPPORTED_PEFT (a module other than the embedding or the output head),
            UNKNOWN_MODULE (an entry this base has no module for).
    """
    out: dict[str, tuple[int, int]] = {}
    for entry in sorted(lc.modules_to_save or ()):
        if _role(entry) is None:
            raise AdapterRejected(
                RejectReason.UNSUPPORTED_PEFT,
                f"modules_to_save {entry!r} is not supported: only {EMBEDDING} and {HEAD} copies are served",
            )
        names = [n for n in base_modules if n == entry or n.endswith(f".{entry}")]
        if not names:
            raise AdapterRejected(RejectReason.UNKNOWN_MODULE, f"modules_to_save {entry!r} matches no module of this base")
        out |= {n: _full_shape(n, base_modules) for n in names}
    return out


def _scaling(alpha: float, r: int, rslora: bool) -> float:
    """PEFT's scaling of one module: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA (``inf`` on overflow)."""
    try:
        return float(alpha / math.sqrt(r) if rslora else alpha / r)
    except OverflowError:  # an int lora_alpha beyond float range
        return math.inf
