"""The LoRA shapes the numerics tests pin against PEFT, shared by both engines' tests
(``test_lora_numerics.py`` for the torch engine, ``test_vllm_numerics.py`` for vLLM)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL = ATTN + ["gate_proj", "up_proj", "down_proj"]

CASES = {
    "r1": dict(r=1, lora_alpha=1, target_modules=ATTN),
    "r8": dict(r=8, lora_alpha=16, target_modules=ATTN),
    "r16-alpha8": dict(r=16, lora_alpha=8, target_modules=ATTN),
    "r64": dict(r=64, lora_alpha=128, target_modules=ATTN),
    "rslora-all-linear": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=ALL),
    "all-linear-alpha32": dict(r=8, lora_alpha=32, target_modules="all-linear"),
    "patterns": dict(
        r=8, lora_alpha=16, target_modules=ALL, rank_pattern={"q_proj": 4, "down_proj": 16}, alpha_pattern={"v_proj": 4}
    ),
    "layers-to-transform": dict(r=8, lora_alpha=16, target_modules=ATTN, layers_to_transform=[0, 7, 29]),
}


def save_case_adapters(base_fp32: torch.nn.Module, make_folder, b_scale: float = 1.0) -> dict[str, Path]:
    """Every case saved as a real PEFT adapter folder with random (non-identity) weights, seeded.

    Args:
        base_fp32: the base model in float32 (copied per case, not changed).
        make_folder: ``name -> Path`` of an empty folder (``tmp_path_factory.mktemp``).
        b_scale: multiplies the B weights' spread (a larger delta changes greedy text sooner).
    """
    from peft import LoraConfig, get_peft_model

    out = {}
    for i, (name, cfg) in enumerate(CASES.items()):
        torch.manual_seed(1000 + i)
        peft_model = get_peft_model(copy.deepcopy(base_fp32), LoraConfig(init_lora_weights=False, **cfg))
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_" in pname:
                    p.normal_(0.0, 0.05 if "lora_A" in pname else 0.03 * b_scale)
        folder = make_folder(name)
        peft_model.save_pretrained(str(folder))
        out[name] = folder
    return out
