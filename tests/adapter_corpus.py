"""A generated corpus of bad adapters: one case per way an adapter can be hostile or broken.

Nothing here is committed as a binary: every case is built on the fly from the medical demo
adapter (tests/fixtures/adapters/medical) by changing ONE thing, and signed by a test publisher
key, so the node passes every check before the one the case is meant to trip.

    case                    what is wrong                                         reason
    wrong_hash              the uploaded config is not the bytes the manifest     hash_mismatch
                            lists (one byte appended)
    truncated_file          the safetensors file lost its last 1000 bytes         truncated_file
    pickle_bin              adapter_model.bin (a pickle that would touch a        pickle_refused
                            marker file if it were ever unpickled)
    header_bomb             safetensors header length 2^63                        header_too_large
    overlapping_offsets     two tensors share 4 bytes                             bad_offsets
    bad_safetensors         header is not JSON                                    bad_safetensors
    wrong_shapes            config says r=16, the weights have r=8                shape_mismatch
    wrong_base              manifest names another base fingerprint               base_mismatch
    nan_weights             one weight is NaN                                     non_finite
    rank_over_limit         r = node's max rank + 1 (q_proj of layer 0)           rank_limit
    missing_config          only adapter_model.safetensors                        missing_file
    unknown_target_module   target_modules also lists fc1 (not in this base)      unknown_module
    dora_no_magnitudes      use_dora = true without DoRA's magnitude vectors      missing_weights
                            (DoRA is served: its lora_magnitude_vector tensors
                            are required, one per adapted module)
    not_lora                peft_type IA3                                         bad_config
    missing_weights         the config also targets up_proj; no weights for it    missing_weights
    bad_signature           the signature's s replaced by n - s (a malleated      bad_signature
                            copy that plain ecrecover would accept)
    other_key               publisher A, signed by key B                          wrong_signer
    absent_file             the manifest lists the weights; they are not sent     absent_file
    summary_lies            the manifest says r=4; the files say r=8              manifest_mismatch
    not_canonical           the manifest JSON is pretty-printed                   bad_manifest
    huge_alpha              lora_alpha = 1e30 on the finite demo weights (its     scaling_limit
                            logits would be inf)
    unprintable_name        the signed name holds a newline and an ANSI escape    bad_manifest

``wrong_hash`` and ``absent_file`` are about the upload, not the adapter the manifest names, so
the node does not record them (:data:`NOT_RECORDED`); their load-path twins — a block tampered on
disk, a manifest whose file blocks are absent — are built by :func:`tamper_block` and
:func:`absent_adapter` and are recorded.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from eth_account import Account
from eth_utils import keccak
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conftest import DEMO_ADAPTERS
from openlora.adapters.keys import KEY_ENV, PASSPHRASE_ENV, create_keystore
from openlora.adapters.manifest import MANIFEST_VERSION, BaseRef, Manifest, PeftSummary, UnsignedManifest, encode_manifest
from openlora.adapters.package import CONFIG_FILE, WEIGHTS_FILE, file_ref, peft_summary
from openlora.adapters.reasons import AdapterRejected, RejectReason
from openlora.adapters.safetensors_header import parse_header
from openlora.adapters.signing import manifest_message
from openlora.adapters.store import manifest_cid
from openlora.content.blockstore import BlockStore

TEMPLATE = DEMO_ADAPTERS / "medical"
PUBLISHER = Account.from_key(keccak(b"openlora test publisher"))
OTHER_KEY = Account.from_key(keccak(b"openlora someone else"))
PASSPHRASE = "correct horse battery staple"
CREATED_AT = 1_764_400_000
# case id → the reason the node must give (the module docstring's table; upload_cases builds them)
CASE_REASONS = {
    "wrong_hash": RejectReason.HASH_MISMATCH,
    "truncated_file": RejectReason.TRUNCATED_FILE,
    "pickle_bin": RejectReason.PICKLE_REFUSED,
    "header_bomb": RejectReason.HEADER_TOO_LARGE,
    "overlapping_offsets": RejectReason.BAD_OFFSETS,
    "bad_safetensors": RejectReason.BAD_SAFETENSORS,
    "wrong_shapes": RejectReason.SHAPE_MISMATCH,
    "wrong_base": RejectReason.BASE_MISMATCH,
    "nan_weights": RejectReason.NON_FINITE,
    "rank_over_limit": RejectReason.RANK_LIMIT,
    "missing_config": RejectReason.MISSING_FILE,
    "unknown_target_module": RejectReason.UNKNOWN_MODULE,
    "dora_no_magnitudes": RejectReason.MISSING_WEIGHTS,
    "not_lora": RejectReason.BAD_CONFIG,
    "missing_weights": RejectReason.MISSING_WEIGHTS,
    "bad_signature": RejectReason.BAD_SIGNATURE,
    "other_key": RejectReason.WRONG_SIGNER,
    "absent_file": RejectReason.ABSENT_FILE,
    "summary_lies": RejectReason.MANIFEST_MISMATCH,
    "not_canonical": RejectReason.BAD_MANIFEST,
    "huge_alpha": RejectReason.SCALING_LIMIT,
    "unprintable_name": RejectReason.BAD_MANIFEST,
}
NOT_RECORDED = {"wrong_hash", "absent_file"}  # about the upload, not the adapter (module docstring)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True)
class BaseInfo:
    """The node's base as a publisher sees it (``GetNodeInfo``): name, fingerprint, max LoRA rank."""

    name: str
    fingerprint: str
    max_rank: int


@dataclass(frozen=True)
class Case:
    """One bad adapter: the signed manifest, the files uploaded with it, the reason the node must give."""

    id: str
    reason: RejectReason
    manifest: bytes
    files: dict[str, bytes]

    @property
    def recorded(self) -> bool:
        """Whether the node remembers the rejection under the manifest's CID."""
        return self.id not in NOT_RECORDED

    @property
    def cid(self) -> str:
        """The adapter ID the manifest would have."""
        return manifest_cid(self.manifest)


def template_files() -> dict[str, bytes]:
    """The medical demo adapter's two files."""
    return {n: (TEMPLATE / n).read_bytes() for n in (CONFIG_FILE, WEIGHTS_FILE)}


def config_bytes(**changes) -> bytes:
    """The template's adapter_config.json with fields changed."""
    cfg = json.loads((TEMPLATE / CONFIG_FILE).read_bytes())
    cfg.update(changes)
    return json.dumps(cfg, indent=2).encode()


def template_tensors() -> dict[str, torch.Tensor]:
    """The template's LoRA tensors by safetensors key."""
    return st_load((TEMPLATE / WEIGHTS_FILE).read_bytes())


def raw_safetensors(header: dict, data: bytes) -> bytes:
    """A safetensors file written by hand: u64 LE header length, JSON header, data region."""
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


def honest_summary(files: Mapping[str, bytes]) -> PeftSummary:
    """What an honest publisher's manifest says about ``files`` (the template's when they do not parse)."""
    try:
        return peft_summary(files[CONFIG_FILE], parse_header(files[WEIGHTS_FILE]))
    except (AdapterRejected, KeyError):
        t = template_files()
        return peft_summary(t[CONFIG_FILE], parse_header(t[WEIGHTS_FILE]))


def unsigned_manifest(files: Mapping[str, bytes], base: BaseInfo, *, name: str = "corpus", **fields) -> UnsignedManifest:
    """A manifest over ``files`` as listed (any names, no content checks), fields overridable."""
    values = dict(
        version=MANIFEST_VERSION,
        name=name,
        base=BaseRef(name=base.name, fingerprint=base.fingerprint),
        peft=honest_summary(files),
        files=[file_ref(n, d) for n, d in files.items()],
        publisher=PUBLISHER.address,
        price_per_1k_tokens="1000000000000000",
        royalty_bps=500,
        created_at=CREATED_AT,
    )
    values.update(fields)
    return UnsignedManifest(**values)


def sign(unsigned: UnsignedManifest, key=PUBLISHER) -> bytes:
    """Canonical bytes of ``unsigned`` signed by ``key`` (which need not be the publisher)."""
    signature = bytes(key.sign_message(manifest_message(unsigned)).signature)
    return encode_manifest(Manifest(**unsigned.model_dump(), signature="0x" + signature.hex()))


def _signed_unchecked(files: Mapping[str, bytes], base: BaseInfo, **fields) -> bytes:
    """A signed manifest with ``fields`` the schema refuses (built without validation, signed as is)."""
    values = {**unsigned_manifest(files, base).model_dump(), **fields}
    unsigned = UnsignedManifest.model_construct(**values)
    signature = bytes(PUBLISHER.sign_message(manifest_message(unsigned)).signature)
    return encode_manifest(Manifest.model_construct(**values, signature="0x" + signature.hex()))


def signed_manifest(files: Mapping[str, bytes], base: BaseInfo, **fields) -> bytes:
    """An honest signed manifest over ``files`` (fields overridable before signing)."""
    return sign(unsigned_manifest(files, base, **fields))


def unique_good_files(seed: int) -> dict[str, bytes]:
    """A valid adapter whose config and weight blocks no other adapter shares (B scaled, dropout tweaked)."""
    tensors = {k: (v * (1 + seed / 10) if ".lora_B." in k else v) for k, v in template_tensors().items()}
    return {CONFIG_FILE: config_bytes(lora_dropout=seed / 1000), WEIGHTS_FILE: st_save(tensors)}


def _pickle_bomb(marker: Path) -> bytes:
    class Touch:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps({"base_model.model.lora_A.weight": Touch()})


def _overlapping(weights: bytes) -> bytes:
    header = parse_header(weights)
    raw_header = json.loads(weights[8 : header.data_start])
    second = sorted(header.tensors.values(), key=lambda t: t.begin)[1]
    raw_header[second.name]["data_offsets"] = [second.begin - 4, second.end - 4]
    return raw_safetensors(raw_header, weights[header.data_start :])


def _high_s(manifest: bytes) -> bytes:
    obj = json.loads(manifest)
    sig = bytes.fromhex(obj["signature"][2:])
    s = int.from_bytes(sig[32:64], "big")
    v = 55 - sig[64]  # 27 <-> 28: (r, n - s, v') recovers to the same key
    obj["signature"] = "0x" + (sig[:32] + (_SECP256K1_N - s).to_bytes(32, "big") + bytes([v])).hex()
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _rank_files(rank: int) -> dict[str, bytes]:
    a = template_tensors()["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    in_f = a.shape[1]
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{key}.lora_A.weight": torch.zeros(rank, in_f, dtype=torch.float16),
        f"{key}.lora_B.weight": torch.zeros(in_f, rank, dtype=torch.float16),
    }
    return {CONFIG_FILE: config_bytes(r=rank, target_modules=["q_proj"], layers_to_transform=[0]), WEIGHTS_FILE: st_save(tensors)}


def upload_cases(base: BaseInfo, marker: Path) -> list[Case]:
    """Every corpus case that goes through ``PublishAdapter`` (module docstring), for ``base``.

    Args:
        base: the node's base (a case that is not about the base matches it).
        marker: a path the pickle case would create if it were ever unpickled.
    """
    R = RejectReason
    good = template_files()
    weights = good[WEIGHTS_FILE]
    nan = template_tensors()
    first = sorted(nan)[0]
    nan[first][0, 0] = float("nan")
    other_base = BaseInfo("SomeOtherModel", "sha256:" + keccak(b"another base").hex(), base.max_rank)

    def case(id: str, reason: RejectReason, files: dict[str, bytes], **fields) -> Case:
        return Case(id, reason, signed_manifest(files, base, name=id, **fields), files)

    truncated = {**good, WEIGHTS_FILE: weights[:-1000]}
    pickled = {CONFIG_FILE: good[CONFIG_FILE], "adapter_model.bin": _pickle_bomb(marker)}
    cases = [
        Case("wrong_hash", R.HASH_MISMATCH, signed_manifest(good, base, name="wrong_hash"), {**good, CONFIG_FILE: good[CONFIG_FILE] + b" "}),
        case("truncated_file", R.TRUNCATED_FILE, truncated),
        case("pickle_bin", R.PICKLE_REFUSED, pickled),
        case("header_bomb", R.HEADER_TOO_LARGE, {**good, WEIGHTS_FILE: struct.pack("<Q", 2**63) + b"{}"}),
        case("overlapping_offsets", R.BAD_OFFSETS, {**good, WEIGHTS_FILE: _overlapping(weights)}),
        case("bad_safetensors", R.BAD_SAFETENSORS, {**good, WEIGHTS_FILE: struct.pack("<Q", 4) + b"{!!}"}),
        case("wrong_shapes", R.SHAPE_MISMATCH, {**good, CONFIG_FILE: config_bytes(r=16)}),
        Case("wrong_base", R.BASE_MISMATCH, signed_manifest(good, other_base, name="wrong_base"), good),
        case("nan_weights", R.NON_FINITE, {**good, WEIGHTS_FILE: st_save(nan)}),
        case("rank_over_limit", R.RANK_LIMIT, _rank_files(base.max_rank + 1)),
        case("missing_config", R.MISSING_FILE, {WEIGHTS_FILE: weights}),
        case("unknown_target_module", R.UNKNOWN_MODULE, {**good, CONFIG_FILE: config_bytes(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "fc1"])}),
        case("dora_no_magnitudes", R.MISSING_WEIGHTS, {**good, CONFIG_FILE: config_bytes(use_dora=True)}),
        case("not_lora", R.BAD_CONFIG, {**good, CONFIG_FILE: config_bytes(peft_type="IA3")}),
        case("missing_weights", R.MISSING_WEIGHTS, {**good, CONFIG_FILE: config_bytes(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])}),
        Case("bad_signature", R.BAD_SIGNATURE, _high_s(signed_manifest(good, base, name="bad_signature")), good),
        Case("other_key", R.WRONG_SIGNER, sign(unsigned_manifest(good, base, name="other_key"), OTHER_KEY), good),
        Case("absent_file", R.ABSENT_FILE, signed_manifest(good, base, name="absent_file"), {CONFIG_FILE: good[CONFIG_FILE]}),
        case("summary_lies", R.MANIFEST_MISMATCH, good, peft=honest_summary(good).model_copy(update={"r": 4})),
        Case("not_canonical", R.BAD_MANIFEST, json.dumps(json.loads(signed_manifest(good, base, name="x")), indent=1).encode(), good),
        case("huge_alpha", R.SCALING_LIMIT, {**good, CONFIG_FILE: config_bytes(lora_alpha=1e30)}),
        Case("unprintable_name", R.BAD_MANIFEST, _signed_unchecked(good, base, name="ok\n\x1b[31mforged log line"), good),
    ]
    assert [(c.id, c.reason) for c in cases] == list(CASE_REASONS.items()) and len({c.cid for c in cases}) == len(cases)
    return cases


def block_path(blocks_root: Path, cid: str) -> Path:
    """Where BlockStore keeps a block (content/blockstore.py: ``blocks/<key[-3:-1]>/<CIDv1 base32>``)."""
    return blocks_root / "blocks" / cid[-3:-1] / cid


def tamper_block(blocks_root: Path, cid: str) -> None:
    """Flip one byte of a stored raw block in place (a single-block file's CID is its block's CID)."""
    path = block_path(blocks_root, cid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def absent_adapter(blocks: BlockStore, base: BaseInfo, seed: int) -> str:
    """Store only the signed manifest of a valid adapter (none of its file blocks); return its CID."""
    raw = signed_manifest(unique_good_files(seed), base, name=f"absent-{seed}")
    blocks.put(manifest_cid(raw), raw)
    return manifest_cid(raw)


@pytest.fixture(scope="module")
def publisher_key(tmp_path_factory) -> Path:
    """A throwaway publisher keystore (cheap scrypt) exported as $OPENLORA_KEY / $OPENLORA_KEY_PASSPHRASE
    for the module's CLI calls; the environment is restored afterwards."""
    path = tmp_path_factory.mktemp("publisher") / "publisher.json"
    create_keystore(path, PASSPHRASE, scrypt_n=2**12)
    saved = {k: os.environ.get(k) for k in (KEY_ENV, PASSPHRASE_ENV)}
    os.environ.update({KEY_ENV: str(path), PASSPHRASE_ENV: PASSPHRASE})
    yield path
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
