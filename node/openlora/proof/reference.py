"""The verifier's recomputation: one prefill over prompt + completion with the claimed adapter.

    prompt p₀…p_{n−1}, completion c₀…c_{m−1}
    input  p₀ … p_{n−1} c₀ … c_{m−2}     (one forward, the torch engine's model with its LoRA slots)
    logits at positions n−1 … n+m−2  ─► log-softmax (float32) ─► [m, V]: row j is the distribution c_j
                                                                   was drawn from

The reference is the torch engine's own model (``engine.model.load_resident``) with one adapter slot, in
float32 — the truth every honest engine approximates, equal to PEFT's (``tests/test_lora_numerics.py``) — and,
as a probe of how much rounding moves this very call, in bfloat16 (``proof.tolerance``). Each is a copy of
the base beside the node's engine, loaded on first use and kept.
"""

from __future__ import annotations

import threading

import torch

from ..adapters.peft_format import LoraAdapter
from ..engine.base import BaseModelSource
from ..engine.structured import Grammars

REFERENCE_DTYPE = "float32"
PROBE_DTYPE = "bfloat16"


class Reference:
    """Recomputes completions' log-probabilities under a base and an adapter (thread-safe, one at a time).

    Args:
        source: the base model (its fingerprint is what records must name).
        max_rank: the largest adapter rank to hold.
    """

    def __init__(self, source: BaseModelSource, max_rank: int = 64) -> None:
        self.source = source
        self.max_rank = max_rank
        self._models: dict[str, tuple] = {}  # dtype → (ResidentModel, SlotManager)
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """The base fingerprint this reference computes with."""
        return self.source.fingerprint

    def _model(self, dtype: str = REFERENCE_DTYPE):
        if dtype not in self._models:
            from ..engine.model import load_resident
            from ..engine.slots import SlotManager

            rm = load_resident(self.source, dtype, n_slots=1, max_rank=self.max_rank)
            self._models[dtype] = (rm, SlotManager(rm.lora_layers, rm.routing, 1))
        return self._models[dtype]

    @property
    def vocab_size(self) -> int:
        """Rows of the output head (loads the model on first use)."""
        with self._lock:
            return self._model()[0].model.config.vocab_size

    @property
    def grammars(self) -> Grammars:
        """The base tokenizer's structured-output compiler (a constrained call's allowed tokens are rebuilt with it)."""
        with self._lock:
            return self._model()[0].codec.grammars

    @property
    def base_modules(self) -> dict[str, tuple[int, int]]:
        """Adaptable module name → ``(in_features, out_features)`` (what adapters are checked against)."""
        with self._lock:
            return self._model()[0].base_modules

    def logprobs(
        self,
        prompt_ids: list[int],
        completion_ids: list[int],
        adapter: tuple[str, LoraAdapter] | None,
        dtype: str = REFERENCE_DTYPE,
    ) -> torch.Tensor:
        """Log-probabilities of every position that produced a completion token.

        Args:
            prompt_ids: ``n ≥ 1`` prompt token ids.
            completion_ids: ``m ≥ 1`` completion token ids.
            adapter: ``(cid, parsed adapter)``, or ``None`` for the base model.
            dtype: the model's dtype: ``REFERENCE_DTYPE`` (the truth) or ``PROBE_DTYPE`` (the rounding probe).

        Returns:
            ``[m, V]`` float32 log-probabilities; row ``j`` is the distribution ``completion_ids[j]`` came from.

        Raises:
            ValueError: an empty prompt or completion, an id outside the vocabulary, or a sequence longer than
                the model's context.
        """
        if not prompt_ids or not completion_ids:
            raise ValueError("the prompt and the completion must each hold at least one token")
        with self._lock, torch.inference_mode():
            rm, slots = self._model(dtype)
            vocab, context = rm.model.config.vocab_size, rm.codec.max_context
            seq = list(prompt_ids) + list(completion_ids[:-1])
            if len(seq) > context:
                raise ValueError(f"prompt + completion is {len(seq) + 1} tokens; the model's context is {context}")
            if any(not 0 <= t < vocab for t in seq) or not 0 <= completion_ids[-1] < vocab:
                raise ValueError(f"a token id is outside the vocabulary of {vocab}")
            slot = 0
            if adapter is not None:
                slot = slots.install(*adapter)
            try:
                rm.routing.set([slot])
                ids = torch.tensor([seq], dtype=torch.long, device=rm.device)
                logits = rm.model(input_ids=ids, logits_to_keep=len(completion_ids)).logits[0]
            finally:
                rm.routing.clear()
                if slot:
                    slots.release(slot)
            return torch.log_softmax(logits.float(), dim=-1)
