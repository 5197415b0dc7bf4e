"""Typed reasons an adapter is refused, shared by the publish path and the verification pipeline.

A rejection is remembered per CID with its reason, shown by ``GetAdapter``, and mapped to a
gRPC status (``INVALID_ARGUMENT`` when the caller handed us the bad bytes, ``FAILED_PRECONDITION``
when a known CID was refused earlier).
"""

from __future__ import annotations

from enum import Enum


class RejectReason(str, Enum):
    """Why an adapter was refused; the value is stable and appears in the API and the catalog."""

    MISSING_FILE = "missing_file"
    UNEXPECTED_FILE = "unexpected_file"
    PICKLE_REFUSED = "pickle_refused"
    BAD_CONFIG = "bad_config"
    UNSUPPORTED_PEFT = "unsupported_peft"
    BAD_SAFETENSORS = "bad_safetensors"
    UNKNOWN_MODULE = "unknown_module"
    MISSING_WEIGHTS = "missing_weights"
    SHAPE_MISMATCH = "shape_mismatch"
    BAD_DTYPE = "bad_dtype"
    NON_FINITE = "non_finite"
    RANK_LIMIT = "rank_limit"
    SIZE_LIMIT = "size_limit"
    BAD_MANIFEST = "bad_manifest"
    BASE_MISMATCH = "base_mismatch"
    HASH_MISMATCH = "hash_mismatch"


class AdapterRejected(ValueError):
    """An adapter failed a check; ``reason`` is machine-readable, the message tells what to fix."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message
