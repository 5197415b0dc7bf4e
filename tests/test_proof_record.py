"""Serving records, the commitment's bytes and evidence signatures, without a model (issue 15).

What is pinned: the commitment round-trips within its quantization step for any vocabulary width; malformed
commitments are refused with a reason; a record recovers to its node and any change to a signed field (or to
the token ids a call carries) is caught; a paid receipt binds the record's digest; evidence whose signatures
do not check out is refused before any recomputation.
"""

from __future__ import annotations

import random

import pytest
from eth_account import Account

from openlora.chain.records import Eip712Domain, Receipt
from openlora.chain.vouchers import recover_receipt_signer, sign_receipt
from openlora.chain.wire import receipt_from_pb, receipt_to_pb
from openlora.proof.encoding import VALUE_SCALE, ProofFormatError, decode, encode, id_bits
from openlora.proof.evidence import EvidenceRejected, check_signatures, sign_evidence
from openlora.proof.record import RecordError, Sampling, ServingRecord, ids_hash, sign_record
from openlora.proof.verify import Verdict
from openlora.proof.wire import dump_served_call, load_served_call, record_from_pb, record_to_pb
from openlora.v1 import node_pb2 as pb

NODE = Account.from_key(b"\x31" * 32)
VERIFIER = Account.from_key(b"\x32" * 32)
FINGERPRINT = "sha256:" + "ab" * 32
VOCAB = 49152


def commitment(tokens: int, k: int, vocab: int, seed: int = 0) -> tuple[list[list[int]], list[list[float]]]:
    rng = random.Random(seed)
    ids = [[rng.randrange(vocab) for _ in range(k)] for _ in range(tokens)]
    lps = [sorted((-rng.expovariate(0.3) for _ in range(k)), reverse=True) for _ in range(tokens)]
    return ids, lps


def served(prompt: list[int], completion: list[int], temperature: float = 0.0) -> pb.ServedCall:
    ids, lps = commitment(len(completion), 4, VOCAB)
    record = ServingRecord(
        node=NODE.address, base_fingerprint=FINGERPRINT, adapter="bafkreiexample", prompt_hash=ids_hash(prompt),
        completion_hash=ids_hash(completion), prompt_tokens=len(prompt), completion_tokens=len(completion),
        sampling=Sampling(max_new_tokens=32, temperature=temperature, seed=7), engine="torch/bfloat16",
        proof=encode(ids, lps, VOCAB),
    )  # fmt: skip
    return pb.ServedCall(record=record_to_pb(sign_record(NODE, record)), prompt_ids=prompt, completion_ids=completion)


@pytest.mark.parametrize("vocab", [2, 1000, 49152, 65536, 128256])
@pytest.mark.parametrize("tokens,k", [(0, 4), (1, 1), (33, 4), (64, 8)])
def test_commitment_round_trips_within_one_quantization_step(vocab, tokens, k) -> None:
    ids, lps = commitment(tokens, k, vocab, seed=vocab + tokens)
    raw = encode(ids, lps, vocab)
    got = decode(raw, vocab)
    assert got.ids == ids
    for row_got, row in zip(got.logprobs, lps):
        for a, b in zip(row_got, row):
            assert abs(a - max(b, -4095 / VALUE_SCALE)) <= 0.5 / VALUE_SCALE + 1e-9
    assert len(raw) == 8 + (tokens * k * (id_bits(vocab) + 12) + 7) // 8


def test_the_default_commitment_fits_the_budget_of_512_bytes_per_32_tokens() -> None:
    ids, lps = commitment(32, 4, VOCAB)
    assert len(encode(ids, lps, VOCAB)) == 8 + 448


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda raw: raw[:5], "shorter than"),
        (lambda raw: bytes([2]) + raw[1:], "version"),
        (lambda raw: raw[:2] + bytes([15]) + raw[3:], "bit ids"),
        (lambda raw: raw + b"\0", "body is"),
        (lambda raw: raw[:-1], "body is"),
    ],
    ids=["truncated-header", "version", "id-width", "trailing-byte", "short-body"],
)
def test_a_malformed_commitment_is_refused_with_its_reason(mutate, expected) -> None:
    ids, lps = commitment(5, 4, VOCAB)
    with pytest.raises(ProofFormatError, match=expected):
        decode(mutate(encode(ids, lps, VOCAB)), VOCAB)


def test_encode_refuses_an_id_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode([[VOCAB]], [[-1.0]], VOCAB)


def test_a_signed_record_recovers_to_its_node_and_survives_the_wire_and_the_file() -> None:
    call = served([1, 2, 3], [4, 5, 6, 7], temperature=0.7)
    signed = record_from_pb(call.record)
    signed.check_signature()
    assert signed.record.sampling == Sampling(max_new_tokens=32, temperature=0.7, seed=7)
    again, manifest = load_served_call(dump_served_call(call, '{"m": 1}'))
    assert again == call and manifest == '{"m": 1}'
    assert record_from_pb(again.record).record.digest() == signed.record.digest()


@pytest.mark.parametrize(
    "field,value",
    [
        ("adapter", "bafkreiother"),
        ("base_fingerprint", "sha256:" + "cd" * 32),
        ("completion_tokens", 3),
        ("temperature", 0.0),
        ("engine", "vllm/float32"),
        ("proof", b"\x01\x04\x10\x0c\x00\x00\x00\x00"),
    ],
)
def test_changing_any_signed_field_breaks_the_signature(field, value) -> None:
    call = served([1, 2, 3], [4, 5, 6, 7], temperature=0.7)
    setattr(call.record, field, value)
    with pytest.raises(RecordError, match="not by its node"):
        record_from_pb(call.record).check_signature()


def test_the_receipt_binds_the_serving_record_digest() -> None:
    domain = Eip712Domain(1337, "0x" + "11" * 20)
    digest = record_from_pb(served([1], [2]).record).record.digest()
    receipt = Receipt(NODE.address, VERIFIER.address, 0, 1, b"\x01" * 32, VERIFIER.address, 10, 100, 100, digest)
    signed = sign_receipt(NODE, receipt, domain)
    back = receipt_from_pb(receipt_to_pb(signed))
    assert back.receipt.serving == digest and recover_receipt_signer(back, domain) == NODE.address
    other = Receipt(**{**receipt.__dict__, "serving": bytes(32)})
    assert recover_receipt_signer(type(signed)(other, signed.signature), domain) != NODE.address


def test_evidence_signatures_are_checked_before_anything_is_recomputed() -> None:
    call = served([1, 2, 3], [4, 5])
    verdict = Verdict("commitment", "3.1 nats from the reference", distance=3.1)
    evidence = sign_evidence(VERIFIER, call, verdict, now=1_700_000_000)
    assert check_signatures(evidence) == (NODE.address, VERIFIER.address)
    forged = pb.Evidence()
    forged.CopyFrom(evidence)
    forged.verifier = NODE.address  # claims another verifier
    with pytest.raises(EvidenceRejected, match="bad_signature"):
        check_signatures(forged)
    framed = pb.Evidence()
    framed.CopyFrom(evidence)
    framed.call.completion_ids.append(9)  # token ids are not what the node signed: still its signature, but
    framed.call.record.adapter = "bafkreiother"  # a record the node never signed
    with pytest.raises(EvidenceRejected, match="accused record"):
        check_signatures(framed)
    with pytest.raises(ValueError, match="not evidence"):
        sign_evidence(VERIFIER, call, Verdict("completion", "hash differs"))


def test_a_paid_client_refuses_a_receipt_that_does_not_bind_the_calls_record() -> None:
    from openlora.client.streams import _unbound

    call = served([1, 2, 3], [4, 5])
    digest = record_from_pb(call.record).record.digest()
    receipt = pb.Receipt(node=NODE.address, serving=digest)
    done = pb.GenerateDone(record=call.record, receipt=receipt, finish_reason=pb.FINISH_REASON_STOP)
    assert _unbound(done, done.receipt) is None
    done.receipt.serving = bytes(32)
    assert "does not bind" in _unbound(done, done.receipt)
    done.receipt.serving, done.receipt.node = digest, VERIFIER.address  # the record is another node's
    assert "does not bind" in _unbound(done, done.receipt)
    cut = pb.GenerateDone(receipt=pb.Receipt(node=NODE.address, serving=bytes(32)), finish_reason=pb.FINISH_REASON_CANCELLED)
    assert _unbound(cut, cut.receipt) is None  # a call the node cut short has no record and binds none
    cut.finish_reason = pb.FINISH_REASON_STOP
    assert "without a serving record" in _unbound(cut, cut.receipt)
