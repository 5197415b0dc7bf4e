"""Typed reasons an adapter is refused, shared by the publish path, the load path and the p2p fetcher.

A rejection is remembered per adapter CID with its reason, shown by ``GetAdapter``, and mapped to
a gRPC status (``INVALID_ARGUMENT`` when the caller handed us the bad bytes, ``FAILED_PRECONDITION``
when a known CID was refused earlier or at load).

Two kinds of reason, because an adapter CID names fixed bytes:

    verdict      a property of the bytes the CID names (bad signature, NaN weights, DoRA, …):
                 the same CID can never pass, so it is refused at once ever after (sticky).
    retryable    about the copy this node held or the settings it runs with (a corrupt or
                 absent block, another base model, a rank or size limit): the same CID may
                 pass later — publishing or fetching it again re-runs the verification.
"""

from __future__ import annotations

from enum import Enum


class RejectReason(str, Enum):
    """Why an adapter was refused; the value is stable and appears in the API and the catalog."""

    # the manifest: schema, signature, base
    BAD_MANIFEST = "bad_manifest"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SIGNER = "wrong_signer"
    BASE_MISMATCH = "base_mismatch"
    # the file list and the bytes of each file
    MISSING_FILE = "missing_file"
    UNEXPECTED_FILE = "unexpected_file"
    PICKLE_REFUSED = "pickle_refused"
    ABSENT_FILE = "absent_file"
    HASH_MISMATCH = "hash_mismatch"
    MANIFEST_MISMATCH = "manifest_mismatch"
    SIZE_LIMIT = "size_limit"
    # adapter_config.json
    BAD_CONFIG = "bad_config"
    UNSUPPORTED_PEFT = "unsupported_peft"
    RANK_LIMIT = "rank_limit"
    SCALING_LIMIT = "scaling_limit"
    # adapter_model.safetensors: the container
    HEADER_TOO_LARGE = "header_too_large"
    BAD_SAFETENSORS = "bad_safetensors"
    BAD_OFFSETS = "bad_offsets"
    TRUNCATED_FILE = "truncated_file"
    # adapter_model.safetensors: the tensors against the base
    UNKNOWN_MODULE = "unknown_module"
    MISSING_WEIGHTS = "missing_weights"
    SHAPE_MISMATCH = "shape_mismatch"
    BAD_DTYPE = "bad_dtype"
    NON_FINITE = "non_finite"

    @property
    def retryable(self) -> bool:
        """True when the same CID may pass later (see module docstring); False for a verdict."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        RejectReason.ABSENT_FILE,
        RejectReason.HASH_MISMATCH,
        RejectReason.BASE_MISMATCH,
        RejectReason.RANK_LIMIT,
        RejectReason.SIZE_LIMIT,
    }
)


class AdapterRejected(ValueError):
    """An adapter failed a check; ``reason`` is machine-readable, ``detail`` tells what to fix.

    Attributes:
        reason: the :class:`RejectReason`.
        detail: human-readable explanation (no reason prefix).
    """

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message
