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

vLLM's engine core runs in the child process vLLM spawns (one engine per configuration, kept open for
the whole run: LoRA off, LoRA on with our op — vllm_base and vllm share it —, LoRA on with vLLM's ops);
its CPU build reserves one core for the front end by default (VLLM_CPU_NUM_OF_RESERVED_CPU), as a node
would run it. Every system serves one warm-up request off the clock (vLLM compiles on its first step).

Rounds (--rounds R): every system is started once, then the workload runs R times per system, the
systems taking turns (round r starts with the r-th system), so that a slow minute of a shared or
virtual machine falls on every system alike; tokens/s is the median over rounds, TTFT/ITL pool the
rounds.

Reported per system: tokens/s (generated tokens / wall time; the median of the rounds, each round's
too), TTFT p50/p99 and ITL p50/p99 in ms (from the moment the request was issued, queueing included),
peak RSS in MiB while it ran (this process, which holds every system's front end; vLLM's engine
cores are others); and the throughput ratios mixed_vs_best_base (the faster of the
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
import statistics
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
    """One round of one system (ms, tokens/s, MiB)."""

    tokens: int = 0
    wall_s: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0


def summary(rounds: list[Result]) -> dict:
    """A system's figures over its rounds: median tokens/s (and each round's), pooled TTFT/ITL percentiles."""

    def pct(xs, p):
        if not xs:
            return 0.0
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

    tps = [r.tokens / r.wall_s if r.wall_s else 0.0 for r in rounds]
    ttft = [t for r in rounds for t in r.ttft_ms]
    itl = [t for r in rounds for t in r.itl_ms]
    return {
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_rounds": tps,
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "itl_p50_ms": pct(itl, 50),
        "itl_p99_ms": pct(itl, 99),
        "peak_rss_mib": max(r.peak_rss_mib for r in rounds),
        "tokens": rounds[0].tokens,
        "wall_s": statistics.median(r.wall_s for r in rounds),
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


def folder_loader(folders: dict[str, Path], source, max_rank: int):
    """The vLLM engine's adapter loader over a benchmark's own PEFT folders (``cid → folder``): ``cid → (parsed
    adapter, files)``, parsed against ``source``'s modules so the engine reads its features; not signed or
    verified (the node verifies)."""
    from openlora.adapters.peft_format import load_adapter
    from openlora.engine.lora import adaptable_shapes

    shapes = adaptable_shapes(source.path)

    def load(cid: str):
        raw = {n: (folders[cid] / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}
        return load_adapter(raw["adapter_config.json"], raw["adapter_model.safetensors"], shapes, max_rank), raw

    return load


def make_adapters(source, k: int, rank: int, folder: Path, targets: tuple[str, ...] | None = ("q_proj", "k_proj", "v_proj", "o_proj")) -> list[Path]:
    """K random rank-``rank`` LoRAs on ``targets`` (module suffixes; ``None``: every adaptable linear) in PEFT's
    format (one folder each), written from the base's module shapes alone (no copy of the base: an 8B one would
    not fit twice)."""
    from safetensors.torch import save_file

    from openlora.engine.lora import adaptable_shapes

    template = json.loads((ROOT / "tests" / "fixtures" / "adapters" / "medical" / "adapter_config.json").read_text())
    shapes = {n: s for n, s in adaptable_shapes(source.path).items() if ".layers." in n}  # the decoder's linears
    targets = targets or tuple(sorted({n.rsplit(".", 1)[-1] for n in shapes}))
    config = {**template, "r": rank, "lora_alpha": 2 * rank, "target_modules": list(targets), "base_model_name_or_path": source.name}
    modules = {n: s for n, s in shapes.items() if n.rsplit(".", 1)[-1] in targets}
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


class TorchSystem:
    """``base`` or ``engine``: the torch engine on the resident model ``rm``; every adapter warmed into a
    device slot like a server that has been running."""

    def __init__(self, rm, adapters: list[Path], args, use_adapters: bool) -> None:
        self.rm, self.args, self.use_adapters = rm, args, use_adapters
        paths = {f"a{i}": p for i, p in enumerate(adapters)}

        def loader(cid):
            p = paths[cid]
            return load_adapter(
                (p / "adapter_config.json").read_bytes(), (p / "adapter_model.safetensors").read_bytes(),
                rm.base_modules, rm.max_rank,
            )  # fmt: skip

        self.loader, self.cids = loader, list(paths)

    def run(self, workload) -> Result:
        """Drive a fresh engine over the shared model with the closed loop (or Poisson arrivals)."""
        args, rm = self.args, self.rm
        slots, host = SlotManager(rm.lora_layers, rm.routing, args.adapters), HostCache(args.adapters)
        engine = TorchEngine(rm, slots, host, self.loader, max_batch=args.concurrency, max_waiting=len(workload) + 1)
        if self.use_adapters:
            for cid in self.cids:
                host.put(cid, self.loader(cid))
                slots.release(slots.install(cid, host.get(cid)))
        engine.start()
        try:
            return _closed_loop(lambda prompt, idx, emit, t0: engine.submit(
                GenerationRequest(prompt, _params(args), emit, f"a{idx}" if self.use_adapters else None, submitted=t0)
            ), workload, args)  # fmt: skip
        finally:
            engine.stop()


def _params(args) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.output_len, temperature=0.0, ignore_eos=True)


def _closed_loop(submit, workload, args) -> Result:
    """Issue ``workload`` through ``submit(prompt, adapter index, emit, issued_at)`` as C clients in a
    closed loop (or Poisson arrivals) and wait for every request; events arrive on ``emit`` from any thread."""
    res = Result()
    lock = threading.Lock()
    done = threading.Semaphore(0)
    queue = list(workload)
    failures: list[Exception] = []

    def issue(prompt, idx):
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
                failures.append(ev.error)
                done.release()

        submit(prompt, idx, emit, time.perf_counter())

    def next_request():
        with lock:
            if not queue:
                return
            prompt, idx = queue.pop(0)
        issue(prompt, idx)

    with RssPeak() as rss:
        t0 = time.perf_counter()
        if args.rate is None:
            for _ in range(min(args.concurrency, len(queue))):
                next_request()
        else:
            rng = random.Random(7)
            for prompt, idx in workload:
                issue(prompt, idx)
                time.sleep(rng.expovariate(args.rate))
        for _ in workload:
            done.acquire()
        res.wall_s = time.perf_counter() - t0
    if failures:
        raise failures[0]
    res.peak_rss_mib = rss.peak
    return res


class VllmHost:
    """One vLLM engine (``engine/vllm_engine.py``) open for the whole run, on an event loop thread of its own;
    every adapter loaded once (warm, like a server that has been running) and one request served off the
    clock (vLLM compiles on its first step)."""

    def __init__(self, source, adapters: list[Path], warm_prompt: list[int], args, lora: bool, lora_ops: str) -> None:
        from openlora.engine.text import load_codec
        from openlora.engine.vllm_engine import AdapterFolders, VllmEngine, VllmOptions

        paths = {f"a{i}": p for i, p in enumerate(adapters)}

        files = folder_loader(paths, source, args.rank)

        options = VllmOptions(
            dtype=args.dtype, max_loras=args.adapters, max_cpu_loras=args.adapters, max_lora_rank=args.rank,
            max_batch=args.concurrency, max_waiting=args.requests + 1, max_model_len=args.prompt_len + args.output_len + 8,
            kv_cache_gib=2, enforce_eager=args.vllm_eager, lora=lora, lora_ops=lora_ops,
        )  # fmt: skip
        self._folder = tempfile.TemporaryDirectory()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-bench-loop", daemon=True)
        self._thread.start()

        async def open_():
            engine = await VllmEngine.open(source, load_codec(source.path), options, files, AdapterFolders(Path(self._folder.name)))
            if lora:
                await asyncio.gather(*(engine._lora(cid) for cid in paths))
            return engine

        self.engine = self._call(open_())
        self.args = args
        self.run(workload=[(warm_prompt, 0)], use_adapters=lora)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def run(self, workload, use_adapters: bool) -> Result:
        """The closed loop (or Poisson arrivals) over this engine; requests are submitted on its loop."""

        def submit(prompt, idx, emit, t0):
            req = GenerationRequest(prompt, _params(self.args), emit, f"a{idx}" if use_adapters else None, submitted=t0)

            def on_loop():
                try:
                    self.engine.submit(req)
                except Exception as e:  # refused (queue full, bad request): the run reports it
                    emit(Failed(e))

            self.loop.call_soon_threadsafe(on_loop)

        return _closed_loop(submit, workload, self.args)

    def close(self) -> None:
        """Stop the engine (and its engine-core process), then the loop."""

        async def stop():
            self.engine.stop()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self._folder.cleanup()


class VllmSystem:
    """``vllm_nolora``, ``vllm_base``, ``vllm`` or ``vllm_stock``: rows with or without adapters on a shared :class:`VllmHost`."""

    def __init__(self, host: VllmHost, use_adapters: bool) -> None:
        self.host, self.use_adapters = host, use_adapters

    def run(self, workload) -> Result:
        return self.host.run(workload, self.use_adapters)


class StepClock:
    """A logits processor that timestamps every generation step (PEFT baselines' TTFT/ITL)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


class PeftSystem:
    """PEFT baselines: static batches of C with ``adapter_names`` (``peft_mixed``), or one request at a time
    with ``set_adapter`` (``peft_swap``)."""

    def __init__(self, peft_model, args, mixed: bool) -> None:
        self.peft_model, self.args, self.mixed = peft_model, args, mixed

    def run(self, workload) -> Result:
        from transformers import LogitsProcessorList

        args, peft_model = self.args, self.peft_model
        res = Result()
        batch = args.concurrency if self.mixed else 1
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
                if self.mixed:
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


def start_systems(names: list[str], source, adapters: list[Path], workload, args) -> tuple[dict, list]:
    """Every named system started and warmed (one request off the clock); returns ``{name: system}`` and
    what to close at the end."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    systems, hosts = {}, []
    warm = workload[0][0]
    if {"base", "engine"} & set(names):
        rm = load_resident(source, args.dtype, n_slots=args.adapters, max_rank=args.rank, device=args.device)
        for name in ("base", "engine"):
            if name in names:
                systems[name] = TorchSystem(rm, adapters, args, use_adapters=name == "engine")
                systems[name].run([(warm, 0)])
    if {"peft_mixed", "peft_swap"} & set(names):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        base = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype).to(args.device)
        peft_model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="a0", autocast_adapter_dtype=False)
        for i, p in enumerate(adapters[1:], start=1):
            peft_model.load_adapter(str(p), adapter_name=f"a{i}", autocast_adapter_dtype=False)
        peft_model.eval()
        for name in ("peft_mixed", "peft_swap"):
            if name in names:
                systems[name] = PeftSystem(peft_model, args, mixed=name == "peft_mixed")
                systems[name].run([(warm, 0)])
    if args.device == "cuda":
        torch.cuda.empty_cache()  # vLLM sizes its KV cache by the memory free when it starts
    for key, members in (((False, "grouped"), ("vllm_nolora",)), ((True, "grouped"), ("vllm_base", "vllm")), ((True, "vllm"), ("vllm_stock",))):
        wanted = [m for m in members if m in names]
        if wanted:
            host = VllmHost(source, adapters, warm, args, lora=key[0], lora_ops=key[1])
            hosts.append(host)
            for m in wanted:
                systems[m] = VllmSystem(host, use_adapters=m in ("vllm", "vllm_stock"))
    return systems, hosts


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
    ap.add_argument("--rounds", type=int, default=1, help="run the workload this many times per system, systems taking turns")
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
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    torch.set_num_threads(args.threads)
    names = [s for s in SYSTEMS if s in args.systems.split(",")]
    unknown = set(args.systems.split(",")) - set(SYSTEMS) - {""}
    if unknown:
        ap.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")

    from transformers import AutoConfig

    if args.random_base:
        args.base_model = str(build_random_base(args.random_base, args.model_cache, args.dtype))
    source = resolve_base_model(args.base_model, args.model_cache)
    rng = random.Random(1234)
    vocab = AutoConfig.from_pretrained(str(source.path)).vocab_size
    workload = [
        ([rng.randrange(100, vocab - 100) for _ in range(args.prompt_len)], idx)
        for idx in zipf_choices(args.adapters, args.zipf, args.requests, rng)
    ]
    print(
        f"workload: {args.requests} requests, K={args.adapters} adapters (r={args.rank}, Zipf {args.zipf}), "
        f"C={args.concurrency}{'' if args.rate is None else f', Poisson {args.rate}/s'}, prompt {args.prompt_len}, "
        f"output {args.output_len}, {args.dtype}, {args.threads} threads, {args.rounds} round(s); distinct adapters used: "
        f"{len({i for _, i in workload})}",
        flush=True,
    )
    rounds: dict[str, list[Result]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(source, args.adapters, args.rank, Path(tmp))
        systems, hosts = start_systems(names, source, adapters, workload, args)
        try:
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    rounds[name].append(systems[name].run(workload))
                    tps = rounds[name][-1].tokens / rounds[name][-1].wall_s
                    print(f"  round {r + 1} {name:11s} {tps:.1f} tok/s", flush=True)
        finally:
            for host in hosts:
                host.close()
    results: dict[str, dict] = {name: summary(rs) for name, rs in rounds.items()}

    def ratio(a, b):
        return results[a]["tokens_per_s"] / results[b]["tokens_per_s"] if a in results and b in results else None

    def best(group):
        ran = [n for n in group if n in results]
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
    print(f"\n{'system':12s}{'tok/s':>9s}{'TTFT p50':>10s}{'TTFT p99':>10s}{'ITL p50':>9s}{'ITL p99':>9s}{'RSS MiB':>9s}  rounds")
    for name in SYSTEMS:
        if name in results:
            r = results[name]
            print(
                f"{name:12s}{r['tokens_per_s']:9.1f}{r['ttft_p50_ms']:10.0f}{r['ttft_p99_ms']:10.0f}"
                f"{r['itl_p50_ms']:9.1f}{r['itl_p99_ms']:9.1f}{r['peak_rss_mib']:9.0f}  "
                + " ".join(f"{t:.1f}" for t in r["tokens_per_s_rounds"])
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
        ax.bar(names, [results[n][key] for n in names], color=["#888", "#2a7", "#c73", "#a35", "#bbb", "#69c", "#36a", "#c9c"][: len(names)])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    w = results["workload"]
    fig.suptitle(f"K={w['adapters']} adapters, C={w['concurrency']}, prompt {w['prompt_len']}, output {w['output_len']}, {w['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
