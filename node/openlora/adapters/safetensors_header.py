"""Our own strict reading of a safetensors header, before the safetensors library sees the bytes.

Format (https://github.com/huggingface/safetensors#format):

    [ 8 bytes: N, u64 little-endian ][ N bytes: JSON header ][ data region ]
    header = {"__metadata__": {str: str}?,                      (optional)
              "<tensor name>": {"dtype": "F32", "shape": [8, 576], "data_offsets": [begin, end]}, …}
    offsets are relative to the start of the data region

A hostile file can claim a header of 2^64 bytes, offsets past the end, tensors that overlap (two
names reading the same bytes), gaps that smuggle data, or shapes that disagree with their byte
span. Every such claim is checked here, in bounded time and memory (the header is at most
:data:`MAX_HEADER_BYTES`), each with its own reason:

    HEADER_TOO_LARGE   N > MAX_HEADER_BYTES
    TRUNCATED_FILE     the file ends before 8 + N bytes, or before the last tensor's end offset
    BAD_SAFETENSORS    header not UTF-8 JSON, not an object, a duplicate key, a malformed entry
    BAD_DTYPE          a dtype outside the spec's byte-sized dtypes
    BAD_OFFSETS        begin > end, overlap, a gap, bytes after the last tensor, or
                       shape × dtype size ≠ end − begin

Only then does ``safetensors.torch.load`` (Rust) parse the same bytes; it enforces the same
rules, so the two parsers cannot disagree on what a valid file holds. Torch-free: the publishing
CLI uses it to summarise an adapter without importing torch.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

from .reasons import AdapterRejected, RejectReason

MAX_HEADER_BYTES = 1 << 20  # bytes; a 30-layer, 7-module LoRA needs ~60 KiB
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header declares it.

    Attributes:
        name: the tensor's key.
        dtype: safetensors dtype string (``"F32"``, ``"BF16"``, …).
        shape: dimensions.
        begin / end: byte offsets into the data region (``end - begin`` = numel × dtype size).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header.

    Attributes:
        tensors: name → :class:`TensorInfo`, in header order.
        metadata: the ``__metadata__`` strings (empty if absent).
        data_start: byte offset of the data region in the file (8 + N).
    """

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return obj


def _is_uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_header(raw: bytes, file_name: str = "adapter_model.safetensors", max_header_bytes: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Parse and check the header of a safetensors file held in memory.

    Args:
        raw: the whole file.
        file_name: used in messages.
        max_header_bytes: largest JSON header accepted, bytes.

    Returns:
        The checked header; its tensors cover the data region exactly, without overlap.

    Raises:
        AdapterRejected: HEADER_TOO_LARGE, TRUNCATED_FILE, BAD_SAFETENSORS, BAD_DTYPE,
            BAD_OFFSETS (see module docstring).
    """
    if len(raw) < 8:
        raise AdapterRejected(RejectReason.TRUNCATED_FILE, f"{file_name} is {len(raw)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > max_header_bytes:
        raise AdapterRejected(
            RejectReason.HEADER_TOO_LARGE, f"{file_name} declares a {n}-byte header; this node reads at most {max_header_bytes}"
        )
    if 8 + n > len(raw):
        raise AdapterRejected(
            RejectReason.TRUNCATED_FILE, f"{file_name} declares a {n}-byte header but holds only {len(raw) - 8} bytes after the length"
        )
    text = raw[8 : 8 + n]
    try:
        if not text.startswith(b"{"):
            raise ValueError("the header must start with '{'")
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; nesting can be too deep
        raise AdapterRejected(RejectReason.BAD_SAFETENSORS, f"{file_name} header is not a valid JSON object: {e}") from None
    if not isinstance(header, dict):
        raise AdapterRejected(RejectReason.BAD_SAFETENSORS, f"{file_name} header must be a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterRejected(RejectReason.BAD_SAFETENSORS, f"{file_name} __metadata__ must map strings to strings")

    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise AdapterRejected(
                RejectReason.BAD_SAFETENSORS, f"{file_name}: tensor {name!r} must have exactly dtype, shape and data_offsets"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise AdapterRejected(RejectReason.BAD_DTYPE, f"{file_name}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise AdapterRejected(
                RejectReason.BAD_SAFETENSORS, f"{file_name}: tensor {name!r} shape must be a list of non-negative integers"
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)) or offsets[0] > offsets[1]:
            raise AdapterRejected(
                RejectReason.BAD_OFFSETS, f"{file_name}: tensor {name!r} data_offsets {offsets!r} must be [begin, end] with 0 <= begin <= end"
            )
        begin, end = offsets
        want = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != want:
            raise AdapterRejected(
                RejectReason.BAD_OFFSETS,
                f"{file_name}: tensor {name!r} is {dtype}{shape} = {want} bytes but its data_offsets span {end - begin}",
            )
        tensors[name] = TensorInfo(name, dtype, tuple(shape), begin, end)

    data_len = len(raw) - 8 - n
    cursor, prev = 0, None
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin < cursor:
            raise AdapterRejected(RejectReason.BAD_OFFSETS, f"{file_name}: tensors {prev!r} and {t.name!r} overlap at byte {t.begin}")
        if t.begin > cursor:
            raise AdapterRejected(RejectReason.BAD_OFFSETS, f"{file_name}: {t.begin - cursor} unclaimed bytes before tensor {t.name!r}")
        cursor, prev = t.end, t.name
    if cursor > data_len:
        raise AdapterRejected(
            RejectReason.TRUNCATED_FILE,
            f"{file_name} is truncated: its tensors need {cursor} data bytes, the file holds {data_len}",
        )
    if cursor < data_len:
        raise AdapterRejected(RejectReason.BAD_OFFSETS, f"{file_name} has {data_len - cursor} bytes after the last tensor")
    return SafetensorsHeader(tensors, dict(metadata), 8 + n)
