"""The Node: wires the parts together and owns their lifecycle.

    start:  base model (resolve → convert once → fingerprint) → catalog
            → engine (``--engine torch``: load, LoRA slots injected, engine thread; ``vllm``: vLLM's
              async engine and its engine-core process) + adapter store verifying against its base
            → chain (embedded or RPC, node key, ledger, settler: chain/service.py)
            → proofs (serving records signed with the node key; Verify and evidence over a float32
              reference loaded on first use; accusations kept in DATA/accusations.sqlite: proof/)
            → gRPC server → HTTP server (OpenAI-compatible API + /metrics, same asyncio loop)
            → libp2p swarm (announce, fetch, status, evidence) → "ready"
    stop:   health NOT_SERVING, HTTP 503 → both servers drain (grace) → swarm stops → engine stops
            → chain (final settlement, ledger closed) → catalog closed

gRPC and HTTP share one request core (``api/calls.py``), one rate limiter (a client has one
budget across both) and one metrics registry (``metrics.py``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .adapters.catalog import Catalog
from .adapters.store import AdapterStore, BaseProfile
from .api.ratelimit import RateLimiter
from .api.server import not_serving_on, start_server
from .api.calls import Calls, ServingLimits
from .api.servicer import NodeServicer
from .api.swarm_link import SwarmLink
from .chain.service import NodeChain
from .config import NodeSettings
from .content.blockstore import BlockStore
from .engine.base import BaseModelSource, resolve_base_model
from .engine.interface import Engine
from .metrics import NodeMetrics
from .startup_checks import ports_free, warn_forgotten_registrations

if TYPE_CHECKING:
    from .proof.accusations import Accusations
    from .proof.attest import Attestor
    from .proof.service import ProofService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeProofs:
    """The node's proof parts: ``attestor`` signs every call's record, ``service`` verifies calls and re-checks
    evidence, ``accusations`` are the nodes it stopped routing to."""

    attestor: Attestor
    service: ProofService
    accusations: Accusations


class Node:
    """A running openlora node (one process, one resident base model).

    Args:
        settings: validated settings.

    Attributes (after :meth:`start`):
        port: the bound gRPC port.
        base_name / fingerprint: the base model's name and fingerprint.
        http_address: ``host:port`` of the HTTP API (``None`` when ``settings.http`` is off).
        multiaddr: the libp2p address ``/ip4/…/tcp/N/p2p/PEERID`` ("" without a swarm).
        chain: the chain services (``chain.info``: chain id, RPC URL, contracts, node account, fee).
        metrics: this node's metrics (its own registry).
    """

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.port = 0
        self.base_name = ""
        self.fingerprint = ""
        self._server = None
        self._health = None
        self._http = None
        self.http_address: str | None = None
        self.metrics = NodeMetrics(settings.metrics_max_adapters)
        self._engine: Engine | None = None
        self._catalog: Catalog | None = None
        self._swarm = None
        self.multiaddr = ""
        self.chain: NodeChain | None = None
        self.proofs = None

    @property
    def address(self) -> str:
        """``host:port`` clients dial."""
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Load everything and start serving.

        Raises:
            engine.base.BaseModelError: the base model cannot be found or loaded.
            RuntimeError: a port (gRPC or HTTP) cannot be bound.
        """
        s = self.settings
        data = s.data_dir.expanduser().resolve()
        data.mkdir(parents=True, exist_ok=True)
        ports_free(s.host, [(s.port, "--port"), (s.resolved_http_port() or 0, "--http-port")])  # before the slow part
        source = await asyncio.to_thread(resolve_base_model, s.base_model, s.resolved_model_cache())
        self.base_name, self.fingerprint = source.name, source.fingerprint
        self._catalog = Catalog(data / "catalog.sqlite")
        self._engine, store = await self._open_engine(source, data)
        self._engine.start()
        metrics = self.metrics
        metrics.watch_engine(self._engine.stats)
        calls = Calls(self._engine, store, ServingLimits(s.max_prompt_tokens, s.max_new_tokens), metrics)
        servicer = NodeServicer(calls)
        # ── chain (before the server: any call it serves may have to be paid) ──
        self.chain = NodeChain(s.chain, data)
        await asyncio.to_thread(self.chain.start)
        calls.chain = self.chain
        # ── end chain ──
        self.proofs = await asyncio.to_thread(self._open_proofs, source, data, store)
        calls.attestor = self.proofs.attestor
        servicer.proofs = self.proofs.service
        limiter = RateLimiter(s.client_rate_limit_rps, s.client_rate_limit_burst) if s.client_rate_limit_rps else None
        self._server, self.port, self._health = await start_server(servicer, s.host, s.port, limiter)
        not_serving_on(self._engine.on_exit, self._health)
        http_port = s.resolved_http_port()
        if http_port is not None:
            from .api.http import HttpServer, build_app  # fastapi + uvicorn load only when HTTP is on

            app = build_app(calls, metrics, base_name=self.base_name, limiter=limiter)
            self._http = HttpServer(app, s.host, http_port)
            await self._http.start()
            self.http_address = f"{s.host}:{self._http.port}"
        # ── swarm (after the server: its status names the bound gRPC address) ──
        if s.p2p:
            self._swarm = await asyncio.to_thread(self._start_swarm, data, store)
            self.multiaddr = self._swarm.multiaddr
            self.proofs.service.publish = self._publish_evidence
            calls.swarm_link = SwarmLink(self._swarm, store, self._engine.warm, timeout_s=s.fetch_timeout_s)
        if self.chain.info.embedded:
            warn_forgotten_registrations(self._catalog, self.address)

    async def _open_engine(self, source: BaseModelSource, data) -> tuple[Engine, AdapterStore]:
        """The engine of ``settings.engine`` and the adapter store that verifies against its base profile."""
        s, metrics = self.settings, self.metrics
        blocks = BlockStore(data / "blocks")
        if s.engine == "torch":
            from .engine.model import load_resident
            from .engine.scheduler import TorchEngine
            from .engine.slots import HostCache, SlotManager

            if s.threads:
                torch.set_num_threads(s.threads)
            rm = await asyncio.to_thread(load_resident, source, s.dtype, device=s.device, layout=s.slot_layout())
            store = AdapterStore(blocks, self._catalog, BaseProfile(source.name, source.fingerprint, rm.base_modules, rm.max_rank))
            engine = TorchEngine(
                rm, SlotManager(rm.lora_layers, rm.routing, s.max_loras), HostCache(s.max_cpu_loras, s.max_cpu_lora_bytes),
                metrics.timed_load(store.load), max_batch=s.max_batch, max_waiting=s.max_waiting,
                on_cache=metrics.cache_lookup,
            )  # fmt: skip
            return engine, store
        from .engine.lora import adaptable_shapes
        from .engine.text import load_codec
        from .engine.vllm_engine import AdapterFolders, VllmEngine

        codec = await asyncio.to_thread(load_codec, source.path)
        shapes = await asyncio.to_thread(adaptable_shapes, source.path)
        store = AdapterStore(blocks, self._catalog, BaseProfile(source.name, source.fingerprint, shapes, s.max_lora_rank))
        engine = await VllmEngine.open(
            source, codec, s.vllm_options(), metrics.timed_load(store.load_verified), AdapterFolders(data / "vllm-adapters")
        )
        return engine, store

    def _open_proofs(self, source: BaseModelSource, data, store: AdapterStore) -> NodeProofs:
        """The attestor that signs every call's serving record and the verifier service (proof/)."""
        from .proof.accusations import Accusations
        from .proof.attest import Attestor, vocab_size
        from .proof.reference import Reference
        from .proof.service import ProofService

        account, info = self.chain.account, self._engine.info
        attestor = Attestor(account, source.fingerprint, f"{info.name}/{info.dtype}", vocab_size(source.path))
        accusations = Accusations(data / "accusations.sqlite")
        reference = Reference(source, self.settings.max_lora_rank)
        return NodeProofs(attestor, ProofService(reference, store.load, account, accusations), accusations)

    def _publish_evidence(self, raw: bytes) -> None:
        def done(fut) -> None:
            if fut.exception() is not None:
                log.warning("gossiping evidence failed: %s", fut.exception())

        self._swarm.publish_evidence(raw).add_done_callback(done)

    def _start_swarm(self, data, store: AdapterStore):
        from .p2p.messages import LocalStatus
        from .p2p.swarm import Swarm, SwarmConfig

        s, engine = self.settings, self._engine

        def status() -> LocalStatus:
            stats = engine.stats()
            return LocalStatus(
                grpc_address=self.address,
                base_name=self.base_name,
                base_fingerprint=self.fingerprint,
                resident=tuple(engine.resident()),
                node_fee_per_1k_wei=self.chain.info.node_fee_per_1k if self.chain is not None else 0,
                active=stats["running"],
                waiting=stats["waiting"],
                max_batch=engine.info.max_batch,
                node_address=self.chain.info.node_address if self.chain is not None else "",
                features=engine.info.features,
            )

        swarm = Swarm(
            data,
            store.blocks,
            self.fingerprint,
            store.validate_manifest,
            status=status,
            on_adapter=lambda record: store.learn(record.cid, record.manifest, record.name),
            config=SwarmConfig(
                listen_host=s.host, port=s.p2p_port, bootstrap=tuple(s.bootstrap), ipfs_api=s.ipfs_api, dht=s.dht,
                listen=s.p2p_listen, relays=tuple(s.relays), relay_service=s.relay_service,
                max_upload_bytes_per_s=s.p2p_upload_mbps * 1e6 if s.p2p_upload_mbps is not None else None,
            ),
            check_evidence=self._check_evidence,
            accused=self.proofs.accusations.addresses,
            adapter_features=store.features,
        )
        swarm.start()
        return swarm

    def _check_evidence(self, raw: bytes) -> bool:
        """The swarm's evidence re-check (worker thread): True when it stands here, False when it cannot be
        checked here; raises ``MessageRejected`` when it is forged or false."""
        from .p2p.errors import MessageRejected
        from .proof.evidence import EvidenceRejected
        from .proof.service import Outcome

        try:
            return self.proofs.service.check(raw) is Outcome.STANDS
        except EvidenceRejected as e:
            raise MessageRejected(e.reason, e.detail) from None

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop serving: in-flight streams get ``grace_s`` seconds, then everything closes."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        stopping = []
        if self._server is not None:
            stopping.append(self._server.stop(grace_s))
        if self._http is not None:
            stopping.append(self._http.stop(grace_s))
        await asyncio.gather(*stopping)
        if self._swarm is not None:
            await asyncio.to_thread(self._swarm.stop)
        if self._engine is not None:
            await asyncio.to_thread(self._engine.stop)
        # ── chain (after the streams: each closed its call; settles what is owed) ──
        if self.chain is not None:
            await asyncio.to_thread(self.chain.stop)
        # ── end chain ──
        if self._catalog is not None:
            self._catalog.close()
        if self.proofs is not None:
            self.proofs.accusations.close()
