"""Evidence against a node: a served call that fails verification, signed by the verifier who found it.

    Evidence ─ call        the accused node's signed record + the token ids (anyone re-runs it)
             ├ check       the failing check (proof, commitment, sampling) and its detail
             ├ verifier    who found it, issued_at, and the verifier's EIP-712 signature over
                           Evidence(bytes32 serving,address accused,string check,address verifier,uint64 issuedAt)
                           in the domain {name: "OpenLoRA Serving", version: "1"}

Re-checking (:func:`recheck`): the verifier's signature, the accused node's signature over the record, the
token hashes, then the whole verification again (``proof.verify``): evidence stands only when this node's
own recomputation fails the call with a check that blames the node. Anything else is forged or mistaken: a
node never acts on a verifier's word, only on its own recomputation; the signatures only say who claimed what.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address

from ..adapters.signing import signature_form_error
from ..v1 import node_pb2 as pb
from .record import DOMAIN, RecordError
from .reference import Reference
from .verify import AdapterSource, Verdict, verify_call
from .wire import record_from_pb

TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
    "Evidence": [
        {"name": "serving", "type": "bytes32"},
        {"name": "accused", "type": "address"},
        {"name": "check", "type": "string"},
        {"name": "verifier", "type": "address"},
        {"name": "issuedAt", "type": "uint64"},
    ],
}
MAX_DETAIL = 1024


class EvidenceRejected(ValueError):
    """Evidence that does not stand; ``reason`` names why (``malformed``, ``bad_signature``, ``not_failing``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Accusation:
    """Evidence that stood this node's own re-check.

    Attributes:
        accused: the address of the node that signed the failing record.
        verifier: the address that signed the evidence.
        verdict: this node's own verdict on the call.
        evidence: the evidence message (to relay and to show).
    """

    accused: str
    verifier: str
    verdict: Verdict
    evidence: pb.Evidence


def _message(evidence: pb.Evidence) -> SignableMessage:
    """The EIP-712 message a verifier signs.

    Raises:
        RecordError: the record inside is out of form.
    """
    record = record_from_pb(evidence.call.record).record
    return encode_typed_data(
        full_message={
            "types": TYPES,
            "primaryType": "Evidence",
            "domain": DOMAIN,
            "message": {
                "serving": record.digest(),
                "accused": record.node,
                "check": evidence.check,
                "verifier": evidence.verifier,
                "issuedAt": evidence.issued_at,
            },
        }
    )


def sign_evidence(account: LocalAccount, call: pb.ServedCall, verdict: Verdict, now: int | None = None) -> pb.Evidence:
    """The evidence of a failed verification, signed by this verifier.

    Args:
        account: the verifier's key.
        call: the served call that failed.
        verdict: the failing verdict (``verdict.blames_node``).
        now: unix seconds (default: the clock).

    Raises:
        ValueError: ``verdict`` does not blame the node (a tampered file is not evidence).
    """
    if not verdict.blames_node:
        raise ValueError(f"a {verdict.check or 'valid'} verdict is not evidence against the node")
    evidence = pb.Evidence(
        call=call,
        check=verdict.check,
        detail=verdict.detail[:MAX_DETAIL],
        verifier=account.address,
        issued_at=int(time.time()) if now is None else now,
    )
    evidence.signature = bytes(account.sign_message(_message(evidence)).signature)
    return evidence


def check_signatures(evidence: pb.Evidence) -> tuple[str, str]:
    """The accused and verifier addresses of ``evidence`` once both signatures check out (cheap: no model).

    Raises:
        EvidenceRejected: ``malformed`` (fields out of form), ``bad_signature`` (the verifier's or the accused
            node's signature does not recover to the named address).
    """
    if not evidence.HasField("call") or not evidence.call.HasField("record"):
        raise EvidenceRejected("malformed", "evidence without a served call")
    if not is_checksum_address(evidence.verifier) or len(evidence.detail) > MAX_DETAIL:
        raise EvidenceRejected("malformed", "evidence.verifier must be a checksummed address and detail short")
    try:
        signed = record_from_pb(evidence.call.record)
        signed.check_signature()
        message = _message(evidence)
    except RecordError as e:
        raise EvidenceRejected("bad_signature", f"the accused record: {e}") from None
    if (problem := signature_form_error(bytes(evidence.signature))) is not None:
        raise EvidenceRejected("bad_signature", f"evidence {problem}")
    try:
        signer = Account.recover_message(message, signature=bytes(evidence.signature))
    except Exception as e:  # eth-keys raises several types for an (r, s) with no curve point
        raise EvidenceRejected("bad_signature", f"evidence signature does not recover: {e}") from None
    if signer != evidence.verifier:
        raise EvidenceRejected("bad_signature", f"evidence is signed by {signer}, not by its verifier {evidence.verifier}")
    return signed.record.node, evidence.verifier


def recheck(evidence: pb.Evidence, reference: Reference, adapters: AdapterSource) -> Accusation:
    """Decide whether ``evidence`` stands, by this node's own recomputation (module doc).

    Raises:
        EvidenceRejected: ``malformed`` / ``bad_signature`` (:func:`check_signatures`), ``not_failing`` (the call
            passes here, or fails only a check that does not blame the node: the evidence is false).
        proof.verify.CannotVerify: this node cannot check it (another base, the adapter unavailable).
    """
    accused, verifier = check_signatures(evidence)
    verdict = verify_call(evidence.call, reference, adapters)
    if not verdict.blames_node:
        raise EvidenceRejected(
            "not_failing", f"this node's recomputation {'passes the call' if verdict.valid else f'fails only {verdict.check}'}"
            f" ({verdict.detail}); the evidence claims {evidence.check}",
        )  # fmt: skip
    return Accusation(accused, verifier, verdict, evidence)
