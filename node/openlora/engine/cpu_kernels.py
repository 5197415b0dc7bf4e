"""The engines' CPU kernels (``csrc/``), compiled once per machine and loaded as torch ops.

    bgmv(out, x, A, Bt, rows, slots, scaling=None, slices=None)      csrc/lora_cpu.cpp
        for every listed row t with adapter slot s:
        out[t] += (x[t] @ A[s]ᵀ) @ Bt[s] · scaling[s]    (BGMV, Punica arXiv 2310.18547; one pass, no gather copies)
    decode_attention(out, q, K, V, mask, scale)                      csrc/attention_cpu.cpp
        out[b, h] = softmax(scale · q[b, h] · K[b, g]ᵀ, masked) · V[b, g]    (one query per row, GQA)

PyTorch has no op for "a different small matrix per row": gathering every row's A and B and
running ``bmm`` copies T·r·(in+out) weights per call and runs tiny, memory-bound batched products
(≈ 5× the base projection's time at decode on 2 cores); ``bgmv`` reads each row's weights in place,
sums in float32 and vectorizes (``-O3 -march=native``). Intermediate values are rounded to the
weights' dtype: bf16 weights round as vLLM's torch ops do, float32 weights under bf16 activations keep
the delta in float32 and round once at the add, as PEFT does (``csrc/lora_cpu.cpp`` spells it out).

Nor has it a CPU attention for one query per row: its flash kernel tiles long query blocks (~0.7 ms
per SmolLM2 layer at 16 rows), and two ``matmul``s over the cache's strided views cost ~0.3 ms, most of
it reading a float32 copy of the cache; ``decode_attention`` reads the cache once in its stored dtype
for all query heads of a key/value head, in float32 arithmetic, rounding the output once.

Built with torch's C++ extension loader (ninja + the system compiler; cached under
``TORCH_EXTENSIONS_DIR``, rebuilt when a source changes; a file lock keeps concurrent builds apart).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name("csrc") / name for name in ("lora_cpu.cpp", "attention_cpu.cpp"))


@functools.cache
def _ops():
    """``torch.ops.openlora_cpu``, building the extension on first use (tens of seconds, once).

    Raises:
        RuntimeError: the extension cannot be built here (no C++ compiler or ninja), naming why.
    """
    from torch.utils.cpp_extension import load

    try:
        load(
            name="openlora_cpu_kernels",
            sources=[str(s) for s in SOURCES],
            # -fopenmp: at::parallel_for is OpenMP in torch's CPU builds (inline in its headers), and
            # without it runs on one thread; the extension shares torch's libgomp.so.1 (same soname).
            # -fno-math-errno lets the compiler vectorize expf through glibc's libmvec.
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
            extra_ldflags=["-fopenmp", "-lmvec"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:
        raise RuntimeError(
            f"building the CPU kernels ({', '.join(s.name for s in SOURCES)}) failed ({type(e).__name__}: {e}); "
            "they need g++ and ninja (scripts/setup installs both)"
        ) from e
    return torch.ops.openlora_cpu


@functools.cache
def available() -> bool:
    """Whether the kernels build (or are built) here; where they do not, warns once naming why, and the
    engines take their plain-torch paths (slower on CPU, same results up to summation order)."""
    try:
        _ops()
    except RuntimeError as e:
        log.warning("%s: the torch engine takes its plain-torch paths for LoRA and decode attention", e)
        return False
    return True


def bgmv():
    """``torch.ops.openlora_cpu.bgmv`` (built on first use).

    Shapes: out (T, width) updated in place, x (T, in) in out's dtype (float32, bfloat16 or float16);
    A (L, n·R, in) and Bt (L, R, width) in that dtype or float32, last dimension contiguous (rank slices of
    wider stacks are fine); rows and slots int64 (n,) — the rows to update and each one's slot; scaling
    float32 (L,) or None (1); slices: the widths of n projections sharing x (their A stacked along the
    rank, their Bᵀ side by side), None for one.

    Raises:
        RuntimeError: the extension cannot be built here, naming why (and, from the op, shapes or dtypes
            that do not fit).
    """
    return _ops().bgmv


def decode_attention():
    """``torch.ops.openlora_cpu.decode_attention`` (built on first use).

    Shapes: out and q (B, H, d) in one dtype (float32, bfloat16 or float16); K, V (B, KVH, L, d) in q's
    dtype or float32 with H a multiple of KVH; mask bool (B, L) (True: attend) or None; scale a float.
    Every last dimension contiguous, other strides free.

    Raises:
        RuntimeError: the extension cannot be built here, naming why (and, from the op, shapes or dtypes
            that do not fit).
    """
    return _ops().decode_attention
