"""The CPU multi-LoRA kernel (``csrc/lora_cpu.cpp``), compiled once per machine and loaded as a torch op.

    bgmv(out, x, A, Bt, rows, slots, scaling=None):   for every listed row t with adapter slot s
        out[t] += (x[t] @ A[s]ᵀ) @ Bt[s] · scaling[s]    (BGMV, Punica arXiv 2310.18547; one pass, no gather copies)

PyTorch has no op for "a different small matrix per row": gathering every row's A and B and
running ``bmm`` copies T·r·(in+out) weights per call and runs tiny, memory-bound batched products
(≈ 5× the base projection's time at decode on 2 cores); this loop reads each row's weights in place,
sums in float32 and vectorizes (``-O3 -march=native``). Intermediate values are rounded to the
weights' dtype: bf16 weights round as vLLM's torch ops do, float32 weights under bf16 activations keep
the delta in float32 and round once at the add, as PEFT does (``csrc/lora_cpu.cpp`` spells it out). Built with torch's C++ extension loader
(ninja + the system compiler; cached under ``TORCH_EXTENSIONS_DIR``, rebuilt when the source
changes; a file lock keeps concurrent builds apart).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "lora_cpu.cpp"


@functools.cache
def bgmv():
    """``torch.ops.openlora_cpu.bgmv``, building the extension on first use (tens of seconds, once).

    Shapes: out (T, width) updated in place, x (T, in) in out's dtype (float32, bfloat16 or float16);
    A (L, R, in) and Bt (L, R, width) in that dtype or float32, last dimension contiguous (rank slices of
    wider stacks are fine); rows and slots int64 (n,) — the rows to update and each one's slot; scaling
    float32 (L,) or None (1).

    Raises:
        RuntimeError: the extension cannot be built here (no C++ compiler or ninja), naming why.
    """
    from torch.utils.cpp_extension import load

    try:
        load(
            name="openlora_lora_cpu",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-march=native", "-fopenmp-simd"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:
        raise RuntimeError(
            f"building the CPU LoRA kernel {SOURCE.name} failed ({type(e).__name__}: {e}); it needs g++ and ninja "
            "(scripts/setup installs both)"
        ) from e
    return torch.ops.openlora_cpu.bgmv
