"""Structured output on the torch engine: every constrained completion parses and validates, with and without an
adapter, greedy and sampled, in one batch beside free-text rows; bad constraints are refused and the engine keeps
serving; an honest constrained call verifies, one that breaks its constraint does not.

One engine run (bf16, SmolLM2-135M, the demo adapters) serves every request here.
"""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
from eth_account import Account

from conftest import DOMAINS
from openlora.engine.interface import Finished, GenerationRequest, TextDelta
from openlora.engine.model import load_resident
from openlora.engine.sampling import SamplingParams
from openlora.engine.scheduler import TorchEngine
from openlora.engine.slots import HostCache, SlotManager
from openlora.engine.structured import MAX_CONSTRAINT_BYTES, Constraint, ConstraintError
from openlora.proof.attest import Attestor
from openlora.proof.reference import Reference
from openlora.proof.verify import verify_call
from openlora.proof.wire import record_to_pb
from openlora.v1 import node_pb2 as pb

NODE = Account.from_key(b"\x42" * 32)


def _obj(required: bool = True, **props) -> dict:
    return {"type": "object", "properties": props, "required": list(props) if required else [], "additionalProperties": False}


_NAME = {"type": "string", "maxLength": 16}
# (what the prompt asks for, the schema): objects, enums, arrays, nesting, bounded numbers, required fields, patterns
SCHEMAS = [
    ("a person", _obj(name=_NAME, age={"type": "integer", "minimum": 0, "maximum": 120})),
    ("a yes or no answer", _obj(answer={"enum": ["yes", "no"]})),
    ("three colours", {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 3, "maxItems": 3}),
    ("a temperature in Celsius", _obj(celsius={"type": "number", "minimum": -50, "maximum": 60})),
    ("a boolean flag", {"type": "boolean"}),
    ("a dice roll", {"type": "integer", "minimum": 1, "maximum": 6}),
    ("a city and its country", _obj(city=_NAME, country=_NAME)),
    ("a product with a price", _obj(product=_NAME, price={"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                                    currency={"enum": ["USD", "EUR", "GBP"]})),
    ("an address", _obj(street={"type": "string", "maxLength": 30}, zip={"type": "string", "pattern": "^[0-9]{5}$"})),
    ("up to four prime numbers", {"type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 97},
                                  "minItems": 1, "maxItems": 4}),
    ("a patient record", _obj(patient=_obj(name=_NAME, age={"type": "integer", "minimum": 0, "maximum": 110}),
                              urgent={"type": "boolean"})),
    ("a risk level", {"enum": ["low", "medium", "high"]}),
    ("a date", {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"}),
    ("a contract summary", _obj(parties={"type": "array", "items": _NAME, "minItems": 2, "maxItems": 2},
                                term_months={"type": "integer", "minimum": 1, "maximum": 120})),
    ("a portfolio split", _obj(stocks={"type": "integer", "minimum": 0, "maximum": 100},
                               bonds={"type": "integer", "minimum": 0, "maximum": 100})),
    ("a grade between 0 and 1", {"type": "number", "minimum": 0, "maximum": 1}),
    ("a tagged note", _obj(title={"type": "string", "minLength": 1, "maxLength": 20},
                           tags={"type": "array", "items": {"enum": ["work", "home", "health", "money"]}, "maxItems": 3})),
    ("a symptom list", _obj(symptoms={"type": "array", "minItems": 1, "maxItems": 2,
                                      "items": _obj(name=_NAME, severity={"type": "integer", "minimum": 1, "maximum": 5})})),
    ("a phone number", _obj(phone={"type": "string", "pattern": "^\\+1-[0-9]{3}-[0-9]{4}$"})),
    ("a name and a nickname or null", _obj(name=_NAME, nickname={"type": ["string", "null"], "maxLength": 12})),
    ("a loan", _obj(amount={"type": "integer", "minimum": 1000, "maximum": 500000},
                    rate={"type": "number", "minimum": 0, "maximum": 0.3}, fixed={"type": "boolean"})),
    ("a latitude and longitude", {"type": "array", "prefixItems": [{"type": "number", "minimum": -90, "maximum": 90},
                                  {"type": "number", "minimum": -180, "maximum": 180}], "items": False, "minItems": 2}),
    ("an optional due date", _obj(False, task=_NAME, due={"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"})),
]  # fmt: skip
REGEXES = [("a US zip code", r"[0-9]{5}"), ("a yes or a no", r"(yes|no)"), ("an hour", r"([01][0-9]|2[0-3]):[0-5][0-9]")]


@pytest.fixture(scope="module")
def served(base_source, demo_adapters):
    rm = load_resident(base_source, "bfloat16", n_slots=3, max_rank=16)
    engine = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, 3), HostCache(4), demo_adapters.__getitem__, max_batch=32,
                         max_waiting=128)  # fmt: skip
    engine.start()
    yield engine, Attestor(NODE, base_source.fingerprint, "torch/bfloat16", rm.model.config.vocab_size)
    engine.stop()


class Call:
    """One request: its text, final event and serving record."""

    def __init__(self, served, what: str, adapter: str | None, constraint: Constraint | None, **sampling) -> None:
        engine, self.attestor = served
        self.adapter, self.constraint = adapter, constraint
        self.params = SamplingParams(**{"max_new_tokens": 64, "temperature": 0.0, **sampling})
        self.ids = engine.codec.encode_chat([{"role": "user", "content": f"Give {what}."}])
        self.proof = self.attestor.collector()
        self.parts: list[str] = []
        self.final = None
        self._done = threading.Event()
        engine.submit(GenerationRequest(self.ids, self.params, self._on, adapter, self.proof, constraint))

    def _on(self, ev) -> None:
        if isinstance(ev, TextDelta):
            self.parts.append(ev.text)
        else:
            self.final = ev
            self._done.set()

    def text(self) -> str:
        assert self._done.wait(300), "request did not finish"
        assert isinstance(self.final, Finished), self.final
        return "".join(self.parts)

    def served_call(self, constraint: Constraint | None) -> pb.ServedCall:
        """The call's record, claiming ``constraint``."""
        self.text()
        record = self.attestor.attest(self.ids, self.proof, self.params, self.adapter, constraint)
        return pb.ServedCall(record=record_to_pb(record), prompt_ids=self.ids, completion_ids=self.proof.tokens)


@pytest.fixture(scope="module")
def batch(served):
    """Every request of this module, submitted together: each schema and regex with and without an adapter, some
    sampled, beside free-text rows."""
    calls = {}
    for i, (what, schema) in enumerate(SCHEMAS):
        c = Constraint.json_schema(schema)
        calls[("schema", i, None)] = Call(served, f"{what} as JSON", None, c)
        calls[("schema", i, DOMAINS[i % 3])] = Call(served, f"{what} as JSON", DOMAINS[i % 3], c)
    for i, (what, pattern) in enumerate(REGEXES):
        for adapter in (None, DOMAINS[i % 3]):
            calls[("regex", i, adapter)] = Call(served, what, adapter, Constraint.regex(pattern))
    for i in range(4):  # sampled: the draw is among the allowed tokens
        adapter = DOMAINS[i % 3] if i % 2 else None
        c = Constraint.json_schema(SCHEMAS[i][1])
        calls[("sampled", i, adapter)] = Call(served, f"{SCHEMAS[i][0]} as JSON", adapter, c, temperature=0.9, seed=i)
    cat = 'a JSON object with the keys "name" and "age" of a cat'
    calls[("object", 0, None)] = Call(served, cat, None, Constraint.json_object())
    calls[("object", 0, "medical")] = Call(served, cat, "medical", Constraint.json_object())
    calls[("free", 0, None)] = Call(served, "a greeting", None, None, max_new_tokens=12)
    calls[("free", 0, "legal")] = Call(served, "a greeting", "legal", None, max_new_tokens=12)
    return calls


def test_every_constrained_output_parses_and_validates(batch):
    failures, checked = [], 0
    for (kind, i, adapter), call in batch.items():
        text = call.text()
        try:
            if kind in ("schema", "sampled"):
                jsonschema.validate(json.loads(text), SCHEMAS[i][1])
            elif kind == "regex":
                assert re.fullmatch(REGEXES[i][1], text), f"{text!r} does not match {REGEXES[i][1]}"
            elif kind == "object":
                assert isinstance(json.loads(text), dict)
            else:
                continue
        except (ValueError, AssertionError, jsonschema.ValidationError) as e:
            failures.append((kind, i, adapter, text, str(e)[:120]))
        checked += 1
    assert checked == 2 * len(SCHEMAS) + 2 * len(REGEXES) + 4 + 2 and not failures, failures
    # a completion ends with EOS, which the grammar allows only once the value is complete
    assert all(c.final.reason.value == "stop" for k, c in batch.items() if k[0] != "free")


def test_bad_constraints_are_refused_and_the_engine_keeps_serving(served, batch):
    engine = served[0]
    with pytest.raises(ConstraintError, match="not valid JSON"):
        Constraint.json_schema("{")
    with pytest.raises(ConstraintError, match=f"limit is {MAX_CONSTRAINT_BYTES}"):
        Constraint.json_schema({"enum": ["x" * 64] * (MAX_CONSTRAINT_BYTES // 64)})
    bad = [
        (Constraint.json_schema({"type": "objekt"}), 'Unsupported type "objekt"'),
        (Constraint.regex("(("), "parenthesis is not closed"),
        (Constraint.json_schema({"type": "string", "pattern": "(("}), "cannot be compiled"),
    ]
    for c, says in bad:
        with pytest.raises(ConstraintError, match=re.escape(says)):
            engine.codec.grammars.check(c)
        with pytest.raises(ValueError, match=re.escape(says)):
            Call(served, "anything", None, c)
    after = Call(served, "a dice roll as JSON", "finance", Constraint.json_schema(SCHEMAS[5][1]))
    assert 1 <= json.loads(after.text()) <= 6


def test_constraint_round_trips_through_its_canonical_text():
    for c in [Constraint.json_schema(s) for _, s in SCHEMAS] + [Constraint.regex(p) for _, p in REGEXES]:
        assert Constraint.from_canonical(c.canonical()) == c
    assert Constraint.json_schema('{"b": 1, "a": {"d": 2, "c": 3}}').spec == '{"a":{"c":3,"d":2},"b":1}'
    with pytest.raises(ConstraintError, match="canonical"):
        Constraint.from_canonical('{"type": "json_object"}')


@pytest.fixture(scope="module")
def reference(base_source):
    return Reference(base_source, max_rank=16)


def test_honest_constrained_calls_verify_and_a_broken_constraint_does_not(batch, reference, demo_adapters):
    adapters = demo_adapters.__getitem__  # the verifier's own verified copies
    honest = [batch[("schema", 10, None)], batch[("schema", 10, DOMAINS[1])], batch[("sampled", 1, DOMAINS[1])],
              batch[("regex", 2, DOMAINS[2])]]  # fmt: skip
    for call in honest:
        verdict = verify_call(call.served_call(call.constraint), reference, adapters)
        assert verdict.valid, (call.text(), verdict)
    # a free-text completion signed as if it were constrained: its first token is not JSON
    free = batch[("free", 0, "legal")]
    verdict = verify_call(free.served_call(Constraint.json_schema(SCHEMAS[0][1])), reference, adapters)
    assert verdict.check == "sampling" and verdict.blames_node, verdict
    # a constrained completion signed without its constraint: the greedy tokens are not the free argmax
    call = batch[("schema", 10, None)]
    assert verify_call(call.served_call(None), reference, adapters).check in ("commitment", "sampling")
