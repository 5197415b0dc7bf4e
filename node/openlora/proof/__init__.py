"""Proof of serving: what a node signs about each call, how anyone checks it, and what a failed check does.

    serving node                                  client                         verifier (any node, or local)
    ────────────                                  ──────                         ────────────────────────────
    engine step ─► topk.TopLogprobs (token +      stream.served (record +        verify.verify_call:
      top-4 log-probabilities per token)            token ids [+ receipt])         signature, token hashes,
    attest.Attestor ─► record.ServingRecord ────► --receipt-out FILE ──────────►   reference.Reference prefill
      (EIP-712, node-signed; its digest in          SpotChecker (rate) ────────►   (float32 + bf16 probe),
       the paid receipt)                                                           tolerance tests ─► Verdict
                                                                                 fails, blames the node:
    accusations.Accusations ◄── service.ProofService ◄── /openlora/1/evidence ◄── evidence.sign_evidence
      (routing skips the accused)   (re-checks by its own recomputation)

One job per module: ``topk`` (what engines hand over), ``encoding`` (the commitment's bytes), ``record``
(the signed record), ``attest`` (the node's side), ``reference`` (the recomputation), ``tolerance`` (the
statistical tests and their measured limits), ``verify`` (the checks in order), ``evidence`` (signed
findings and their re-check), ``service`` (the node as a verifier), ``accusations`` (who is excluded),
``wire`` (protobuf and the receipt file), ``local`` (``openlora verify`` without a node).
"""
