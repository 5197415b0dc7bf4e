"""The serving record: what a node signs about each call it served, and the hash a paid receipt binds.

    ServingRecord ─ node            the node's account (it signs; routing and evidence name it)
                  ├ base            the base fingerprint (sha256 over the weights, ``engine/base.py``)
                  ├ adapter         the adapter CID ("" for the base model), or a composed call's canonical
                  │                 composition id "cidA*0.7+cidB*0.3" (every part and weight signed)
                  ├ prompt_hash     sha256 of the prompt token ids      (uint32 little-endian each)
                  ├ completion_hash sha256 of the completion token ids  (the final EOS included)
                  ├ prompt_tokens / completion_tokens
                  ├ sampling        max_new_tokens, temperature, top_p, top_k, seed, stop (+ constraint)
                  ├ engine          "torch/bfloat16", "vllm/float32", … (what the node says it ran)
                  └ proof           the activation commitment taken while decoding (``proof.encoding``)

It is EIP-712 typed data (https://eips.ethereum.org/EIPS/eip-712) in a chain-independent domain, like
the manifest (``adapters/signing.py``), so any wallet or contract can recover who signed it:

    domain   EIP712Domain(string name,string version)   {name: "OpenLoRA Serving", version: "1"}
    type     Serving(address node,bytes32 base,string adapter,bytes32 promptHash,bytes32 completionHash,
                     uint32 promptTokens,uint32 completionTokens,bytes32 sampling,string engine,bytes32 proof)
             sampling = keccak256(canonical JSON of the sampling parameters), proof = keccak256(proof bytes)
    digest   keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(Serving))  ── the record's id: a paid call's
             EIP-712 receipt carries it as ``bytes32 serving`` (``chain/vouchers.py``)
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address, keccak

from ..adapters.signing import signature_form_error

DOMAIN = {"name": "OpenLoRA Serving", "version": "1"}
TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
    "Serving": [
        {"name": "node", "type": "address"},
        {"name": "base", "type": "bytes32"},
        {"name": "adapter", "type": "string"},
        {"name": "promptHash", "type": "bytes32"},
        {"name": "completionHash", "type": "bytes32"},
        {"name": "promptTokens", "type": "uint32"},
        {"name": "completionTokens", "type": "uint32"},
        {"name": "sampling", "type": "bytes32"},
        {"name": "engine", "type": "string"},
        {"name": "proof", "type": "bytes32"},
    ],
}
_FINGERPRINT_PREFIX = "sha256:"
UINT32_MAX = 2**32 - 1


class RecordError(ValueError):
    """A serving record that is malformed or not signed by its node; the message says which field."""


@dataclass(frozen=True)
class Sampling:
    """The sampling a call asked for, as the record binds it.

    Attributes:
        max_new_tokens: tokens to generate at most.
        temperature: 0 = greedy.
        top_p / top_k: nucleus mass (1 = off) / most likely tokens kept (0 = off).
        seed: the request's seed, ``None`` when the client gave none (the engine drew one).
        stop: stop strings.
        constraint: the structured-output constraint's canonical JSON (``engine.structured``), ``""`` for free text.
    """

    max_new_tokens: int
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    constraint: str = ""

    @property
    def greedy(self) -> bool:
        """Whether every token must be the most likely one."""
        return self.temperature == 0.0

    def canonical(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace, floats as Python's shortest repr): what ``sampling`` hashes.
        A constraint adds its ``"constraint"`` key; a free-text call hashes as it did before constraints existed."""
        doc = {
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
            "temperature": float(self.temperature),
            "top_k": self.top_k,
            "top_p": float(self.top_p),
        }
        if self.constraint:
            doc["constraint"] = self.constraint
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True)
class ServingRecord:
    """One call as its node signs it (fields: the module doc).

    Attributes:
        node: checksummed address of the signing node.
        base_fingerprint: ``"sha256:<64 hex>"``.
        adapter: adapter CID, ``""`` for the base model, or a composition id (``adapters.composition``).
        prompt_hash / completion_hash: 32-byte sha256 of the token ids (:func:`ids_hash`).
        prompt_tokens / completion_tokens: token counts.
        sampling: the sampling parameters.
        engine: ``"<engine>/<dtype>"`` the node ran.
        proof: the commitment bytes (``proof.encoding``).
    """

    node: str
    base_fingerprint: str
    adapter: str
    prompt_hash: bytes
    completion_hash: bytes
    prompt_tokens: int
    completion_tokens: int
    sampling: Sampling
    engine: str
    proof: bytes

    def check_form(self) -> None:
        """Raise :class:`RecordError` naming the first field out of form (address, fingerprint, hash lengths,
        counts)."""
        if not is_checksum_address(self.node):
            raise RecordError(f"record.node must be a checksummed address, got {self.node!r}")
        if not (self.base_fingerprint.startswith(_FINGERPRINT_PREFIX) and len(self.base_fingerprint) == 71):
            raise RecordError(f"record.base_fingerprint must be 'sha256:<64 hex>', got {self.base_fingerprint!r}")
        try:
            bytes.fromhex(self.base_fingerprint[len(_FINGERPRINT_PREFIX):])
        except ValueError:
            raise RecordError(f"record.base_fingerprint is not hex: {self.base_fingerprint!r}") from None
        if len(self.prompt_hash) != 32 or len(self.completion_hash) != 32:
            raise RecordError("record.prompt_hash and record.completion_hash must be 32 bytes")
        for name in ("prompt_tokens", "completion_tokens"):
            if not 0 <= getattr(self, name) <= UINT32_MAX:
                raise RecordError(f"record.{name} must fit uint32, got {getattr(self, name)}")

    def message(self) -> SignableMessage:
        """The EIP-712 message the node signs.

        Raises:
            RecordError: a field out of form (:meth:`check_form`).
        """
        self.check_form()
        return encode_typed_data(
            full_message={
                "types": TYPES,
                "primaryType": "Serving",
                "domain": DOMAIN,
                "message": {
                    "node": self.node,
                    "base": bytes.fromhex(self.base_fingerprint[len(_FINGERPRINT_PREFIX):]),
                    "adapter": self.adapter,
                    "promptHash": self.prompt_hash,
                    "completionHash": self.completion_hash,
                    "promptTokens": self.prompt_tokens,
                    "completionTokens": self.completion_tokens,
                    "sampling": keccak(self.sampling.canonical()),
                    "engine": self.engine,
                    "proof": keccak(self.proof),
                },
            }
        )

    def digest(self) -> bytes:
        """The 32-byte EIP-712 digest of the record: its id, and what a paid receipt's ``serving`` holds."""
        m = self.message()
        return keccak(b"\x19" + m.version + m.header + m.body)


@dataclass(frozen=True)
class SignedRecord:
    """A serving record and its node's 65-byte signature (r ‖ s ‖ v, v ∈ {27, 28}, low s)."""

    record: ServingRecord
    signature: bytes

    def signer(self) -> str:
        """The checksummed address that signed the record.

        Raises:
            RecordError: a malformed record or signature, or one that recovers to no key.
        """
        if (problem := signature_form_error(self.signature)) is not None:
            raise RecordError(f"record {problem}")
        message = self.record.message()
        try:
            return Account.recover_message(message, signature=self.signature)
        except Exception as e:  # eth-keys raises several types for an (r, s) with no curve point
            raise RecordError(f"record signature does not recover: {e}") from None

    def check_signature(self) -> None:
        """Raise :class:`RecordError` unless the record is signed by ``record.node``."""
        signer = self.signer()
        if signer != self.record.node:
            raise RecordError(f"record is signed by {signer}, not by its node {self.record.node}")


def ids_hash(ids: list[int]) -> bytes:
    """sha256 over token ids, each a uint32 little-endian (32 bytes).

    Raises:
        ValueError: an id outside uint32.
    """
    try:
        return hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).digest()
    except struct.error as e:
        raise ValueError(f"token ids must fit uint32: {e}") from None


def sign_record(account: LocalAccount, record: ServingRecord) -> SignedRecord:
    """Sign ``record`` with the node's key.

    Raises:
        ValueError: ``account`` is not ``record.node``.
        RecordError: a field out of form.
    """
    if account.address != record.node:
        raise ValueError(f"record.node is {record.node} but the signing key is {account.address}")
    return SignedRecord(record, bytes(account.sign_message(record.message()).signature))
