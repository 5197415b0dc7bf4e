"""Side-by-side serving benchmark: both engines vs their base-only limits vs PEFT, in ONE run.

Workload: N requests; each picks one of K adapters by Zipf(alpha) (rank 1 most popular);
fixed prompt length P and output length O (EOS ignored); a closed loop of C clients (each sends
its next request when the previous one finishes) or Poisson arrivals at --rate req/s.

Systems, same workload, same model, same dtype and threads:
  base        this engine, every row without adapter          (the physical limit)
  engine      this engine, K adapters in device slots          (BGMV over slots, continuous batching)
  peft_mixed  PEFT PeftModel.generate(adapter_names=...) on static batches of C requests
  peft_swap   PEFT set_adapter(name) + generate, one request at a time
  vllm_nolora vLLM (the node's --engine vllm path), LoRA off: vLLM's base limit
  vllm_base   vLLM with LoRA on, every row without adapter
  vllm        vLLM with LoRA on, K adapters (LoRARequests from the engine's adapter folders);
              on vLLM's CPU build with our grouped LoRA op (engine/vllm_punica.py), compilation on
  vllm_stock  the same with vLLM's own CPU LoRA ops (its torch ops; vLLM turns compilation off)

vLLM's engine core runs in the child process vLLM spawns (one start per vllm system); its CPU build
reserves one core for the front end by default (VLLM_CPU_NUM_OF_RESERVED_CPU), as a node would run it.

Reported per system: tokens/s (generated tokens / wall time), TTFT p50/p99 and ITL p50/p99 in
ms (from the moment the request was issued, queueing included), peak RSS in MiB (this process;
vLLM's engine core is another); and the throughput ratios mixed_vs_best_base (the faster of the
two engines with K adapters over the fastest base-only system: engine or vllm over base,
vllm_nolora or vllm_base), engine/base, base/vllm_nolora, engine/peft_mixed, engine/peft_swap,
vllm/engine, vllm/vllm_nolora, vllm_base/vllm_nolora, vllm/vllm_stock. Machines here are noisy: compare ratios from
one run, not absolute numbers across runs.

    .venv/bin/python scripts/bench_serving.py --quick --json bench.json --plot bench.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from openlora.adapters.peft_format import load_adapter
from openlora.engine.base import resolve_base_model
from openlora.engine.model import load_resident
from openlora.engine.sampling import SamplingParams
from openlora.engine.interface import Failed, Finished, GenerationRequest
from openlora.engine.scheduler import TorchEngine
from openlora.engine.slots import HostCache, SlotManager
from random_base import SHAPES, build_random_base

ROOT = Path(__file__).resolve().parent.parent

SYSTEMS = ("base", "engine", "peft_mixed", "peft_swap", "vllm_nolora", "vllm_base", "vllm", "vllm_stock")
VLLM_SYSTEMS = ("vllm_nolora", "vllm_base", "vllm", "vllm_stock")
MIXED_SYSTEMS = ("engine", "vllm")  # the node's engines serving K adapters
BASE_SYSTEMS = ("base", "vllm_nolora", "vllm_base")  # the same engines, no adapter in any row


@dataclass
class Result:
    """Per-system measurements (ms, tokens/s, MiB)."""

    tokens: int = 0
    wall_s: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0

    def summary(self) -> dict:
        def pct(xs, p):
            if not xs:
                return 0.0
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

        return {
            "tokens_per_s": self.tokens / self.wall_s if self.wall_s else 0.0,
            "ttft_p50_ms": pct(self.ttft_ms, 50),
            "ttft_p99_ms": pct(self.ttft_ms, 99),
            "itl_p50_ms": pct(self.itl_ms, 50),
            "itl_p99_ms": pct(self.itl_ms, 99),
            "peak_rss_mib": self.peak_rss_mib,
            "tokens": self.tokens,
            "wall_s": self.wall_s,
        }


class RssPeak:
    """Samples this process's RSS every 20 ms while active; ``peak`` in MiB."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)
            self._stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def zipf_choices(k: int, alpha: float, n: int, rng: random.Random) -> list[int]:
    """``n`` adapter indices in ``0..k-1`` with P(i) ∝ 1/(i+1)^alpha."""
    weights = [1.0 / (i + 1) ** alpha for i in range(k)]
    return rng.choices(range(k), weights=weights, k=n)


def make_adapters(source, k: int, rank: int, folder: Path) -> list[Path]:
    """K random rank-``rank`` LoRAs on q/k/v/o in PEFT's format (one folder each), written from the
    base's module shapes alone (no copy of the base: an 8B one would not fit twice)."""
    from safetensors.torch import save_file

    from openlora.engine.lora import adaptable_shapes

    template = json.loads((ROOT / "tests" / "fixtures" / "adapters" / "medical" / "adapter_config.json").read_text())
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    config = {**template, "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets), "base_model_name_or_path": source.name}
    modules = {n: s for n, s in adaptable_shapes(source.path).items() if n.rsplit(".", 1)[-1] in targets}
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(k):
        path = folder / f"a{i}"
        path.mkdir()
        tensors = {}
        for name, (fan_in, fan_out) in modules.items():
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) * 0.05
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g) * 0.05
        save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
        (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
        out.append(path)
    return out


def run_engine(rm, slots, host, adapters, workload, args, use_adapters: bool) -> Result:
    """Drive the engine with the closed loop (or Poisson arrivals)."""
    paths = {f"a{i}": p for i, p in enumerate(adapters)}

    def loader(cid):
        p = paths[cid]
        return load_adapter(
            (p / "adapter_config.json").read_bytes(), (p / "adapter_model.safetensors").read_bytes(),
            rm.base_modules, rm.max_rank,
        )  # fmt: skip

    engine = TorchEngine(rm, slots, host, loader, max_batch=args.concurrency, max_waiting=len(workload) + 1)
    # warm the device slots like a server that has been running: every adapter resident once
    if use_adapters:
        for cid in paths:
            host.put(cid, loader(cid))
            slots.release(slots.install(cid, host.get(cid)))
    engine.start()
    res = Result()
    lock = threading.Lock()
    done = threading.Semaphore(0)
    params = SamplingParams(max_new_tokens=args.output_len, temperature=0.0, ignore_eos=True)

    def submit(prompt, adapter_idx):
        t0 = time.perf_counter()

        def emit(ev):
            if isinstance(ev, Finished):
                with lock:
                    res.tokens += ev.completion_tokens
                    res.ttft_ms.append(ev.ttft_ms)
                    res.itl_ms.extend(ev.itl_ms)
                done.release()
                if args.rate is None:
                    next_request()
            elif isinstance(ev, Failed):
                raise ev.error

        engine.submit(GenerationRequest(prompt, params, emit, f"a{adapter_idx}" if use_adapters else None, submitted=t0))

    queue = list(workload)
    qlock = threading.Lock()

    def next_request():
        with qlock:
            if not queue:
                return
            prompt, idx = queue.pop(0)
        submit(prompt, idx)

    with RssPeak() as rss:
        t0 = time.perf_counter()
        if args.rate is None:
            for _ in range(min(args.concurrency, len(queue))):
                next_request()
        else:
            rng = random.Random(7)
            for prompt, idx in workload:
                submit(prompt, idx)
                time.sleep(rng.expovariate(args.rate))
        for _ in workload:
            done.acquire()
        res.wall_s = time.perf_counter() - t0
    engine.stop()
    res.peak_rss_mib = rss.peak
    return res


def run_vllm(source, adapters, workload, args, mode: str) -> Result:
    """Drive the vLLM engine (``engine/vllm_engine.py``) with the same closed loop (or Poisson arrivals)."""
    from openlora.engine.text import load_codec
    from openlora.engine.vllm_engine import AdapterFolders, VllmEngine, VllmOptions

    paths = {f"a{i}": p for i, p in enumerate(adapters)}

    def files(cid):  # the benchmark's adapters are its own: read, not verified (the node verifies)
        return None, {n: (paths[cid] / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}

    options = VllmOptions(
        dtype=args.dtype, max_loras=args.adapters, max_cpu_loras=args.adapters, max_lora_rank=args.rank,
        max_batch=args.concurrency, max_waiting=len(workload) + 1, max_model_len=args.prompt_len + args.output_len + 8,
        kv_cache_gib=2, enforce_eager=args.vllm_eager, lora=mode != "vllm_nolora",
        lora_ops="vllm" if mode == "vllm_stock" else "grouped",
    )  # fmt: skip
    use_adapters = mode in ("vllm", "vllm_stock")
    params = SamplingParams(max_new_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    res = Result()

    async def one(engine, prompt, idx, issued):
        events: asyncio.Queue = asyncio.Queue()
        engine.submit(GenerationRequest(prompt, params, events.put_nowait, f"a{idx}" if use_adapters else None, submitted=issued))
        while True:
            ev = await events.get()
            if isinstance(ev, Finished):
                res.tokens += ev.completion_tokens
                res.ttft_ms.append(ev.ttft_ms)
                res.itl_ms.extend(ev.itl_ms)
                return
            if isinstance(ev, Failed):
                raise ev.error

    async def drive():
        with tempfile.TemporaryDirectory() as folder:
            engine = await VllmEngine.open(source, load_codec(source.path), options, files, AdapterFolders(Path(folder)))
            try:
                if use_adapters:  # warm like a server that has been running: every adapter loaded once
                    await asyncio.gather(*(engine._lora(cid) for cid in paths))
                await one(engine, workload[0][0], 0, time.perf_counter())  # first-step compilation off the clock
                res.tokens, res.ttft_ms, res.itl_ms = 0, [], []
                queue = list(workload)
                t0 = time.perf_counter()
                if args.rate is None:
                    async def client():
                        while queue:
                            prompt, idx = queue.pop(0)
                            await one(engine, prompt, idx, time.perf_counter())

                    await asyncio.gather(*(client() for _ in range(args.concurrency)))
                else:
                    rng, tasks = random.Random(7), []
                    for prompt, idx in workload:
                        tasks.append(asyncio.ensure_future(one(engine, prompt, idx, time.perf_counter())))
                        await asyncio.sleep(rng.expovariate(args.rate))
                    await asyncio.gather(*tasks)
                res.wall_s = time.perf_counter() - t0
            finally:
                engine.stop()

    with RssPeak() as rss:
        asyncio.run(drive())
    res.peak_rss_mib = rss.peak
    return res


class StepClock:
    """A logits processor that timestamps every generation step (PEFT baselines' TTFT/ITL)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def run_peft(peft_model, workload, args, mixed: bool) -> Result:
    """PEFT baselines: static batches of C with adapter_names, or one request at a time with set_adapter."""
    from transformers import LogitsProcessorList

    res = Result()
    batch = args.concurrency if mixed else 1
    issued = [0.0] * len(workload)
    with RssPeak() as rss, torch.inference_mode():
        t0 = time.perf_counter()
        # closed loop of C clients: the first C requests are issued at t0; each later one when
        # the request C places before it finished
        finish: list[float] = []
        for start in range(0, len(workload), batch):
            chunk = workload[start : start + batch]
            for j in range(len(chunk)):
                i = start + j
                issued[i] = t0 if i < args.concurrency else finish[i - args.concurrency]
            ids = torch.tensor([p for p, _ in chunk], device=args.device)
            clock = StepClock()
            kwargs = dict(max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=False,
                          logits_processor=LogitsProcessorList([clock]), pad_token_id=0)  # fmt: skip
            if mixed:
                kwargs["adapter_names"] = [f"a{idx}" for _, idx in chunk]
            else:
                peft_model.set_adapter(f"a{chunk[0][1]}")
            peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            end = time.perf_counter()
            for j in range(len(chunk)):
                res.ttft_ms.append((clock.stamps[0] - issued[start + j]) * 1000)
                res.itl_ms.extend((b - a) * 1000 for a, b in zip(clock.stamps, clock.stamps[1:]))
                finish.append(end)
            res.tokens += len(chunk) * args.output_len
        res.wall_s = time.perf_counter() - t0
    res.peak_rss_mib = rss.peak
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", "-n", type=int, default=96)
    ap.add_argument("--adapters", "-k", type=int, default=32)
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent alpha of adapter popularity")
    ap.add_argument("--concurrency", "-c", type=int, default=16)
    ap.add_argument("--rate", type=float, default=None, help="Poisson arrivals (req/s) instead of the closed loop")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--base-model", default=None, help="HF folder or .gguf (default SmolLM2-135M-Instruct)")
    ap.add_argument("--random-base", choices=sorted(SHAPES), help="a random-weight base of this shape, built locally (scripts/random_base.py)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the torch engine and PEFT run (vLLM picks its platform)")
    ap.add_argument("--model-cache", type=Path, default=Path(os.environ.get("OPENLORA_MODEL_CACHE", ROOT / ".cache" / "models")))
    ap.add_argument("--vllm-eager", action="store_true", help="vLLM without compilation (faster start, slower steps)")
    ap.add_argument("--quick", action="store_true", help="small workload: finishes in under 3 minutes on 2 cores")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="write a PNG bar chart here")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.prompt_len, args.output_len = 16, 32, 16
    torch.set_num_threads(args.threads)
    systems = [s for s in args.systems.split(",") if s]

    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.random_base:
        args.base_model = str(build_random_base(args.random_base, args.model_cache, args.dtype))
    source = resolve_base_model(args.base_model, args.model_cache)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    rng = random.Random(1234)
    vocab = AutoConfig.from_pretrained(str(source.path)).vocab_size
    workload = [
        ([rng.randrange(100, vocab - 100) for _ in range(args.prompt_len)], idx)
        for idx in zipf_choices(args.adapters, args.zipf, args.requests, rng)
    ]
    print(
        f"workload: {args.requests} requests, K={args.adapters} adapters (r={args.rank}, Zipf {args.zipf}), "
        f"C={args.concurrency}{'' if args.rate is None else f', Poisson {args.rate}/s'}, prompt {args.prompt_len}, "
        f"output {args.output_len}, {args.dtype}, {args.threads} threads; distinct adapters used: "
        f"{len({i for _, i in workload})}",
        flush=True,
    )
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(source, args.adapters, args.rank, Path(tmp))
        if {"base", "engine"} & set(systems):
            rm = load_resident(source, args.dtype, n_slots=args.adapters, max_rank=args.rank, device=args.device)
            for name, use in (("base", False), ("engine", True)):
                if name in systems:
                    slots = SlotManager(rm.lora_layers, rm.routing, args.adapters)
                    results[name] = run_engine(rm, slots, HostCache(args.adapters), adapters, workload, args, use).summary()
                    print(f"  {name:10s} done: {results[name]['tokens_per_s']:.1f} tok/s", flush=True)
            del rm
        if {"peft_mixed", "peft_swap"} & set(systems):
            base = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype).to(args.device)
            peft_model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="a0", autocast_adapter_dtype=False)
            for i, p in enumerate(adapters[1:], start=1):
                peft_model.load_adapter(str(p), adapter_name=f"a{i}", autocast_adapter_dtype=False)
            peft_model.eval()
            for name, mixed in (("peft_mixed", True), ("peft_swap", False)):
                if name in systems:
                    results[name] = run_peft(peft_model, workload, args, mixed).summary()
                    print(f"  {name:10s} done: {results[name]['tokens_per_s']:.1f} tok/s", flush=True)
            del peft_model, base
        if args.device == "cuda":
            torch.cuda.empty_cache()  # vLLM sizes its KV cache by the memory free when it starts
        for name in VLLM_SYSTEMS:
            if name in systems:
                results[name] = run_vllm(source, adapters, workload, args, name).summary()
                print(f"  {name:10s} done: {results[name]['tokens_per_s']:.1f} tok/s", flush=True)

    def ratio(a, b):
        return results[a]["tokens_per_s"] / results[b]["tokens_per_s"] if a in results and b in results else None

    def best(names):
        ran = [n for n in names if n in results]
        return max(ran, key=lambda n: results[n]["tokens_per_s"]) if ran else None

    results["best"] = {"mixed": best(MIXED_SYSTEMS), "base": best(BASE_SYSTEMS)}
    results["ratios"] = {
        "mixed_vs_best_base": ratio(results["best"]["mixed"], results["best"]["base"]),
        "engine_vs_base": ratio("engine", "base"),
        "base_vs_vllm_nolora": ratio("base", "vllm_nolora"),
        "engine_vs_peft_mixed": ratio("engine", "peft_mixed"),
        "engine_vs_peft_swap": ratio("engine", "peft_swap"),
        "vllm_vs_engine": ratio("vllm", "engine"),
        "vllm_vs_vllm_nolora": ratio("vllm", "vllm_nolora"),
        "vllm_base_vs_vllm_nolora": ratio("vllm_base", "vllm_nolora"),
        "vllm_vs_vllm_stock": ratio("vllm", "vllm_stock"),
    }
    results["workload"] = {k: v for k, v in vars(args).items() if k not in ("json", "plot", "model_cache")}
    print(f"\n{'system':12s}{'tok/s':>9s}{'TTFT p50':>10s}{'TTFT p99':>10s}{'ITL p50':>9s}{'ITL p99':>9s}{'RSS MiB':>9s}")
    for name in SYSTEMS:
        if name in results:
            r = results[name]
            print(
                f"{name:12s}{r['tokens_per_s']:9.1f}{r['ttft_p50_ms']:10.0f}{r['ttft_p99_ms']:10.0f}"
                f"{r['itl_p50_ms']:9.1f}{r['itl_p99_ms']:9.1f}{r['peak_rss_mib']:9.0f}"
            )
    print(f"best mixed: {results['best']['mixed']}, best base: {results['best']['base']}")
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in results["ratios"].items() if v is not None))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    return 0


def plot(results: dict, path: Path) -> None:
    """Bar charts of tokens/s and TTFT/ITL p50 per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in SYSTEMS if s in results]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, key, title in zip(axes, ("tokens_per_s", "ttft_p50_ms", "itl_p50_ms"), ("throughput (tok/s)", "TTFT p50 (ms)", "ITL p50 (ms)")):
        ax.bar(names, [results[n][key] for n in names], color=["#888", "#2a7", "#c73", "#a35", "#bbb", "#69c", "#36a"][: len(names)])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    w = results["workload"]
    fig.suptitle(f"K={w['adapters']} adapters, C={w['concurrency']}, prompt {w['prompt_len']}, output {w['output_len']}, {w['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
