"""Micro-benchmark of the adapter path: publish, verify+load to the host tier, host→slot swap,
and host memory with many adapters registered.

    N rank-r LoRAs on q/k/v/o (random weights, signed manifests) ─► AdapterStore.publish
      ─► AdapterStore.load for every one into the host cache (HostCache(max_items=N))
      ─► RSS growth vs the adapters' bytes (target: ≤ 1.2 ×)
      ─► SlotManager.install round-robin over the slots, evicting (target: median ≤ 5 ms)

    .venv/bin/python scripts/bench_adapters.py --adapters 1000 [--json out.json]

Times are wall-clock on this (noisy) machine: medians over many repetitions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch
from eth_account import Account
from safetensors.torch import save

from openlora.adapters.catalog import Catalog
from openlora.adapters.manifest import encode_manifest
from openlora.adapters.package import build_manifest
from openlora.adapters.signing import sign_manifest
from openlora.adapters.store import AdapterStore
from openlora.adapters.verify import BaseProfile
from openlora.content.blockstore import BlockStore
from openlora.engine.base import resolve_base_model
from openlora.engine.model import load_resident
from openlora.engine.slots import HostCache, SlotManager

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def adapter_files(modules: dict[str, tuple[int, int]], rank: int, seed: int, dtype: torch.dtype) -> dict[str, bytes]:
    """A PEFT LoRA folder (config + safetensors bytes) with random weights."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (fin, fout) in modules.items():
        if name.rsplit(".", 1)[-1] in TARGETS:
            tensors[f"base_model.model.{name}.lora_A.weight"] = (torch.randn(rank, fin, generator=g) * 0.02).to(dtype)
            tensors[f"base_model.model.{name}.lora_B.weight"] = (torch.randn(fout, rank, generator=g) * 0.02).to(dtype)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS), "task_type": "CAUSAL_LM"}
    return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": save(tensors)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", "-n", type=int, default=1000)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--slots", type=int, default=8, help="device slots (--max-loras)")
    ap.add_argument("--adapter-dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the saved weights")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="base model dtype")
    ap.add_argument("--swaps", type=int, default=200)
    ap.add_argument("--model-cache", type=Path, default=Path(os.environ.get("OPENLORA_MODEL_CACHE", ROOT / ".cache" / "models")))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 2)
    proc = psutil.Process()

    source = resolve_base_model(None, args.model_cache)
    rm = load_resident(source, args.dtype, n_slots=args.slots, max_rank=args.rank)
    profile = BaseProfile(source.name, source.fingerprint, rm.base_modules, rm.max_rank)
    publisher = Account.create()
    adapter_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.adapter_dtype]
    with tempfile.TemporaryDirectory() as tmp:
        store = AdapterStore(BlockStore(Path(tmp) / "blocks"), Catalog(Path(tmp) / "catalog.sqlite"), profile)
        cids, publish_ms, file_bytes = [], [], 0
        for i in range(args.adapters):
            files = adapter_files(rm.base_modules, args.rank, i, adapter_dtype)
            file_bytes += len(files["adapter_model.safetensors"])
            manifest = sign_manifest(
                build_manifest(files, base_name=source.name, base_fingerprint=source.fingerprint, publisher=publisher.address, name=f"a{i}"),
                publisher,
            )
            t = time.perf_counter()
            cids.append(store.publish(encode_manifest(manifest), files))
            publish_ms.append((time.perf_counter() - t) * 1000)
            if (i + 1) % 100 == 0:
                print(f"  published {i + 1}/{args.adapters}", flush=True)
        del files
        gc.collect()
        host = HostCache(args.adapters)
        rss_before = proc.memory_info().rss
        load_ms = []
        for cid in cids:
            t = time.perf_counter()
            host.put(cid, store.load(cid))
            load_ms.append((time.perf_counter() - t) * 1000)
        gc.collect()
        rss_after = proc.memory_info().rss
        tensor_bytes = sum(host.get(c).nbytes for c in cids)

        slots = SlotManager(rm.lora_layers, rm.routing, args.slots)
        swap_ms = []
        for i in range(args.swaps):
            cid = cids[(i * 7919) % len(cids)]  # a different adapter almost every time
            adapter = host.get(cid)
            t = time.perf_counter()
            slot = slots.install(cid, adapter)
            swap_ms.append((time.perf_counter() - t) * 1000)
            slots.release(slot)

    growth = rss_after - rss_before
    result = {
        "adapters": args.adapters,
        "rank": args.rank,
        "adapter_dtype": args.adapter_dtype,
        "adapter_file_bytes": file_bytes,
        "host_tensor_bytes": tensor_bytes,
        "rss_growth_bytes": growth,
        "rss_growth_vs_adapter_bytes": growth / file_bytes,
        "publish_ms_p50": statistics.median(publish_ms),
        "load_verify_ms_p50": statistics.median(load_ms),
        "swap_ms_p50": statistics.median(swap_ms),
        "swap_ms_p99": sorted(swap_ms)[int(0.99 * (len(swap_ms) - 1))],
    }
    mib = 2**20
    print(f"\n{args.adapters} adapters, rank {args.rank} on q/k/v/o, saved as {args.adapter_dtype}")
    print(f"  adapter files          {file_bytes / mib:10.1f} MiB")
    print(f"  host RSS growth        {growth / mib:10.1f} MiB   ({result['rss_growth_vs_adapter_bytes']:.2f} × the files; target ≤ 1.2)")
    print(f"  publish (verify+store) {result['publish_ms_p50']:10.1f} ms p50")
    print(f"  load (re-verify)       {result['load_verify_ms_p50']:10.1f} ms p50")
    print(f"  host→slot swap         {result['swap_ms_p50']:10.2f} ms p50, {result['swap_ms_p99']:.2f} ms p99 (target median ≤ 5)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
