"""Our strict safetensors header parser (adapters/safetensors_header.py): each malformation gets its own
reason, and on random files it never accepts what the safetensors library (Rust) refuses."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy as stn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

from openlora.adapters.reasons import AdapterRejected
from openlora.adapters.safetensors_header import parse_header


def file(header: dict, data: bytes, n: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if n is None else n) + text + data


def entry(dtype="F32", shape=(2, 2), offsets=(0, 16)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_a_file_the_library_writes_parses():
    raw = stn.save({"b": np.ones((3, 4), np.float16), "a": np.zeros((2,), np.float32)}, metadata={"format": "pt"})
    h = parse_header(raw)
    assert h.metadata == {"format": "pt"}
    assert {n: (t.dtype, t.shape) for n, t in h.tensors.items()} == {"a": ("F32", (2,)), "b": ("F16", (3, 4))}
    assert sum(t.end - t.begin for t in h.tensors.values()) == len(raw) - h.data_start


@pytest.mark.parametrize(
    "raw, reason, match",
    [
        (b"\x01\x02", "truncated_file", "8-byte"),
        (struct.pack("<Q", 2**63) + b"{}", "header_too_large", "9223372036854775808-byte header"),
        (struct.pack("<Q", (1 << 20) + 1) + b"{}", "header_too_large", "at most 1048576"),
        (struct.pack("<Q", 100) + b"{}", "truncated_file", "100-byte header"),
        (file({"a": entry()}, b"\0" * 12), "truncated_file", "need 16 data bytes, the file holds 12"),
        (file({"a": entry()}, b"\0" * 20), "bad_offsets", "4 bytes after the last tensor"),
        (file({"a": entry(), "b": entry(offsets=(8, 24))}, b"\0" * 24), "bad_offsets", "overlap at byte 8"),
        (file({"a": entry(), "b": entry(offsets=(20, 36))}, b"\0" * 36), "bad_offsets", "4 unclaimed bytes"),
        (file({"a": entry(offsets=(4, 20))}, b"\0" * 20), "bad_offsets", "4 unclaimed bytes"),
        (file({"a": entry(offsets=(16, 0))}, b"\0" * 16), "bad_offsets", "begin <= end"),
        (file({"a": entry(offsets=(0,))}, b"\0" * 16), "bad_offsets", r"\[begin, end\]"),
        (file({"a": entry(shape=(2, 3))}, b"\0" * 16), "bad_offsets", "24 bytes but its data_offsets span 16"),
        (file({"a": entry(dtype="F128")}, b"\0" * 16), "bad_dtype", "F128"),
        (file({"a": entry(shape=(2, -2))}, b"\0" * 16), "bad_safetensors", "non-negative integers"),
        (file({"a": entry(shape=(True, 16))}, b"\0" * 16), "bad_safetensors", "non-negative integers"),
        (file({"a": {**entry(), "extra": 1}}, b"\0" * 16), "bad_safetensors", "exactly dtype, shape and data_offsets"),
        (file({"a": 5}, b""), "bad_safetensors", "exactly dtype"),
        (file({"__metadata__": {"k": 1}, "a": entry()}, b"\0" * 16), "bad_safetensors", "__metadata__"),
        (struct.pack("<Q", 4) + b"{!!}", "bad_safetensors", "not a valid JSON"),
        (struct.pack("<Q", 4) + b"[{}]", "bad_safetensors", "start with"),
        (struct.pack("<Q", 2) + b"\xff{", "bad_safetensors", "not a valid JSON"),
        (struct.pack("<Q", 13) + b'{"a":1,"a":2}', "bad_safetensors", "duplicate key 'a'"),
    ],
    ids=[
        "short", "length_bomb", "just_over_limit", "header_past_end", "truncated_data", "trailing_bytes", "overlap",
        "gap", "gap_at_start", "reversed", "one_offset", "shape_vs_span", "unknown_dtype", "negative_dim", "bool_dim",
        "extra_key", "entry_not_object", "metadata_not_strings", "not_json", "not_object", "not_utf8", "duplicate_key",
    ],
)  # fmt: skip
def test_each_malformation_has_its_reason(raw, reason, match):
    with pytest.raises(AdapterRejected, match=match) as e:
        parse_header(raw)
    assert e.value.reason.value == reason


_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "U8": np.uint8}


@st.composite
def tensor_files(draw) -> bytes:
    names = draw(st.lists(st.text("abc._", min_size=1, max_size=6), min_size=0, max_size=4, unique=True))
    arrays = {}
    for n in names:
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        arrays[n] = np.zeros(shape, _DTYPES[draw(st.sampled_from(sorted(_DTYPES)))])
    return stn.save(arrays)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor_files(), st.data())
def test_never_accepts_what_safetensors_refuses(raw, data):
    """Differential: mutate a valid file (one byte, or truncate); if our parser accepts it, the Rust
    library must load it with the same names, dtypes and shapes."""
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1 :]
    else:
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        ours = parse_header(raw)
    except AdapterRejected:
        return
    try:
        theirs = stn.load(raw)
    except SafetensorError as e:
        pytest.fail(f"our parser accepted a file safetensors refuses ({e}): {raw[:120]!r}")
    assert {n: t.shape for n, t in ours.tensors.items()} == {n: a.shape for n, a in theirs.items()}
