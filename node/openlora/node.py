"""The Node: wires the parts together and owns their lifecycle.

    start:  base model (resolve → convert once → fingerprint → load, LoRA slots injected)
            → blockstore + catalog + adapter store → engine thread → gRPC server → "ready"
    stop:   health NOT_SERVING → server drains (grace) → engine stops → catalog closed
"""

from __future__ import annotations

import asyncio
import logging

import torch

from .adapters.catalog import Catalog
from .adapters.store import AdapterStore, BaseProfile
from .api.server import start_server
from .api.servicer import NodeServicer, ServingLimits
from .config import NodeSettings
from .content.blockstore import BlockStore
from .engine.base import resolve_base_model
from .engine.model import load_resident
from .engine.scheduler import Engine
from .engine.slots import HostCache, SlotManager

log = logging.getLogger(__name__)


class Node:
    """A running openlora node (one process, one resident base model).

    Args:
        settings: validated settings.

    Attributes (after :meth:`start`):
        port: the bound gRPC port.
        base_name / fingerprint: the base model's name and fingerprint.
    """

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.port = 0
        self.base_name = ""
        self.fingerprint = ""
        self._server = None
        self._health = None
        self._engine: Engine | None = None
        self._catalog: Catalog | None = None

    @property
    def address(self) -> str:
        """``host:port`` clients dial."""
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Load everything and start serving.

        Raises:
            engine.base.BaseModelError: the base model cannot be found or loaded.
            RuntimeError: the port cannot be bound.
        """
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        data = s.data_dir.expanduser().resolve()
        data.mkdir(parents=True, exist_ok=True)
        source = await asyncio.to_thread(resolve_base_model, s.base_model, s.resolved_model_cache())
        self.base_name, self.fingerprint = source.name, source.fingerprint
        rm = await asyncio.to_thread(load_resident, source, s.dtype, s.max_loras, s.max_lora_rank)
        profile = BaseProfile(source.name, source.fingerprint, rm.base_modules, rm.max_rank, rm.adapter_dtype)
        self._catalog = Catalog(data / "catalog.sqlite")
        store = AdapterStore(BlockStore(data / "blocks"), self._catalog, profile)
        slots = SlotManager(rm.lora_layers, rm.routing, s.max_loras)
        self._engine = Engine(
            rm, slots, HostCache(s.max_cpu_loras), store.load, max_batch=s.max_batch, max_waiting=s.max_waiting
        )
        self._engine.start()
        limits = ServingLimits(s.max_prompt_tokens, s.max_new_tokens)
        servicer = NodeServicer(self._engine, store, limits, device="cpu")
        self._server, self.port, self._health = await start_server(servicer, s.host, s.port)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop serving: in-flight streams get ``grace_s`` seconds, then everything closes."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._engine is not None:
            await asyncio.to_thread(self._engine.stop)
        if self._catalog is not None:
            self._catalog.close()
