"""Manifest v1: the schema, the canonical form, and the publisher's EIP-712 signature (adapters/manifest.py,
adapters/signing.py). No node, no torch."""

from __future__ import annotations

import json

import pytest
from eth_account import Account

from openlora.adapters.manifest import (
    MAX_MANIFEST_BYTES,
    BaseRef,
    FileRef,
    PeftSummary,
    UnsignedManifest,
    encode_manifest,
    parse_manifest,
)
from openlora.adapters.reasons import AdapterRejected
from openlora.adapters.signing import check_signature, content_hash, manifest_message, recover_signer, sign_manifest

KEY = Account.from_key("0x" + "11" * 32)
OTHER = Account.from_key("0x" + "22" * 32)

# The vector. Expected values were computed independently with ethers 6.17.0 (npm), given the
# canonical JSON below:
#   const value = {contentHash: keccak256(toUtf8Bytes(canonical)), publisher, pricePer1kTokens: BigInt(price),
#                  royaltyBps, createdAt};
#   TypedDataEncoder.hash({name: "OpenLoRA Manifest", version: "1"}, {Manifest: [...]}, value)   → DIGEST
#   new Wallet("0x" + "11".repeat(32)).signTypedData(domain, types, value)                      → SIGNATURE
CANONICAL = (
    '{"base":{"fingerprint":"sha256:abababababababababababababababababababababababababababababababab",'
    '"name":"SmolLM2-135M-Instruct"},"created_at":1764400000,"files":[{"cid":'
    '"bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4","name":"adapter_config.json","size":12},'
    '{"cid":"bafybeigjfbxmmnz6svot6hg7pzraq6ytjnzpdeetwkcxbihjnp3nuwm35u","name":"adapter_model.safetensors",'
    '"size":5242880}],"name":"médical-demo","peft":{"alpha_pattern":{},"layers_to_transform":null,"lora_alpha":16,'
    '"modules":120,"r":8,"rank_pattern":{},"target_modules":["k_proj","o_proj","q_proj","v_proj"],"use_rslora":false},'
    '"price_per_1k_tokens":"123456789012345678901234567890","publisher":"0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",'
    '"royalty_bps":250,"version":1}'
)
CONTENT_HASH = "14392ce08aefbde9268415d7e8310242752855e77d4eb47b83a7531e4dd51a90"
DIGEST = "5f72899e02662b2bc0f7467d6b51821492d81a5b8d37d5287846c8ae9fa9f77a"
SIGNATURE = (
    "0xd2de02ef811f6b36af55eee3da1c1e2f9f52a8b62c3626c2e035286e7a4d641b"
    "03da98f09cf4efd04eb8b1ddb4655f416c072e334ac33d74b02d502cd382dd1e1c"
)
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def unsigned(**changes) -> UnsignedManifest:
    values = dict(
        version=1,
        name="médical-demo",
        base=BaseRef(name="SmolLM2-135M-Instruct", fingerprint="sha256:" + "ab" * 32),
        peft=PeftSummary(r=8, lora_alpha=16, target_modules=["k_proj", "o_proj", "q_proj", "v_proj"], modules=120),
        files=[
            FileRef(name="adapter_config.json", cid="bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4", size=12),
            FileRef(name="adapter_model.safetensors", cid="bafybeigjfbxmmnz6svot6hg7pzraq6ytjnzpdeetwkcxbihjnp3nuwm35u", size=5242880),
        ],
        publisher=KEY.address,
        price_per_1k_tokens="123456789012345678901234567890",
        royalty_bps=250,
        created_at=1764400000,
    )
    values.update(changes)
    return UnsignedManifest(**values)


def signed_raw(**changes) -> bytes:
    return encode_manifest(sign_manifest(unsigned(**changes), KEY))


def test_known_key_gives_the_known_signature():
    u = unsigned()
    assert encode_manifest(u).decode() == CANONICAL
    assert content_hash(u).hex() == CONTENT_HASH
    msg = manifest_message(u)
    from eth_utils import keccak

    assert keccak(b"\x19" + msg.version + msg.header + msg.body).hex() == DIGEST
    m = sign_manifest(u, KEY)
    assert m.signature == SIGNATURE
    assert recover_signer(m) == KEY.address
    check_signature(m)


def test_signed_manifest_round_trips_and_its_cid_covers_the_signature():
    raw = signed_raw()
    m = parse_manifest(raw)
    assert encode_manifest(m) == raw and m.unsigned() == unsigned()
    assert raw.decode() == CANONICAL.replace(',"version":1}', f',"signature":"{SIGNATURE}","version":1}}')


_CHANGES = {
    "name": {"name": "medical-demo"},
    "base.name": {"base": BaseRef(name="SmolLM2-360M", fingerprint="sha256:" + "ab" * 32)},
    "base.fingerprint": {"base": BaseRef(name="SmolLM2-135M-Instruct", fingerprint="sha256:" + "ac" * 32)},
    "peft.r": {"peft": PeftSummary(r=16, lora_alpha=16, target_modules=["k_proj", "o_proj", "q_proj", "v_proj"], modules=120)},
    "peft.target_modules": {"peft": PeftSummary(r=8, lora_alpha=16, target_modules=["q_proj"], modules=120)},
    "files.cid": {"files": [FileRef(name="adapter_config.json", cid="bafkreib36vyxoadhc7pvavhxlfofnthbwd5x2ujzkkqhoraamvwq54wcuq", size=12), unsigned().files[1]]},
    "files.size": {"files": [unsigned().files[0], FileRef(name="adapter_model.safetensors", cid=unsigned().files[1].cid, size=5242881)]},
    "publisher": {"publisher": OTHER.address},
    "price_per_1k_tokens": {"price_per_1k_tokens": "123456789012345678901234567891"},
    "royalty_bps": {"royalty_bps": 251},
    "created_at": {"created_at": 1764400001},
}


@pytest.mark.parametrize("field", list(_CHANGES))
def test_any_field_change_breaks_the_signature(field):
    good = sign_manifest(unsigned(), KEY)
    forged = type(good)(**{**unsigned(**_CHANGES[field]).model_dump(), "signature": good.signature})
    with pytest.raises(AdapterRejected) as e:
        check_signature(forged)
    assert e.value.reason.value == "wrong_signer"
    assert recover_signer(forged) != KEY.address or field == "publisher"


def test_sign_refuses_a_key_that_is_not_the_publisher():
    with pytest.raises(ValueError, match="signing key"):
        sign_manifest(unsigned(), OTHER)


def _with_signature(r: int, s: int, v: int) -> bytes:
    obj = json.loads(signed_raw())
    obj["signature"] = "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])).hex()
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_SIG = bytes.fromhex(SIGNATURE[2:])
_R, _S, _V = int.from_bytes(_SIG[:32], "big"), int.from_bytes(_SIG[32:64], "big"), _SIG[64]


@pytest.mark.parametrize(
    "r, s, v, why",
    [
        (_R, _S, 29, "v is 29"),
        (_R, _N - _S, 55 - _V, "lower half"),  # the malleated twin: recovers to the same key, refused
        (0, _S, _V, "out of range"),
        (_N, _S, _V, "out of range"),
        (_R, 0, _V, "out of range"),
        (5, 1, 27, "does not recover"),  # x = 5 is not on secp256k1
    ],
    ids=["v", "high_s", "r_zero", "r_n", "s_zero", "no_point"],
)
def test_malformed_signatures_are_bad_signature(r, s, v, why):
    m = parse_manifest(_with_signature(r, s, v))
    with pytest.raises(AdapterRejected, match=why) as e:
        check_signature(m)
    assert e.value.reason.value == "bad_signature"


def _edit(raw: bytes, edit) -> bytes:
    obj = json.loads(raw)
    edit(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda raw: json.dumps(json.loads(raw), indent=1).encode(), "canonical"),
        (lambda raw: json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode(), "canonical"),  # \u escapes
        (lambda raw: raw[:-1] + b',"extra":1}', "extra"),
        (lambda raw: _edit(raw, lambda o: o.pop("signature")), "signature"),
        (lambda raw: _edit(raw, lambda o: o.update(version=2)), "version"),
        (lambda raw: _edit(raw, lambda o: o.update(publisher=o["publisher"].lower())), "publisher"),
        (lambda raw: _edit(raw, lambda o: o.update(price_per_1k_tokens=10**18)), "price_per_1k_tokens"),
        (lambda raw: _edit(raw, lambda o: o.update(price_per_1k_tokens="0100")), "price_per_1k_tokens"),
        (lambda raw: _edit(raw, lambda o: o.update(price_per_1k_tokens="-1")), "price_per_1k_tokens"),
        (lambda raw: _edit(raw, lambda o: o.update(price_per_1k_tokens=str(2**256))), "price_per_1k_tokens"),
        (lambda raw: _edit(raw, lambda o: o.update(royalty_bps=10_001)), "royalty_bps"),
        (lambda raw: _edit(raw, lambda o: o.update(created_at=2**64)), "created_at"),
        (lambda raw: _edit(raw, lambda o: o.update(signature=o["signature"].upper().replace("0X", "0x"))), "signature"),
        (lambda raw: _edit(raw, lambda o: o.update(signature=o["signature"][:-2])), "signature"),
        (lambda raw: _edit(raw, lambda o: o["files"][0].update(cid="QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")), "files.0.cid"),
        (lambda raw: _edit(raw, lambda o: o["files"][0].update(cid="BAFKREIFJJCIE6LYPI6NY7AMXNFFTAGCLBUXNDQONFIPMB64F2KM2DEVEI4")), "files.0.cid"),
        (lambda raw: _edit(raw, lambda o: o["files"][0].update(name="../adapter_config.json")), "files.0.name"),
        (lambda raw: _edit(raw, lambda o: o["files"].append(o["files"][0])), "files"),
        (lambda raw: _edit(raw, lambda o: o["peft"].update(lora_alpha=float("nan"))), "NaN"),
        (lambda raw: b'{"pad":"' + b"x" * MAX_MANIFEST_BYTES + b'"}', "limit"),
        (lambda raw: b"\xff\xfe not json", "not JSON"),
        (lambda raw: b"[1, 2]", "JSON object"),
    ],
    ids=[
        "pretty", "ascii_escaped", "extra_field", "no_signature", "version_2", "lowercase_publisher", "price_number",
        "price_leading_zero", "price_negative", "price_over_uint256", "royalty_over_10000", "created_at_over_uint64",
        "signature_uppercase", "signature_short", "cid_v0", "cid_not_canonical", "file_name_path", "duplicate_file",
        "nan", "too_big", "not_json", "not_object",
    ],
)  # fmt: skip
def test_schema_violations_are_bad_manifest(make, where):
    with pytest.raises(AdapterRejected, match=where) as e:
        parse_manifest(make(signed_raw()))
    assert e.value.reason.value == "bad_manifest"
