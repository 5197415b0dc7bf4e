"""Composition per request: a call of 2–4 adapters with weights equals PEFT's ``add_weighted_adapter`` ("cat").

Reference: ``peft.PeftModel`` (0.21) holding the same saved adapters, each composition added with
``add_weighted_adapter(parts, weights, name, combination_type="cat")`` (the exact weighted sum of the parts'
deltas), in float32. Ours: the derived adapter (``adapters.composition.compose``) in an ordinary slot, in one batch
with a plain adapter row and a base row. Pinned: logits within FP32_TOL of PEFT's, greedy text equal through the
engine, and a refused composition (rank above the slots') fails alone while the batch around it finishes.
"""

from __future__ import annotations

import math

import pytest
import torch

from test_engine import submit
from test_lora_numerics import FP32_TOL, _fresh_base, _ours
from openlora.adapters.composition import Composition, CompositionError, compose, weight_ppm
from openlora.adapters.peft_format import load_adapter
from openlora.content.cid import RAW, cid_text, make_cid
from openlora.engine.interface import Failed, Finished
from openlora.engine.model import load_resident
from openlora.engine.scheduler import TorchEngine
from openlora.engine.slots import HostCache, SlotManager

MAX_RANK = 20
# name → (rank, target modules); the sums of the compositions below stay within MAX_RANK, "big" + "delta" does not
SHAPES = {
    "alpha": (2, ["q_proj", "v_proj"]),
    "beta": (4, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "gamma": (4, ["v_proj", "down_proj"]),  # a module only some parts target
    "delta": (8, ["q_proj", "o_proj", "gate_proj"]),
    "big": (16, ["q_proj"]),
}
CID = {name: cid_text(make_cid(name.encode(), RAW)) for name in SHAPES}
COMPOSED = {
    2: [("alpha", 0.7), ("delta", 0.3)],
    3: [("beta", 0.5), ("gamma", 1.25), ("alpha", 0.25)],
    4: [("alpha", 0.4), ("beta", 0.3), ("gamma", 0.2), ("delta", 0.1)],
}
PROMPT = "Good sleep habits are"


def _comp(parts) -> Composition:
    return Composition.of([(CID[n], w) for n, w in parts])


@pytest.fixture(scope="module")
def peft_model(base_source, tmp_path_factory):
    """One PEFT model holding every adapter of SHAPES (random, seeded weights: a visible delta), each saved as a
    real PEFT folder, and every composition of COMPOSED added as ``cat2``, ``cat3``, ``cat4``.

    Returns:
        ``(model, {adapter name: its saved folder})``.
    """
    from peft import LoraConfig, get_peft_model

    model = None
    for name, (r, targets) in SHAPES.items():
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets)
        if model is None:
            model = get_peft_model(_fresh_base(base_source, torch.float32), cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    torch.manual_seed(2000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname:
                p.normal_(0.0, 0.05)
    folder = tmp_path_factory.mktemp("adapters")
    model.save_pretrained(str(folder))  # each adapter in folder/<name>
    for n, parts in COMPOSED.items():
        model.add_weighted_adapter([p for p, _ in parts], [w for _, w in parts], f"cat{n}", combination_type="cat")
    return model.eval(), {name: folder / name for name in SHAPES}


@pytest.fixture(scope="module")
def folders(peft_model):
    return peft_model[1]


@pytest.fixture(scope="module")
def reference(peft_model):
    return peft_model[0]


@pytest.fixture(scope="module")
def rm(base_source):
    return load_resident(base_source, "float32", n_slots=4, max_rank=MAX_RANK)


@pytest.fixture(scope="module")
def parsed(rm, folders):
    return {
        CID[n]: load_adapter(
            (f / "adapter_config.json").read_bytes(), (f / "adapter_model.safetensors").read_bytes(), rm.base_modules, rm.max_rank
        )
        for n, f in folders.items()
    }


def _peft_logits(model, adapter, ids):
    model.set_adapter(adapter)
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_one_batch_of_composed_plain_and_base_rows_matches_peft_cat(rm, parsed, reference):
    slots = SlotManager(rm.lora_layers, rm.routing, 4)
    rows = []
    for n, parts in COMPOSED.items():
        comp = _comp(parts)
        derived = compose([(parsed[c], w) for c, w in zip(comp.cids, comp.weights)], rm.max_rank, comp.id)
        # a module's rank is the sum of the ranks of the parts that target it
        modules = {m for p, _ in parts for m in SHAPES[p][1]}
        assert derived.max_rank == max(sum(SHAPES[p][0] for p, _ in parts if m in SHAPES[p][1]) for m in modules)
        rows.append((slots.install(comp.id, derived), f"cat{n}"))
    rows.append((slots.install(CID["alpha"], parsed[CID["alpha"]]), "alpha"))
    rows.append((0, None))
    ids = torch.tensor([rm.codec.tokenizer(PROMPT)["input_ids"]])
    ours = _ours(rm, [s for s, _ in rows], ids.expand(len(rows), -1))
    with reference.disable_adapter(), torch.inference_mode():
        base = reference(input_ids=ids).logits
    for i, (_, name) in enumerate(rows):
        ref = base if name is None else _peft_logits(reference, name, ids)
        err = (ours[i : i + 1] - ref).abs().max().item()
        assert err <= FP32_TOL, (name, err)
        assert torch.equal(ours[i, -1].argmax(), ref[0, -1].argmax()), name
        if name is not None:
            assert (ref - base).abs().max().item() > 0.2, f"{name} changes nothing: the check would be empty"


class Loader:
    """The engine's adapter loader over the saved folders (what ``AdapterStore.load`` is in a node)."""

    def __init__(self, rm, folders) -> None:
        self.rm, self.by_cid = rm, {CID[n]: f for n, f in folders.items()}

    def __call__(self, cid: str):
        f = self.by_cid[cid]
        return load_adapter(
            (f / "adapter_config.json").read_bytes(), (f / "adapter_model.safetensors").read_bytes(), self.rm.base_modules, self.rm.max_rank
        )


def test_engine_serves_compositions_with_peft_greedy_text_and_refuses_an_oversized_one(rm, folders, reference):
    engine = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, 4), HostCache(8), Loader(rm, folders), max_batch=8)
    engine.start()
    try:
        question = "Give one tip for better sleep."
        plan = {f"cat{n}": _comp(parts).id for n, parts in COMPOSED.items()} | {"alpha": CID["alpha"], None: None}
        too_big = _comp([("big", 0.5), ("delta", 0.5)]).id  # rank 16 + 8 > MAX_RANK
        calls = {name: submit(engine, question, key, max_new_tokens=8) for name, key in plan.items()}
        bad = submit(engine, question, too_big, max_new_tokens=8)
        prompt = torch.tensor([engine.codec.encode_chat([{"role": "user", "content": question}])])
        texts = {}
        for name, call in calls.items():
            text, final = call.wait()
            assert isinstance(final, Finished), (name, final)
            if name is None:
                with reference.disable_adapter(), torch.inference_mode():
                    out = reference.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)
            else:
                reference.set_adapter(name)
                with torch.inference_mode():
                    out = reference.generate(input_ids=prompt, max_new_tokens=8, do_sample=False)
            assert text == engine.codec.tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True), name
            texts[name] = text
        _, final = bad.wait()
        assert isinstance(final, Failed) and isinstance(final.error, CompositionError)
        assert "rank 24" in str(final.error) and f"max LoRA rank {MAX_RANK}" in str(final.error)
        assert engine.resident() == [CID["alpha"]]  # derived adapters hold slots but are not adapters of their own
        text, final = submit(engine, question, plan["cat2"], max_new_tokens=8).wait()  # still serving
        assert isinstance(final, Finished) and text == texts["cat2"]
        engine.forget(CID["delta"])  # a revoked part takes every composition holding it out of the engine
        _, final = submit(engine, question, CID["beta"], max_new_tokens=1).wait()
        assert plan["cat2"] not in engine.slots.resident() and plan["cat4"] not in engine.slots.resident()
        assert plan["cat3"] in engine.slots.resident()
    finally:
        engine.stop()


@pytest.mark.parametrize(
    "parts, says",
    [
        ([("alpha", 0.2), ("beta", 0.2), ("gamma", 0.2), ("delta", 0.2), ("big", 0.2)], "2 to 4 adapters; got 5"),
        ([("alpha", 1.0)], "2 to 4 adapters; got 1"),
        ([("alpha", 0.5), ("alpha", 0.5)], "appears twice"),
        ([("alpha", 0.0), ("beta", 1.0)], "finite number above 0"),
        ([("alpha", -0.5), ("beta", 1.0)], "finite number above 0"),
        ([("alpha", math.nan), ("beta", 1.0)], "finite number above 0"),
        ([("alpha", math.inf), ("beta", 1.0)], "finite number above 0"),
        ([("alpha", 0.1234567), ("beta", 1.0)], "more than 6 decimal places"),
        ([("alpha", 4.5), ("beta", 1.0)], "above the largest accepted weight 4"),
    ],
)
def test_bad_compositions_are_refused_with_what_to_fix(parts, says):
    with pytest.raises(CompositionError, match=says):
        _comp(parts)


def test_text_form_is_canonical_and_round_trips():
    comp = Composition.parse(f"{CID['delta']}*0.30+ {CID['alpha']}*0.7")
    assert comp.parts == tuple(sorted([(CID["alpha"], 700_000), (CID["delta"], 300_000)]))
    assert comp.id == "+".join(sorted([f"{CID['alpha']}*0.7", f"{CID['delta']}*0.3"]))
    assert Composition.parse(comp.id) == comp
    assert weight_ppm(0.7) == 700_000 and weight_ppm("4") == 4_000_000
    with pytest.raises(CompositionError, match="not CID\\*WEIGHT"):
        Composition.parse(f"{CID['alpha']}+{CID['beta']}*0.5")
    with pytest.raises(CompositionError, match="part 2"):
        Composition.parse(f"{CID['alpha']}*0.5+notacid*0.5")



def test_a_hostile_text_form_is_refused_by_its_part_count_before_any_part_is_read():
    # a million parts of garbage: neither split nor parsed part by part (the CID check would name part 1 otherwise)
    with pytest.raises(CompositionError, match="got more than 4"):
        Composition.parse("x*" + "+x*" * 1_000_000)


@pytest.mark.parametrize("extra", ["magnitude", "bias"])
def test_a_part_with_more_than_plain_lora_is_refused(extra):
    """A part carrying anything beyond A, B and scaling (a DoRA magnitude, a ``lora_B`` bias, …) has an output that
    is not a low-rank delta: composing it would silently drop that, so it is refused with the field named."""
    from openlora.adapters.peft_format import LoraAdapter, ModuleLoRA

    plain = LoraAdapter({}, {"m": ModuleLoRA(torch.ones(2, 3), torch.ones(4, 2), 0.5)})
    featured = LoraAdapter({}, {"m": ModuleLoRA(torch.ones(2, 3), torch.ones(4, 2), 0.5, **{extra: torch.ones(4)})})
    assert compose([(plain, 0.5), (plain, 0.25)], 4).modules["m"].a.shape == (4, 3)
    with pytest.raises(CompositionError, match=f"part 2 of the composition uses {extra}"):
        compose([(plain, 0.5), (featured, 0.5)], 4)
