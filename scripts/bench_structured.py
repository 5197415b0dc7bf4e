"""Constrained decoding against free decoding on the torch engine, side by side in ONE run.

Workload: N chat requests from a closed loop of C clients (each sends its next request when the previous one
finishes, so the batch stays full), rows cycling through the base and the demo adapters
(tests/fixtures/adapters), greedy, at most O new tokens each.

Systems, same engine, same workload, same dtype and threads:
  json_schema  every request constrained by one of four JSON schemas      (xgrammar matcher per row: bitmask
               (objects, enums, bounded numbers and strings, arrays);     filled, logits masked, token accepted,
               each ends at EOS once its JSON value is complete           every step; engine/structured.py)
  free         no constraint, EOS ignored, each request exactly as long   (the same tokens, prefills and batch
               as its constrained completion (measured off the clock)      shapes without the grammar)
  mixed        every other request constrained, the rest free (as long)   (what free rows pay beside constrained)

Rounds (--rounds R): the systems take turns R times; tokens/s is the median over rounds. Reported per system:
tokens/s (generated tokens / wall time), ITL p50/p99 in ms, TTFT p50; and the ratios json_schema/free and
mixed/free of tokens/s and of ITL p50. Machines here are noisy: compare ratios from one run.

    .venv/bin/python scripts/bench_structured.py --json structured.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

SYSTEMS = ("free", "json_schema", "mixed")
_NAME = {"type": "string", "maxLength": 16}
SCHEMAS = [
    ("a person as JSON", {"type": "object", "additionalProperties": False, "required": ["name", "age"],
                          "properties": {"name": _NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}}}),
    ("a product with a price as JSON", {"type": "object", "additionalProperties": False,
                                        "required": ["product", "price", "currency"],
                                        "properties": {"product": _NAME, "currency": {"enum": ["USD", "EUR", "GBP"]},
                                                       "price": {"type": "number", "minimum": 0, "maximum": 1000}}}),
    ("three colours as a JSON array", {"type": "array", "items": _NAME, "minItems": 3, "maxItems": 3}),
    ("a patient record as JSON", {"type": "object", "additionalProperties": False, "required": ["patient", "urgent"],
                                  "properties": {"urgent": {"type": "boolean"},
                                                 "patient": {"type": "object", "additionalProperties": False,
                                                             "required": ["name", "symptoms"],
                                                             "properties": {"name": _NAME, "symptoms": {
                                                                 "type": "array", "items": _NAME, "maxItems": 3}}}}}),
]  # fmt: skip
DOMAINS = ("medical", "legal", "finance")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", "-n", type=int, default=48)
    ap.add_argument("--concurrency", "-c", type=int, default=8)
    ap.add_argument("--output-len", type=int, default=48, help="new tokens at most (free rows: exactly)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model-cache", type=Path, default=Path(os.environ.get("OPENLORA_MODEL_CACHE", ROOT / ".cache" / "models")))
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    args.rate = None  # bench_serving's closed loop

    import torch

    from bench_serving import _closed_loop, summary
    from openlora.adapters.peft_format import load_adapter
    from openlora.engine.base import resolve_base_model
    from openlora.engine.interface import Finished, GenerationRequest
    from openlora.engine.model import load_resident
    from openlora.engine.sampling import SamplingParams
    from openlora.engine.scheduler import TorchEngine
    from openlora.engine.slots import HostCache, SlotManager
    from openlora.engine.structured import Constraint

    torch.set_num_threads(args.threads)
    source = resolve_base_model(None, args.model_cache)
    rm = load_resident(source, args.dtype, n_slots=len(DOMAINS), max_rank=16)
    folders = ROOT / "tests" / "fixtures" / "adapters"
    adapters = {
        d: load_adapter((folders / d / "adapter_config.json").read_bytes(),
                        (folders / d / "adapter_model.safetensors").read_bytes(), rm.base_modules, rm.max_rank)
        for d in DOMAINS
    }  # fmt: skip
    engine = TorchEngine(rm, SlotManager(rm.lora_layers, rm.routing, len(DOMAINS)), HostCache(8), adapters.__getitem__,
                         max_batch=args.concurrency, max_waiting=args.requests + 1)  # fmt: skip
    engine.start()
    codec = engine.codec
    prompts = [codec.encode_chat([{"role": "user", "content": f"Give {what}."}]) for what, _ in SCHEMAS]
    constraints = [Constraint.json_schema(schema) for _, schema in SCHEMAS]
    for c in constraints:  # compiled off the clock, as the API does before it prices a call
        codec.grammars.check(c)
    workload = [(prompts[i % len(SCHEMAS)], i) for i in range(args.requests)]
    rows = [None, *DOMAINS]
    lengths: dict[int, int] = {}  # request index → its constrained completion's length (the free rows match it)

    def submitter(system: str):
        def submit(prompt, i, emit, issued_at):
            constrained = system == "json_schema" or (system == "mixed" and i % 2 == 0)
            if constrained:
                params = SamplingParams(max_new_tokens=args.output_len, temperature=0.0)
            else:
                params = SamplingParams(max_new_tokens=lengths.get(i, args.output_len), temperature=0.0, ignore_eos=True)
            constraint = constraints[i % len(SCHEMAS)] if constrained else None
            req = GenerationRequest(prompt, params, emit, rows[i % len(rows)], constraint=constraint, submitted=issued_at)
            engine.submit(req)

        return submit

    def measuring(i: int, emit):
        def record(ev):
            if isinstance(ev, Finished):
                lengths[i] = ev.completion_tokens
            emit(ev)

        return record

    def lengths_pass():
        submit = submitter("json_schema")
        _closed_loop(lambda p, i, emit, t: submit(p, i, measuring(i, emit), t), workload, args)

    try:
        lengths_pass()  # off the clock: warms every constraint's matcher path too
        for system in SYSTEMS:  # warm-up, off the clock
            _closed_loop(submitter(system), workload[: args.concurrency], args)
        rounds = {s: [] for s in SYSTEMS}
        for r in range(args.rounds):
            for system in SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[: r % len(SYSTEMS)]:
                rounds[system].append(_closed_loop(submitter(system), workload, args))
    finally:
        engine.stop()
    result = {s: summary(rounds[s]) for s in SYSTEMS}
    result["ratios"] = {
        f"{s}_vs_free": {
            "tokens_per_s": result[s]["tokens_per_s"] / result["free"]["tokens_per_s"],
            "itl_p50": result[s]["itl_p50_ms"] / result["free"]["itl_p50_ms"],
        }
        for s in SYSTEMS[1:]
    }
    result["workload"] = {k: getattr(args, k) for k in ("requests", "concurrency", "output_len", "dtype", "threads", "rounds")}
    print(f"{'system':<12} {'tokens':>7} {'tok/s':>8} {'ITL p50':>8} {'ITL p99':>8} {'TTFT p50':>9}  (ms)")
    for s in SYSTEMS:
        x = result[s]
        print(f"{s:<12} {x['tokens']:>7} {x['tokens_per_s']:>8.1f} {x['itl_p50_ms']:>8.1f} {x['itl_p99_ms']:>8.1f} "
              f"{x['ttft_p50_ms']:>9.1f}")  # fmt: skip
    for name, ratio in result["ratios"].items():
        print(f"{name}: tokens/s ×{ratio['tokens_per_s']:.2f}, ITL p50 ×{ratio['itl_p50']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
