"""Random-weight base models of a known model's shape, built locally from a config (no hub).

For throughput on shapes bigger than the 135M demo base: a 135M model is the worst case for the
LoRA share of a step, an 8B one is what GPU operators run. The tokenizer (and so the vocabulary)
is SmolLM2's, from the demo base; every other dimension is the named model's. Weights are
N(0, 0.02) (norms 1), seeded: numbers out of it are meaningless, only their speed is not.

    .venv/bin/python scripts/random_base.py smollm2-1.7b      # prints the folder (cached under .cache/models)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Published configs of these models (llama architecture), less the vocabulary (SmolLM2's tokenizer).
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, rope_theta=130000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-5),
}  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def build_random_base(name: str, cache_dir: Path, dtype: str = "bfloat16") -> Path:
    """The folder of a random-weight base of ``name``'s shape (built once, then reused).

    Raises:
        KeyError: ``name`` is not in :data:`SHAPES`.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from openlora.engine.base import resolve_base_model

    shape = SHAPES[name]
    folder = cache_dir / f"random-{name}-{dtype}"
    if (folder / "model.safetensors").is_file():
        return folder
    demo = resolve_base_model(None, cache_dir).path
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vocab = json.loads((demo / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, **shape)
    config.torch_dtype = dtype
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in AutoModelForCausalLM.from_config(config).named_parameters()}
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for n, s in shapes.items():
        t = torch.ones(s) if n.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02
        tensors[n] = t.to(getattr(torch, dtype)).contiguous()
    if shape["tie_word_embeddings"]:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(tmp))
    for f in TOKENIZER_FILES:
        if (demo / f).is_file():
            shutil.copy(demo / f, tmp / f)
    os.replace(tmp, folder)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--model-cache", type=Path, default=Path(os.environ.get("OPENLORA_MODEL_CACHE", ROOT / ".cache" / "models")))
    args = ap.parse_args(argv)
    print(build_random_base(args.name, args.model_cache, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
