"""Serving records ↔ ``openlora.v1`` messages, and the receipt file ``openlora generate --receipt-out`` writes.

A served call travels as ``pb.ServedCall`` (the signed record, the token ids it covers and, for a paid call,
the receipt) in ``GenerateDone``, in ``Verify`` and inside evidence; on disk it is the same message in
protobuf's JSON mapping, so the file is readable and any protobuf library parses it.
"""

from __future__ import annotations

from google.protobuf import json_format

from ..v1 import node_pb2 as pb
from .record import RecordError, Sampling, ServingRecord, SignedRecord

#: What a receipt file starts with (``format`` field), so a wrong file is named as such.
RECEIPT_FILE_FORMAT = "openlora-served-call-v1"


def record_to_pb(signed: SignedRecord) -> pb.ServingRecord:
    """The wire form of a signed serving record."""
    r, s = signed.record, signed.record.sampling
    message = pb.ServingRecord(
        node=r.node,
        base_fingerprint=r.base_fingerprint,
        adapter=r.adapter,
        prompt_hash=r.prompt_hash,
        completion_hash=r.completion_hash,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        stop=list(s.stop),
        engine=r.engine,
        proof=r.proof,
        signature=signed.signature,
        constraint=s.constraint,
    )
    if s.seed is not None:
        message.seed = s.seed
    return message


def record_from_pb(message: pb.ServingRecord) -> SignedRecord:
    """A signed serving record from the wire (its signature is checked by ``SignedRecord.check_signature``).

    Raises:
        RecordError: a field out of form (address, fingerprint, hash lengths), or a signature that is not 65 bytes.
    """
    sampling = Sampling(
        max_new_tokens=message.max_new_tokens,
        temperature=message.temperature,
        top_p=message.top_p,
        top_k=message.top_k,
        seed=message.seed if message.HasField("seed") else None,
        stop=tuple(message.stop),
        constraint=message.constraint,
    )
    record = ServingRecord(
        node=message.node,
        base_fingerprint=message.base_fingerprint,
        adapter=message.adapter,
        prompt_hash=bytes(message.prompt_hash),
        completion_hash=bytes(message.completion_hash),
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        sampling=sampling,
        engine=message.engine,
        proof=bytes(message.proof),
    )
    record.check_form()
    if len(message.signature) != 65:
        raise RecordError(f"record.signature must be 65 bytes, got {len(message.signature)}")
    return SignedRecord(record, bytes(message.signature))


def served_call(done: pb.GenerateDone) -> pb.ServedCall | None:
    """The served call a ``GenerateDone`` describes (``None`` when it carries no record: a call cut off)."""
    if not done.HasField("record"):
        return None
    call = pb.ServedCall(record=done.record, prompt_ids=done.prompt_ids, completion_ids=done.completion_ids)
    if done.HasField("receipt"):
        call.receipt.CopyFrom(done.receipt)
    return call


def dump_served_call(call: pb.ServedCall, manifest: str = "") -> str:
    """The receipt file's text: ``{"format": RECEIPT_FILE_FORMAT, "call": <ServedCall as protobuf JSON>,
    "manifest": <the adapter's signed manifest, verbatim>}`` (the manifest lets a local verifier check an adapter
    folder against the record's CID; ``""`` for the base model)."""
    import json

    body = json_format.MessageToDict(call, preserving_proto_field_name=True)
    return json.dumps({"format": RECEIPT_FILE_FORMAT, "call": body, "manifest": manifest}, indent=1) + "\n"


def load_served_call(text: str) -> tuple[pb.ServedCall, str]:
    """Parse a receipt file into the served call and the adapter manifest it carries (``""``: none).

    Raises:
        ValueError: not JSON, not a receipt file, or a ``call`` that is not a ServedCall.
    """
    import json

    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a receipt file (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != RECEIPT_FILE_FORMAT or not isinstance(doc.get("call"), dict):
        raise ValueError(f"not a receipt file: expected {{\"format\": \"{RECEIPT_FILE_FORMAT}\", \"call\": {{…}}}}")
    manifest = doc.get("manifest", "")
    if not isinstance(manifest, str):
        raise ValueError("the receipt file's manifest must be the manifest's JSON text")
    try:
        return json_format.ParseDict(doc["call"], pb.ServedCall()), manifest
    except json_format.ParseError as e:
        raise ValueError(f"the receipt file's call does not parse: {e}") from None
