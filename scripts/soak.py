"""Load soak: many concurrent streaming clients across many adapters against one real node.

    openlora-node start --port 0 --no-p2p (subprocess, 127.0.0.1)      ◄── RSS sampled every 1 s (psutil)
      ▲ K random rank-r LoRAs (shapes of the medical demo adapter, so valid for the default base),
      │   signed by a publisher key made in TMP, published through the SDK (NodeClient.publish)
      │
      │ a warm-up call to every adapter (so that RSS is watched in the steady state), then
      C client tasks (grpc.aio, one process, a channel per 50 clients), for D seconds each loops:
        pick base (--base-share) or an adapter by Zipf(--zipf) ─► Generate(max tokens M) ─► outcome
          completed   OK with a final message (finish STOP/LENGTH, 1..M tokens)
          cancelled   the client cancelled on purpose after the first text (--cancel-share) → CANCELLED
          refused     RESOURCE_EXHAUSTED (queue full or rate limit): back off as the SDK does, go on
          unexpected  anything else (a code, OK without a final message, a deadline) → the soak fails
      then stop issuing, drain what is in flight (every call has a deadline of --call-timeout s),
      cancel a few long streams mid-way, check the node freed their rows and still serves, stop it.

Checks (exit 1 if one fails, 0 otherwise): no unexpected outcome; every issued call accounted for
(completed + cancelled + refused + unexpected = issued, nothing left in flight after the drain);
the slope of the RSS floor over the second half of the load at most --max-rss-slope MiB/min
(:func:`rss_floor_slope`; the plain fit through every sample is printed too); the mid-way cancels
ended CANCELLED, the node's running/waiting went back to 0 and a later call completed; the node
exited 0 on SIGTERM.

Node settings: --max-batch 16 (the node's default) and --max-waiting 32 instead of 256: a queue
should hold about what the node serves in a few seconds, so that a waiting call does not outlive
its client's patience (--call-timeout; 256 calls of 12 tokens take minutes on 2 shared CPU
cores); and with it far below the client count, backpressure (RESOURCE_EXHAUSTED) is exercised,
not just queueing. Each client sends its own ``x-openlora-client`` key, so the node's per-client
rate limit (on by default) applies per client as in production, not to all soak clients as one
127.0.0.1.

    scripts/soak                                   # 200 clients, 50 adapters, 120 s
    scripts/soak --clients 40 --adapters 10 --duration 20 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
from safetensors import safe_open
from safetensors.numpy import save as st_save

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "fixtures" / "adapters" / "medical"
MIB = 2**20

PROMPTS = (
    "What helps a sore throat?",
    "Explain what a contract is in one sentence.",
    "How do index funds work?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "Give me a tip for learning a language.",
    "What is a prime number?",
    "Describe a cat in a few words.",
)
CANCEL_PROMPT = "Count from 1 to 200, one number per line."
CLIENTS_PER_CHANNEL = 50


# ----- adapters -----


def make_adapters(k: int, rank: int, out: Path, seed: int) -> list[Path]:
    """Write ``k`` PEFT LoRA folders with random weights (N(0, 0.02), float32) in the demo adapter's layout.

    The medical demo adapter (r=8 on q/k/v/o of every layer of SmolLM2-135M) gives the tensor names and
    shapes, with A as [rank, in] and B as [out, rank] (``rank`` ≤ its rank).

    Args:
        k: number of adapters (≥ 1).
        rank: LoRA rank r, 1..template rank.
        out: folder to write ``a0 … a{k-1}`` into.
        seed: RNG seed (same seed, same adapters, same CIDs for the same publisher key).

    Returns:
        The adapter folders.

    Raises:
        ValueError: ``k`` < 1 or ``rank`` outside 1..template rank.
    """
    config = json.loads((TEMPLATE / "adapter_config.json").read_text())
    if k < 1:
        raise ValueError(f"--adapters must be ≥ 1, got {k}")
    if not 1 <= rank <= config["r"]:
        raise ValueError(f"--rank must be in 1..{config['r']} (the template adapter's rank), got {rank}")
    with safe_open(TEMPLATE / "adapter_model.safetensors", "np") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    config.update(r=rank, lora_alpha=2 * rank)
    rng = np.random.default_rng(seed)
    folders = []
    for i in range(k):
        tensors = {}
        for name, (rows, cols) in shapes.items():
            shape = (rank, cols) if ".lora_A." in name else (rows, rank)
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        folder = out / f"a{i}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "adapter_model.safetensors").write_bytes(st_save(tensors))
        folders.append(folder)
    return folders


def publish_all(address: str, folders: list[Path], key_dir: Path) -> list[str]:
    """Publish every folder through the SDK, signed by a publisher key created in ``key_dir``.

    Returns:
        The adapter CIDs, in ``folders`` order.

    Raises:
        grpc.RpcError: the node refused an adapter.
    """
    from openlora.adapters.keys import create_keystore, load_account
    from openlora.client import NodeClient

    key_path = key_dir / "publisher.json"
    # a throwaway key: a low scrypt cost keeps opening it instant
    create_keystore(key_path, "soak", scrypt_n=2**4)
    signer = load_account(key_path, "soak")
    with NodeClient(address, timeout=120) as client:
        return [client.publish(folder, signer, name=f"soak-{folder.name}").cid for folder in folders]


# ----- load -----


@dataclass
class Tally:
    """What the clients saw. Latencies in ms (client side, from issue), tokens are completion tokens."""

    issued: int = 0
    in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    refused: Counter = field(default_factory=Counter)  # "backpressure" / "rate_limit"
    unexpected: Counter = field(default_factory=Counter)  # code name → count
    unexpected_samples: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    tokens: int = 0
    adapters_served: set = field(default_factory=set)

    def bad(self, kind: str, detail: str) -> None:
        """Count an unexpected outcome under ``kind`` (the ``CODE`` of its detail) and keep the first 10 details."""
        self.unexpected[kind] += 1
        if len(self.unexpected_samples) < 10:
            self.unexpected_samples.append(f"{kind}: {detail}")


@dataclass
class Outcome:
    """One call's end: ``kind`` is completed / cancelled / refused / unexpected; an unexpected one's ``detail``
    starts with ``CODE:`` (a status code name, or OK_NO_DONE / BAD_DONE for a final message missing or wrong)."""

    kind: str
    detail: str = ""
    done: object = None
    ttft_s: float | None = None


async def one_call(stub, request, metadata, timeout: float, cancel_after_first: bool) -> Outcome:
    """Run one Generate stream to its end (or cancel it after its first text) and classify how it ended."""
    from openlora.v1 import node_pb2 as pb

    t0 = time.perf_counter()
    call = stub.Generate(request, timeout=timeout, metadata=metadata)
    done, ttft, cancelled = None, None, False
    try:
        async for resp in call:
            if resp.HasField("done"):
                done = resp.done
                continue
            if ttft is None:
                ttft = time.perf_counter() - t0
            if cancel_after_first:
                cancelled = call.cancel()
                break
        code = await call.code()
    except grpc.aio.AioRpcError as e:
        code = e.code()
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Outcome("refused", "rate_limit" if (e.details() or "").startswith("rate limit") else "backpressure")
        return Outcome("unexpected", f"{code.name}: {e.details()}")
    if cancelled:
        if code is grpc.StatusCode.CANCELLED:
            return Outcome("cancelled", ttft_s=ttft)
        return Outcome("unexpected", f"{code.name}: how a stream the client cancelled ended")
    if code is not grpc.StatusCode.OK:
        return Outcome("unexpected", f"{code.name}: the stream ended so without raising")
    max_tokens = request.sampling.max_new_tokens
    if done is None:
        return Outcome("unexpected", "OK_NO_DONE: the stream ended without its final message")
    if done.finish_reason not in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) or not (
        1 <= done.usage.completion_tokens <= max_tokens
    ):
        return Outcome(
            "unexpected",
            f"BAD_DONE: finish {pb.FinishReason.Name(done.finish_reason)}, {done.usage.completion_tokens} tokens",
        )
    return Outcome("completed", done=done, ttft_s=ttft)


class Workload:
    """Adapter popularity: ``None`` (the base) with probability ``base_share``, else Zipf(``alpha``) over CIDs."""

    def __init__(self, cids: list[str], alpha: float, base_share: float) -> None:
        self.cids = cids
        self.weights = [1.0 / (i + 1) ** alpha for i in range(len(cids))]
        self.base_share = base_share

    def pick(self, rng: random.Random) -> str | None:
        """The adapter CID of the next call, ``None`` for the base model."""
        if not self.cids or rng.random() < self.base_share:
            return None
        return rng.choices(self.cids, weights=self.weights)[0]


async def client_loop(i: int, stub, work: Workload, tally: Tally, stop_at: float, args) -> None:
    """One closed-loop client: issue, wait for the end, issue again until ``stop_at`` (monotonic s)."""
    from openlora.api.ratelimit import CLIENT_KEY_HEADER
    from openlora.client import RetryPolicy, generate_request

    rng = random.Random(args.seed * 100_003 + i)
    metadata = ((CLIENT_KEY_HEADER, f"soak-{i}"),)
    backoff, refusals = RetryPolicy(), 0  # refusals in a row: the SDK's exponential backoff with full jitter
    while time.monotonic() < stop_at:
        adapter = work.pick(rng)
        request = generate_request(rng.choice(PROMPTS), adapter=adapter, max_new_tokens=args.max_tokens)
        tally.issued += 1
        tally.in_flight += 1
        t0 = time.perf_counter()
        try:
            out = await one_call(stub, request, metadata, args.call_timeout, rng.random() < args.cancel_share)
        finally:
            tally.in_flight -= 1
        if out.kind == "refused":
            tally.refused[out.detail] += 1
            await asyncio.sleep(backoff.backoff_s(refusals, rng))
            refusals += 1
            continue
        refusals = 0
        if out.kind == "completed":
            tally.completed += 1
            tally.latency_ms.append((time.perf_counter() - t0) * 1000)
            tally.ttft_ms.append(out.ttft_s * 1000 if out.ttft_s is not None else tally.latency_ms[-1])
            tally.tokens += out.done.usage.completion_tokens
            tally.adapters_served.add(adapter)
        elif out.kind == "cancelled":
            tally.cancelled += 1
        else:
            tally.bad(out.detail.split(":", 1)[0], out.detail)


def node_rss(proc: psutil.Process) -> int:
    """RSS of the node process and its children, bytes."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


async def sample_rss(proc: psutil.Process, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    """Append ``(seconds since start, RSS bytes)`` every second until ``stop`` is set."""
    t0 = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - t0, node_rss(proc)))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def cancel_check(stub, n: int, timeout: float) -> dict:
    """Cancel ``n`` long streams after their first text; then the node must free their rows and still serve.

    Returns:
        ``{"streams", "cancelled", "rows_freed", "served_after"}``.
    """
    from openlora.client import generate_request
    from openlora.v1 import node_pb2 as pb

    long_request = generate_request(CANCEL_PROMPT, max_new_tokens=128, temperature=0)
    outs = await asyncio.gather(*(one_call(stub, long_request, (), timeout, True) for _ in range(n)))
    cancelled = sum(o.kind == "cancelled" for o in outs)
    rows_freed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            info = await stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:  # the node is gone: reported by the checks, not as a traceback
            break
        if info.running == 0 and info.waiting == 0:
            rows_freed = True
            break
        await asyncio.sleep(0.2)
    after = await one_call(stub, generate_request(PROMPTS[0], max_new_tokens=8), (), timeout, False)
    return {"streams": n, "cancelled": cancelled, "rows_freed": rows_freed, "served_after": after.kind == "completed"}


async def warm_up(stub, cids: list[str], concurrency: int, timeout: float) -> list[str]:
    """One 1-token call per adapter, ``concurrency`` at a time, so that every adapter sits parsed in the node's
    host cache before its RSS is watched (the steady state of a node that has been running).

    Returns:
        How the calls that did not complete ended (empty when all did).
    """
    from openlora.client import generate_request

    gate = asyncio.Semaphore(concurrency)

    async def one(cid: str) -> Outcome:
        async with gate:
            return await one_call(stub, generate_request(PROMPTS[0], adapter=cid, max_new_tokens=1), (), timeout, False)

    outs = await asyncio.gather(*map(one, cids))
    return [f"{cid}: {o.detail}" for cid, o in zip(cids, outs) if o.kind != "completed"]


async def run_load(address: str, pid: int, cids: list[str], args) -> dict:
    """Drive the clients for ``args.duration`` s, drain, run the cancel check; returns the raw figures."""
    from openlora.v1 import node_pb2_grpc

    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(math.ceil(args.clients / CLIENTS_PER_CHANNEL))
    ]
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 30) for ch in channels))
        stubs = [node_pb2_grpc.NodeStub(ch) for ch in channels]
        t_warm = time.monotonic()
        warm_failed = await warm_up(stubs[0], cids, args.max_batch, args.call_timeout)
        warm_s = time.monotonic() - t_warm
        print(f"warm-up: one call per adapter in {warm_s:.1f} s; load for {args.duration:g} s …", flush=True)
        tally, samples, stop = Tally(), [], asyncio.Event()
        sampler = asyncio.create_task(sample_rss(psutil.Process(pid), samples, stop))
        work = Workload(cids, args.zipf, args.base_share)
        t0 = time.monotonic()
        stop_at = t0 + args.duration
        tasks = [
            asyncio.create_task(client_loop(i, stubs[i // CLIENTS_PER_CHANNEL], work, tally, stop_at, args))
            for i in range(args.clients)
        ]
        _, pending = await asyncio.wait(tasks, timeout=args.duration + args.call_timeout + 10)
        hung = tally.in_flight
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()
        wall = time.monotonic() - t0
        stop.set()
        await sampler
        cancels = await cancel_check(stubs[0], args.cancel_streams, args.call_timeout)
        return {
            "tally": tally, "samples": samples, "wall_s": wall, "hung": hung, "cancel_check": cancels,
            "warm_up_failed": warm_failed,
        }  # fmt: skip
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


# ----- figures and checks -----


def percentile(xs: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``xs`` by linear interpolation; 0.0 for an empty list."""
    if not xs:
        return 0.0
    return float(np.percentile(xs, p))


def rss_slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over the second half of ``samples`` (``(s, bytes)``), MiB per minute
    (0.0 with fewer than 4 points)."""
    half = samples[len(samples) // 2 :]
    if len(half) < 4:
        return 0.0
    return statistics.linear_regression([t for t, _ in half], [r / MIB for _, r in half]).slope * 60


def rss_floor_slope(samples: list[tuple[float, int]], bins: int = 6) -> float:
    """Slope of the RSS floor over the second half of ``samples``, MiB per minute: the second half is cut into
    ``bins`` runs of equal length (2 samples at least) and a line is fitted through each run's minimum (0.0
    with fewer than 2 runs).

    Why the floor: under load the node's RSS jumps by hundreds of MiB for a few seconds (seen during batched
    prefills) and falls back, so a fit through every sample follows where the last jump happened to land;
    a leak instead raises the level RSS falls back to.
    """
    half = samples[len(samples) // 2 :]
    size = max(2, len(half) // bins)
    runs = [half[i : i + size] for i in range(0, len(half) - size + 1, size)]
    if len(runs) < 2:
        return 0.0
    floors = [min(run, key=lambda s: s[1]) for run in runs]
    return statistics.linear_regression([t for t, _ in floors], [r / MIB for _, r in floors]).slope * 60


def figures(raw: dict, args) -> dict:
    """The run's figures (JSON-able): counts, latency/TTFT percentiles in ms, tokens/s, RSS in MiB."""
    t: Tally = raw["tally"]
    samples = raw["samples"]
    return {
        "config": {
            k: getattr(args, k)
            for k in ("clients", "adapters", "duration", "max_tokens", "rank", "zipf", "base_share", "cancel_share",
                      "max_batch", "max_waiting", "call_timeout", "max_rss_slope", "seed")
        },  # fmt: skip
        "wall_s": raw["wall_s"],
        "requests": t.issued,
        "completed": t.completed,
        "cancelled": t.cancelled,
        "refused": dict(t.refused),
        "unexpected": dict(t.unexpected),
        "unexpected_samples": t.unexpected_samples,
        "hung": raw["hung"],
        "codes": {
            "OK": t.completed, "CANCELLED": t.cancelled, "RESOURCE_EXHAUSTED": sum(t.refused.values()), **t.unexpected
        },  # fmt: skip
        "adapters_served": len([a for a in t.adapters_served if a is not None]),
        "latency_ms": {"p50": percentile(t.latency_ms, 50), "p99": percentile(t.latency_ms, 99)},
        "ttft_ms": {"p50": percentile(t.ttft_ms, 50), "p99": percentile(t.ttft_ms, 99)},
        "tokens": t.tokens,
        "tokens_per_s": t.tokens / raw["wall_s"] if raw["wall_s"] else 0.0,
        "rss_mib": {
            "start": samples[0][1] / MIB if samples else 0.0,
            "end": samples[-1][1] / MIB if samples else 0.0,
            "max": max(r for _, r in samples) / MIB if samples else 0.0,
            "slope_mib_per_min": rss_slope(samples),
            "floor_slope_mib_per_min": rss_floor_slope(samples),
            "samples": len(samples),
            "series": [(round(t, 1), round(r / MIB, 1)) for t, r in samples],
        },
        "cancel_check": raw["cancel_check"],
        "warm_up_failed": raw["warm_up_failed"],
    }


def checks(fig: dict, args) -> dict[str, bool]:
    """Each acceptance check of the soak by name → passed."""
    accounted = fig["completed"] + fig["cancelled"] + sum(fig["refused"].values()) + sum(fig["unexpected"].values())
    c = fig["cancel_check"]
    return {
        "warm-up call to every adapter completed": not fig["warm_up_failed"],
        "only OK / CANCELLED / RESOURCE_EXHAUSTED": not fig["unexpected"],
        "every call accounted for, none hung": accounted == fig["requests"] and fig["hung"] == 0,
        "calls completed": fig["completed"] > 0,
        f"RSS floor slope <= {args.max_rss_slope} MiB/min": (
            fig["rss_mib"]["floor_slope_mib_per_min"] <= args.max_rss_slope
        ),
        "mid-way cancels ended CANCELLED": c["cancelled"] == c["streams"],
        "rows freed after cancels": c["rows_freed"],
        "node serves after cancels": c["served_after"],
        "node exited 0 on SIGTERM": fig.get("node_exit_code") == 0,
    }


def report(fig: dict, results: dict[str, bool]) -> str:
    """Human-readable summary of the figures and checks."""
    cfg, rss = fig["config"], fig["rss_mib"]
    lines = [
        f"soak: {cfg['clients']} clients, {cfg['adapters']} adapters (r={cfg['rank']}, Zipf {cfg['zipf']}, "
        f"base share {cfg['base_share']}), {cfg['duration']} s, max tokens {cfg['max_tokens']}, "
        f"node --max-batch {cfg['max_batch']} --max-waiting {cfg['max_waiting']}",
        f"  requests        {fig['requests']}  (wall {fig['wall_s']:.1f} s incl. drain)",
        f"  completed       {fig['completed']}  ({fig['adapters_served']} distinct adapters + base)",
        f"  cancelled       {fig['cancelled']}  (on purpose, after the first text)",
        f"  refused         {sum(fig['refused'].values())}  {fig['refused'] or ''}",
        f"  errors by code  {fig['codes']}",
        f"  latency         p50 {fig['latency_ms']['p50']:.0f} ms   p99 {fig['latency_ms']['p99']:.0f} ms",
        f"  TTFT            p50 {fig['ttft_ms']['p50']:.0f} ms   p99 {fig['ttft_ms']['p99']:.0f} ms",
        f"  tokens/s        {fig['tokens_per_s']:.1f}  ({fig['tokens']} completion tokens)",
        f"  node RSS        start {rss['start']:.0f} MiB, end {rss['end']:.0f} MiB, max {rss['max']:.0f} MiB, "
        f"{rss['samples']} samples",
        f"  RSS trend       2nd half: fit {rss['slope_mib_per_min']:+.1f} MiB/min, "
        f"floor {rss['floor_slope_mib_per_min']:+.1f} MiB/min",
        f"  cancel check    {fig['cancel_check']}",
    ]
    lines += [f"  unexpected      {s}" for s in fig["unexpected_samples"]]
    lines += [f"  warm-up failed  {s}" for s in fig["warm_up_failed"]]
    lines += [f"  [{'ok' if ok else 'FAIL'}] {name}" for name, ok in results.items()]
    lines.append("soak: PASS" if all(results.values()) else "soak: FAIL")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``None``: ``sys.argv``); argparse exits 2 with a message on a bad value."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200, help="concurrent streaming clients")
    ap.add_argument("--adapters", type=int, default=50, help="distinct random adapters published")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load (then the drain)")
    ap.add_argument("--max-tokens", type=int, default=12, help="max new tokens per call")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the random adapters (1..8)")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of adapter popularity (0: uniform)")
    ap.add_argument("--base-share", type=float, default=0.1, help="share of calls to the base model")
    ap.add_argument("--cancel-share", type=float, default=0.02, help="share of calls cancelled after their first text")
    ap.add_argument("--cancel-streams", type=int, default=5, help="long streams cancelled mid-way at the end")
    ap.add_argument("--max-batch", type=int, default=16, help="node --max-batch")
    ap.add_argument("--max-waiting", type=int, default=32, help="node --max-waiting (below --clients: backpressure)")
    ap.add_argument("--call-timeout", type=float, default=120.0, help="deadline of every call, s (hang: fail)")
    ap.add_argument("--max-rss-slope", type=float, default=30.0, help="max slope of the RSS floor, MiB/min")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures and checks here")
    args = ap.parse_args(argv)
    for name in ("clients", "adapters", "max_tokens", "max_batch", "max_waiting"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.duration <= 0 or args.call_timeout <= 0:
        ap.error("--duration and --call-timeout must be > 0 seconds")
    if not (0 <= args.base_share <= 1 and 0 <= args.cancel_share <= 1):
        ap.error("--base-share and --cancel-share must be in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns 0 when every check passed, 1 when one failed (see the module docstring), 2 when
    it could not run (a bad flag, the node did not start)."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # one conversion of the base model, shared with the tests and the demo
    os.environ.setdefault("OPENLORA_MODEL_CACHE", str(ROOT / ".cache" / "models"))
    from openlora.local import NodeProcess

    with tempfile.TemporaryDirectory(prefix="openlora-soak-") as tmp:
        tmp = Path(tmp)
        try:
            folders = make_adapters(args.adapters, args.rank, tmp / "adapters", args.seed)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        t = time.monotonic()
        try:
            node = NodeProcess(
                tmp / "node", "--no-p2p", "--max-batch", str(args.max_batch), "--max-waiting", str(args.max_waiting)
            )  # fmt: skip
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            print(f"node ready on {node.address} in {time.monotonic() - t:.1f} s (pid {node.proc.pid})", flush=True)
            t = time.monotonic()
            cids = publish_all(node.address, folders, tmp)
            print(f"published {len(cids)} adapters in {time.monotonic() - t:.1f} s", flush=True)
            raw = asyncio.run(run_load(node.address, node.proc.pid, cids, args))
            alive = node.proc.poll() is None
        finally:
            code = node.stop()
        fig = figures(raw, args)
        fig["node_exit_code"] = code if alive else f"died during the soak ({code})"
        if not alive:
            print("".join(node.stderr[-30:]), file=sys.stderr)
    results = checks(fig, args)
    fig["checks"] = results
    fig["passed"] = all(results.values())
    print(report(fig, results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    return 0 if fig["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
