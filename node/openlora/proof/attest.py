"""The node's side of the proof: a collector for every call, a signed serving record when it finishes.

    Calls._run ─► attestor.collector() ─► GenerationRequest(proof=…) ─► engine adds token + top-k per step
    Finished ─► attestor.attest(prompt ids, collector, sampling, adapter) ─► SignedRecord
              ─► its digest goes into the paid receipt; record + token ids go back in GenerateDone
"""

from __future__ import annotations

from eth_account.signers.local import LocalAccount

from ..engine.sampling import SamplingParams
from ..engine.structured import Constraint
from .encoding import encode
from .record import Sampling, ServingRecord, SignedRecord, ids_hash, sign_record
from .topk import TOP_K, TopLogprobs


class Attestor:
    """Signs what this node served.

    Args:
        account: the node's key (its address is the record's ``node``).
        base_fingerprint: the resident base's fingerprint.
        engine: ``"<engine>/<dtype>"`` the node runs (``"torch/bfloat16"``).
        vocab_size: the base's vocabulary size (the commitment's id width).
    """

    def __init__(self, account: LocalAccount, base_fingerprint: str, engine: str, vocab_size: int) -> None:
        self.account = account
        self.base_fingerprint = base_fingerprint
        self.engine = engine
        self.vocab_size = vocab_size

    @property
    def node(self) -> str:
        """The signing address."""
        return self.account.address

    @staticmethod
    def collector() -> TopLogprobs:
        """A fresh per-call collector for ``GenerationRequest.proof``."""
        return TopLogprobs(TOP_K)

    def attest(
        self,
        prompt_ids: list[int],
        proof: TopLogprobs,
        sampling: SamplingParams,
        adapter: str | None,
        constraint: Constraint | None = None,
    ) -> SignedRecord:
        """The signed record of a finished call.

        Args:
            prompt_ids: the prompt the engine ran.
            proof: the call's collector, filled by the engine (its tokens are the completion).
            sampling: the call's sampling parameters.
            adapter: the adapter CID, ``None`` for the base.
            constraint: the call's structured-output constraint, ``None`` for free text.
        """
        record = ServingRecord(
            node=self.account.address,
            base_fingerprint=self.base_fingerprint,
            adapter=adapter or "",
            prompt_hash=ids_hash(prompt_ids),
            completion_hash=ids_hash(proof.tokens),
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(proof.tokens),
            sampling=Sampling(
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                seed=sampling.seed,
                stop=sampling.stop,
                constraint=constraint.canonical() if constraint is not None else "",
            ),
            engine=self.engine,
            proof=encode(proof.ids, proof.logprobs, self.vocab_size),
        )
        return sign_record(self.account, record)


def vocab_size(path) -> int:
    """The vocabulary size of the HF model folder ``path`` (its config; the commitment's id width)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(path)).vocab_size)
