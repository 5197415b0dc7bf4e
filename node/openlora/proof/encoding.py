"""The commitment's bytes: per generated token, k (token id, log-probability) pairs, bit-packed.

    header  8 bytes   version (1) ‖ k (1) ‖ id_bits (1) ‖ value_bits (1) ‖ tokens (uint32 little-endian)
    body    per token, per entry in the node's order:  id (id_bits) ‖ q (value_bits)
            q = min(round(−logprob × VALUE_SCALE), 2^value_bits − 1)     (logprob ≤ 0, in nats)
            bits are written most significant first, the body padded with zeros to a whole byte

With k = 4, id_bits = 16 (a vocabulary of up to 65536 tokens; SmolLM2 has 49152) and value_bits = 12
(steps of 1/64 nat, floor −63.98 nats) a token costs 112 bits: 448 bytes per 32 tokens (+ 8 bytes of
header per call), under the 512-byte budget. TOPLOC (Ong et al., arXiv 2501.16007) saves the indices by
interpolating a polynomial through the (index, value) pairs; we keep the ids explicit instead, so the
verifier reads the reference at exactly the ids the node saw, and no near-tie at the k-th rank can turn
an entry into noise. The value step (0.016 nat) is far below the honest engine noise the verifier
tolerates (``proof.tolerance``), so quantization costs no detection power.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

VERSION = 1
VALUE_BITS = 12
VALUE_SCALE = 64  # quantization steps per nat
HEADER = struct.Struct("<BBBBI")
MAX_TOKENS = 1 << 20


class ProofFormatError(ValueError):
    """Commitment bytes that do not decode; the message says what is wrong."""


@dataclass(frozen=True)
class Commitment:
    """The decoded commitment of one completion.

    Attributes:
        ids: per generated token, ``k`` token ids (the node's top-k, most likely first).
        logprobs: their log-probabilities as committed (quantized to 1/``VALUE_SCALE`` nat), same shape.
    """

    ids: list[list[int]]
    logprobs: list[list[float]]

    @property
    def tokens(self) -> int:
        """Generated tokens the commitment covers."""
        return len(self.ids)


def id_bits(vocab_size: int) -> int:
    """Bits per token id for a vocabulary of ``vocab_size`` ids (≥ 1)."""
    return max(1, math.ceil(math.log2(max(vocab_size, 2))))


def quantize(logprob: float) -> int:
    """A log-probability (nats, ≤ 0; NaN and −inf clamp to the floor) as a ``VALUE_BITS``-bit step count."""
    top = (1 << VALUE_BITS) - 1
    if not logprob > -top / VALUE_SCALE:  # also NaN and -inf
        return top
    return min(top, max(0, round(-logprob * VALUE_SCALE)))


def encode(ids: list[list[int]], logprobs: list[list[float]], vocab_size: int) -> bytes:
    """Pack per-token top-k ids and log-probabilities (the shapes of ``proof.topk.TopLogprobs``).

    Args:
        ids: ``T`` lists of ``k`` token ids, each in ``[0, vocab_size)``.
        logprobs: ``T`` lists of ``k`` log-probabilities (nats).
        vocab_size: the base model's vocabulary size (sets ``id_bits``).

    Raises:
        ValueError: ragged lists, ``k`` outside 1..255, an id outside the vocabulary, more than ``MAX_TOKENS``.
    """
    k = len(ids[0]) if ids else 0
    bits = id_bits(vocab_size)
    if len(ids) != len(logprobs) or any(len(row) != k for row in ids) or any(len(row) != k for row in logprobs):
        raise ValueError("ids and logprobs must both be T lists of k entries")
    if ids and not 1 <= k <= 255:
        raise ValueError(f"k must be 1..255, got {k}")
    if len(ids) > MAX_TOKENS:
        raise ValueError(f"at most {MAX_TOKENS} tokens per commitment, got {len(ids)}")
    out = bytearray()
    acc = width = 0  # bits not yet flushed (fewer than 8 after each entry)
    for row_ids, row_lp in zip(ids, logprobs):
        for token, lp in zip(row_ids, row_lp):
            if not 0 <= token < vocab_size:
                raise ValueError(f"token id {token} is outside the vocabulary of {vocab_size}")
            acc = (acc << (bits + VALUE_BITS)) | (token << VALUE_BITS) | quantize(lp)
            width += bits + VALUE_BITS
            while width >= 8:
                width -= 8
                out.append((acc >> width) & 0xFF)
            acc &= (1 << width) - 1
    if width:
        out.append((acc << (8 - width)) & 0xFF)
    body = bytes(out)
    return HEADER.pack(VERSION, k, bits, VALUE_BITS, len(ids)) + body


def decode(data: bytes, vocab_size: int) -> Commitment:
    """Unpack commitment bytes made by :func:`encode`.

    Raises:
        ProofFormatError: unknown version, field widths this vocabulary does not use, a body of the wrong
            length, or an id outside the vocabulary.
    """
    if len(data) < HEADER.size:
        raise ProofFormatError(f"commitment is {len(data)} bytes, shorter than its {HEADER.size}-byte header")
    version, k, bits, value_bits, tokens = HEADER.unpack_from(data)
    if version != VERSION:
        raise ProofFormatError(f"commitment version {version}; this node reads version {VERSION}")
    if bits != id_bits(vocab_size) or value_bits != VALUE_BITS or (tokens and k == 0):
        raise ProofFormatError(
            f"commitment fields are k={k}, {bits}-bit ids, {value_bits}-bit values; this base needs "
            f"{id_bits(vocab_size)}-bit ids and {VALUE_BITS}-bit values"
        )
    if tokens > MAX_TOKENS:
        raise ProofFormatError(f"commitment claims {tokens} tokens, above {MAX_TOKENS}")
    entry = bits + VALUE_BITS
    width = tokens * k * entry
    body = data[HEADER.size:]
    if len(body) != (width + 7) // 8:
        raise ProofFormatError(f"commitment body is {len(body)} bytes; {tokens} tokens × {k} entries need {(width + 7) // 8}")
    id_mask, value_mask = (1 << bits) - 1, (1 << VALUE_BITS) - 1
    flat_ids: list[int] = []
    flat_lp: list[float] = []
    acc = held = 0
    it = iter(body)
    for _ in range(tokens * k):
        while held < entry:
            acc = (acc << 8) | next(it)
            held += 8
        held -= entry
        field = acc >> held
        acc &= (1 << held) - 1
        flat_ids.append((field >> VALUE_BITS) & id_mask)
        flat_lp.append(-(field & value_mask) / VALUE_SCALE)
    if any(t >= vocab_size for t in flat_ids):
        raise ProofFormatError(f"commitment holds a token id outside the vocabulary of {vocab_size}")
    rows_ids = [flat_ids[i:i + k] for i in range(0, len(flat_ids), k or 1)]
    rows_lp = [flat_lp[i:i + k] for i in range(0, len(flat_lp), k or 1)]
    return Commitment(rows_ids, rows_lp)
