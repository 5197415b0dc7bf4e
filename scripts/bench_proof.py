"""Proof of serving, measured: can a verifier tell the adapter a node claims from what it computed?

Every call of every condition runs through a node engine with its proof collector, is signed as a node signs
it (``proof.attest``) and checked as a verifier checks it (``proof.verify``: float32 reference, bf16 probe,
float32 bare base for the projection of the node's error on the adapter's effect, β and its z):

    honest (must pass)   torch_bf16     the torch engine, bfloat16, batches of --batch mixed calls (the default)
                         torch_fp32     the same in float32
                         torch_solo     bfloat16, one call at a time (another batch composition)
                         torch_1thread  bfloat16 with 1 torch thread (another summation order)
                         vllm_bf16      vLLM's engine (the node's --engine vllm), bfloat16, top-k from its logprobs
    cheats (must fail)   base           the bare base, the adapter dropped
                         other          another adapter of the same shape
                         half           the adapter at half scale
                         drop_module    the adapter without its v_proj modules (every layer)
                         rank_half      the adapter truncated to half its rank (best approximation, SVD)
                         int8_base      the base's decoder weights rounded to 8 bits, the adapter on top
    reported             drop_one       one (layer, module) of the adapter dropped: layer 15's v_proj

Calls cycle over the three trained demo adapters and three random adapters at their scale (seeded), prompts
over the demo questions (seeded), half greedy and half sampled (T 0.7, top-p 0.9, seeded); completions stop at
EOS or --tokens. Then, in the same run: proof bytes per 32 tokens, each call's verification time over its
generation time (the verifier's prefills: reference, probe, base), and the node's throughput with proofs against the same workload without them (torch and vLLM,
alternated --rounds times; the median run of each). Prints one table and the acceptance lines (per condition:
the distance ratio, β = the share of the adapter's effect the node's error takes back, its z, and the adapter's
effect against the probe's rounding, rms nats over the committed entries); --json writes every figure, --raw
every call's statistics.

Usage: ``python scripts/bench_proof.py [--calls 100] [--honest-calls N] [--tokens 64] [--batch 16] [--json out.json] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from eth_account import Account  # noqa: E402

from openlora.adapters.peft_format import LoraAdapter, load_adapter  # noqa: E402
from openlora.engine.base import resolve_base_model  # noqa: E402
from openlora.engine.interface import Failed, Finished, GenerationRequest  # noqa: E402
from openlora.engine.lora import adaptable_shapes  # noqa: E402
from openlora.engine.model import load_resident  # noqa: E402
from openlora.engine.sampling import SamplingParams  # noqa: E402
from openlora.engine.scheduler import TorchEngine  # noqa: E402
from openlora.engine.slots import HostCache, SlotManager  # noqa: E402
from openlora.engine.text import load_codec  # noqa: E402
from openlora.proof.attest import Attestor  # noqa: E402
from openlora.proof.reference import Reference  # noqa: E402
from openlora.proof.tolerance import PROJECTION_BETA_LIMIT, PROJECTION_Z_LIMIT, RATIO_LIMIT  # noqa: E402
from openlora.proof.topk import TopLogprobs  # noqa: E402
from openlora.proof.verify import verify_call  # noqa: E402
from openlora.proof.wire import record_to_pb  # noqa: E402
from openlora.v1 import node_pb2 as pb  # noqa: E402
from proof_cheats import drop_module, drop_one, half_scale, int8_base, random_adapter, truncate_rank  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tests" / "fixtures" / "adapters"
TRAINED = ("medical", "legal", "finance")
RANDOM = ("random0", "random1", "random2")
HONEST = ("torch_bf16", "torch_fp32", "torch_solo", "torch_1thread", "vllm_bf16")
CHEATS = ("base", "other", "half", "drop_module", "rank_half", "int8_base")
REPORTED = ("drop_one",)
VARIANTS = {"half": half_scale, "drop_module": drop_module, "rank_half": truncate_rank, "drop_one": drop_one}
NODE = Account.from_key(b"\x51" * 32)


@dataclass
class Call:
    """One planned call: the prompt, the adapter the record claims, the adapter the engine computes with."""

    prompt: list[int]
    claimed: str
    computed: str | None
    sampling: SamplingParams
    proof: TopLogprobs = field(default_factory=TopLogprobs)
    latency_ms: float = 0.0
    tokens: int = 0


def questions() -> list[str]:
    out = []
    for domain in TRAINED:
        out += [json.loads(line)["question"] for line in (ROOT / "scripts" / "demo_data" / f"{domain}.jsonl").read_text().splitlines()]
    for qs in json.loads((ROOT / "scripts" / "demo_data" / "eval.json").read_text()).values():
        out += qs
    return sorted(set(out))


def plan(condition: str, n: int, tokens: int, codec, qs: list[str], seed: int) -> list[Call]:
    """``n`` seeded calls of ``condition``: adapters cycled, prompts drawn, every other call sampled."""
    rng = random.Random(seed)
    adapters = TRAINED + RANDOM
    calls = []
    for i in range(n):
        claimed = adapters[i % len(adapters)]
        computed = {"base": None, "other": adapters[(i + 1) % len(adapters)]}.get(condition, claimed)
        if condition in VARIANTS:
            computed = f"{claimed}#{condition}"
        greedy = i % 2 == 0
        sampling = SamplingParams(
            max_new_tokens=tokens, temperature=0.0 if greedy else 0.7, top_p=1.0 if greedy else 0.9,
            seed=None if greedy else rng.randrange(2**31),
        )  # fmt: skip
        prompt = codec.encode_chat([{"role": "user", "content": rng.choice(qs)}])
        calls.append(Call(prompt, claimed, computed, sampling))
    return calls


def run_torch(rm, calls: list[Call], served: dict[str, LoraAdapter], batch: int, proofs: bool = True) -> float:
    """Serve ``calls`` on the torch engine over ``rm`` with ``batch`` in flight; returns the wall time, s."""
    engine = TorchEngine(
        rm, SlotManager(rm.lora_layers, rm.routing, 8), HostCache(64), served.__getitem__,
        max_batch=batch, max_waiting=len(calls) + 1,
    )  # fmt: skip
    engine.start()
    queue, lock, done = list(calls), threading.Lock(), threading.Semaphore(0)

    def submit() -> None:
        with lock:
            if not queue:
                return
            call = queue.pop(0)
        t0 = time.perf_counter()

        def emit(ev) -> None:
            if isinstance(ev, Finished):
                call.latency_ms, call.tokens = (time.perf_counter() - t0) * 1000.0, ev.completion_tokens
                done.release()
                submit()
            elif isinstance(ev, Failed):
                raise ev.error

        if not proofs:
            call.proof = None
        engine.submit(GenerationRequest(call.prompt, call.sampling, emit, call.computed, proof=call.proof))

    t0 = time.perf_counter()
    for _ in range(min(batch, len(calls))):
        submit()
    for _ in calls:
        done.acquire()
    wall = time.perf_counter() - t0
    engine.stop()
    return wall


class VllmRunner:
    """The node's vLLM engine over the benchmark's adapter folders, driven with a closed loop."""

    def __init__(self, source, folders: dict[str, Path], batch: int, eager: bool, max_len: int) -> None:
        from openlora.engine.vllm_engine import AdapterFolders, VllmEngine, VllmOptions

        self.loop = asyncio.new_event_loop()
        self._tmp = tempfile.TemporaryDirectory()
        options = VllmOptions(
            dtype="bfloat16", max_loras=len(folders), max_cpu_loras=len(folders), max_lora_rank=8, max_batch=batch,
            max_waiting=4096, max_model_len=max_len, kv_cache_gib=2, enforce_eager=eager,
        )  # fmt: skip

        from bench_serving import folder_loader

        self.engine = self.loop.run_until_complete(
            VllmEngine.open(source, load_codec(source.path), options, folder_loader(folders, source, 8), AdapterFolders(Path(self._tmp.name)))
        )
        self.batch = batch

    def run(self, calls: list[Call], proofs: bool = True) -> float:
        async def one(call: Call) -> None:
            events: asyncio.Queue = asyncio.Queue()
            t0 = time.perf_counter()
            if not proofs:
                call.proof = None
            self.engine.submit(GenerationRequest(call.prompt, call.sampling, events.put_nowait, call.computed, proof=call.proof))
            while True:
                ev = await events.get()
                if isinstance(ev, Finished):
                    call.latency_ms, call.tokens = (time.perf_counter() - t0) * 1000.0, ev.completion_tokens
                    return
                if isinstance(ev, Failed):
                    raise ev.error

        async def drive() -> float:
            queue = list(calls)

            async def client():
                while queue:
                    await one(queue.pop(0))

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(self.batch)))
            return time.perf_counter() - t0

        return self.loop.run_until_complete(drive())

    def close(self) -> None:
        self.engine.stop()
        self.loop.close()
        self._tmp.cleanup()


def save_peft(adapter: LoraAdapter, folder: Path) -> Path:
    """Write a q/k/v/o LoRA in PEFT's format (for vLLM)."""
    from safetensors.torch import save_file

    template = json.loads((DEMO / "medical" / "adapter_config.json").read_text())
    folder.mkdir(parents=True)
    tensors = {}
    for name, m in adapter.modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = m.a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = m.b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({**template, **adapter.config}, indent=2))
    return folder


def verify_all(condition: str, calls: list[Call], attestor: Attestor, reference: Reference, adapters: dict) -> list[dict]:
    """Sign and verify every call; one dict of figures per call."""
    rows = []
    for call in calls:
        signed = attestor.attest(call.prompt, call.proof, call.sampling, call.claimed)
        served = pb.ServedCall(record=record_to_pb(signed), prompt_ids=call.prompt, completion_ids=call.proof.tokens)
        t0 = time.perf_counter()
        verdict = verify_call(served, reference, adapters.__getitem__)
        verify_ms = (time.perf_counter() - t0) * 1000.0
        rows.append({
            "condition": condition, "adapter": call.claimed, "family": "trained" if call.claimed in TRAINED else "random",
            "greedy": call.sampling.greedy, "tokens": len(call.proof.tokens), "check": verdict.check,
            "distance": verdict.distance, "noise": verdict.noise, "ratio": verdict.ratio, "z": verdict.z,
            "beta": verdict.beta, "beta_z": verdict.beta_z, "effect": verdict.effect,
            "misses": verdict.misses, "gap": verdict.gap, "verify_ms": verify_ms, "generate_ms": call.latency_ms,
            "proof_bytes": len(signed.record.proof),
        })  # fmt: skip
    return rows


def throughput(run, make_calls, rounds: int) -> dict:
    """tokens/s of the same workload with and without proofs, alternated ``rounds`` times (median run each)."""
    out = {"with": [], "without": []}
    for _ in range(rounds):
        for mode in ("with", "without"):
            calls = make_calls()
            wall = run(calls, proofs=mode == "with")
            out[mode].append(sum(c.tokens for c in calls) / wall)
    with_, without = statistics.median(out["with"]), statistics.median(out["without"])
    return {"with_tok_s": with_, "without_tok_s": without, "ratio": with_ / without, "runs": out}


def summarize(rows: list[dict]) -> dict:
    flagged = [r for r in rows if r["check"]]
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    projected = [r for r in rows if r["effect"]]
    by_family = {}
    for fam in ("trained", "random"):
        sub = [r for r in rows if r["family"] == fam]
        if sub:
            by_family[fam] = sum(1 for r in sub if r["check"]) / len(sub)
    return {
        "calls": len(rows), "flagged": len(flagged), "rate": len(flagged) / len(rows) if rows else 0.0,
        "by_check": {c: sum(1 for r in flagged if r["check"] == c) for c in sorted({r["check"] for r in flagged})},
        "by_family": by_family,
        "distance_median": statistics.median(r["distance"] for r in rows),
        "ratio_min": min(ratios, default=0.0), "ratio_median": statistics.median(ratios) if ratios else 0.0,
        "ratio_max": max(ratios, default=0.0), "tokens_mean": statistics.mean(r["tokens"] for r in rows),
        "beta_min": min((r["beta"] for r in projected), default=0.0),
        "beta_median": statistics.median(r["beta"] for r in projected) if projected else 0.0,
        "beta_max": max((r["beta"] for r in projected), default=0.0),
        "beta_z_min": min((r["beta_z"] for r in projected), default=0.0),
        "beta_z_max": max((r["beta_z"] for r in projected), default=0.0),
        "effect_median": statistics.median(r["effect"] for r in projected) if projected else 0.0,
        "noise_median": statistics.median(r["noise"] for r in rows if r["noise"]) if any(r["noise"] for r in rows) else 0.0,
        "greedy_gap_max": max((r["gap"] for r in rows if r["greedy"]), default=0.0),
        "sampling_z_min": min((r["z"] for r in rows if not r["greedy"] and r["z"]), default=0.0),
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100, help="calls per condition")
    ap.add_argument("--honest-calls", type=int, help="calls per honest condition (default: --calls)")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per call")
    ap.add_argument("--batch", type=int, default=16, help="calls in flight")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the throughput comparison")
    ap.add_argument("--throughput-calls", type=int, default=32)
    ap.add_argument("--conditions", default=",".join(HONEST + CHEATS + REPORTED))
    ap.add_argument(
        "--random-b-std", type=float, default=0.1,
        help="B spread of the random adapters (proof_cheats.random_adapter: 0.1 moves the output ~1 nat, 0.015 ~0.1)",
    )  # fmt: skip
    ap.add_argument("--vllm-eager", action="store_true", help="vLLM without compilation (faster start, slower steps)")
    ap.add_argument("--model-cache", type=Path, default=Path(os.environ.get("OPENLORA_MODEL_CACHE", ROOT / ".cache" / "models")))
    ap.add_argument("--quick", action="store_true", help="2 calls per condition, 8 tokens, 1 throughput round (a smoke run)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--raw", type=Path, help="write every call's figures here (JSON lines)")
    args = ap.parse_args(argv)
    if args.quick:
        args.calls, args.honest_calls, args.tokens, args.rounds, args.throughput_calls, args.batch = 2, 2, 8, 1, 4, 4
    conditions = [c for c in args.conditions.split(",") if c]
    torch.set_num_threads(args.threads)
    started = time.time()
    source = resolve_base_model(None, args.model_cache)
    codec = load_codec(source.path)
    shapes = adaptable_shapes(source.path)
    qs = questions()
    adapters: dict[str, LoraAdapter] = {
        d: load_adapter((DEMO / d / "adapter_config.json").read_bytes(), (DEMO / d / "adapter_model.safetensors").read_bytes(), shapes, 64)
        for d in TRAINED
    }
    adapters.update({name: random_adapter(shapes, seed=100 + i, b_std=args.random_b_std) for i, name in enumerate(RANDOM)})
    served = dict(adapters)
    for cheat, variant in VARIANTS.items():
        served.update({f"{a}#{cheat}": variant(ad) for a, ad in adapters.items()})
    reference = Reference(source, max_rank=8)
    vocab = reference.vocab_size
    for dtype in ("float32", "bfloat16"):  # both models loaded before any verification is timed
        reference.logprobs([1, 2], [3], None, dtype)
    seeds = {c: 1000 + i for i, c in enumerate(HONEST + CHEATS + REPORTED)}
    rows: list[dict] = []
    results: dict = {"conditions": {}}

    def record(condition: str, calls: list[Call], engine: str) -> None:
        attestor = Attestor(NODE, source.fingerprint, engine, vocab)
        got = verify_all(condition, calls, attestor, reference, adapters)
        rows.extend(got)
        results["conditions"][condition] = {"kind": "honest" if condition in HONEST else "cheat" if condition in CHEATS else "reported", **summarize(got)}
        s = results["conditions"][condition]
        print(
            f"  {condition:14s} {s['flagged']:4d}/{s['calls']:<4d} flagged  ratio {s['ratio_min']:.2f}..{s['ratio_max']:.2f}  "
            f"β {s['beta_min']:+.2f}..{s['beta_max']:+.2f}  z {s['beta_z_min']:.1f}..{s['beta_z_max']:.1f}  ({time.time() - started:.0f} s)",
            flush=True,
        )

    def make(condition: str) -> list[Call]:
        n = args.honest_calls if condition in HONEST and args.honest_calls else args.calls
        return plan(condition, n, args.tokens, codec, qs, seeds[condition])

    print(f"proof benchmark: {args.calls} calls per condition ({args.honest_calls or args.calls} honest), ≤ {args.tokens} tokens, batch {args.batch}, {args.threads} threads", flush=True)
    def fixed_length(condition: str) -> list[Call]:  # the throughput workload: greedy, every call --tokens long
        calls = plan(condition, args.throughput_calls, args.tokens, codec, qs, 7)
        for c in calls:
            c.sampling = SamplingParams(max_new_tokens=args.tokens, temperature=0.0, ignore_eos=True)
        return calls

    rm = load_resident(source, "bfloat16", n_slots=8, max_rank=8)
    for condition in [c for c in conditions if c not in ("torch_fp32", "int8_base", "vllm_bf16")]:
        calls = make(condition)
        if condition == "torch_1thread":
            torch.set_num_threads(1)
        run_torch(rm, calls, served, 1 if condition == "torch_solo" else args.batch)
        torch.set_num_threads(args.threads)
        record(condition, calls, "torch/bfloat16")
    results["throughput_torch"] = throughput(
        lambda calls, proofs: run_torch(rm, calls, served, args.batch, proofs), lambda: fixed_length("torch_bf16"), args.rounds
    )
    print(f"  torch throughput with/without proofs: {results['throughput_torch']['ratio']:.3f}", flush=True)
    del rm
    for condition, dtype, label in (("torch_fp32", "float32", "torch/float32"), ("int8_base", "bfloat16", "torch/bfloat16")):
        if condition in conditions:
            with tempfile.TemporaryDirectory() as tmp:
                base = int8_base(source, Path(tmp) / "base") if condition == "int8_base" else source
                rm = load_resident(base, dtype, n_slots=8, max_rank=8)
                calls = make(condition)
                run_torch(rm, calls, served, args.batch)
                record(condition, calls, label)
                del rm
    if "vllm_bf16" in conditions:
        with tempfile.TemporaryDirectory() as tmp:
            folders = {d: DEMO / d for d in TRAINED}
            folders.update({name: save_peft(adapters[name], Path(tmp) / name) for name in RANDOM})
            runner = VllmRunner(source, folders, args.batch, args.vllm_eager, max_len=512 + args.tokens)
            try:
                runner.run(make("vllm_bf16")[:1])  # first-step compilation off the clock
                calls = make("vllm_bf16")
                runner.run(calls)
                record("vllm_bf16", calls, "vllm/bfloat16")
                results["throughput_vllm"] = throughput(runner.run, lambda: fixed_length("vllm_bf16"), args.rounds)
                print(f"  vLLM throughput with/without proofs: {results['throughput_vllm']['ratio']:.3f}", flush=True)
            finally:
                runner.close()

    honest = [r for r in rows if r["condition"] in HONEST]
    per32 = [r["proof_bytes"] / r["tokens"] * 32 for r in rows if r["tokens"]]
    share = [r["verify_ms"] / r["generate_ms"] for r in rows if r["generate_ms"]]
    results["acceptance"] = {
        "detection_min": min((results["conditions"][c]["rate"] for c in CHEATS if c in results["conditions"]), default=None),
        "honest_calls": len(honest),
        "false_positives": sum(1 for r in honest if r["check"]),
        "proof_bytes_per_32_tokens_mean": statistics.mean(per32) if per32 else None,
        "proof_bytes_per_32_tokens_max": max(per32, default=None),
        "verify_share_median": statistics.median(share) if share else None,
        "verify_share_p90": sorted(share)[int(0.9 * (len(share) - 1))] if share else None,
        "verify_share_aggregate": sum(r["verify_ms"] for r in rows) / max(sum(r["generate_ms"] for r in rows), 1e-9),
        "throughput_ratio_torch": results.get("throughput_torch", {}).get("ratio"),
        "throughput_ratio_vllm": results.get("throughput_vllm", {}).get("ratio"),
    }
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("json", "raw")}
    results["settings"].update(ratio_limit=RATIO_LIMIT, projection_beta_limit=PROJECTION_BETA_LIMIT, projection_z_limit=PROJECTION_Z_LIMIT)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.raw:
        args.raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


def print_table(results: dict) -> None:
    print(
        f"\n{'condition':15s}{'kind':9s}{'calls':>6s}{'flagged':>8s}{'rate':>8s}  {'trained/random':>15s}  {'ratio min/med/max':>20s}"
        f"  {'β min/med/max':>18s}  {'z min/max':>12s}  {'effect/noise':>12s}  checks"
    )
    for name, s in results["conditions"].items():
        fam = "/".join(f"{s['by_family'].get(f, 0):.0%}" for f in ("trained", "random"))
        print(
            f"{name:15s}{s['kind']:9s}{s['calls']:6d}{s['flagged']:8d}{s['rate']:8.1%}  {fam:>15s}  "
            f"{s['ratio_min']:6.2f}/{s['ratio_median']:5.2f}/{s['ratio_max']:6.2f}  "
            f"{s['beta_min']:+6.2f}/{s['beta_median']:+5.2f}/{s['beta_max']:+5.2f}  {s['beta_z_min']:6.1f}/{s['beta_z_max']:5.1f}  "
            f"{s['effect_median']:5.3f}/{s['noise_median']:5.3f}  {s['by_check']}"
        )
    a = results["acceptance"]

    def fmt(v, pattern):
        return "n/a" if v is None else pattern.format(v)

    print(f"\ndetection, worst cheat: {fmt(a['detection_min'], '{:.1%}')} (≥ 99%)")
    print(f"false positives: {a['false_positives']} of {a['honest_calls']} honest calls (0 over ≥ 300)")
    print(f"proof bytes per 32 tokens: mean {fmt(a['proof_bytes_per_32_tokens_mean'], '{:.0f}')}, max {fmt(a['proof_bytes_per_32_tokens_max'], '{:.0f}')} (≤ 512)")
    print(
        f"verification / generation time per call: median {fmt(a['verify_share_median'], '{:.1%}')}, p90 "
        f"{fmt(a['verify_share_p90'], '{:.1%}')}, all calls {fmt(a['verify_share_aggregate'], '{:.1%}')} (≤ 10%)"
    )
    print(
        f"throughput with proofs / without: torch {fmt(a['throughput_ratio_torch'], '{:.3f}')}, vLLM "
        f"{fmt(a['throughput_ratio_vllm'], '{:.3f}')} (≥ 0.98)"
    )


if __name__ == "__main__":
    sys.exit(main())
