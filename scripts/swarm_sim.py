"""Swarm scale test: N p2p-only peers on 127.0.0.1 (the swarm library, no engine) in a random
sparse topology; gossip reach, DHT lookups, a fan-out fetch and churn, printed as one table.

    driver (this process)                           peer i (a child process: this file --peer)
    ─────────────────────                           ──────────────────────────────────────────
    start peer 0, then each peer i bootstraps  ───► Swarm(data dir, BlockStore, base FP, …) on
      to --degree random earlier peers              127.0.0.1:0; answers JSON lines on stdin:
    wait until the swarm is at rest (no             make / announce / seen (waits for it) /
      connection count changes, the peers use       lookup / fetch / stats / quit
      under half the cores: ``Sim.settle``)
    (a) reach: --announcements peers each announce a fresh adapter; every peer notes when the
        announcement reached it (its catalog callback): delay after the publisher's clock,
        p50/p99 over every (announcement, peer); /openlora/1/adapters messages each peer
        received per announcement (duplicates included)
    (b) DHT: --lookups lookups of those CIDs, each from a peer the provider did not bootstrap
        with or from, in the DHT only (``Swarm.find_providers``: the catalog is not consulted);
        p50/p99 time, DHT requests sent, and hops (GET_PROVIDERS rounds; 0 when the record was
        held there)
    (c) fetch: one peer fetches a --fetch-mb MB adapter alone (the baseline), then --fetchers
        other peers fetch another one of the same size at once from its one provider (the
        provider names the others, so they trade blocks: ``/openlora/have/1.0.0``); time until
        the last has every block, bytes compared; --upload-mbps limits what each peer serves
    (d) churn: --churn of the peers are SIGKILLed and as many new ones join (each bootstraps to
        random survivors); then lookups again, of CIDs whose provider is alive (an adapter of a
        survivor, and one of each newcomer), from random live peers: every one must find a live
        provider; peak RSS of every peer before and after, survivors compared

Prints the table (and ``--json FILE``); exit status 0 when every functional check held (every
peer reached, every lookup found a provider, fetched bytes equal), 1 otherwise. Timing targets
are printed beside the figures, never asserted: this machine's cores are shared.

Network rule: every peer listens on 127.0.0.1 and dials only peers of this run; no bootstrap list,
mDNS or UPnP; every child is stopped (or killed) by PID before the driver exits.

    scripts/swarm_sim                      # 40 peers
    scripts/swarm_sim --peers 12 --lookups 12 --json sim.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
LOW_WATER, HIGH_WATER = 32, 96  # openlora.p2p.host's (not imported here: the driver loads no libp2p)
FP = "sha256:" + "5e" * 32
MB = 1_000_000
MIB = 2**20
PEER_START_S = 300.0  # one peer to start (40 Python processes share 2 cores, with whatever else runs)
# The node's defaults (1 s heartbeat, status every 10 s), with generous timeouts: 40 processes share 2
# cores, and a functional check must not fail on a slow moment.
SWARM = dict(request_timeout_s=30.0, dht_timeout_s=30.0, bootstrap_retry_s=1.0)
CALL_S = 60.0  # one query of a peer's own swarm (stats, DHT state) from its command loop
SETTLE_POLL_S = 5.0  # how often the driver looks whether the swarm came to rest after starting


# ── peer side ────────────────────────────────────────────────────────────────────────────────


def run_peer(work: Path, settings: dict, bootstrap: list[str]) -> None:
    """A peer: a Swarm with ``settings`` (SwarmConfig fields: connection watermarks, upload limit), answering one
    JSON command per stdin line with one JSON line."""
    from openlora.adapters.manifest import parse_manifest
    from openlora.adapters.signing import check_signature
    from openlora.content import BlockStore
    from openlora.p2p.messages import TOPIC_ADAPTERS, LocalStatus
    from openlora.p2p.swarm import Swarm, SwarmConfig

    logging.basicConfig(level=logging.ERROR)

    def validate(raw: bytes):  # type: ignore[no-untyped-def]
        manifest = parse_manifest(raw)
        check_signature(manifest)
        return manifest

    seen: dict[str, float] = {}
    arrived = threading.Condition()

    def on_adapter(record) -> None:  # type: ignore[no-untyped-def]
        with arrived:
            seen.setdefault(record.cid, time.time())
            arrived.notify_all()
    store = BlockStore(work / "blocks")
    swarm = Swarm(
        work, store, FP, validate,
        status=lambda: LocalStatus(grpc_address="127.0.0.1:1", base_name="sim", base_fingerprint=FP),
        on_adapter=on_adapter,
        config=SwarmConfig(bootstrap=tuple(bootstrap), **settings, **SWARM),  # type: ignore[arg-type]
    )  # fmt: skip
    swarm.start()
    me = psutil.Process()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()

    def answer(cmd: dict) -> dict:
        op = cmd["op"]
        if op == "make":
            cid = _make_adapter(store, cmd["size"], cmd["seed"])
            swarm.catalog.add(cid, store.get(cid), FP, f"sim-{cmd['seed']}", local=True)
            return {"cid": cid}
        if op == "announce":
            started = time.time()
            swarm.announce(cmd["cid"]).result(60)
            return {"t0": started}
        if op == "seen":  # waits up to wait_s for it: one question per peer, not a poll loop loading 40 processes
            with arrived:
                arrived.wait_for(lambda: cmd["cid"] in seen, timeout=cmd.get("wait_s", 0))
                return {"at": seen.get(cmd["cid"])}
        if op == "lookup":
            lookup = swarm.find_providers(cmd["cid"]).result(60)
            return {"providers": list(lookup.providers), "seconds": lookup.seconds, "queries": lookup.queries, "hops": lookup.hops}
        if op == "fetch":
            fetched = swarm.fetch_adapter(cmd["cid"], timeout_s=cmd["limit_s"]).result(cmd["limit_s"] + 10)
            weights = store.cat(fetched.manifest.files[-1].cid)
            return {"seconds": fetched.stats.seconds, "bytes": fetched.stats.bytes, "weights": len(weights),
                    "sources": len(fetched.stats.by_source), "digest": _digest(weights)}  # fmt: skip
        if op == "stats":
            info = swarm.dht_info(CALL_S)
            stats = swarm.stats(CALL_S)
            return {"rss": me.memory_info().rss, "peers": len(swarm.connected_peers(CALL_S)), "served": stats.bytes_served,
                    "gossip": stats.gossip_received.get(TOPIC_ADAPTERS, 0), "routing": info.routing_table if info else 0}  # fmt: skip
        raise ValueError(f"unknown op {op!r}")

    _say({"peer_id": swarm.peer_id, "multiaddr": swarm.multiaddr})
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            try:
                _say(answer(cmd))
            except Exception as e:  # reported to the driver, which counts it
                _say({"error": f"{type(e).__name__}: {e}"})
    finally:
        swarm.stop()


def _exit_with_parent(parent: int) -> None:
    """End this peer when the driver is gone (killed by a timeout, say): no orphan keeps running."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _make_adapter(store, size: int, seed: int) -> str:  # type: ignore[no-untyped-def]
    """Store a two-file adapter with ``size`` random weight bytes; return its CID."""
    from eth_account import Account

    from openlora.adapters.manifest import MANIFEST_VERSION, BaseRef, FileRef, PeftSummary, UnsignedManifest, encode_manifest
    from openlora.adapters.signing import sign_manifest

    publisher = Account.from_key(b"\x5e" * 32)
    weights = random.Random(seed).randbytes(size)
    config = json.dumps({"r": 8, "seed": seed}).encode()
    unsigned = UnsignedManifest(
        version=MANIFEST_VERSION, name=f"sim-{seed}", base=BaseRef(name="sim", fingerprint=FP),
        peft=PeftSummary(r=8, lora_alpha=16, target_modules=["q_proj"], modules=1),
        files=[FileRef(name="adapter_config.json", cid=store.add_bytes(config), size=len(config)),
               FileRef(name="adapter_model.safetensors", cid=store.add_bytes(weights), size=len(weights))],
        publisher=publisher.address, price_per_1k_tokens="0", royalty_bps=0, created_at=1_700_000_000 + seed,
    )  # fmt: skip
    return store.add_bytes(encode_manifest(sign_manifest(unsigned, publisher)))


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _say(obj: dict) -> None:
    print("SIM " + json.dumps(obj), flush=True)


# ── driver side ──────────────────────────────────────────────────────────────────────────────


class Peer:
    """One peer process, driven by JSON lines; ``ask`` is safe from one thread at a time."""

    def __init__(self, index: int, work: Path, bootstrap: list[Peer], settings: dict) -> None:
        self.index = index
        self.bootstrap = {p.index for p in bootstrap}
        env = {**os.environ, "PYTHONPATH": str(ROOT / "node")}
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "peer.log"  # its warnings and errors: the driver shows the tail when it fails
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--peer", str(work), json.dumps(settings), *[p.multiaddr for p in bootstrap]],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )  # fmt: skip
        self._lock = threading.Lock()
        hello = self._read(PEER_START_S)
        self.peer_id: str = hello["peer_id"]
        self.multiaddr: str = hello["multiaddr"]

    def _read(self, timeout_s: float) -> dict:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout_s, self.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                if line.startswith("SIM "):
                    return json.loads(line[4:])
        finally:
            timer.cancel()
        raise RuntimeError(f"peer {self.index} exited (status {self.proc.wait()})\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The last 2000 characters the peer wrote to stderr (its warnings, errors, a traceback)."""
        return "--- its log ---\n" + self.log.read_text(errors="replace")[-2000:]

    def ask(self, timeout_s: float = 120.0, **cmd: object) -> dict:
        """One command and its answer (``{"error": …}`` when it failed in the peer)."""
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            return self._read(timeout_s)

    def call(self, **cmd: object) -> dict:
        """``ask``, for a command the run cannot go on without.

        Raises:
            RuntimeError: the peer answered with an error.
        """
        answer = self.ask(**cmd)
        if "error" in answer:
            raise RuntimeError(f"peer {self.index}, {cmd['op']}: {answer['error']}\n{self.log_tail()}")
        return answer

    def kill(self) -> None:
        """SIGKILL (churn, or a peer that stopped answering)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Ask the peer to quit; kill it if it does not within 15 s."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.kill()


def _cpu_seconds(procs: list) -> float:  # type: ignore[type-arg]
    """User + system CPU seconds the processes used so far (a process gone counts 0)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


class Sim:
    """The run: peers, the CIDs each provides, and the figures."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.peers: list[Peer] = []
        self.pool = ThreadPoolExecutor(max_workers=max(args.peers, args.fetchers) + 4)
        self.provided: dict[str, Peer] = {}  # CID → its provider
        self.out: dict = {"peers": args.peers, "degree": args.degree, "water": [args.low_water, args.high_water], "seed": args.seed,
                          "cores": os.cpu_count(), "upload_mbps": args.upload_mbps}  # fmt: skip
        self.settings = {"low_water": args.low_water, "high_water": args.high_water,
                         "max_upload_bytes_per_s": args.upload_mbps * MB if args.upload_mbps else None}  # fmt: skip
        self.failures: list[str] = []
        self.everyone: list[Peer] = []  # every peer started, killed ones included
        self._started = 0
        self._spawn_lock = threading.Lock()

    def spawn(self, bootstrap: list[Peer]) -> Peer:
        """Start one peer bootstrapped to ``bootstrap`` (its index: its place in start order)."""
        with self._spawn_lock:
            index = self._started
            self._started += 1
        peer = Peer(index, self.work / f"peer{index}", bootstrap, self.settings)
        self.everyone.append(peer)
        return peer

    def start(self) -> None:
        """Start --peers peers: peer 0, then waves of 8 bootstrapping to earlier ones; then wait until they settle."""
        started = time.perf_counter()
        self.peers.append(self.spawn([]))
        while len(self.peers) < self.args.peers:
            wave = min(8, self.args.peers - len(self.peers))
            choices = [self.rng.sample(self.peers, min(self.args.degree, len(self.peers))) for _ in range(wave)]
            self.peers += list(self.pool.map(self.spawn, choices))
        self.out["start_s"] = time.perf_counter() - started
        time.sleep(self.args.settle)
        self.out["settle_s"] = self.settle()

    def settle(self) -> float:
        """Wait until the swarm is at rest: no peer's connection count changed over SETTLE_POLL_S and the peers
        together used under half the box's cores, or --settle-max passed. A swarm of N peers booting at once dials
        about N²/2 connections, each with a handshake, identify, a catalog pull both ways and DHT traffic; at 40
        peers on 2 cores that saturates the box for a minute, and figures taken then measure the boot, not the
        swarm. Returns the seconds waited."""
        started = time.perf_counter()
        procs = [psutil.Process(p.proc.pid) for p in self.peers]
        counts, busy = None, _cpu_seconds(procs)
        while time.perf_counter() - started < self.args.settle_max:
            time.sleep(SETTLE_POLL_S)
            now = [a["peers"] for a in self.stats(self.peers)]
            cpu, busy = (_cpu_seconds(procs) - busy) / SETTLE_POLL_S, _cpu_seconds(procs)
            if now == counts and cpu < (os.cpu_count() or 1) / 2:
                break
            counts = now
        return time.perf_counter() - started

    def stats(self, peers: list[Peer]) -> list[dict]:
        """Every peer's stats (RSS, peers, gossip count); a peer that could not answer counts as a failure."""
        answers = list(self.pool.map(lambda p: p.ask(op="stats"), peers))
        self.failures += [f"stats of peer {p.index}: {a['error']}" for p, a in zip(peers, answers, strict=True) if "error" in a]
        return [a if "error" not in a else {"rss": 0, "peers": 0, "gossip": 0, "routing": 0} for a in answers]

    def reach(self) -> None:
        """(a): announcements and when each peer saw them."""
        delays: list[float] = []
        missed = 0
        before = self.stats(self.peers)
        for k in range(self.args.announcements):
            publisher = self.rng.choice(self.peers)
            cid = publisher.call(op="make", size=4096, seed=1000 + k)["cid"]
            t0 = publisher.call(op="announce", cid=cid)["t0"]
            self.provided[cid] = publisher
            wait_s = max(0.0, t0 + self.args.reach_timeout - time.time())
            others = [p for p in self.peers if p is not publisher]
            seen = list(self.pool.map(lambda p: p.ask(op="seen", cid=cid, wait_s=wait_s)["at"], others))
            delays += [at - t0 for at in seen if at]
            missed += sum(1 for at in seen if not at)
        after = self.stats(self.peers)
        per_peer = [(a["gossip"] - b["gossip"]) / self.args.announcements for a, b in zip(after, before, strict=True)]
        self.out["reach"] = {"p50_s": percentile(delays, 0.5), "p99_s": percentile(delays, 0.99), "max_s": max(delays, default=float("nan")),
                             "reached": len(delays), "missed": missed, "messages_per_peer": statistics.mean(per_peer)}  # fmt: skip
        if missed:
            self.failures.append(f"{missed} (announcement, peer) pairs not reached within {self.args.reach_timeout} s")

    def lookups(self, label: str, cids: list[str], peers: list[Peer]) -> None:
        """(b) and (d): DHT lookups from peers that did not bootstrap with the provider."""
        jobs = []
        for n in range(self.args.lookups):
            cid = cids[n % len(cids)]
            provider = self.provided[cid]
            strangers = [p for p in peers if p is not provider and provider.index not in p.bootstrap and p.index not in provider.bootstrap]
            jobs.append((self.rng.choice(strangers or [p for p in peers if p is not provider]), cid, provider))
        results = [querier.ask(op="lookup", cid=cid) for querier, cid, _ in jobs]
        failed = [f"{cid} from peer {q.index}: {r.get('error') or 'no live provider'}"
                  for (q, cid, provider), r in zip(jobs, results, strict=True) if provider.peer_id not in r.get("providers", [])]  # fmt: skip
        ok = [r for r in results if "seconds" in r]
        self.out[label] = {
            "lookups": len(jobs), "failed": len(failed),
            "p50_ms": 1000 * percentile([r["seconds"] for r in ok], 0.5), "p99_ms": 1000 * percentile([r["seconds"] for r in ok], 0.99),
            "queries_p50": percentile([r["queries"] for r in ok], 0.5), "hops_p50": percentile([r["hops"] for r in ok], 0.5),
            "hops_max": max((r["hops"] for r in ok), default=0), "held_locally": sum(1 for r in ok if not r["queries"]),
        }  # fmt: skip
        self.failures += [f"{label}: {f}" for f in failed]

    def fetch(self) -> None:
        """(c): one fetch alone, then --fetchers at once from one provider."""
        size = int(self.args.fetch_mb * MB)
        provider = self.rng.choice(self.peers)
        solo_cid = provider.call(op="make", size=size, seed=1)["cid"]
        many_cid = provider.call(op="make", size=size, seed=2)["cid"]
        for cid in (solo_cid, many_cid):
            provider.call(op="announce", cid=cid)
        time.sleep(self.args.settle)
        others = self.rng.sample([p for p in self.peers if p is not provider], self.args.fetchers + 1)
        timeout = self.args.fetch_timeout
        solo = others[0].ask(timeout_s=timeout + 20, op="fetch", cid=solo_cid, limit_s=timeout)
        served = provider.call(op="stats")["served"]
        started = time.perf_counter()
        many = list(self.pool.map(lambda p: p.ask(timeout_s=timeout + 20, op="fetch", cid=many_cid, limit_s=timeout), others[1:]))
        wall = time.perf_counter() - started
        served = provider.call(op="stats")["served"] - served
        errors = [r["error"] for r in [solo, *many] if "error" in r]
        digests = {r["digest"] for r in [solo, *many] if "digest" in r}
        expected = _digest(random.Random(2).randbytes(size)), _digest(random.Random(1).randbytes(size))
        equal = not errors and digests <= set(expected) and all(r["weights"] == size for r in [solo, *many])
        self.out["fetch"] = {"mb": self.args.fetch_mb, "one_s": solo.get("seconds"), "fetchers": self.args.fetchers, "all_s": wall,
                             "ratio": wall / solo["seconds"] if "seconds" in solo else float("nan"),
                             "multi_source": sum(1 for r in many if r.get("sources", 0) > 1), "bytes_equal": equal,
                             "provider_copies": served / size}  # fmt: skip
        if not equal:
            self.failures.append(f"fan-out fetch: bytes differ or fetches failed: {errors[:3]}")

    def churn(self) -> None:
        """(d): kill a share of the peers, start as many newcomers, look up again."""
        before = {p.index: s["rss"] for p, s in zip(self.peers, self.stats(self.peers), strict=True)}
        n = max(1, round(self.args.churn * len(self.peers)))
        victims = self.rng.sample(self.peers, n)
        for v in victims:
            v.kill()
        survivors = [p for p in self.peers if p not in victims]
        newcomers = list(self.pool.map(self.spawn, [self.rng.sample(survivors, min(self.args.degree, len(survivors))) for _ in range(n)]))
        self.peers = survivors + newcomers
        for k, p in enumerate(newcomers):
            cid = p.call(op="make", size=4096, seed=5000 + k)["cid"]
            p.call(op="announce", cid=cid)
            self.provided[cid] = p
        time.sleep(self.args.settle)
        alive = {p.peer_id for p in self.peers}
        cids = [c for c, p in self.provided.items() if p.peer_id in alive]
        self.lookups("after_churn", cids, self.peers)
        after = {p.index: s["rss"] for p, s in zip(self.peers, self.stats(self.peers), strict=True)}
        growth = [(after[i] - before[i]) / MIB for i in after if i in before]
        self.out["churn"] = {"killed": n, "joined": n, "rss_max_mib": max(after.values()) / MIB,
                             "rss_growth_max_mib": max(growth, default=0.0), "rss_growth_mean_mib": statistics.mean(growth) if growth else 0.0}  # fmt: skip

    def stop(self) -> None:
        list(self.pool.map(lambda p: p.stop(), self.everyone))
        self.pool.shutdown()


def table(out: dict) -> str:
    """The printed report."""
    r, d, f, c, a = out["reach"], out["dht"], out["fetch"], out["churn"], out["after_churn"]
    rows = [
        ("gossip reach p50 / p99 / max", f"{r['p50_s']:.2f} / {r['p99_s']:.2f} / {r['max_s']:.2f} s", "p99 ≤ 2 s"),
        ("peers reached", f"{r['reached']} of {r['reached'] + r['missed']} (announcement, peer)", "all"),
        ("gossip messages received per peer per announcement", f"{r['messages_per_peer']:.1f}", ""),
        ("DHT lookup p50 / p99 (outside the querier's neighbours)", f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} ms", "p99 ≤ 1000 ms"),
        ("DHT requests / hops per lookup (p50; hops max)", f"{d['queries_p50']:.0f} / {d['hops_p50']:.0f}; {d['hops_max']}", ""),
        ("DHT lookups answered from the querier's own records", f"{d['held_locally']} of {d['lookups']}", ""),
        ("DHT lookups that found the provider", f"{d['lookups'] - d['failed']} of {d['lookups']}", "all"),
        (f"one fetch of {f['mb']} MB", f"{f['one_s']:.2f} s" if f["one_s"] else "failed", ""),
        (f"{f['fetchers']} fetches at once from 1 provider (until the last)", f"{f['all_s']:.2f} s = {f['ratio']:.1f}× one", "≤ 3×"),
        ("fetchers that used more than one peer; bytes equal", f"{f['multi_source']} of {f['fetchers']}; {f['bytes_equal']}", "equal"),
        ("the provider uploaded, for those fetches", f"{f['provider_copies']:.1f} copies of the adapter", ""),
        (f"churn: killed / joined", f"{c['killed']} / {c['joined']}", "25 %"),
        ("lookups after churn that found a live provider", f"{a['lookups'] - a['failed']} of {a['lookups']} (p99 {a['p99_ms']:.0f} ms)", "all"),
        ("peer RSS max; growth over churn max / mean", f"{c['rss_max_mib']:.0f} MiB; {c['rss_growth_max_mib']:+.1f} / {c['rss_growth_mean_mib']:+.1f} MiB", "bounded"),
    ]  # fmt: skip
    w = max(len(x[0]) for x in rows)
    head = (f"swarm_sim: {out['peers']} peers on 127.0.0.1, degree {out['degree']}, seed {out['seed']}, "
            f"{out['cores']} cores (shared with other work); started in {out['start_s']:.0f} s, at rest {out['settle_s']:.0f} s later")  # fmt: skip
    return "\n".join([head, *(f"  {n:<{w}}  {v:<44} {t}" for n, v, t in rows)])


def main() -> int:
    """Parse arguments, run the four measurements, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=40)
    parser.add_argument("--degree", type=int, default=3, help="bootstrap peers of each new peer")
    parser.add_argument(
        "--low-water", type=int, default=LOW_WATER,
        help="connections each peer dials up to midway to --high-water (the node's SwarmConfig.low_water; at 40 peers "
        "the default 32 connects everyone to everyone, fewer gives a sparse swarm)",
    )  # fmt: skip
    parser.add_argument("--high-water", type=int, default=HIGH_WATER, help="connections above which a peer prunes")
    parser.add_argument(
        "--upload-mbps", type=float, default=0.0,
        help="each peer serves blocks at most this many MB/s, as an uplink would (SwarmConfig.max_upload_bytes_per_s; "
        "0: unlimited). On loopback without it a fetch is bound by the CPU, which ten fetchers share whoever serves them",
    )  # fmt: skip
    parser.add_argument("--announcements", type=int, default=5)
    parser.add_argument("--lookups", type=int, default=40)
    parser.add_argument("--fetch-mb", type=float, default=3.7)
    parser.add_argument("--fetchers", type=int, default=10)
    parser.add_argument("--churn", type=float, default=0.25, help="share of peers killed and replaced")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to let joins and records settle")
    parser.add_argument("--settle-max", type=float, default=300.0, help="longest wait for the started swarm to come to rest")
    parser.add_argument("--reach-timeout", type=float, default=30.0)
    parser.add_argument("--fetch-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--peer", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        run_peer(Path(args.peer[0]), json.loads(args.peer[1]), args.peer[2:])
        return 0
    if args.peers < 4 or args.fetchers + 2 > args.peers:
        parser.error("need --peers >= 4 and --fetchers <= peers - 2")
    with tempfile.TemporaryDirectory(prefix="swarm-sim-") as tmp:
        sim = Sim(args, Path(tmp))
        try:
            for name, step in [("start", sim.start), ("reach", sim.reach), ("dht", lambda: sim.lookups("dht", list(sim.provided), sim.peers)),
                               ("fetch", sim.fetch), ("churn", sim.churn)]:  # fmt: skip
                started = time.perf_counter()
                step()
                print(f"swarm_sim: {name} done in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        finally:
            sim.stop()
    sim.out["failures"] = sim.failures
    print(table(sim.out))
    for failure in sim.failures:
        print(f"  FAILED: {failure}")
    if args.json:
        args.json.write_text(json.dumps(sim.out, indent=2))
    return 1 if sim.failures else 0


if __name__ == "__main__":
    sys.exit(main())
