"""An adapter package as the publisher builds it and the node rebuilds it: files → CIDs + PEFT summary.

    {adapter_config.json, adapter_model.safetensors}
        ├─ names: exactly the two PEFT files (pickle refused by name, never opened)
        ├─ each file ─► UnixFS CIDv1 + size                     (content.import_bytes)
        └─ config JSON + safetensors header ─► PEFT summary     (no torch, no peft)
    + base {name, fingerprint} + publisher, price, royalty, created_at ─► UnsignedManifest

Both sides call the same functions on the same bytes, so an honest manifest matches what the
node recomputes exactly; the node refuses one that does not (verify.py). Torch-free: the
publishing CLI runs this without importing torch or peft.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from pydantic import ValidationError

from ..content.cid import cid_text
from ..content.importer import import_bytes
from .manifest import MANIFEST_VERSION, BaseRef, FileRef, PeftSummary, UnsignedManifest
from .reasons import AdapterRejected, RejectReason
from .safetensors_header import SafetensorsHeader, parse_header

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
LORA_A_SUFFIX = ".lora_A.weight"


def check_file_names(names: list[str]) -> None:
    """Refuse a file list that is not exactly the two standard PEFT files.

    Raises:
        AdapterRejected: PICKLE_REFUSED for pickle weights (refused by name, never opened),
            MISSING_FILE, UNEXPECTED_FILE.
    """
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise AdapterRejected(
            RejectReason.PICKLE_REFUSED,
            f"{', '.join(sorted(pickles))}: pickle weights can run code when loaded and are refused; "
            f"save with safetensors (save_pretrained(safe_serialization=True)) as {WEIGHTS_FILE}",
        )
    for required in ADAPTER_FILES:
        if required not in names:
            raise AdapterRejected(RejectReason.MISSING_FILE, f"{required} is missing; a PEFT LoRA folder has {' and '.join(ADAPTER_FILES)}")
    extra = sorted(set(names) - set(ADAPTER_FILES))
    if extra:
        raise AdapterRejected(RejectReason.UNEXPECTED_FILE, f"unexpected file(s) {', '.join(extra)}; only {' and '.join(ADAPTER_FILES)} are published")


def read_config(raw: bytes) -> dict:
    """``adapter_config.json`` bytes as a JSON object.

    Raises:
        AdapterRejected: BAD_CONFIG (not UTF-8 JSON, not an object).
    """
    try:
        cfg = json.loads(raw)
    except (ValueError, RecursionError) as e:  # also a number over Python's 4300 digits, or nesting too deep
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"{CONFIG_FILE} is not JSON this node reads: {e}") from None
    if not isinstance(cfg, dict):
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"{CONFIG_FILE} must be a JSON object")
    return cfg


def file_ref(name: str, data: bytes) -> FileRef:
    """The manifest entry of one file: its UnixFS CIDv1 (Kubo's default layout) and size in bytes."""
    return FileRef(name=name, cid=cid_text(import_bytes(data, cid_version=1).root), size=len(data))


def peft_summary(config_raw: bytes, header: SafetensorsHeader) -> PeftSummary:
    """The manifest's PEFT summary of an adapter: config fields plus the number of adapted modules.

    Args:
        config_raw: ``adapter_config.json`` bytes.
        header: the checked header of ``adapter_model.safetensors``; ``modules`` counts its
            ``*.lora_A.weight`` tensors.

    Raises:
        AdapterRejected: BAD_CONFIG (not JSON, or r / lora_alpha / target_modules / patterns of
            the wrong type), MISSING_WEIGHTS (no LoRA tensors at all).
    """
    cfg = read_config(config_raw)
    modules = sum(1 for n in header.tensors if n.endswith((LORA_A_SUFFIX, ".lora_embedding_A")))
    if modules == 0:
        raise AdapterRejected(RejectReason.MISSING_WEIGHTS, f"{WEIGHTS_FILE} holds no *{LORA_A_SUFFIX} tensors")
    targets = cfg.get("target_modules")
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        targets = sorted(targets)
    try:
        return PeftSummary(
            r=cfg.get("r"),
            lora_alpha=cfg.get("lora_alpha"),
            target_modules=targets,
            rank_pattern=cfg.get("rank_pattern") or {},
            alpha_pattern=cfg.get("alpha_pattern") or {},
            use_rslora=cfg.get("use_rslora") or False,
            layers_to_transform=cfg.get("layers_to_transform"),
            modules=modules,
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AdapterRejected(RejectReason.BAD_CONFIG, f"{CONFIG_FILE} field {where}: {first['msg']}") from None


def build_manifest(
    files: Mapping[str, bytes],
    *,
    base_name: str,
    base_fingerprint: str,
    publisher: str,
    name: str = "",
    price_per_1k_tokens: int = 0,
    royalty_bps: int = 0,
    created_at: int | None = None,
) -> UnsignedManifest:
    """Describe a PEFT LoRA folder as an unsigned manifest (sign it with ``signing.sign_manifest``).

    Args:
        files: file name → bytes; exactly ``adapter_config.json`` and ``adapter_model.safetensors``.
        base_name / base_fingerprint: the base model, as the node reports it (``GetNodeInfo``).
        publisher: checksummed address of the signing key.
        name: adapter name (≤ 200 characters).
        price_per_1k_tokens: wei per 1000 tokens (0..2^256-1).
        royalty_bps: publisher's share in basis points (0..10000).
        created_at: unix seconds; default now.

    Raises:
        AdapterRejected: the folder is not a well-formed PEFT LoRA (names, config JSON,
            safetensors header); the node runs the remaining checks against its base.
        ValueError: an argument breaks the manifest schema (message names the field).
    """
    check_file_names(list(files))
    header = parse_header(files[WEIGHTS_FILE])
    summary = peft_summary(files[CONFIG_FILE], header)
    if not isinstance(price_per_1k_tokens, int) or isinstance(price_per_1k_tokens, bool) or price_per_1k_tokens < 0:
        raise ValueError(f"price_per_1k_tokens must be a non-negative integer number of wei, got {price_per_1k_tokens!r}")
    try:
        return UnsignedManifest(
            version=MANIFEST_VERSION,
            name=name,
            base=BaseRef(name=base_name, fingerprint=base_fingerprint),
            peft=summary,
            files=[file_ref(n, files[n]) for n in ADAPTER_FILES],
            publisher=publisher,
            price_per_1k_tokens=str(price_per_1k_tokens),
            royalty_bps=royalty_bps,
            created_at=int(time.time()) if created_at is None else created_at,
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"manifest field {where}: {first['msg']}") from None
