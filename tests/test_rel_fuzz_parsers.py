"""Hostile input, parsers: property-based fuzzing of every adapter parser a stranger's bytes reach.

Each parser must either succeed or raise its own typed error (``AdapterRejected`` with a reason),
never another exception, never hang, and refuse an oversized claim before allocating for it.
Inputs: random bytes, random JSON, valid documents with one random edit (a byte flipped,
inserted, deleted, the tail cut; one field replaced by a random JSON value), oversized fields,
deep nesting and numbers over Python's 4300-digit int limit (the last two were bugs: they raised
``RecursionError`` / ``ValueError`` out of ``json.loads``). No torch model, no node.
"""

from __future__ import annotations

import json
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEMO_ADAPTERS
from openlora.adapters.manifest import MAX_MANIFEST_BYTES, Manifest, canonical_json, parse_manifest
from openlora.adapters.package import read_config
from openlora.adapters.reasons import AdapterRejected
from openlora.adapters.safetensors_header import DTYPE_SIZES, MAX_HEADER_BYTES, SafetensorsHeader, parse_header
from openlora.adapters.signing import check_signature
from test_trust_manifest import signed_raw

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5), max_leaves=25)
# Inputs that broke json.loads-based parsers before the fix, and stay as fixed regression cases.
DEEP = b"[" * 50_000
HUGE_INT = b'{"a":' + b"9" * 5000 + b"}"


def mutate(raw: bytes, data: st.DataObject) -> bytes:
    """One random byte-level edit of ``raw``."""
    i = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="at")
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]), label="edit")
    if kind == "flip":
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    if kind == "insert":
        return raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:]
    if kind == "delete":
        return raw[:i] + raw[i + 1 :]
    if kind == "truncate":
        return raw[:i]
    return raw[:i] + raw[i:] + raw[i:]


def replace_at(obj, data: st.DataObject):
    """``obj`` (nested dicts/lists) with one randomly chosen value replaced by random JSON."""
    if isinstance(obj, dict) and obj and data.draw(st.booleans(), label="descend"):
        key = data.draw(st.sampled_from(sorted(obj)), label="key")
        return {**obj, key: replace_at(obj[key], data)}
    if isinstance(obj, list) and obj and data.draw(st.booleans(), label="descend"):
        i = data.draw(st.integers(0, len(obj) - 1), label="index")
        return obj[:i] + [replace_at(obj[i], data)] + obj[i + 1 :]
    return data.draw(JSON, label="value")


def refuses_typed(parse, raw: bytes):
    """Call ``parse(raw)``; an exception other than ``AdapterRejected`` fails the test."""
    try:
        return parse(raw)
    except AdapterRejected:
        return None


# ── manifest ────────────────────────────────────────────────────────────────────────────────

VALID_MANIFEST = signed_raw()


def manifest_and_signature(raw: bytes) -> Manifest:
    """Steps 1–2 of the verifier: schema, then the publisher's signature."""
    m = parse_manifest(raw)
    check_signature(m)
    return m


@FUZZ
@given(st.binary(max_size=2048))
def test_manifest_random_bytes(raw: bytes) -> None:
    assert refuses_typed(manifest_and_signature, raw) is None


@FUZZ
@given(JSON)
def test_manifest_random_json(obj) -> None:
    assert refuses_typed(manifest_and_signature, canonical_json({"v": obj})) is None


@FUZZ
@given(st.data())
def test_manifest_one_byte_edit(data) -> None:
    raw = mutate(VALID_MANIFEST, data)
    m = refuses_typed(manifest_and_signature, raw)
    assert m is None or raw == VALID_MANIFEST  # any edit breaks canonical form, schema or signature


@FUZZ
@given(st.data())
def test_manifest_one_field_replaced(data) -> None:
    obj = replace_at(json.loads(VALID_MANIFEST), data)
    raw = canonical_json(obj) if isinstance(obj, dict) else json.dumps(obj).encode()
    m = refuses_typed(manifest_and_signature, raw)
    assert m is None or raw == VALID_MANIFEST


@FUZZ
@given(st.sampled_from(["name", "publisher", "signature", "price_per_1k_tokens"]), st.integers(201, 70_000))
def test_manifest_oversized_field(field: str, size: int) -> None:
    obj = json.loads(VALID_MANIFEST)
    obj[field] = "a" * size
    with pytest.raises(AdapterRejected, match="bad_manifest"):
        manifest_and_signature(canonical_json(obj))


@pytest.mark.parametrize("raw", [DEEP, b'{"name":' + b"[" * 5000 + b"]" * 5000 + b"}", HUGE_INT, b"x" * (MAX_MANIFEST_BYTES + 1)])
def test_manifest_deep_nesting_huge_numbers_and_size_are_bad_manifests(raw: bytes) -> None:
    with pytest.raises(AdapterRejected, match="bad_manifest"):
        parse_manifest(raw)


@FUZZ
@given(st.text("0123456789abcdef", min_size=130, max_size=130))
def test_manifest_random_signature(sig: str) -> None:
    obj = json.loads(VALID_MANIFEST)
    obj["signature"] = "0x" + sig
    with pytest.raises(AdapterRejected, match="bad_signature|wrong_signer"):
        manifest_and_signature(canonical_json(obj))


# ── adapter_config.json (PEFT) ──────────────────────────────────────────────────────────────

VALID_CONFIG = (DEMO_ADAPTERS / "medical" / "adapter_config.json").read_bytes()
# Two SmolLM2 decoder layers' linears with their (in, out) features: what the checks match against.
BASE_MODULES = {
    f"model.layers.{i}.{part}": shape
    for i in range(2)
    for part, shape in {
        "self_attn.q_proj": (576, 576), "self_attn.k_proj": (576, 192), "self_attn.v_proj": (576, 192),
        "self_attn.o_proj": (576, 576), "mlp.gate_proj": (576, 1536), "mlp.up_proj": (576, 1536),
        "mlp.down_proj": (1536, 576),
    }.items()
}  # fmt: skip


def config_checks(raw: bytes):
    """What the verifier does with a config before touching weights: parse, resolve targets."""
    from openlora.adapters.peft_format import _expected_modules, parse_config

    _, lc = parse_config(raw)
    return _expected_modules(lc, BASE_MODULES)


@FUZZ
@given(st.binary(max_size=1024))
def test_config_random_bytes(raw: bytes) -> None:
    assert refuses_typed(config_checks, raw) is None


@FUZZ
@given(st.data())
def test_config_one_byte_edit(data) -> None:
    refuses_typed(config_checks, mutate(VALID_CONFIG, data))


@FUZZ
@given(st.data())
def test_config_one_field_replaced(data) -> None:
    obj = replace_at(json.loads(VALID_CONFIG), data)
    refuses_typed(config_checks, json.dumps(obj).encode())


@pytest.mark.parametrize(
    "field, value",
    [
        ("target_modules", "("),  # a string target is a regex; this one does not compile
        ("target_modules", ["q_proj", "("]),
        ("rank_pattern", {"(": 4}),  # pattern keys are regexes too
        ("alpha_pattern", {"[": 4}),
        ("exclude_modules", "*"),
        ("layers_pattern", "("),
        ("layers_to_transform", [0]),
        ("r", 2**70),
        ("lora_alpha", "x" * 10_000),
    ],
)
def test_config_hostile_fields_are_typed_refusals_or_accepted(field: str, value) -> None:
    obj = json.loads(VALID_CONFIG)
    obj[field] = value
    refuses_typed(config_checks, json.dumps(obj).encode())


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("target_modules", r"(.*)*x", "repeats or alternates"),  # before the fix: > 20 s of CPU per module name
        ("target_modules", r"(q|q_)+proj", "repeats or alternates"),
        ("target_modules", r".*.*.*x", "3 repeats"),
        ("target_modules", "q" * 300, "300 characters"),
        ("exclude_modules", r"(x+)+y", "repeats or alternates"),
        ("rank_pattern", {r"(\w+\.)*q_proj": 4}, "repeats or alternates"),
        ("rank_pattern", {f"layers\\.{i}\\.": 4 for i in range(65)}, "at most 64 items"),
        ("layers_pattern", ["layers", "(.+)+"], "repeats or alternates"),
    ],
)
def test_config_regexes_that_could_backtrack_forever_are_refused(field: str, value, why: str) -> None:
    obj = json.loads(VALID_CONFIG)
    obj[field] = value
    with pytest.raises(AdapterRejected, match=f"bad_config: .*{why}"):
        config_checks(json.dumps(obj).encode())


def test_config_ordinary_regexes_still_select_their_modules() -> None:
    obj = json.loads(VALID_CONFIG)
    obj["target_modules"] = r".*\.(q_proj|v_proj)"
    obj["rank_pattern"] = {r"layers\.1\.self_attn\.v_proj": 4}
    got = config_checks(json.dumps(obj).encode())
    assert sorted(got) == sorted(n for n in BASE_MODULES if n.endswith(("q_proj", "v_proj")))
    assert got["model.layers.1.self_attn.v_proj"][0] == 4 and got["model.layers.0.self_attn.v_proj"][0] == 8


@pytest.mark.parametrize("raw", [DEEP, HUGE_INT])
def test_config_deep_nesting_and_huge_numbers_are_bad_configs(raw: bytes) -> None:
    with pytest.raises(AdapterRejected, match="bad_config"):
        read_config(raw)


# ── safetensors header ──────────────────────────────────────────────────────────────────────


def st_file(header: dict, data_len: int, n: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if n is None else n) + text + b"\0" * data_len


VALID_HEADER = {
    "__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
}
VALID_ST = st_file(VALID_HEADER, 32)
ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(sorted(DTYPE_SIZES)) | st.text(max_size=6),
        "shape": st.lists(st.integers(-2, 2**40), max_size=4),
        "data_offsets": st.lists(st.integers(-2, 2**66), min_size=0, max_size=3),
    }
)


def covers_data_exactly(h: SafetensorsHeader, raw: bytes) -> bool:
    spans = sorted((t.begin, t.end) for t in h.tensors.values())
    return all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and (spans[-1][1] if spans else 0) == len(raw) - h.data_start


@FUZZ
@given(st.binary(max_size=512))
def test_safetensors_random_bytes(raw: bytes) -> None:
    h = refuses_typed(parse_header, raw)
    assert h is None or covers_data_exactly(h, raw)


@FUZZ
@given(st.data())
def test_safetensors_one_byte_edit(data) -> None:
    raw = mutate(VALID_ST, data)
    h = refuses_typed(parse_header, raw)
    assert h is None or covers_data_exactly(h, raw)


@FUZZ
@given(st.dictionaries(st.text(max_size=8), ENTRY, max_size=4), st.integers(0, 256))
def test_safetensors_random_entries_offsets_and_dtypes(header: dict, data_len: int) -> None:
    raw = st_file(header, data_len)
    h = refuses_typed(parse_header, raw)
    assert h is None or covers_data_exactly(h, raw)


@FUZZ
@given(st.integers(MAX_HEADER_BYTES + 1, 2**64 - 1))
def test_safetensors_huge_length_prefix_is_refused_without_allocating(n: int) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(AdapterRejected, match="header_too_large"):
            parse_header(struct.pack("<Q", n) + b"{}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024  # bytes: nothing sized by the claim


@pytest.mark.parametrize(
    "claim",
    [
        {"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 2**82]}},  # a 16-yottabyte tensor
        {"a": {"dtype": "U8", "shape": [10 * 2**30], "data_offsets": [0, 10 * 2**30]}},  # 10 GiB, 0 bytes held
    ],
)
def test_safetensors_huge_tensor_claims_are_refused_without_allocating(claim: dict) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(AdapterRejected, match="truncated_file"):
            parse_header(st_file(claim, 0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_safetensors_deep_nesting_is_bad_safetensors() -> None:
    body = b'{"a":' + b"[" * 50_000
    with pytest.raises(AdapterRejected, match="bad_safetensors"):
        parse_header(struct.pack("<Q", len(body)) + body)
