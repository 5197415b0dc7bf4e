"""Shared fixtures: the real base model (converted once per machine) and the demo adapters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEMO_ADAPTERS = FIXTURES / "adapters"
DOMAINS = ("medical", "legal", "finance")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One conversion of the GGUF serves every test and every node subprocess of the run.
os.environ.setdefault("OPENLORA_MODEL_CACHE", str(ROOT / ".cache" / "models"))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Folder holding the converted base model (shared by all tests and node subprocesses)."""
    return Path(os.environ["OPENLORA_MODEL_CACHE"])


@pytest.fixture(scope="session")
def base_source(model_cache):
    """SmolLM2-135M-Instruct resolved to its safetensors folder, with its fingerprint."""
    import torch

    from openlora.engine.base import resolve_base_model

    torch.set_num_threads(os.cpu_count() or 2)
    return resolve_base_model(None, model_cache)


@pytest.fixture(scope="session")
def demo_adapters(base_source) -> dict:
    """Domain → the demo adapter, parsed and checked against the base (rank ≤ 16)."""
    from openlora.adapters.peft_format import load_adapter
    from openlora.engine.lora import adaptable_shapes

    shapes = adaptable_shapes(base_source.path)
    return {
        d: load_adapter((DEMO_ADAPTERS / d / "adapter_config.json").read_bytes(),
                        (DEMO_ADAPTERS / d / "adapter_model.safetensors").read_bytes(), shapes, 16)
        for d in DOMAINS
    }  # fmt: skip
