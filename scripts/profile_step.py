"""Where a torch-engine decode step goes: one batch decoded with every row on the base, then with every
row on its own adapter, each profiled with ``torch.profiler`` (self CPU time per op).

    prompt of P tokens per row ─► prefill ─► W warm-up steps ─► S timed steps (median wall ms)
                                                            ─► S profiled steps ─► op table
    (--sdpa: once more on base rows with transformers' SDPA attention in place of ours)

The step is the engine's own model path (``load_resident``: packed linears, decode attention and the
grouped LoRA kernel on a bf16 CPU base) driven without the scheduler, so the table is the forward
pass alone; what the scheduler adds (sampling, joins, prefills between steps) is in bench_serving's
ITL against this step time. Figures are for reading side by side within one run.

    .venv/bin/python scripts/profile_step.py --rows 16 --prompt-len 64
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def decoder(rm, prompts: list[list[int]], row_slots: list[int]):
    """Prefill ``prompts`` (one row each, row ``i`` on slot ``row_slots[i]``) through the engine's model path
    and return ``step()``, which decodes one greedy token for every row (no scheduler, no sampling)."""
    from openlora.engine.kv import KVBatch, left_padded, new_cache

    ids, mask, pos = left_padded(prompts, 0)
    cache = new_cache(rm.model.config, rm.kv_dtype)
    rm.routing.set(row_slots)
    out = rm.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
    kv, last = KVBatch(cache, mask), out.logits[:, -1].argmax(-1, keepdim=True)

    def step() -> None:
        nonlocal last
        positions, grown = kv.next_positions(), kv.grow()
        rm.routing.set(row_slots)
        o = rm.model(input_ids=last, attention_mask=grown, position_ids=positions, past_key_values=kv.cache, use_cache=True)
        last = o.logits[:, -1].argmax(-1, keepdim=True)

    return step


def median_step_ms(step, steps: int) -> float:
    """Median wall time of ``steps`` calls of ``step()``, ms, after 5 unmeasured ones (oneDNN picks and
    caches its kernels on the first calls of each shape)."""
    for _ in range(5):
        step()
    wall = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        wall.append((time.perf_counter() - t0) * 1000)
    return statistics.median(wall)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16, help="batch rows (one request each)")
    ap.add_argument("--prompt-len", type=int, default=64, help="tokens per row before decoding")
    ap.add_argument("--steps", type=int, default=10, help="timed steps, then as many profiled")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=14, help="ops listed per table")
    ap.add_argument("--sdpa", action="store_true", help="a third table: base rows with transformers' SDPA attention (the stock path)")
    ap.add_argument("--model-cache", type=Path, default=ROOT / ".cache" / "models")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench_serving import make_adapters
    from openlora.adapters.peft_format import load_adapter
    from openlora.engine.base import resolve_base_model
    from openlora.engine.model import load_resident
    from openlora.engine.slots import SlotManager

    torch.set_num_threads(args.threads)
    source = resolve_base_model(None, args.model_cache)
    rm = load_resident(source, args.dtype, n_slots=args.rows, max_rank=args.rank)
    slots = SlotManager(rm.lora_layers, rm.routing, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        for i, folder in enumerate(make_adapters(source, args.rows, args.rank, Path(tmp))):
            files = [(folder / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")]
            slots.release(slots.install(f"a{i}", load_adapter(*files, rm.base_modules, rm.max_rank)))
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(args.prompt_len)] for _ in range(args.rows)]

    with torch.inference_mode():
        runs = [("base rows", [0] * args.rows, None), (f"{args.rows} distinct adapters", list(range(1, args.rows + 1)), None)]
        if args.sdpa:
            runs.append(("base rows, transformers' SDPA attention", [0] * args.rows, "sdpa"))
        for name, row_slots, attention in runs:
            if attention is not None:
                rm.model.set_attn_implementation(attention)
            step = decoder(rm, prompts, row_slots)
            wall_ms = median_step_ms(step, args.steps)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    step()
            print(f"== {name}: decode step median {wall_ms:.1f} ms wall "
                  f"({args.rows} rows, {args.prompt_len}-token prompts, {args.dtype}, {args.threads} threads); "
                  f"ops over {args.steps} profiled steps:")  # fmt: skip
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
