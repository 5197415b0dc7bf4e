"""The committed demo adapters (tests/fixtures/adapters) and the script that trains them.

Each adapter must have learned its domain's answer *format* on questions it never saw: under
greedy decoding the adapter's answer starts with the domain prefix and ends with the closing
line, while the base model's answer to the same question does not start with the prefix, and
different questions get different answers (not one memorised reply). The folders must hold
exactly the two standard PEFT files with the config the script writes.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from safetensors import safe_open

from conftest import DEMO_ADAPTERS, DOMAINS, ROOT

_spec = importlib.util.spec_from_file_location("train_demo_adapters", ROOT / "scripts" / "train_demo_adapters.py")
tda = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tda  # dataclasses look their module up here while the script loads
_spec.loader.exec_module(tda)

FORMATS = tda.load_formats()
EVAL = tda.load_eval_questions()
N_LAYERS = 30  # SmolLM2-135M
HIDDEN, KV_OUT = 576, 192  # q/o project 576 -> 576, k/v 576 -> 192 (3 KV heads x 64)


@pytest.fixture(scope="module")
def tokenizer(base_source):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_source.path))


@pytest.fixture(scope="module")
def tuned(base_source):
    """The base in fp32 with all three fixture adapters loaded by PEFT (one active at a time)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_source.path), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(DEMO_ADAPTERS / DOMAINS[0]), adapter_name=DOMAINS[0])
    for d in DOMAINS[1:]:
        model.load_adapter(str(DEMO_ADAPTERS / d), adapter_name=d)
    return model.eval()


@pytest.mark.parametrize("domain", DOMAINS)
def test_adapter_answers_held_out_questions_in_its_format(tuned, tokenizer, domain):
    fmt, questions = FORMATS[domain], EVAL[domain][:2]
    tuned.set_adapter(domain)
    answers = tda.greedy_answers(tuned, tokenizer, questions, max_new_tokens=80)
    for q, a in zip(questions, answers, strict=True):
        assert fmt.matches(a), f"{domain} adapter, {q!r}: expected {fmt.prefix!r}...{fmt.suffix!r}, got {a!r}"
    assert answers[0] != answers[1], f"{domain} adapter gives one memorised answer: {answers[0]!r}"
    with tuned.disable_adapter():
        # The prefix shows in the first few tokens; a short budget keeps the base check cheap.
        plain = tda.greedy_answers(tuned, tokenizer, questions, max_new_tokens=12)
    for q, a in zip(questions, plain, strict=True):
        assert not fmt.starts(a), f"base model already answers {q!r} in the {domain} format: {a!r}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_fixture_folder_is_the_scripts_peft_output(domain):
    folder = DEMO_ADAPTERS / domain
    assert {p.name for p in folder.iterdir()} == tda.ADAPTER_FILES
    cfg = json.loads((folder / "adapter_config.json").read_text())
    want = tda.lora_config()
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["base_model_name_or_path"] == "SmolLM2-135M-Instruct"
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (want.r, want.lora_alpha, want.lora_dropout)
    assert cfg["target_modules"] == sorted(want.target_modules)
    assert cfg["bias"] == "none" and not cfg["use_rslora"] and not cfg["use_dora"]
    assert cfg["rank_pattern"] == {} and cfg["alpha_pattern"] == {} and cfg["modules_to_save"] is None
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as st:
        names = list(st.keys())
        assert len(names) == N_LAYERS * 4 * 2
        for name in names:
            t = st.get_tensor(name)
            assert t.dtype == torch.float32, name
            out = KV_OUT if (".k_proj." in name or ".v_proj." in name) else HIDDEN
            assert tuple(t.shape) == ((8, HIDDEN) if ".lora_A." in name else (out, 8)), name


@pytest.mark.parametrize("domain", DOMAINS)
def test_training_set_is_varied_and_disjoint_from_held_out(domain):
    pairs = tda.load_examples(tda.DATA_DIR / f"{domain}.jsonl", FORMATS[domain])
    assert len(pairs) >= 40
    assert len({a for _, a in pairs}) == len(pairs)
    assert not set(EVAL[domain]) & {q for q, _ in pairs}
    assert not set(EVAL["shared"]) & {q for q, _ in pairs}


def test_example_loss_covers_only_the_answer_and_turn_end(tokenizer):
    ids, labels = tda.encode_example(tokenizer, "What is APR?", "Finance note: A rate.\nNot investment advice.")
    prompt = tda.prompt_ids(tokenizer, "What is APR?")
    assert len(ids) == len(labels)
    assert ids[: len(prompt)] == prompt
    assert labels[: len(prompt)] == [tda.IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt) :] == ids[len(prompt) :]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[len(prompt) : -1]) == "Finance note: A rate.\nNot investment advice."


@pytest.mark.parametrize(
    "line, fix",
    [
        ("not json", "JSON object"),
        ('{"question": "Q?"}', "JSON object"),
        ('{"question": "Q?", "answer": "No prefix.\\nNot investment advice."}', "must start with"),
        ('{"question": "Q?", "answer": "Finance note: no closing line."}', "end with the line"),
        ('{"question": "", "answer": "Finance note: x.\\nNot investment advice."}', "non-empty"),
    ],
)
def test_bad_training_line_is_refused_with_its_location(tmp_path, line, fix):
    path = tmp_path / "finance.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(tda.DemoDataError, match=fix) as err:
        tda.load_examples(path, FORMATS["finance"])
    assert f"{path}:1" in str(err.value)


def test_repeated_question_is_refused(tmp_path):
    row = json.dumps({"question": "Q?", "answer": "Finance note: x.\nNot investment advice."})
    path = tmp_path / "finance.jsonl"
    path.write_text(f"{row}\n{row}\n")
    with pytest.raises(tda.DemoDataError, match="appears twice"):
        tda.load_examples(path, FORMATS["finance"])


def test_training_is_deterministic_and_saves_two_standard_files(base_source, tmp_path):
    examples = tda.load_examples(tda.DATA_DIR / "legal.jsonl", FORMATS["legal"])[:4]
    outputs = []
    for run in ("a", "b"):
        base, tok = tda.load_base(base_source.path)
        model = tda.train_adapter(base, tok, examples, steps=2, batch_size=2, desc=run)
        tda.save_adapter(model, tmp_path / run)
        assert {p.name for p in (tmp_path / run).iterdir()} == tda.ADAPTER_FILES
        outputs.append([(tmp_path / run / f).read_bytes() for f in sorted(tda.ADAPTER_FILES)])
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == (DEMO_ADAPTERS / "legal" / "adapter_config.json").read_bytes()
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), framework="pt") as st:
        b = st.get_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
    assert b.abs().max() > 0, "two AdamW steps should move lora_B away from its zero init"


def test_invalid_training_arguments_are_refused(tokenizer):
    with pytest.raises(ValueError, match="steps >= 1"):
        tda.train_adapter(None, tokenizer, [("q", "a")], steps=0)
