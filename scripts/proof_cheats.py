"""The cheats a proof of serving must catch, built on the node's own adapter and model types.

A cheating node claims adapter A on base B in its signed record, and computes something cheaper:

    base           the bare base (the adapter dropped)                    ─ request.adapter = None
    other          another adapter of the same shape                      ─ serve adapter A' under A's CID
    half           A at half its scale                                    ─ scaling × 0.5
    drop_module    A without one target module kind (v_proj, all layers)  ─ 1/4 of a q/k/v/o LoRA's work saved
    rank_half      A truncated to half its rank (best rank-r/2 by SVD)    ─ half the LoRA work saved
    int8_base      B's decoder linears rounded to 8 bits (symmetric, per output channel), A on top
                                                                          ─ a quarter of bf16's weight memory

and two that change less than bf16 rounding does (reported, not in the acceptance matrix):

    drop_one       A without a single (layer, module) pair
    rank_trained   A truncated to half its rank when its spectrum is steep (trained adapters keep ~98 %
                   of the update's energy in the top half)

Used by ``scripts/bench_proof.py`` and ``tests/test_proof_numerics.py``.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import torch

from openlora.adapters.peft_format import LoraAdapter, ModuleLoRA
from openlora.engine.base import BaseModelSource

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_DECODER_LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight")


def half_scale(adapter: LoraAdapter) -> LoraAdapter:
    """``adapter`` with every module's scaling halved."""
    return LoraAdapter(adapter.config, {k: ModuleLoRA(m.a, m.b, m.scaling * 0.5) for k, m in adapter.modules.items()})


def drop_module(adapter: LoraAdapter, suffix: str = "v_proj") -> LoraAdapter:
    """``adapter`` without every module whose name ends in ``suffix``."""
    return LoraAdapter(adapter.config, {k: m for k, m in adapter.modules.items() if not k.endswith(suffix)})


def drop_one(adapter: LoraAdapter, name: str = "model.layers.15.self_attn.v_proj") -> LoraAdapter:
    """``adapter`` without the one module ``name``."""
    return LoraAdapter(adapter.config, {k: m for k, m in adapter.modules.items() if k != name})


def truncate_rank(adapter: LoraAdapter, factor: float = 0.5) -> LoraAdapter:
    """Each module's update ``B·A`` replaced by its best approximation of rank ``ceil(r × factor)`` (Eckart–Young:
    the SVD of ``B·A``, computed from QR factors of B and Aᵀ so only an r × r matrix is decomposed)."""
    out = {}
    for k, m in adapter.modules.items():
        r = max(1, math.ceil(m.a.shape[0] * factor))
        qb, rb = torch.linalg.qr(m.b.float())  # B = Qb Rb
        qa, ra = torch.linalg.qr(m.a.float().t())  # Aᵀ = Qa Ra, so B·A = Qb (Rb Raᵀ) Qaᵀ
        u, s, vh = torch.linalg.svd(rb @ ra.t())
        out[k] = ModuleLoRA((s[:r, None] * (vh[:r] @ qa.t())).contiguous(), (qb @ u[:, :r]).contiguous(), m.scaling)
    return LoraAdapter(adapter.config, out)


def int8_base(source: BaseModelSource, folder: Path) -> BaseModelSource:
    """A copy of ``source`` in ``folder`` whose decoder linear weights are rounded to 8 bits (symmetric, one scale
    per output channel: ``w ≈ round(w / s) · s``, ``s = max|w_row| / 127``), stored back in their dtype.

    The weights are rounded in the file, not in a loaded model: the engine may replace its linears (prepacked
    bf16 on CPUs with native kernels) as it loads. The copy keeps ``source.fingerprint``: the cheat claims the
    real base.

    Raises:
        ValueError: ``source`` has no decoder linear weights to round.
    """
    from safetensors.torch import load_file, save_file

    shutil.copytree(source.path, folder)
    rounded = 0
    for file in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(file))
        for name, w in tensors.items():
            if _DECODER_LINEAR.fullmatch(name):
                x = w.float()
                s = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
                tensors[name] = (torch.round(x / s).clamp(-127, 127) * s).to(w.dtype)
                rounded += 1
        save_file(tensors, str(file), metadata={"format": "pt"})
    if not rounded:
        raise ValueError(f"no decoder linear weights in {source.path}")
    return BaseModelSource(f"{source.name} (int8-rounded)", folder, source.fingerprint)


def random_adapter(base_modules: dict[str, tuple[int, int]], seed: int, r: int = 8, b_std: float = 0.1) -> LoraAdapter:
    """A rank-``r`` q/k/v/o adapter whose effect on the output is of the order of a trained adapter's: A as PEFT
    initialises it (uniform ±1/sqrt(in)), B ~ N(0, ``b_std``), alpha = 2r.

    Random directions move the output far less than trained ones at the same weight norm. Measured on SmolLM2-135M
    (the float32 log-probabilities of the top-4 entries of 32 completion tokens, adapter vs bare base, rms): the
    trained demo adapters (B spread 0.012–0.018) move them 1.9–2.6 nats; random adapters at that B spread
    (``b_std`` 0.015) only 0.07–0.18 nats — about the 0.05–0.09 nats bf16 rounding moves them, so no verifier
    could tell such an adapter from the bare base, and no publisher would publish one. At ``b_std`` 0.1 they move
    them 0.94–0.98 nats: under every trained adapter, 15× bf16 rounding."""
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for name, (fan_in, fan_out) in sorted(base_modules.items()):
        if name.rsplit(".", 1)[-1] in ATTN:
            a = (torch.rand(r, fan_in, generator=g) * 2 - 1) / math.sqrt(fan_in)
            mods[name] = ModuleLoRA(a, torch.randn(fan_out, r, generator=g) * b_std, 2.0)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(ATTN)}
    return LoraAdapter(config, mods)
