"""The vLLM engine (``--engine vllm``): vLLM's async engine in the node's process, behind our interface.

    submit(GenerationRequest) ─► task on the node's event loop:
        adapter CID ─► verified files (blockstore → the node's verification pipeline)
                    ─► <data>/vllm-adapters/<CID>/ (written once, atomic rename)
                    ─► LoRARequest(name=CID, id=stable per CID, path=that folder) ─► add_lora
        AsyncLLM.generate(token ids, SamplingParams(DELTA)) ─► RequestOutput deltas
            ─► TextDelta(text, tokens) … ─► Finished(reason, prompt, completion, TTFT, ITL)
    cancel ─► the task is cancelled ─► vLLM aborts the request at once
    AsyncLLM ─► engine core child process (spawned by vLLM; stopped with the node)

Only adapters our pipeline accepted ever reach vLLM, and only from folders the node wrote: no
resolver plugins, no hub downloads, no runtime LoRA-update endpoints (none is started: the node
talks to ``AsyncLLM`` directly, not to vLLM's HTTP server). Prompts go in as token ids from our
:class:`~openlora.engine.text.TextCodec`, so the prompt tokens we bill are the ones vLLM ran.

Scale past one GPU comes from vLLM: ``tensor_parallel_size`` / ``pipeline_parallel_size`` and the
multi-node executor (``nnodes``, ``node_rank``, ``master_addr``) pass straight through.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..adapters.composition import is_composition
from ..adapters.peft_format import LoraAdapter
from ..adapters.reasons import AdapterRejected
from .base import BaseModelSource
from .interface import (
    EngineInfo,
    EngineUnsupported,
    Failed,
    FinishReason,
    Finished,
    GenerationRequest,
    QueueFull,
    TextDelta,
)
from .structured import XGRAMMAR_OPTIONS
from .text import TextCodec

log = logging.getLogger(__name__)

#: The vLLM minor version this module is written and tested against (vLLM's LoRA and engine
#: APIs move between minors); another one refuses to start instead of failing mid-request.
VLLM_SERIES = "0.32."
#: Environment variable naming the CPU LoRA ops for our vLLM platform plugin (``engine/vllm_platform.py``);
#: vLLM's spawned engine core inherits it.
LORA_OPS_ENV = "OPENLORA_VLLM_LORA_OPS"
LORA_OPS = ("grouped", "vllm")
#: ``max_lora_rank`` values vLLM accepts (``vllm.config.lora.MaxLoRARanks``).
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: PEFT features beyond plain LoRA this engine serves: none. vLLM 0.32 refuses DoRA, ``lora_bias``, ``bias``
#: and ``modules_to_save`` itself (``vllm/lora/peft_helper.py``); it has layers for LoRA on ``embed_tokens`` /
#: ``lm_head``, but their output is not pinned against PEFT here (a tied head, vocabulary padding), so the
#: node refuses those before vLLM sees them rather than serve text it has not checked.
SERVED_FEATURES: tuple[str, ...] = ()
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}


@dataclass(frozen=True)
class VllmOptions:
    """How the node starts vLLM (from the node settings of the same names).

    Attributes:
        dtype: compute dtype (``bfloat16``, ``float32``, ``float16``).
        max_loras / max_cpu_loras / max_lora_rank: vLLM's LoRA limits (device slots, host cache,
            largest rank; the rank is rounded up to a value vLLM accepts).
        max_batch: vLLM's ``max_num_seqs``.
        max_waiting: requests beyond the running batch before :class:`QueueFull`.
        max_model_len: context limit, tokens.
        tensor_parallel_size / pipeline_parallel_size: GPUs per node across / along the layers.
        distributed_executor_backend: ``mp`` or ``ray`` (``None``: vLLM picks).
        nnodes / node_rank / master_addr: vLLM's multi-node executor.
        kv_cache_gib: KV cache on CPU (``VLLM_CPU_KVCACHE_SPACE``), GiB.
        gpu_memory_utilization: share of GPU memory vLLM may take (GPU only).
        enforce_eager: skip graph capture / compilation (faster start, slower steps).
        lora: LoRA on (a node always has it on; off only for the benchmark's LoRA-off baseline).
        lora_ops: on vLLM's CPU build, ``grouped`` (our op, ``engine/vllm_punica.py``, with
            torch.compile kept on) or ``vllm`` (vLLM's own torch ops); GPU builds use vLLM's kernels.
    """

    dtype: str = "bfloat16"
    max_loras: int = 8
    max_cpu_loras: int = 64
    max_lora_rank: int = 64
    max_batch: int = 16
    max_waiting: int = 256
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    lora: bool = True
    lora_ops: str = "grouped"

    def engine_args(self, model: Path, max_context: int) -> dict:
        """Keyword arguments of ``vllm.AsyncEngineArgs`` for the base folder ``model``.

        Raises:
            ValueError: ``max_lora_rank`` above what vLLM serves.
        """
        rank = next((r for r in VLLM_RANKS if r >= self.max_lora_rank), None)
        if rank is None:
            raise ValueError(f"--max-lora-rank {self.max_lora_rank} is above vLLM's largest, {VLLM_RANKS[-1]}")
        args = dict(
            model=str(model),
            tokenizer=str(model),
            dtype=self.dtype,
            enable_lora=self.lora,
            max_num_seqs=self.max_batch,
            max_model_len=min(self.max_model_len or max_context, max_context),
            tensor_parallel_size=self.tensor_parallel_size,
            pipeline_parallel_size=self.pipeline_parallel_size,
            nnodes=self.nnodes,
            node_rank=self.node_rank,
            master_addr=self.master_addr,
            gpu_memory_utilization=self.gpu_memory_utilization,
            enforce_eager=self.enforce_eager,
            disable_log_stats=True,
            enable_log_requests=False,
        )
        if self.lora:
            args.update(max_loras=self.max_loras, max_cpu_loras=max(self.max_cpu_loras, self.max_loras), max_lora_rank=rank)
        if self.distributed_executor_backend:
            args["distributed_executor_backend"] = self.distributed_executor_backend
        return args


class AdapterFolders:
    """Node-private PEFT folders vLLM loads adapters from, one per CID (``<root>/<CID>/``).

    Written once from verified bytes through a temporary folder and an atomic rename, so vLLM
    never sees a half-written adapter; removed when the adapter is forgotten.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)

    def write(self, cid: str, files: dict[str, bytes]) -> Path:
        """The folder holding ``files`` for ``cid`` (written now unless it exists)."""
        final = self.root / cid
        if final.is_dir():
            return final
        tmp = self.root / f".tmp-{cid}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        try:
            tmp.rename(final)
        except OSError:  # another writer won the race with the same (content-addressed) bytes
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def remove(self, cid: str) -> None:
        """Delete ``cid``'s folder, if any."""
        shutil.rmtree(self.root / cid, ignore_errors=True)


class VllmEngine:
    """vLLM's ``AsyncLLM`` behind :class:`~openlora.engine.interface.Engine`.

    Build it with :meth:`open` (vLLM's start takes about a minute on CPU). Every method but
    :meth:`stop` is called on the node's event loop; events are emitted there too.

    Args:
        llm: a started ``vllm.v1.engine.async_llm.AsyncLLM``.
        codec: the base model's text codec.
        options: the options it was started with.
        load_verified: ``cid -> (LoraAdapter, files)`` through the node's verification pipeline
            (``AdapterStore.load_verified``); runs on a worker thread; its exception fails the
            requests for that CID.
        folders: where verified adapters are written for vLLM.
        device: ``"cpu"`` or ``"cuda"``.
    """

    def __init__(
        self,
        llm,
        codec: TextCodec,
        options: VllmOptions,
        load_verified: Callable[[str], tuple[LoraAdapter, dict[str, bytes]]],
        folders: AdapterFolders,
        device: str,
    ) -> None:
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        self._TokensPrompt, self._LoRARequest = TokensPrompt, LoRARequest
        self._SamplingParams, self._DELTA = SamplingParams, RequestOutputKind.DELTA
        self._Structured = StructuredOutputsParams
        self._llm = llm
        self.codec = codec
        self.options = options
        self.info = EngineInfo(
            "vllm", options.dtype, device, options.max_loras, options.max_lora_rank, options.max_batch, SERVED_FEATURES
        )
        self._load_verified = load_verified
        self._folders = folders
        self._ids: dict[str, int] = {}  # CID → LoRARequest id, stable for the engine's life
        self._ready: dict[str, object] = {}  # CID → LoRARequest added to vLLM
        self._loads: dict[str, asyncio.Future] = {}
        self._resident: list[str] = []
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._exit_listeners: list[Callable[[], None]] = []
        self._watch: asyncio.Task | None = None

    @classmethod
    async def open(
        cls,
        source: BaseModelSource,
        codec: TextCodec,
        options: VllmOptions,
        load_verified: Callable[[str], tuple[LoraAdapter, dict[str, bytes]]],
        folders: AdapterFolders,
    ) -> VllmEngine:
        """Start vLLM on ``source`` (its engine core runs in a child process vLLM spawns).

        Raises:
            RuntimeError: vLLM is not installed, or is not the version this module is written for.
            ValueError: options vLLM refuses.
        """
        _environment(options)
        try:
            import vllm
        except ImportError as e:
            raise RuntimeError(
                f"--engine vllm needs vLLM in this venv ({e}); scripts/setup installs it (vllm-cpu here, vllm on an NVIDIA box)"
            ) from None
        if not vllm.__version__.startswith(VLLM_SERIES):
            raise RuntimeError(
                f"vLLM {vllm.__version__} is installed; this node is written for vLLM {VLLM_SERIES}x "
                "(run scripts/setup to install the pinned one)"
            )
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**options.engine_args(source.path, codec.max_context))
        # the grammar engine.structured compiles, so both engines constrain and a verifier replays the same one
        args.structured_outputs_config = StructuredOutputsConfig(**XGRAMMAR_OPTIONS)
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        engine = cls(llm, codec, options, load_verified, folders, current_platform.device_type)
        engine._loop = asyncio.get_running_loop()
        engine._watch = engine._loop.create_task(engine._watch_core())
        log.info("vLLM %s started on %s (%s, max_loras %d)", vllm.__version__, engine.info.device, options.dtype, options.max_loras)
        return engine

    # ----- the interface -----

    def start(self) -> None:
        """Nothing to do: :meth:`open` started vLLM."""

    @property
    def alive(self) -> bool:
        """Whether vLLM's engine core is running (vLLM marks itself errored when it dies)."""
        return not self._llm.errored

    def on_exit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` once if vLLM's engine core dies before :meth:`stop`."""
        self._exit_listeners.append(listener)

    def stop(self) -> None:
        """Cancel every request (each gets ``Finished(CANCELLED)``) and shut vLLM's processes down.
        Safe from any thread."""
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for task in [*self._tasks.values(), *([self._watch] if self._watch else [])]:
                loop.call_soon_threadsafe(task.cancel)
        self._llm.shutdown()
        if loop is not None and not loop.is_closed() and not loop.is_running():
            # Off a stopped loop, vLLM only schedules the closing of its asyncio ZMQ sockets on it;
            # left unrun, the ZMQ context's finalizer later blocks the process's exit for ever.
            pending = asyncio.all_tasks(loop)
            loop.run_until_complete(asyncio.wait(pending, timeout=5) if pending else asyncio.sleep(0))

    def check_room(self) -> None:
        """Raise :class:`QueueFull` when ``max_waiting`` requests already wait beyond the running batch."""
        if self._stopping:
            raise QueueFull("the engine is shutting down")
        if len(self._tasks) - self.options.max_batch >= self.options.max_waiting:
            raise QueueFull(f"{self.options.max_waiting} requests already waiting; retry later")

    def submit(self, req: GenerationRequest) -> None:
        """Start ``req`` on the event loop (call it there).

        Raises:
            ValueError: empty prompt, or prompt + max_new_tokens beyond the context limit, or a constraint that
                does not compile (``structured.ConstraintError``; vLLM compiles it again with the same library).
            QueueFull: ``max_waiting`` requests already wait.
        """
        n = len(req.prompt_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        limit = self._max_len()
        if n + req.sampling.max_new_tokens > limit:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({req.sampling.max_new_tokens}) exceeds the "
                f"model's context of {limit} tokens"
            )
        if req.constraint is not None:
            self.codec.grammars.compile(req.constraint)
        self.check_room()
        self._tasks[req.request_id] = asyncio.get_running_loop().create_task(self._serve(req))

    def cancel(self, request_id: str) -> None:
        """Cancel a request; vLLM aborts it at once. Safe from any thread."""
        task = self._tasks.get(request_id)
        if task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(task.cancel)

    def stats(self) -> dict[str, int]:
        """Running (≤ max_batch) and waiting requests, adapter loads in flight, adapters in vLLM's cache."""
        n = len(self._tasks)
        return {
            "running": min(n, self.options.max_batch),
            "waiting": max(0, n - self.options.max_batch),
            "loading": sum(1 for f in self._loads.values() if not f.done()),
            "host_cached": len(self._resident),
        }

    def resident(self) -> list[str]:
        """CIDs vLLM holds in its LoRA cache (as of the last add or removal)."""
        return list(self._resident)

    def load_state(self, cid: str) -> str | None:
        """``"loading"`` while ``cid`` is verified, written or added to vLLM."""
        fut = self._loads.get(cid)
        return "loading" if fut is not None and not fut.done() else None

    def warm(self, cid: str, adapter: LoraAdapter) -> None:
        """Hand a freshly verified adapter to vLLM ahead of its first request (in the background)."""
        task = asyncio.get_running_loop().create_task(self._lora(cid))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its error reaches the first request

    def forget(self, cid: str) -> None:
        """Remove ``cid`` from vLLM and delete its folder (revoked). Call on the event loop."""
        lora = self._ready.pop(cid, None)
        self._folders.remove(cid)
        if lora is not None:
            asyncio.get_running_loop().create_task(self._remove(lora))

    # ----- on the event loop -----

    async def _watch_core(self, period_s: float = 1.0) -> None:
        """Tell the exit listeners once vLLM reports its engine core dead (it is polled: vLLM has no callback)."""
        while self.alive:
            await asyncio.sleep(period_s)
        if not self._stopping:
            log.error("vLLM's engine core died: health is NOT_SERVING")
            for listener in self._exit_listeners:
                listener()

    def _max_len(self) -> int:
        return self._llm.model_config.max_model_len

    async def _lora(self, cid: str):
        """The ``LoRARequest`` of ``cid``, verified, written and added to vLLM once (single flight).

        Raises:
            AdapterRejected: the node's verification refused it.
            EngineUnsupported: vLLM refused an adapter the node accepted (the reason names vLLM's).
        """
        lora = self._ready.get(cid)
        if lora is not None:
            return lora
        fut = self._loads.get(cid)
        if fut is None or fut.done():
            fut = self._loads[cid] = asyncio.ensure_future(self._add(cid))
            fut.add_done_callback(lambda f: self._loads.pop(cid, None) if self._loads.get(cid) is f else None)
        return await asyncio.shield(fut)

    async def _add(self, cid: str):
        adapter, files = await asyncio.to_thread(self._load_verified, cid)
        refusal = self.info.unserved(adapter)
        if refusal is not None:
            raise refusal
        folder = await asyncio.to_thread(self._folders.write, cid, files)
        lora_id = self._ids.setdefault(cid, len(self._ids) + 1)
        lora = self._LoRARequest(lora_name=cid, lora_int_id=lora_id, lora_path=str(folder))
        try:
            await self._llm.add_lora(lora)
        except Exception as e:  # vLLM's own checks (its supported modules, ranks, features)
            raise EngineUnsupported(f"the vllm engine cannot serve adapter {cid}: {e}") from None
        self._ready[cid] = lora
        await self._refresh_resident()
        return lora

    async def _remove(self, lora) -> None:
        try:
            await self._llm.remove_lora(lora.lora_int_id)
        except Exception as e:  # the engine may be stopping; nothing is served from a removed folder
            log.warning("removing adapter %s from vLLM failed: %s", lora.lora_name, e)
        await self._refresh_resident()

    async def _refresh_resident(self) -> None:
        ids = await self._llm.list_loras()
        self._resident = [cid for cid, lora in self._ready.items() if lora.lora_int_id in ids]

    def _sampling(self, req: GenerationRequest):
        s = req.sampling
        # the proof's top-k: vLLM's raw log-probabilities (before temperature/top-p/top-k), flat (proof.topk)
        proof = {} if req.proof is None else dict(logprobs=req.proof.k, flat_logprobs=True)
        structured = {}
        if (c := req.constraint) is not None:  # vLLM masks logits before its raw log-probabilities: the proof commits that
            kind = {"regex": {"regex": c.spec}}.get(c.kind, {"json": c.schema()})
            structured["structured_outputs"] = self._Structured(**kind)
        return self._SamplingParams(
            n=1,
            temperature=0.0 if s.greedy else s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            stop=list(s.stop) or None,
            stop_token_ids=sorted(self.codec.eos_ids),
            ignore_eos=s.ignore_eos,
            max_tokens=s.max_new_tokens,
            output_kind=self._DELTA,
            skip_special_tokens=True,
            **proof,
            **structured,
        )

    async def _serve(self, req: GenerationRequest) -> None:
        emit, n_prompt = req.emit, len(req.prompt_ids)
        count = pending = 0
        t_first: float | None = None
        t_prev = 0.0
        itl: list[float] = []
        try:
            if is_composition(req.adapter):
                # vLLM would serve the derived adapter from a PEFT folder, but each composition would be a new
                # LoRA id in its cache (one load per weight choice): not served here until measured
                raise EngineUnsupported("adapter composition (several adapters with weights in one call) is not served by the vllm engine")
            lora = await self._lora(req.adapter) if req.adapter else None
            prompt = self._TokensPrompt(prompt_token_ids=list(req.prompt_ids))
            async for out in self._llm.generate(prompt, self._sampling(req), req.request_id, lora_request=lora):
                o = out.outputs[0]
                now = time.perf_counter()
                if req.proof is not None and o.token_ids:
                    _add_proof(req.proof, o.token_ids, o.logprobs)
                if o.token_ids:
                    if t_first is None:
                        t_first = now
                    else:
                        itl.append((now - t_prev) * 1000.0)
                    t_prev = now
                    count += len(o.token_ids)
                    pending += len(o.token_ids)
                if o.text:
                    emit(TextDelta(o.text, pending))
                    pending = 0
                if out.finished:
                    ttft = (t_first - req.submitted) * 1000.0 if t_first is not None else None
                    emit(Finished(_FINISH.get(o.finish_reason, FinishReason.STOP), n_prompt, count, ttft, tuple(itl)))
                    return
        except asyncio.CancelledError:
            ttft = (t_first - req.submitted) * 1000.0 if t_first is not None else None
            emit(Finished(FinishReason.CANCELLED, n_prompt, count, ttft, tuple(itl)))
        except Exception as e:  # one request's failure, never the engine's
            emit(Failed(_explained(e)))
        finally:
            self._tasks.pop(req.request_id, None)


def _add_proof(proof, token_ids, logprobs) -> None:
    """Feed one delta's tokens to the request's proof collector. vLLM's ``FlatLogprobs`` holds, per new position,
    the sampled token's entry and the top-k by rank, the sampled one sometimes folded into its rank's entry: the
    k highest distinct entries are the top-k either way."""
    for i, token in enumerate(token_ids):
        start, end = logprobs.start_indices[i], logprobs.end_indices[i]
        entries = dict(zip(logprobs.token_ids[start:end], logprobs.logprobs[start:end]))
        top = sorted(entries.items(), key=lambda e: -e[1])[: proof.k]
        proof.add(token, [t for t, _ in top], [lp for _, lp in top])


def _environment(options: VllmOptions) -> None:
    """vLLM reads these at import: its logs go to stderr under ours (stdout carries the node's ready
    line), its KV cache size on CPU, and runtime LoRA updates stay off whatever the environment says
    (adapters come only from folders the node wrote); the CPU LoRA ops our platform plugin selects.

    Raises:
        ValueError: unknown ``lora_ops``.
    """
    if options.lora_ops not in LORA_OPS:
        raise ValueError(f"lora_ops {options.lora_ops!r}: expected one of {', '.join(LORA_OPS)}")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    debug = logging.getLogger("openlora").getEffectiveLevel() <= logging.DEBUG
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if debug else "WARNING")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{options.kv_cache_gib:g}")
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "0"
    os.environ[LORA_OPS_ENV] = options.lora_ops  # read by our platform plugin, here and in vLLM's child


def _explained(error: Exception) -> Exception:
    """vLLM's exception as one of ours, so the API answers with the right status and a message:
    a request vLLM refuses → ValueError (INVALID_ARGUMENT), its queue limits → QueueFull
    (RESOURCE_EXHAUSTED), a dead engine core or an error without text → RuntimeError naming it."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(error, (EngineUnsupported, AdapterRejected)):
        return error
    if isinstance(error, VLLMClientError):
        return ValueError(f"vLLM refused the request: {error}")
    if isinstance(error, GracefulHTTPError):
        return QueueFull(f"vLLM's queue is full ({type(error).__name__}); retry later")
    if isinstance(error, EngineDeadError):
        return RuntimeError("vLLM's engine process died; the node must be restarted (see its log)")
    cause = error.__cause__
    if not str(error) and cause is not None:
        return RuntimeError(f"vLLM: {type(cause).__name__}: {cause}")
    return error
