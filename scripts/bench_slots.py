"""Device bytes per resident adapter against its own size, with slots sized by rank bucket or all at the
largest rank, and the decode step on each, in one run.

    a mix of adapters (--mix 8:12,32:3,128:1: twelve of rank 8, three of rank 32, one of rank 128)
      one bucket   --max-loras 16 --max-lora-rank 128     every slot holds 128 rank rows
      buckets      --rank-buckets 8:12,32:3,128:1          every slot holds its bucket's rank
    ─► per layout: the LoRA pools' bytes (every layer's A, Bᵀ rows and scalings, float32 as held on the
       device), bytes per resident adapter and that against the adapter's own weights (float32); per
       rank: one slot's bytes against one adapter's; decode step median with every row on its own adapter

The slot of a rank-r adapter reserves r rows in every adaptable module, targeted or not (a q/k/v/o
adapter's slot also holds rows for gate/up/down), so an exact bucket costs (all modules' in+out) /
(targeted modules' in+out) of the adapter's size; --targets all shows the ratio without that.

    .venv/bin/python scripts/bench_slots.py [--mix 8:12,32:3,128:1] [--targets attn|all] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def stacked(rm) -> list:
    """The LoRA layers with slot pools (the decoder's linears; the embedding and the head take the exact path)."""
    from openlora.engine.lora import LoRALinear

    return [layer for layer in rm.lora_layers.values() if isinstance(layer, LoRALinear) and layer.r_max > 0]


def pool_bytes(rm) -> int:
    """Bytes of every LoRA layer's slot buffers (A and Bᵀ rows, scalings)."""
    return sum(t.nbytes for layer in stacked(rm) for t in (layer.lora_A, layer.lora_Bt, layer.scaling))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mix", default="8:12,32:3,128:1", help="adapters as RANK:COUNT,… (also the rank buckets)")
    ap.add_argument("--targets", choices=("attn", "all"), default="attn", help="q/k/v/o, or every linear of the decoder")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed decode steps per layout")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-cache", type=Path, default=ROOT / ".cache" / "models")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    from bench_serving import make_adapters
    from profile_step import decoder, median_step_ms
    from openlora.adapters.peft_format import load_adapter
    from openlora.engine.base import resolve_base_model
    from openlora.engine.model import load_resident
    from openlora.engine.slot_layout import SlotLayout
    from openlora.engine.slots import SlotManager

    torch.set_num_threads(args.threads)
    buckets = SlotLayout.parse(args.mix)
    layouts = {"one bucket": SlotLayout.uniform(buckets.n_adapters, buckets.r_max), "rank buckets": buckets}
    source = resolve_base_model(None, args.model_cache)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj") if args.targets == "attn" else None
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(args.prompt_len)] for _ in range(buckets.n_adapters)]
    rows, result = {}, {"mix": args.mix, "targets": args.targets, "layouts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for rank, count in buckets.buckets:
            (Path(tmp) / f"r{rank}").mkdir()
            folders += [(rank, f) for f in make_adapters(source, count, rank, Path(tmp) / f"r{rank}", targets=targets)]
        for name, layout in layouts.items():
            rm = load_resident(source, "bfloat16", layout=layout)
            slots = SlotManager(rm.lora_layers, rm.routing, layout.n_adapters)
            own, slot_of_rank, row_slots = {}, {}, []
            for i, (rank, folder) in enumerate(folders):
                files = [(folder / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")]
                adapter = load_adapter(*files, rm.base_modules, rm.max_rank)
                row_slots.append(slots.install(f"a{i}", adapter))
                own[rank], slot_of_rank[rank] = adapter.nbytes, row_slots[-1]
            per_row = sum(layer.lora_A.shape[1] + layer.lora_Bt.shape[1] for layer in stacked(rm)) * 4
            capacity = layout.capacity()
            with torch.inference_mode():
                step_ms = median_step_ms(decoder(rm, prompts, row_slots), args.steps)
            total = pool_bytes(rm)
            own_total = sum(own[rank] for rank, _ in folders)
            rows[name] = (total, total / len(folders), total / own_total, step_ms)
            result["layouts"][name] = {
                "layout": ",".join(f"{r}:{n}" for r, n in layout.buckets),
                "pool_bytes": total,
                "bytes_per_resident_adapter": total / len(folders),
                "pool_vs_adapters_own_bytes": total / own_total,
                "slot_vs_own_bytes_by_rank": {str(r): per_row * capacity[slot_of_rank[r]] / own[r] for r in own},
                "decode_step_ms": step_ms,
            }
            del rm, slots
    mib = 2**20
    print(f"\n{buckets.n_adapters} adapters ({args.mix}, on {args.targets} modules), SmolLM2-135M bf16, "
          f"{buckets.n_adapters} rows each on its own adapter, {args.threads} threads")  # fmt: skip
    print(f"{'layout':<14}{'slots':>20}{'pool MiB':>11}{'MiB/adapter':>13}{'× own size':>12}{'step ms':>9}   slot ÷ own, by rank")
    for name, (total, per, ratio, step_ms) in rows.items():
        r = result["layouts"][name]
        by_rank = "  ".join(f"r{k}: {v:.1f}×" for k, v in r["slot_vs_own_bytes_by_rank"].items())
        print(f"{name:<14}{r['layout']:>20}{total / mib:>11.1f}{per / mib:>13.2f}{ratio:>12.2f}{step_ms:>9.1f}   {by_rank}")
    one, bucketed = rows["one bucket"], rows["rank buckets"]
    result["pool_bytes_buckets_vs_one"] = bucketed[0] / one[0]
    result["decode_step_buckets_vs_one"] = bucketed[3] / one[3]
    print(f"rank buckets ÷ one bucket: pool bytes {result['pool_bytes_buckets_vs_one']:.3f}, "
          f"decode step {result['decode_step_buckets_vs_one']:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
