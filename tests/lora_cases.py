"""The LoRA shapes the numerics tests pin against PEFT, shared by both engines' tests
(``test_lora_numerics.py`` for the torch engine, ``test_vllm_numerics.py`` for vLLM), and the PEFT features
beyond plain LoRA (:data:`FEATURE_CASES`: the torch engine serves them, the vLLM engine refuses them)."""

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
# One case per PEFT feature beyond plain LoRA on linear layers (SmolLM2 ties lm_head to embed_tokens; its
# linears have no bias, so bias="all" trains nothing more than plain LoRA on this base). DoRA cases adapt few
# modules: PEFT recomputes every DoRA norm on every forward, which makes its reference slow.
FEATURE_CASES = {
    "dora": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[0, 9, 19, 29], use_dora=True),
    "dora-embed": dict(r=8, lora_alpha=16, target_modules=["embed_tokens"], use_dora=True),
    "lora-bias": dict(r=8, lora_alpha=16, target_modules=ATTN, lora_bias=True),
    "bias-all": dict(r=8, lora_alpha=16, target_modules=ATTN, bias="all"),
    "embed": dict(r=8, lora_alpha=16, target_modules=["embed_tokens", "q_proj"]),
    "lm-head": dict(r=8, lora_alpha=16, target_modules=["lm_head"]),
    "save-embed": dict(r=8, lora_alpha=16, target_modules=["lm_head"], modules_to_save=["embed_tokens"]),
    "save-lm-head": dict(r=8, lora_alpha=16, target_modules=["embed_tokens"], modules_to_save=["lm_head"]),
}


def save_case_adapters(
    base_fp32: torch.nn.Module, make_folder, b_scale: float = 1.0, cases: dict = CASES, save_embedding_layers="auto"
) -> dict[str, Path]:
    """Every case saved as a real PEFT adapter folder with random (non-identity) weights, seeded.

    Args:
        base_fp32: the base model in float32 (copied per case, not changed).
        make_folder: ``name -> Path`` of an empty folder (``tmp_path_factory.mktemp``).
        b_scale: multiplies the B weights' spread (a larger delta changes greedy text sooner).
        cases: name → ``LoraConfig`` fields (:data:`CASES` or :data:`FEATURE_CASES`). DoRA magnitudes are
            scaled by ``1 ± 0.2`` (at initialisation they cancel the norm exactly: DoRA would equal LoRA) and
            ``modules_to_save`` copies moved by noise, so every feature changes the output.
        save_embedding_layers: PEFT's option: ``"auto"`` saves the base's embedding / head weight beside
            LoRA on them (``base_layer.weight``, 113 MB here); ``False`` leaves it out.
    """
    from peft import LoraConfig, get_peft_model

    out = {}
    for i, (name, cfg) in enumerate(cases.items()):
        torch.manual_seed(1000 + i)
        peft_model = get_peft_model(copy.deepcopy(base_fp32), LoraConfig(init_lora_weights=False, **cfg))
        with torch.no_grad():
            for pname, p in peft_model.named_parameters():
                if "lora_magnitude_vector" in pname:
                    p.mul_(1.0 + 0.2 * torch.randn_like(p))
                elif "modules_to_save" in pname:
                    p.add_(0.05 * torch.randn_like(p))
                elif "lora_" in pname:
                    p.normal_(0.0, 0.05 if "lora_A" in pname or "embedding_A" in pname else 0.03 * b_scale)
        folder = make_folder(name)
        peft_model.save_pretrained(str(folder), save_embedding_layers=save_embedding_layers)
        out[name] = folder
    return out
