"""PEFT features beyond plain LoRA at the format level: what ``load_adapter`` parses into the adapter
(``LoraAdapter.features``), what it refuses with which reason, what routing reads from a config alone
(``config_features``), and an engine's refusal naming the feature and the engine (``EngineInfo.unserved``).

The base here is a made-up one of a few tiny modules: the checks look at names and shapes only. The numerics of
each feature against PEFT on the real base are pinned in ``test_lora_numerics.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save

from openlora.adapters.peft_format import FEATURES, config_features, load_adapter
from openlora.adapters.reasons import AdapterRejected, RejectReason
from openlora.engine.interface import EngineInfo, EngineUnsupported

VOCAB, HIDDEN, R = 32, 8, 2
BASE = {"model.layers.0.self_attn.q_proj": (HIDDEN, HIDDEN), "model.embed_tokens": (VOCAB, HIDDEN), "lm_head": (HIDDEN, VOCAB)}
Q, EMB, HEAD = "base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.embed_tokens", "base_model.model.lm_head"


def _config(**fields) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": R, "lora_alpha": 4, "target_modules": ["q_proj"], **fields}).encode()


def _weights(extra: dict[str, torch.Tensor] | None = None) -> bytes:
    """q_proj's LoRA A and B, plus ``extra`` (safetensors key → tensor)."""
    t = {f"{Q}.lora_A.weight": torch.randn(R, HIDDEN), f"{Q}.lora_B.weight": torch.randn(HIDDEN, R)}
    return st_save({**t, **(extra or {})})


def _load(config: bytes, weights: bytes):
    return load_adapter(config, weights, BASE, max_rank=8)


def _rejected(config: bytes, weights: bytes) -> AdapterRejected:
    with pytest.raises(AdapterRejected) as e:
        _load(config, weights)
    return e.value


CASES = {
    "dora": (dict(use_dora=True), {f"{Q}.lora_magnitude_vector": torch.rand(HIDDEN) + 0.5}),
    "lora_bias": (dict(lora_bias=True), {f"{Q}.lora_B.bias": torch.randn(HIDDEN)}),
    "embed_tokens": (
        dict(target_modules=["q_proj", "embed_tokens"]),
        {f"{EMB}.lora_embedding_A": torch.randn(R, VOCAB), f"{EMB}.lora_embedding_B": torch.randn(HIDDEN, R)},
    ),
    "lm_head": (
        dict(target_modules=["q_proj", "lm_head"]),
        {f"{HEAD}.lora_A.weight": torch.randn(R, HIDDEN), f"{HEAD}.lora_B.weight": torch.randn(VOCAB, R),
         f"{HEAD}.base_layer.weight": torch.randn(VOCAB, HIDDEN)},
    ),  # fmt: skip
    "modules_to_save": (dict(modules_to_save=["embed_tokens"]), {f"{EMB}.weight": torch.randn(VOCAB, HIDDEN)}),
}


@pytest.mark.parametrize("feature", list(CASES))
def test_each_feature_is_parsed_named_and_refused_by_an_engine_without_it(feature):
    fields, tensors = CASES[feature]
    adapter = _load(_config(**fields), _weights(tensors))
    assert adapter.features == (feature,) == config_features(json.loads(_config(**fields)))
    plain = EngineInfo("vllm", "float32", "cpu", 4, 64, 4)
    refusal = plain.unserved(adapter)
    assert isinstance(refusal, EngineUnsupported) and feature in str(refusal) and "vllm engine" in str(refusal)
    assert EngineInfo("torch", "float32", "cpu", 4, 64, 4, FEATURES).unserved(adapter) is None


def test_plain_lora_and_bias_all_on_a_base_without_biases_need_no_feature():
    assert _load(_config(), _weights()).features == ()
    assert _load(_config(bias="all"), _weights()).features == ()


@pytest.mark.parametrize(
    "fields, extra, reason, words",
    [
        (dict(modules_to_save=["embed_tokens"]), {f"{EMB}.weight": torch.randn(VOCAB + 3, HIDDEN)}, RejectReason.UNSUPPORTED_PEFT, "resized vocabulary"),
        (dict(modules_to_save=["score"]), {}, RejectReason.UNSUPPORTED_PEFT, "only embed_tokens and lm_head"),
        (dict(bias="all"), {f"{Q}.bias": torch.randn(HIDDEN)}, RejectReason.UNSUPPORTED_PEFT, "base-layer biases"),
        (dict(use_dora=True), {}, RejectReason.MISSING_WEIGHTS, "lora_magnitude_vector"),
        (dict(lora_bias=True, target_modules=["embed_tokens"]), {}, RejectReason.BAD_CONFIG, "no LoRA bias for embeddings"),
        (dict(ensure_weight_tying=True), {}, RejectReason.UNSUPPORTED_PEFT, "ensure_weight_tying"),
    ],
    ids=["resized_vocab", "other_module_to_save", "trained_base_bias", "dora_without_magnitudes", "embedding_lora_bias", "weight_tying"],
)
def test_what_is_still_refused_says_why(fields, extra, reason, words):
    e = _rejected(_config(**fields), _weights(extra))
    assert e.reason is reason and words in e.detail, e.detail
