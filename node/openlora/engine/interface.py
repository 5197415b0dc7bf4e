"""The engine interface: everything ``api/``, ``node.py``, the swarm status and metrics see of an engine.

    api/calls.py ──check_room()──► refuse early under load (before pricing or the ledger)
                 ──submit(GenerationRequest)──► engine ──emit(TextDelta*, then Finished | Failed)──► call
                 ──cancel(request_id)──► the row is freed before the next step
    node.py, servicer, swarm status, metrics ──► info, codec, stats(), resident(), load_state(cid)
    health ──► alive, on_exit(listener): a node whose engine died stops saying SERVING
    swarm link ──warm(cid, adapter)──► a freshly fetched adapter skips a second parse
    calls (revoked on chain) ──forget(cid)──► the engine drops every copy it holds

Two engines implement it, each in its own module: ``engine/scheduler.py`` (``torch``, the exact
reference) and ``engine/vllm_engine.py`` (``vllm``, vLLM's async engine). Prompts reach an engine as
token ids made by :class:`~openlora.engine.text.TextCodec`, so the prompt tokens the node bills are
the tokens the engine ran. Every adapter reaches an engine only through the node's verification
pipeline (``load_adapter``: blockstore → verify → parsed :class:`LoraAdapter`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..adapters.peft_format import LoraAdapter
    from ..proof.topk import TopLogprobs
    from .sampling import SamplingParams
    from .structured import Constraint
    from .text import TextCodec

ENGINES = ("torch", "vllm")


class FinishReason(str, Enum):
    """Why a completion ended."""

    STOP = "stop"  # EOS token or a stop string
    LENGTH = "length"  # max_new_tokens or the context limit
    CANCELLED = "cancelled"  # the client went away or cancelled


class QueueFull(RuntimeError):
    """The waiting queue is at ``max_waiting``; the caller should answer RESOURCE_EXHAUSTED."""


class NonFiniteLogits(RuntimeError):
    """A row's logits held NaN or Inf (an adapter whose weights overflow on this prompt); only that row fails."""


class NoFreeSlot(RuntimeError):
    """Every device slot is referenced by a running request or pinned; retry after one finishes."""


class EngineUnsupported(ValueError):
    """An adapter this engine cannot serve; the message names the feature and the engine."""


@dataclass(frozen=True)
class TextDelta:
    """New completion text, safe to show (no partial stop string, no split UTF-8).

    Attributes:
        text: the text.
        tokens: generated tokens this text completes (text held back earlier counts here), so
            the sum over deltas is what a client received, in tokens.
    """

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finished:
    """The last event of a request that ran.

    Attributes:
        reason: why it ended.
        prompt_tokens / completion_tokens: token counts (completion includes a final EOS).
        ttft_ms: submit → first token, ms (``None`` if cancelled before one).
        itl_ms: gaps between consecutive tokens, ms.
    """

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None = None
    itl_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class Failed:
    """The last event of a request that could not run; ``error`` says why."""

    error: Exception


@dataclass(eq=False)
class GenerationRequest:
    """One completion to compute.

    Attributes:
        prompt_ids: prompt token ids (≥ 1).
        sampling: validated sampling parameters.
        emit: called with TextDelta*, then one Finished or Failed; must not block (the torch
            engine calls it from its thread, the vLLM engine from the event loop).
        adapter: adapter CID, ``None`` for the base model, or a composition id (``adapters.composition``: the
            torch engine serves its derived adapter; the vLLM engine refuses it with EngineUnsupported).
        request_id: unique id for :meth:`Engine.cancel`.
        submitted: ``time.perf_counter()`` at creation (TTFT counts from here), s.
        proof: when set, the engine adds every generated token and the top-k log-probabilities of the
            distribution it came from (``proof.topk``), for the call's serving record.
        constraint: when set, the completion matches it (``engine.structured``): the proof's distribution is
            then the model's restricted to the tokens the grammar allows (renormalized).
    """

    prompt_ids: list[int]
    sampling: SamplingParams
    emit: Callable[[object], None]
    adapter: str | None = None
    proof: TopLogprobs | None = None
    constraint: Constraint | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class EngineInfo:
    """What an engine reports about itself (``GetNodeInfo``, swarm status).

    Attributes:
        name: ``"torch"`` or ``"vllm"``.
        dtype: compute dtype (``"bfloat16"``, ``"float32"``, ``"float16"``).
        device: where it computes (``"cpu"``, ``"cuda"``).
        slot_capacity: adapters resident on the device at once (``max_loras``).
        max_rank: largest adapter rank served.
        max_batch: rows decoded together at most.
        features: the PEFT features beyond plain LoRA it serves (``adapters.peft_format.FEATURES``
            names), sorted; an adapter needing another is refused at load with :class:`EngineUnsupported`.
    """

    name: str
    dtype: str
    device: str
    slot_capacity: int
    max_rank: int
    max_batch: int
    features: tuple[str, ...] = ()

    def unserved(self, adapter: LoraAdapter) -> EngineUnsupported | None:
        """The refusal for an adapter needing features this engine does not serve, or ``None``."""
        missing = [f for f in adapter.features if f not in self.features]
        if not missing:
            return None
        return EngineUnsupported(
            f"the {self.name} engine does not serve {', '.join(missing)} (adapter features: {', '.join(adapter.features)}); "
            "a node running the torch engine does"
        )


class Engine(Protocol):
    """A generation engine over one resident base and its adapters (see the module doc)."""

    info: EngineInfo
    codec: TextCodec

    def start(self) -> None:
        """Start serving (the torch engine starts its thread; vLLM's engine is running already)."""

    def stop(self) -> None:
        """Stop; running and waiting requests get ``Finished(CANCELLED)``; child processes end."""

    @property
    def alive(self) -> bool:
        """Whether the engine can still serve (its thread or its engine-core process is running)."""

    def on_exit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` once (from any thread) if the engine dies before :meth:`stop`."""

    def check_room(self) -> None:
        """Raise :class:`QueueFull` when :meth:`submit` would be refused now."""

    def submit(self, req: GenerationRequest) -> None:
        """Queue ``req``; events follow through ``req.emit``.

        Raises:
            ValueError: empty prompt, or prompt + max_new_tokens beyond the context limit, or a constraint that
                does not compile (``structured.ConstraintError``).
            QueueFull: ``max_waiting`` requests already wait.
        """

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request (``Finished(CANCELLED)`` follows)."""

    def stats(self) -> dict[str, int]:
        """``running``, ``waiting``, ``loading`` and ``host_cached`` counts (a snapshot)."""

    def resident(self) -> list[str]:
        """CIDs of the adapters resident on the device now."""

    def load_state(self, cid: str) -> str | None:
        """``"loading"`` while ``cid`` is being loaded, else ``None``."""

    def warm(self, cid: str, adapter: LoraAdapter) -> None:
        """Keep a verified, parsed adapter ready for its first request (after a swarm fetch)."""

    def forget(self, cid: str) -> None:
        """Drop every copy of ``cid`` the engine holds (revoked); running rows finish first."""
