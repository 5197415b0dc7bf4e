"""Regenerate the Python gRPC stubs from protos/ into node/openlora/v1/ (committed).

Usage: python scripts/gen_protos.py [--check]
  --check  regenerate into a temporary folder and exit 1 if the committed stubs differ.
The stubs are committed so that installing the node needs no protoc; grpcio-tools is pinned
(requirements.lock) so the output is reproducible.
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "node"


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto under protos/; return the generated files (relative to out)."""
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    rc = protoc.main(
        ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *files]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    return sorted(p.relative_to(out) for p in out.rglob("*_pb2*.py*"))


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            produced = generate(Path(tmp))
            stale = [str(p) for p in produced if not (OUT / p).exists() or not filecmp.cmp(Path(tmp) / p, OUT / p, shallow=False)]
        if stale:
            print("stale generated stubs (run python scripts/gen_protos.py):", *stale, sep="\n  ")
            return 1
        return 0
    for p in generate(OUT):
        print("wrote", OUT / p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
