"""The node as a verifier: the ``Verify`` RPC and the re-check of gossiped evidence, over one reference model.

    Verify(call) ──► verify_call ──► valid ─────────────────────────────────► VerifyResponse(valid)
                                 └─► fails, blames the node ─► sign evidence ─► accusations.add
                                                                              ─► publish on /openlora/1/evidence
                                                                              ─► VerifyResponse(evidence)
    gossip evidence ──► check(raw) ──► signatures ─► (seen? same answer) ─► recheck (own recomputation)
                                       │ stands: accusations.add, relay      │ false or forged: refused, the
                                       │ cannot check here: not relayed      │ forwarder loses score (p2p/gossip)

One recomputation at a time (the reference is one model); a piece of evidence is re-checked once, its
outcome remembered by the digest of its bytes (GossipSub brings the same message from several peers).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from enum import Enum

from eth_account.signers.local import LocalAccount
from google.protobuf.message import DecodeError

from ..v1 import node_pb2 as pb
from .accusations import Accusations
from .evidence import EvidenceRejected, check_signatures, recheck, sign_evidence
from .reference import Reference
from .verify import AdapterSource, CannotVerify, Verdict, verify_call

log = logging.getLogger(__name__)

MAX_EVIDENCE_BYTES = 512 * 1024
_REMEMBERED = 4096  # evidence outcomes kept by digest


class Outcome(str, Enum):
    """What gossiped evidence came to on this node."""

    STANDS = "stands"  # re-checked here: the call fails; relayed, the accused excluded
    CANNOT_CHECK = "cannot_check"  # another base, or the adapter cannot be had: not relayed, nobody blamed


class ProofService:
    """Verifies calls and re-checks evidence for one node.

    Args:
        reference: the node's reference model (same base as its engine).
        adapters: the node's verified adapters by CID (``AdapterStore.load``).
        account: the node's key (signs evidence).
        accusations: where stood evidence is kept.
        publish: gossips evidence bytes (``None``: a node without a swarm keeps it to itself).
    """

    def __init__(
        self,
        reference: Reference,
        adapters: AdapterSource,
        account: LocalAccount,
        accusations: Accusations,
        publish: Callable[[bytes], None] | None = None,
    ) -> None:
        self.reference = reference
        self.adapters = adapters
        self.account = account
        self.accusations = accusations
        self.publish = publish
        self._seen: dict[bytes, Outcome | EvidenceRejected] = {}
        self._lock = threading.Lock()

    def verify(self, call: pb.ServedCall) -> tuple[Verdict, pb.Evidence | None]:
        """Check ``call``; on a failure that blames its node, sign evidence, keep the accusation and gossip it.

        Blocking (one prefill): call it from a worker thread.

        Raises:
            CannotVerify: another base, or the adapter cannot be obtained here.
        """
        verdict = verify_call(call, self.reference, self.adapters)
        if not verdict.blames_node:
            return verdict, None
        evidence = sign_evidence(self.account, call, verdict)
        raw = evidence.SerializeToString()
        accused = call.record.node
        with self._lock:
            self._remember(hashlib.sha256(raw).digest(), Outcome.STANDS)
        if self.accusations.add(accused, self.account.address, evidence):
            log.warning("node %s failed verification (%s): %s", accused, verdict.check, verdict.detail)
        if self.publish is not None:
            self.publish(raw)
        return verdict, evidence

    def check(self, raw: bytes) -> Outcome:
        """Re-check gossiped evidence (blocking; from a worker thread of the swarm).

        Returns:
            ``STANDS`` (the accused is now excluded here) or ``CANNOT_CHECK``.

        Raises:
            EvidenceRejected: forged (``malformed``, ``bad_signature``) or false (``not_failing``).
        """
        digest = hashlib.sha256(raw).digest()
        with self._lock:  # one recomputation at a time; a repeat gets the remembered outcome
            known = self._seen.get(digest)
            if known is None:
                known = self._check(raw)
                self._remember(digest, known)
        if isinstance(known, EvidenceRejected):
            raise known
        return known

    def _check(self, raw: bytes) -> Outcome | EvidenceRejected:
        if len(raw) > MAX_EVIDENCE_BYTES:
            return EvidenceRejected("malformed", f"{len(raw)} bytes; the limit is {MAX_EVIDENCE_BYTES}")
        try:
            evidence = pb.Evidence.FromString(raw)
        except DecodeError as e:
            return EvidenceRejected("malformed", f"not an Evidence message: {e}")
        try:
            check_signatures(evidence)
            if evidence.call.record.base_fingerprint != self.reference.fingerprint:
                return Outcome.CANNOT_CHECK
            accusation = recheck(evidence, self.reference, self.adapters)
        except EvidenceRejected as e:
            return e
        except CannotVerify as e:
            log.info("evidence against %s cannot be checked here: %s", evidence.call.record.node, e)
            return Outcome.CANNOT_CHECK
        if self.accusations.add(accusation.accused, accusation.verifier, evidence):
            log.warning(
                "evidence from %s against node %s stands (%s): no more routing to it",
                accusation.verifier, accusation.accused, accusation.verdict.detail,
            )  # fmt: skip
        return Outcome.STANDS

    def _remember(self, digest: bytes, outcome: Outcome | EvidenceRejected) -> None:
        if len(self._seen) >= _REMEMBERED:
            self._seen.pop(next(iter(self._seen)))
        self._seen[digest] = outcome
