"""The verification pipeline in process (adapters/verify.py, adapters/store.py) against the real base model:
every corpus case gets its reason, the order of checks, what is remembered, and the load path."""

from __future__ import annotations

import json
import struct

import pytest
from safetensors.torch import save as st_save

from adapter_corpus import (
    CASE_REASONS,
    NOT_RECORDED,
    OTHER_KEY,
    PUBLISHER,
    BaseInfo,
    absent_adapter,
    config_bytes,
    honest_summary,
    sign,
    signed_manifest,
    tamper_block,
    template_files,
    template_tensors,
    unique_good_files,
    unsigned_manifest,
    upload_cases,
)
from openlora.adapters.catalog import AdapterState, BadTransition, Catalog
from openlora.adapters.manifest import encode_manifest
from openlora.adapters.package import CONFIG_FILE, WEIGHTS_FILE, build_manifest
from openlora.adapters.reasons import AdapterRejected, RejectReason
from openlora.adapters.signing import sign_manifest
from openlora.adapters.store import AdapterStore, manifest_cid
from openlora.adapters.verify import BaseProfile
from openlora.content.blockstore import BlockStore

MAX_RANK = 16


@pytest.fixture(scope="module")
def profile(base_source) -> BaseProfile:
    from openlora.engine.model import load_resident

    rm = load_resident(base_source, "float32", n_slots=1, max_rank=MAX_RANK)
    return BaseProfile(base_source.name, base_source.fingerprint, rm.base_modules, rm.max_rank)


@pytest.fixture(scope="module")
def base(profile) -> BaseInfo:
    return BaseInfo(profile.name, profile.fingerprint, profile.max_rank)


@pytest.fixture
def store(tmp_path, profile):
    s = AdapterStore(BlockStore(tmp_path / "blocks"), Catalog(tmp_path / "catalog.sqlite"), profile)
    yield s
    s.catalog.close()


@pytest.fixture(scope="module")
def cases(base, tmp_path_factory):
    marker = tmp_path_factory.mktemp("pickle") / "unpickled"
    return marker, {c.id: c for c in upload_cases(base, marker)}


@pytest.mark.parametrize("case_id", list(CASE_REASONS))
def test_each_corpus_case_is_rejected_with_its_reason(store, cases, case_id):
    marker, by_id = cases
    case = by_id[case_id]
    with pytest.raises(AdapterRejected) as e:
        store.publish(case.manifest, case.files)
    assert e.value.reason is case.reason, e.value
    entry = store.catalog.get(case.cid)
    if case.recorded:
        assert entry.state is AdapterState.REJECTED and entry.reason == case.reason.value and entry.detail == e.value.detail
    else:
        assert entry is None
    assert not store.blocks.has(case.cid)
    assert not marker.exists(), "the pickle was unpickled"


@pytest.mark.parametrize("case_id", [c for c in CASE_REASONS if c not in NOT_RECORDED])
def test_a_recorded_verdict_is_remembered_not_recomputed(store, cases, case_id):
    """A sticky verdict is refused from memory: the same manifest with other (garbage) files gets
    the same reason, not the upload's hash mismatch. A retryable one is verified again."""
    case = cases[1][case_id]
    with pytest.raises(AdapterRejected):
        store.publish(case.manifest, case.files)
    garbage = {n: b"garbage" for n in case.files}
    with pytest.raises(AdapterRejected) as again:
        store.publish(case.manifest, garbage)
    if not case.reason.retryable:
        assert again.value.reason is case.reason
    elif case.reason is RejectReason.BASE_MISMATCH:  # verified again; the manifest still names another base
        assert again.value.reason is RejectReason.BASE_MISMATCH
    else:  # verified again, so the garbage upload is what fails now
        assert again.value.reason is RejectReason.HASH_MISMATCH


def test_an_honest_folder_publishes_and_loads(store, base):
    files = template_files()
    unsigned = build_manifest(files, base_name=base.name, base_fingerprint=base.fingerprint, publisher=PUBLISHER.address, name="medical")
    raw = encode_manifest(sign_manifest(unsigned, PUBLISHER))
    cid = store.publish(raw, files)
    assert cid == manifest_cid(raw) and cid.startswith("bafkrei")
    entry = store.catalog.get(cid)
    assert entry.state is AdapterState.READY and entry.manifest == raw and entry.name == "medical"
    assert store.blocks.cat(cid) == raw
    adapter = store.load(cid)
    assert len(adapter.modules) == 120 and adapter.max_rank == 8
    assert store.publish(raw, files) == cid  # idempotent


@pytest.mark.parametrize(
    "edit, reason",
    [
        # bad signature AND another base AND DoRA: the signature is checked first
        (dict(sig="other", base="other", config=dict(use_dora=True)), RejectReason.WRONG_SIGNER),
        # another base AND a pickle file: the base before the file list
        (dict(base="other", files="pickle"), RejectReason.BASE_MISMATCH),
        # trainable token embeddings (not served) AND NaN weights: the config before any weight is read
        (dict(config=dict(trainable_token_indices=[0]), weights="nan"), RejectReason.UNSUPPORTED_PEFT),
        # rank over the limit AND a header bomb: the rank before the header is parsed
        (dict(config=dict(r=MAX_RANK + 1), weights="bomb"), RejectReason.RANK_LIMIT),
        # a header bomb AND a lying summary: the content before the summary
        (dict(weights="bomb", summary="lie"), RejectReason.HEADER_TOO_LARGE),
    ],
    ids=["signature_first", "base_before_files", "config_before_weights", "rank_before_header", "content_before_summary"],
)
def test_checks_run_in_the_documented_order(store, base, edit, reason):
    files = template_files()
    if "config" in edit:
        files[CONFIG_FILE] = config_bytes(**edit["config"])
    if edit.get("weights") == "nan":
        t = template_tensors()
        next(iter(t.values()))[0, 0] = float("nan")
        files[WEIGHTS_FILE] = st_save(t)
    if edit.get("weights") == "bomb":
        files[WEIGHTS_FILE] = struct.pack("<Q", 2**40) + b"{}"
    if edit.get("files") == "pickle":
        files = {CONFIG_FILE: files[CONFIG_FILE], "adapter_model.pt": b"\x80\x04."}
    on = BaseInfo("Other", "sha256:" + "cd" * 32, MAX_RANK) if edit.get("base") == "other" else base
    fields = {}
    if edit.get("summary") == "lie":
        fields["peft"] = honest_summary(template_files()).model_copy(update={"r": 2})
    raw = sign(unsigned_manifest(files, on, **fields), OTHER_KEY if edit.get("sig") == "other" else PUBLISHER)
    with pytest.raises(AdapterRejected) as e:
        store.publish(raw, files)
    assert e.value.reason is reason


def test_a_bad_upload_of_a_ready_adapter_leaves_it_ready(store, base):
    files = unique_good_files(1)
    raw = signed_manifest(files, base)
    cid = store.publish(raw, files)
    with pytest.raises(AdapterRejected) as e:
        store.publish(raw, {**files, CONFIG_FILE: files[CONFIG_FILE] + b"\n"})
    assert e.value.reason is RejectReason.HASH_MISMATCH
    assert store.catalog.get(cid).state is AdapterState.READY


def test_tampered_block_is_rejected_at_load_and_a_republish_heals_it(store, base):
    files = unique_good_files(2)
    raw = signed_manifest(files, base)
    cid = store.publish(raw, files)
    config_cid = json.loads(raw)["files"][0]["cid"]
    tamper_block(store.blocks.root, config_cid)
    with pytest.raises(AdapterRejected) as e:
        store.load(cid)
    assert e.value.reason is RejectReason.HASH_MISMATCH and config_cid in e.value.detail
    entry = store.catalog.get(cid)
    assert entry.state is AdapterState.REJECTED and entry.reason == "hash_mismatch"
    assert not store.blocks.has(config_cid)  # the corrupt copy was deleted
    with pytest.raises(AdapterRejected) as again:
        store.load(cid)
    assert again.value.reason is RejectReason.ABSENT_FILE
    assert store.publish(raw, files) == cid
    assert store.catalog.get(cid).state is AdapterState.READY
    assert len(store.load(cid).modules) == 120


def test_a_manifest_whose_files_are_absent_is_rejected_at_load(store, base):
    cid = absent_adapter(store.blocks, base, seed=3)
    store.catalog.set_state(cid, AdapterState.READY)
    with pytest.raises(AdapterRejected) as e:
        store.load(cid)
    assert e.value.reason is RejectReason.ABSENT_FILE and "not stored on this node" in e.value.detail
    assert store.catalog.get(cid).reason == "absent_file"


def test_a_missing_manifest_block_is_absent_at_load(store):
    cid = manifest_cid(b"{}")
    store.catalog.set_state(cid, AdapterState.READY)
    with pytest.raises(AdapterRejected) as e:
        store.load(cid)
    assert e.value.reason is RejectReason.ABSENT_FILE


def test_validate_manifest_records_nothing(store, cases):
    case = cases[1]["other_key"]
    with pytest.raises(AdapterRejected):
        store.validate_manifest(case.manifest)
    assert store.catalog.get(case.cid) is None


@pytest.mark.parametrize("reason", list(RejectReason))
def test_only_a_retryable_rejection_can_be_left(tmp_path, reason):
    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.set_state("cid", AdapterState.REJECTED, reason=reason.value, detail="x")
    if reason.retryable:
        assert catalog.set_state("cid", AdapterState.READY).state is AdapterState.READY
    else:
        with pytest.raises(BadTransition):
            catalog.set_state("cid", AdapterState.READY)
    catalog.close()


def test_the_publisher_side_refuses_a_folder_it_cannot_describe(base):
    files = {**template_files(), "adapter_model.bin": b"\x80\x04."}
    with pytest.raises(AdapterRejected) as e:
        build_manifest(files, base_name=base.name, base_fingerprint=base.fingerprint, publisher=PUBLISHER.address)
    assert e.value.reason is RejectReason.PICKLE_REFUSED
    with pytest.raises(ValueError, match="royalty_bps"):
        build_manifest(
            template_files(), base_name=base.name, base_fingerprint=base.fingerprint, publisher=PUBLISHER.address, royalty_bps=10_001
        )


def test_the_store_reads_the_peft_features_an_adapter_needs_from_its_config(store, base):
    """What a node's directory answers tell clients to route by (``AdapterStore.features``)."""
    files = unique_good_files(7)
    plain = store.publish(signed_manifest(files, base, name="plain"), files)
    tensors = template_tensors()
    tensors |= {k.replace(".weight", ".bias"): 0.01 * v[:, 0].float() for k, v in tensors.items() if ".lora_B." in k}
    biased = {CONFIG_FILE: config_bytes(lora_bias=True), WEIGHTS_FILE: st_save(tensors)}
    cid = store.publish(signed_manifest(biased, base, name="biased"), biased)
    assert store.load(cid).features == ("lora_bias",)
    assert store.features(plain) == () and store.features(cid) == ("lora_bias",)
    assert store.features(manifest_cid(b"never published")) is None
