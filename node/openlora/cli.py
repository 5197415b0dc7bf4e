"""Command lines: ``openlora-node`` (operators and publishers) and ``openlora`` (clients).

Heavy imports (torch, transformers, peft) happen only inside ``openlora-node start``, so every
client command and ``--help`` start instantly.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from .config import LoadedSettings

DEFAULT_NODE = os.environ.get("OPENLORA_NODE", "127.0.0.1:50051")

node_app = typer.Typer(help="Run an openlora node and publish adapters to it.", no_args_is_help=True, add_completion=False)
client_app = typer.Typer(help="Call an openlora node: generate, list adapters, inspect.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Publisher keys (encrypted keystore files) that sign adapter manifests.", no_args_is_help=True)
node_app.add_typer(keys_app, name="keys")
chain_app = typer.Typer(help="The contracts calls are paid and attributed on.", no_args_is_help=True)
node_app.add_typer(chain_app, name="chain")
channel_app = typer.Typer(help="Your payment channel with a node (deposit, state).", no_args_is_help=True)
client_app.add_typer(channel_app, name="channel")

NodeOpt = Annotated[str, typer.Option("--node", help="host:port of the node's gRPC server (env OPENLORA_NODE).")]
SwarmOpt = Annotated[
    Optional[str],
    typer.Option("--swarm", help="Let the swarm pick the node: any node's multiaddr /ip4/…/tcp/N/p2p/ID (instead of --node)."),
]
AdapterOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Adapter CID, or the name of one adapter on the node (default: the base model); A*0.7+B*0.3 composes 2-4 "
        "adapters (CIDs or names) with those weights, each paid part billed its share."
    ),
]


ClientKeyOpt = Annotated[
    Optional[Path],
    typer.Option("--key", help="Your keystore: pays calls that cost something (passphrase: $OPENLORA_KEY_PASSPHRASE)."),
]
ChainRpcOpt = Annotated[
    Optional[str], typer.Option("--chain-rpc", help="Chain JSON-RPC URL (default: the one the node advertises).")
]
DeploymentOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--deployment",
        envvar="OPENLORA_DEPLOYMENT",
        help="Deployment JSON you trust (`openlora-node chain deploy --out`): pay only through those contracts "
        "(default: any deployment of the openlora contract code).",
    ),
]


def _deployment(path: Path | None):
    """The pinned Deployment in ``path`` (None: none pinned); a bad file is one error line and exit 1."""
    if path is None:
        return None
    from .chain.contracts import Deployment

    try:
        return Deployment.from_json(path.read_text())
    except (OSError, ValueError) as e:
        _fail(f"--deployment {path}: {e}")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# What this command dials and pays with, for the next command an error message suggests (one command a process).
_dialed = {"node": DEFAULT_NODE, "key": None}


def _connect(node: str, key: Path | None = None):
    """A ``NodeClient`` for ``node``; errors of later calls name ``node`` (and ``key``) in their advice."""
    from .client import NodeClient

    _dialed.update(node=node, key=key)
    return NodeClient(node)


def _rpc_call(fn, *args, **kwargs):
    """Run a client call, turning gRPC errors into one readable line (with the command to run next when there is
    an obvious one) and exit code 1."""
    import grpc

    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        _fail(_next_step(e) or f"{e.code().name}: {e.details()}")


def _next_step(e) -> str | None:
    """The message for the errors a newcomer meets first, naming the command that fixes each; else None."""
    import grpc

    from .client import payment_error

    node, key = _dialed["node"], _dialed["key"]
    details = e.details() or ""
    if e.code() is grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        port = node.rpartition(":")[2]
        return (
            f"no node answers at {node}: start one with `openlora-node start --port {port}` (it prints `ready on "
            f"{node}` once it accepts calls), or pass --node HOST:PORT of a running node ({e.code().name}: {details})"
        )
    refusal = payment_error(e)
    key_arg = f"--key {key}" if key else "--key client.json"
    deposit = f"`openlora channel open --node {node} {key_arg} --amount 10000000000000000`"
    if refusal == "PaymentRequired" and key is None:
        return (
            f"{details}\n  this call is paid: make a key (on a dev chain: `openlora-node keys dev 2 --out client.json`), "
            f"deposit with {deposit}, then call again with {key_arg}"
        )
    if refusal == "InsufficientDeposit":
        return f"{details}\n  deposit into your channel with the node: {deposit}, then call again"
    return None


def _adapter_cid(c, ref: str | None) -> str | None:
    """The CID of ``ref`` (a CID or a unique adapter name on the node ``c`` is connected to), or of each part of a
    composition ``A*0.7+B*0.3`` (its canonical id), or exit 2 saying what a CID looks like and how to list the
    adapters (or what is wrong with the composition); ``None`` for the base model."""
    from .adapters.composition import Composition, CompositionError, is_composition, split_text
    from .client.names import AdapterNameError, adapter_cid, looks_like_cid

    if not ref:
        return None
    try:
        refs = split_text(ref) if is_composition(ref) else [(ref, "")]
        named = () if all(looks_like_cid(r) for r, _ in refs) else _rpc_call(c.list_adapters)
        cids = [(adapter_cid(r, named, c.address), w) for r, w in refs]
        return Composition.of(cids).id if is_composition(ref) else cids[0][0]
    except (AdapterNameError, CompositionError) as e:
        _fail(str(e), 2)


def _route(swarm: str, adapter: str | None) -> str:
    """The gRPC address of the node the swarm suggests for ``adapter`` (reported on stderr)."""
    from .client import route
    from .client.names import looks_like_cid
    from .p2p.errors import SwarmError
    from .p2p.peers import NoNodeAvailable

    from .client.spotcheck import accused_path, read_accused

    try:
        # a name is resolved at the node the swarm picks (names are that node's catalog's)
        entry = route(swarm, adapter if adapter and looks_like_cid(adapter) else None, accused=read_accused(accused_path()))
    except (SwarmError, NoNodeAvailable, ValueError) as e:
        _fail(str(e))
    resident = " (adapter resident)" if adapter and adapter in entry.resident else ""
    typer.echo(f"routed to {entry.peer_id} at {entry.grpc_address}{resident}", err=True)
    return entry.grpc_address


# ----- openlora-node -----


# Every setting's flag keeps "not given" (None) as its default, so that an OPENLORA_* variable or the
# --config file can supply the value; show_default tells --help what applies when nothing does.
@node_app.command()
def start(
    config: Annotated[Optional[Path], typer.Option("--config", envvar="OPENLORA_CONFIG", help="TOML settings file: top-level keys named as the flags below (with underscores), chain flags in a table named chain; OPENLORA_* variables and flags override it.")] = None,
    port: Annotated[Optional[int], typer.Option(help="gRPC port on the listen host; 0 picks a free one.", show_default="50051")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Blockstore, catalog, ledger and node key.", show_default=".data")] = None,
    host: Annotated[Optional[str], typer.Option(help="Listen address. Loopback unless you mean to expose the node.", show_default="127.0.0.1")] = None,
    http: Annotated[Optional[bool], typer.Option("--http/--no-http", help="Serve the OpenAI-compatible HTTP API and /metrics beside gRPC.", show_default="--http")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="HTTP port on the listen host (default: the gRPC port + 1; a free one when that is 0).")] = None,
    base_model: Annotated[Optional[str], typer.Option(help="A .gguf file or HF causal-LM folder; default SmolLM2-135M-Instruct.")] = None,
    model_cache: Annotated[Optional[Path], typer.Option(help="Where GGUF conversions go (~517 MB), shared by every data dir.", show_default="~/.cache/openlora/models")] = None,
    engine: Annotated[Optional[str], typer.Option(help="torch (the exact reference engine) or vllm (vLLM's async engine: paged KV, prefix cache, multi-GPU; README: Engines).", show_default="torch")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch engine: cpu or cuda.", show_default="cpu")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="float32, bfloat16 or float16.", show_default="bfloat16")] = None,
    max_loras: Annotated[Optional[int], typer.Option(help="Adapter slots on the device.", show_default="8")] = None,
    max_cpu_loras: Annotated[Optional[int], typer.Option(help="Adapters kept parsed in host RAM.", show_default="64")] = None,
    max_cpu_lora_bytes: Annotated[Optional[int], typer.Option(help="Bytes of adapter weights kept parsed in host RAM.", show_default="4294967296")] = None,
    max_lora_rank: Annotated[Optional[int], typer.Option(help="Largest adapter rank served.", show_default="64")] = None,
    rank_buckets: Annotated[Optional[str], typer.Option(help="torch engine: slots by rank, RANK:SLOTS,… (8:24,64:6,256:2: a rank-8 adapter takes 8 rows, not the largest rank's); sets --max-loras and --max-lora-rank.")] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Rows decoded together.", show_default="16")] = None,
    max_waiting: Annotated[Optional[int], typer.Option(help="Queued requests before RESOURCE_EXHAUSTED.", show_default="256")] = None,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="Longest prompt accepted, tokens.", show_default="4096")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Most tokens generated per request.", show_default="1024")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads (default: all cores).")] = None,
    tensor_parallel_size: Annotated[Optional[int], typer.Option(help="vllm: GPUs the base is split across (tensor parallel).", show_default="1")] = None,
    pipeline_parallel_size: Annotated[Optional[int], typer.Option(help="vllm: pipeline stages (GPUs along the layers; with --nnodes, across boxes).", show_default="1")] = None,
    executor_backend: Annotated[Optional[str], typer.Option(help="vllm: its distributed executor, mp or ray (default: vLLM picks).")] = None,
    nnodes: Annotated[Optional[int], typer.Option(help="vllm: boxes one node's vLLM spans (multi-node executor).", show_default="1")] = None,
    node_rank: Annotated[Optional[int], typer.Option(help="vllm: this box's rank among --nnodes (0 runs the node).", show_default="0")] = None,
    master_addr: Annotated[Optional[str], typer.Option(help="vllm: address of the rank-0 box.", show_default="127.0.0.1")] = None,
    vllm_kv_cache_gib: Annotated[Optional[float], typer.Option(help="vllm on CPU: KV cache size, GiB.", show_default="2.0")] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(help="vllm on GPU: share of each GPU's memory it may take.", show_default="0.9")] = None,
    vllm_enforce_eager: Annotated[Optional[bool], typer.Option("--vllm-enforce-eager/--no-vllm-enforce-eager", help="vllm: no graph capture or compilation (faster start, slower steps).", show_default="--no-vllm-enforce-eager")] = None,
    p2p: Annotated[Optional[bool], typer.Option("--p2p/--no-p2p", help="Join the libp2p swarm (discovery, block exchange).", show_default="--p2p")] = None,
    p2p_port: Annotated[Optional[int], typer.Option(help="libp2p TCP port on the listen host; 0 picks a free one.", show_default="0")] = None,
    bootstrap: Annotated[Optional[list[str]], typer.Option(help="Peer multiaddr /ip4/…/tcp/N/p2p/ID to join (repeatable; OPENLORA_BOOTSTRAP takes a comma-separated list).")] = None,
    ipfs_api: Annotated[Optional[str], typer.Option(help="Kubo RPC URL to fetch blocks from, e.g. http://127.0.0.1:5001.")] = None,
    dht: Annotated[Optional[str], typer.Option(help="Kademlia DHT (/openlora/kad/1.0.0): auto (server unless behind relays), server, client or off.", show_default="auto")] = None,
    p2p_listen: Annotated[Optional[bool], typer.Option("--p2p-listen/--no-p2p-listen", help="Accept direct libp2p connections; --no-p2p-listen: behind NAT, reached only through --relay.", show_default="--p2p-listen")] = None,
    relay: Annotated[Optional[list[str]], typer.Option(help="Relay multiaddr /ip4/…/tcp/N/p2p/ID to hold a slot at, so peers reach this node through it (repeatable; OPENLORA_RELAYS comma-separated).")] = None,
    relay_service: Annotated[Optional[bool], typer.Option("--relay-service/--no-relay-service", help="Relay connections for nodes behind NAT (limited per peer and circuit).", show_default="--no-relay-service")] = None,
    p2p_upload_mbps: Annotated[Optional[float], typer.Option(help="Serve adapter blocks to peers at most this many MB/s (unset: as fast as the link goes).")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug, info, warning, error.", show_default="info")] = None,
    log_format: Annotated[Optional[str], typer.Option(help="Log lines on stderr: text, or json (one object per line).", show_default="text")] = None,
    fetch_timeout: Annotated[Optional[float], typer.Option(help="Seconds a fetch of an unknown adapter from peers may take.", show_default="60.0")] = None,
    client_rate_limit: Annotated[Optional[float], typer.Option(help="Requests per second per client (token bucket); 0 turns the limit off.", show_default="50.0")] = None,
    client_rate_limit_burst: Annotated[Optional[int], typer.Option(help="Requests a client may make at once (the bucket's size).", show_default="100")] = None,
    metrics_max_adapters: Annotated[Optional[int], typer.Option(help="Adapters with their own /metrics label; the rest count as adapter=\"other\".", show_default="64")] = None,
    chain: Annotated[Optional[str], typer.Option(help="embedded: an in-process dev chain, gone when the node stops (use --chain-rpc for any other).", show_default="embedded")] = None,
    chain_rpc: Annotated[Optional[str], typer.Option(help="Any EVM JSON-RPC URL instead of the embedded chain; needs --contracts.")] = None,
    chain_port: Annotated[Optional[int], typer.Option(help="The embedded chain's JSON-RPC port on 127.0.0.1; 0 picks a free one.", show_default="0")] = None,
    contracts: Annotated[Optional[Path], typer.Option(help="Deployment JSON for --chain-rpc (`openlora-node chain deploy` writes it).")] = None,
    node_key: Annotated[Optional[Path], typer.Option(help="Node keystore (default DATA_DIR/node-key.json, made on first start; passphrase $OPENLORA_NODE_KEY_PASSPHRASE, else empty).")] = None,
    node_fee_per_1k: Annotated[Optional[int], typer.Option("--node-fee-per-1k", help="Wei per 1000 tokens added to every adapter's price.", show_default="0")] = None,
    settle_every_calls: Annotated[Optional[int], typer.Option(help="Settle on chain once this many paid calls are unsettled.", show_default="50")] = None,
    settle_every_seconds: Annotated[Optional[float], typer.Option(help="Settle at least this often while calls are unsettled.", show_default="30.0")] = None,
    withdraw_timeout: Annotated[Optional[int], typer.Option(help="Embedded chain: seconds clients wait between a withdraw request and the refund.", show_default="3600")] = None,
    credit_limit_wei: Annotated[Optional[int], typer.Option(help="Wei of not-yet-checkable vouchers one client may run up while the chain RPC is unreachable.", show_default="1000000000000000")] = None,
) -> None:
    """Start a node: load the base model, serve gRPC, print a line with `ready` once it accepts calls.

    Each setting comes from its flag, else OPENLORA_<NAME> (OPENLORA_CHAIN__<NAME> for chain settings), else the --config file, else its default; `openlora-node config show` prints the result.
    """
    import asyncio
    import signal

    loaded = _settings(locals())
    settings = loaded.settings
    from .logs import configure_logging

    if settings.p2p:
        import libp2p  # noqa: F401  (its import detaches its logger; configure_logging attaches it to ours)
    configure_logging(settings.log_level, settings.log_format)
    for warning in loaded.warnings:
        logging.getLogger("openlora.config").warning(warning)
    if settings.log_format == "json":
        # tqdm bars (transformers' weight loading, the GGUF conversion) would break one-object-per-line stderr;
        # tqdm reads TQDM_DISABLE when a bar is created, so this covers bars transformers does not own too.
        os.environ["TQDM_DISABLE"] = "1"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from .engine.base import BaseModelError
    from .node import Node
    from .p2p.errors import SwarmError

    async def run() -> None:
        node = Node(settings)
        try:
            await node.start()
        except (BaseModelError, RuntimeError, SwarmError) as e:
            await node.stop(grace_s=0)
            _fail(str(e))
        p2p_part = f"p2p={node.multiaddr} " if node.multiaddr else ""
        chain_part = f" chain={node.chain.info.rpc_url} account={node.chain.info.node_address}"
        http_address = getattr(node, "http_address", None)
        http_part = f" http={http_address}" if http_address else ""
        print(
            f"openlora-node ready on {node.address} {p2p_part}base={node.base_name} "
            f"fingerprint={node.fingerprint} data={settings.data_dir.resolve()}{chain_part}{http_part}",
            flush=True,
        )
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        logging.getLogger(__name__).info("stopping")
        await node.stop()

    asyncio.run(run())


def _settings(params: dict) -> LoadedSettings:
    """The settings of ``start``'s parameters (flags not given are None) layered over the environment and
    the --config file; exits 2 with the message (naming each bad setting's source) when they are invalid."""
    from .config import SettingsError, flag_name, load_settings, setting_paths

    if params["chain"] not in (None, "embedded"):
        _fail(f"--chain: only 'embedded' is built in, got {params['chain']!r}; use --chain-rpc URL for any other chain", 2)
    given = {path: params[_param(flag_name(path))] for path in setting_paths()}
    try:
        # An empty list is what click passes for a repeatable flag that was not given.
        return load_settings({path: v for path, v in given.items() if v not in (None, [], ())}, params["config"])
    except SettingsError as e:
        _fail(str(e), 2)


def _param(flag: str) -> str:
    """``start``'s parameter name for a flag (``--node-fee-per-1k`` → ``node_fee_per_1k``)."""
    return flag.removeprefix("--").replace("-", "_")


config_app = typer.Typer(help="The node's settings (flags > OPENLORA_* environment > --config file > defaults).", no_args_is_help=True)
node_app.add_typer(config_app, name="config")


def config_show(**params) -> None:
    """Print the settings `openlora-node start` would run with, given the same flags, environment and
    --config file: a TOML file (usable as --config) with each value's origin as a comment."""
    from .config import effective_toml

    typer.echo(effective_toml(_settings(params)), nl=False)


# `config show` takes exactly the flags of `start`, so "what would this command line run with?" is answered
# by replacing `start` with `config show`.
config_show.__signature__ = inspect.signature(start, eval_str=True)
config_app.command("show")(config_show)


@node_app.command()
def publish(
    adapter_dir: Annotated[Path, typer.Argument(help="A PEFT LoRA folder: adapter_config.json + adapter_model.safetensors.")],
    node: NodeOpt = DEFAULT_NODE,
    key: Annotated[Optional[Path], typer.Option(help="Publisher keystore (default: $OPENLORA_KEY or ~/.openlora/publisher.json).")] = None,
    price_per_1k: Annotated[int, typer.Option("--price-per-1k", help="Price in wei per 1000 tokens.", min=0)] = 0,
    royalty_bps: Annotated[int, typer.Option(help="Publisher's share of the price, basis points (0..10000).", min=0, max=10_000)] = 0,
    name: Annotated[str, typer.Option(help="Adapter name for the manifest (default: the folder name).")] = "",
) -> None:
    """Sign an adapter with your publisher key and publish it to a node; prints its CID as the last line.

    The passphrase comes from $OPENLORA_KEY_PASSPHRASE, else from a hidden prompt.
    """
    from .adapters.reasons import AdapterRejected

    signer = _load_key(key)
    with _connect(node) as c:
        try:
            resp = _rpc_call(c.publish, adapter_dir, signer, name, price_per_1k_tokens=price_per_1k, royalty_bps=royalty_bps)
        except FileNotFoundError as e:
            _fail(str(e))
        except AdapterRejected as e:
            _fail(f"adapter rejected: {e}")
        except ValueError as e:
            _fail(str(e), 2)
        info = resp.adapter
        typer.echo(
            f"published {info.name}: r={info.r} lora_alpha={info.lora_alpha:g} targets={','.join(info.target_modules)} "
            f"publisher={info.publisher} price_per_1k={info.price_per_1k_tokens} wei royalty={info.royalty_bps} bps",
            err=True,
        )
        # Calls are paid when the adapter or the node charges: they settle only for registered adapters.
        if price_per_1k > 0 or int(_rpc_call(c.node_info).chain.node_fee_per_1k or 0) > 0:
            _register(c, resp.cid, signer, strict=False)
    typer.echo(resp.cid)


def _register(c, cid: str, signer, chain_rpc: str | None = None, strict: bool = True) -> None:
    """Registers ``cid`` on the node's chain with the publisher's key; one line to stderr. A failure exits with
    an error when ``strict``, else (the adapter is published all the same) it is a warning that says what to do."""
    from .chain.errors import ChainError
    from .client import register_adapter

    try:
        fresh = _rpc_call(register_adapter, c, cid, signer, chain_rpc)
    except (ChainError, ValueError) as e:
        if strict:
            _fail(str(e))
        typer.echo(
            f"warning: {cid} is published but not registered on chain: {e}\n"
            f"  until it is (openlora-node register {cid} --node {c.address} --key PUBLISHER_KEY), nodes without a "
            "fee serve it free and nodes with a fee refuse it",
            err=True,
        )
        return
    typer.echo(f"{'registered' if fresh else 'already registered'} {cid} on chain as {signer.address}", err=True)


@node_app.command()
def register(
    cid: Annotated[str, typer.Argument(help="The adapter CID (published to the node), or its name there.")],
    node: NodeOpt = DEFAULT_NODE,
    key: Annotated[Optional[Path], typer.Option(help="Publisher keystore (default: $OPENLORA_KEY or ~/.openlora/publisher.json).")] = None,
    chain_rpc: ChainRpcOpt = None,
) -> None:
    """Register an adapter on the node's chain at its signed manifest's price and royalty, so calls to it can be
    paid and attributed (`publish` does this for a priced adapter)."""
    signer = _load_key(key)
    with _connect(node) as c:
        _register(c, _adapter_cid(c, cid), signer, chain_rpc)


@node_app.command()
def revoke(
    cid: Annotated[str, typer.Argument(help="The adapter CID, or its name on the node.")],
    node: NodeOpt = DEFAULT_NODE,
    key: Annotated[Optional[Path], typer.Option(help="Publisher keystore (default: $OPENLORA_KEY or ~/.openlora/publisher.json).")] = None,
    chain_rpc: ChainRpcOpt = None,
) -> None:
    """Revoke an adapter on chain (publisher only, final): nodes refuse new calls to it."""
    from .client import revoke_adapter

    signer = _load_key(key)
    with _connect(node) as c:
        cid = _adapter_cid(c, cid)
        _chain_call(revoke_adapter, c, cid, signer, chain_rpc)
    typer.echo(f"revoked {cid}", err=True)


@chain_app.command("deploy")
def chain_deploy(
    chain_rpc: Annotated[str, typer.Option("--chain-rpc", help="The chain's JSON-RPC URL.")],
    key: Annotated[Path, typer.Option(help="Keystore of the deploying account (pays the gas).")],
    withdraw_timeout_s: Annotated[int, typer.Option("--withdraw-timeout", help="Seconds clients wait between a withdraw request and the refund.", min=1)] = 3600,
    out: Annotated[Optional[Path], typer.Option(help="Also write the Deployment JSON here (for `start --contracts`).")] = None,
) -> None:
    """Deploy AdapterRegistry and PaymentChannels; prints the Deployment JSON (chain_id, registry, channels)."""
    from .chain.backends import rpc_chain
    from .chain.contracts import deploy_contracts

    deployer = _load_key(key)
    deployment = _chain_call(lambda: deploy_contracts(rpc_chain(chain_rpc), deployer, withdraw_timeout_s))
    if out is not None:
        out.write_text(deployment.to_json() + "\n")
    typer.echo(deployment.to_json())


def _load_key(path: Path | None, dev_index: int = 1):
    """The account in keystore ``path`` (default: the publisher key path), or exit with one line; a missing file
    is reported before any passphrase is asked for, with the commands that make one (``keys dev dev_index``)."""
    from .adapters.keys import KeystoreError, default_key_path, load_account

    path = path or default_key_path()
    if not path.is_file():
        _fail(
            f"no key at {path}: create one with `openlora-node keys new --out {path}`, or on a dev chain "
            f"`openlora-node keys dev {dev_index} --out {path}` (a funded account of the public dev mnemonic); "
            "or pass --key PATH of an existing keystore"
        )
    try:
        return load_account(path, _passphrase(confirm=False))
    except KeystoreError as e:
        _fail(str(e))


def _chain_call(fn, *args, **kwargs):
    """``_rpc_call`` for commands that also use the chain: chain and input errors become one line too."""
    from .chain.errors import ChainError

    try:
        return _rpc_call(fn, *args, **kwargs)
    except (ChainError, ValueError) as e:
        _fail(str(e))


def _passphrase(confirm: bool) -> str:
    """$OPENLORA_KEY_PASSPHRASE, else a hidden prompt (on a terminal only)."""
    from .adapters.keys import PASSPHRASE_ENV, env_passphrase

    env = env_passphrase()
    if env is not None:
        return env
    if not sys.stdin.isatty():
        _fail(f"no passphrase: set {PASSPHRASE_ENV} or run in a terminal to be prompted", 2)
    return typer.prompt("Key passphrase", hide_input=True, confirmation_prompt=confirm)


@keys_app.command("new")
def keys_new(
    out: Annotated[Optional[Path], typer.Option(help="Where to write the keystore (default: $OPENLORA_KEY or ~/.openlora/publisher.json).")] = None,
) -> None:
    """Create a publisher key in an encrypted keystore file (scrypt); prints its address as the last line."""
    from .adapters.keys import KeystoreError, create_keystore, default_key_path

    path = out or default_key_path()
    if path.exists():
        _fail(f"{path} already exists; move it away or choose another path with --out", 2)
    try:
        address = create_keystore(path, _passphrase(confirm=True))
    except KeystoreError as e:
        _fail(str(e), 2)
    typer.echo(f"wrote {path}", err=True)
    typer.echo(address)


@keys_app.command("dev")
def keys_dev(
    index: Annotated[int, typer.Argument(help="Dev account 0..9 (0 deploys the embedded chain's contracts).", min=0, max=9)],
    out: Annotated[Path, typer.Option(help="Where to write the keystore.")],
) -> None:
    """Write dev account INDEX of the public dev mnemonic as a keystore: funded on the embedded chain and on a
    default anvil, so it can deposit, register and pay there. Its key is public: dev chains only."""
    from .adapters.keys import write_keystore
    from .chain.backends import dev_accounts
    from .chain.node_key import dev_scrypt_n

    if out.exists():
        _fail(f"{out} already exists; move it away or choose another path with --out", 2)
    account = dev_accounts(index + 1)[index]
    passphrase = _passphrase(confirm=True)
    write_keystore(out, account, passphrase, scrypt_n=dev_scrypt_n(passphrase))
    typer.echo(f"wrote {out}", err=True)
    typer.echo(account.address)


@keys_app.command("show")
def keys_show(
    path: Annotated[Optional[Path], typer.Argument(help="Keystore file (default: $OPENLORA_KEY or ~/.openlora/publisher.json).")] = None,
) -> None:
    """Print the address of a publisher keystore (no passphrase needed)."""
    from .adapters.keys import KeystoreError, default_key_path, keystore_address

    try:
        typer.echo(keystore_address(path or default_key_path()))
    except KeystoreError as e:
        _fail(str(e))


@node_app.command()
def cid(
    path: Annotated[Path, typer.Argument(help="A file.")],
    cid_version: Annotated[int, typer.Option(help="0 (Kubo's default) or 1 (raw leaves, base32).")] = 0,
) -> None:
    """Print a file's CID exactly as Kubo's `ipfs add -Q [--cid-version=1]` does."""
    if cid_version not in (0, 1):
        _fail("--cid-version must be 0 or 1", 2)
    if not path.is_file():
        _fail(f"{path} is not a file", 2)
    from .content import file_cid

    typer.echo(file_cid(path, cid_version=cid_version))


# ----- openlora -----


@client_app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The question or prompt.")],
    node: Annotated[
        Optional[str], typer.Option("--node", help="host:port of the node's gRPC server (env OPENLORA_NODE).", show_default=DEFAULT_NODE)
    ] = None,
    adapter: AdapterOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most (0: node default, 128).", min=0)] = 0,
    temperature: Annotated[
        Optional[float], typer.Option(help="Sampling temperature; 0 for greedy (the same answer every time).", show_default="node default 1.0: samples")
    ] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling: keep the likeliest tokens up to this mass.", show_default="node default 1.0: off")] = None,
    top_k: Annotated[int, typer.Option(help="Sample among the k likeliest tokens (0: off).", min=0)] = 0,
    seed: Annotated[Optional[int], typer.Option(help="Seed of this request's sampler (0..2^63-1).", min=0, show_default="a fresh one")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    system: Annotated[Optional[str], typer.Option(help="System message for the chat template.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send PROMPT as raw text, without the chat template.")] = False,
    usage: Annotated[bool, typer.Option("--usage", help="Print token usage (and what the call cost) to stderr at the end.")] = False,
    swarm: SwarmOpt = None,
    key: ClientKeyOpt = None,
    deployment: DeploymentOpt = None,
    receipt_out: Annotated[
        Optional[Path], typer.Option("--receipt-out", help="Save the call's signed serving record (and receipt) here, for `openlora verify`.")
    ] = None,
    spot_check: Annotated[
        float, typer.Option("--spot-check", min=0.0, max=1.0, help="Have --verifier check the call with this probability (0..1).")
    ] = 0.0,
    verifier: Annotated[Optional[str], typer.Option("--verifier", help="host:port of the node that runs spot checks.")] = None,
) -> None:
    """Stream a completion to stdout. Samples unless --temperature 0. With --key, calls that cost something are paid
    from your channel (`openlora channel open`); the key stays on this machine. Every finished call comes with the
    node's signed serving record: --receipt-out keeps it, --spot-check sends it to a verifier node."""
    from .client import PaidSession, PaidStream, chat_messages

    if swarm and node:
        _fail("--node and --swarm both say where the call goes: --node dials that node, --swarm lets the swarm pick one; give one of them", 2)
    if spot_check and not verifier:
        _fail("--spot-check needs --verifier HOST:PORT: a node with the same base that re-runs the call", 2)
    node = _route(swarm, adapter) if swarm else node or DEFAULT_NODE
    account = _load_key(key, dev_index=2) if key is not None else None
    pinned = _deployment(deployment)
    with _connect(node, key) as c:
        adapter = _adapter_cid(c, adapter)
        caller = PaidSession(c, account, deployment=pinned) if account is not None else c
        messages = None if raw else chat_messages(prompt, system)
        stream = None

        def run() -> None:
            nonlocal stream
            stream = caller.generate(
                prompt, messages=messages, raw=raw, adapter=adapter, max_new_tokens=max_tokens, temperature=temperature,
                top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop or ()),
            )  # fmt: skip
            for text in stream:
                sys.stdout.write(text)
                sys.stdout.flush()

        try:
            _chain_call(run)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            if isinstance(stream, PaidStream):
                stream.cancel()
                _fail(f"interrupted: {_charged_after_cut(caller, stream)}", 130)
            _fail("interrupted", 130)
        sys.stdout.write("\n")
        if receipt_out is not None:
            _save_served(c, stream.served, adapter, receipt_out)
        if spot_check:
            _spot_check(c, stream.served, verifier, spot_check)
    if usage and stream.done is not None:
        u = stream.done.usage
        receipts = getattr(stream, "receipts", ())
        paid = ""
        if receipts:  # a composed call: one receipt per part billed
            paid = f" cost_wei={sum(r.cost for r in receipts)} charged_total_wei={max(r.charged_total for r in receipts)}"
            if len(receipts) > 1:
                paid += " parts=" + ",".join(f"{r.tokens}tokens/{r.cost}wei" for r in receipts)
        typer.echo(
            f"prompt_tokens={u.prompt_tokens} completion_tokens={u.completion_tokens} ttft_ms={stream.done.ttft_ms:.0f}{paid}",
            err=True,
        )


def _save_served(c, served, adapter: str | None, path: Path) -> None:
    """Write the receipt file (the served call, and the adapter's manifest for a local `openlora verify`)."""
    from .proof.wire import dump_served_call

    if served is None:
        _fail("the node sent no serving record for this call (it was cut short): there is nothing to save")
    from .adapters.composition import is_composition

    # a composed call's record names its parts; a verifier node rebuilds them (a local check needs one adapter)
    manifest = _rpc_call(c.get_adapter, adapter).manifest_json if adapter and not is_composition(adapter) else ""
    path.write_text(dump_served_call(served, manifest))
    typer.echo(f"serving record saved to {path} (check it with `openlora verify {path} --node VERIFIER`)", err=True)


def _spot_check(c, served, verifier: str, rate: float) -> None:
    """Draw a spot check of the call at ``rate`` on ``verifier``; a failure that blames the node keeps it out of
    this client's --swarm routing (exit 1)."""
    from .client import NodeClient, SpotChecker, Unaccountable
    from .client.spotcheck import accused_path, remember_accused

    node_address = _rpc_call(c.node_info).chain.node_address
    with NodeClient(verifier) as v:
        try:
            response = _rpc_call(SpotChecker(v, rate).check, served, node_address)
        except Unaccountable as e:
            _fail(f"spot check impossible: {e}")
    if response is None:
        typer.echo(f"spot check: not drawn this time (rate {rate:g})", err=True)
        return
    if response.valid:
        typer.echo(f"spot check by {verifier}: valid ({response.detail})", err=True)
        return
    message = f"spot check by {verifier}: INVALID: {response.check}: {response.detail}"
    if response.HasField("evidence"):
        path = accused_path()
        remember_accused(path, served.record.node)
        message += (
            f"\n  evidence signed by {response.evidence.verifier} is gossiped on the swarm; node {served.record.node} "
            f"is out of your --swarm routing ({path})"
        )
    _fail(message)


def _charged_after_cut(session, stream, wait_s: float = 10.0) -> str:
    """What the node charged for a paid call cut off by the client: the channel's charged total as the node reports
    it, read until it moved past the total before the call (the node books a cut-off call as it ends it)."""
    import time

    from .client import generate_request

    before = int(stream.quote.channel.charged_total or 0)
    probe = generate_request("x", raw=True, max_new_tokens=1)
    deadline = time.monotonic() + wait_s
    while True:
        total = int(_rpc_call(session.quote, probe).channel.charged_total or 0)
        if total != before:
            return f"the node charged {total - before} wei for the text it delivered (charged total {total} wei)"
        if time.monotonic() > deadline:
            return (
                f"the node has not booked the call yet; it charges at most {stream.quote.max_cost_wei} wei for it "
                f"(the voucher's limit): `openlora quote --node {_dialed['node']} --client {session.account.address} x` "
                "shows the charged total"
            )
        time.sleep(0.2)


@client_app.command()
def quote(
    prompt: Annotated[str, typer.Argument(help="The question or prompt.")],
    node: NodeOpt = DEFAULT_NODE,
    adapter: AdapterOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most (0: node default, 128).", min=0)] = 0,
    system: Annotated[Optional[str], typer.Option(help="System message for the chat template.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Price PROMPT as raw text, without the chat template.")] = False,
    key: Annotated[Optional[Path], typer.Option(help="Your keystore: adds your channel's state (the request is signed: a node shows a channel's ledger to its client only).")] = None,
) -> None:
    """Print what a call would cost (JSON): prompt tokens, price per 1k tokens, max cost in wei."""
    from google.protobuf import json_format

    from .client import chat_messages, generate_request

    with _connect(node) as c:
        request = generate_request(
            prompt, messages=None if raw else chat_messages(prompt, system), raw=raw, adapter=_adapter_cid(c, adapter), max_new_tokens=max_tokens
        )  # fmt: skip
        q = _rpc_call(c.quote, request, _load_key(key, dev_index=2) if key is not None else None)
    typer.echo(json_format.MessageToJson(q, indent=2, always_print_fields_with_no_presence=True))


@client_app.command("usage")
def usage_cmd(
    node: NodeOpt = DEFAULT_NODE,
    adapter: Annotated[Optional[str], typer.Option(help="One adapter: CID or name (default: every registered adapter).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of {adapter, calls, tokens, publisher_earnings_wei}.")] = False,
) -> None:
    """Print the on-chain attribution per adapter: settled calls, tokens, publisher earnings (wei)."""
    import json

    with _connect(node) as c:
        rows = _rpc_call(c.usage, _adapter_cid(c, adapter))
    if as_json:
        keys = ("adapter", "calls", "tokens", "publisher_earnings_wei")
        data = [{k: int(v) if k != "adapter" else v for k, v in ((k, getattr(r, k)) for k in keys)} for r in rows]
        typer.echo(json.dumps(data))
        return
    for r in rows:
        typer.echo(f"{r.adapter}  calls={r.calls} tokens={r.tokens} publisher_earnings_wei={r.publisher_earnings_wei}")


@channel_app.command("open")
def channel_open(
    amount: Annotated[int, typer.Option(help="Wei to deposit (adds to what the channel holds).", min=1)],
    node: NodeOpt = DEFAULT_NODE,
    key: Annotated[Path, typer.Option(help="Your keystore (passphrase: $OPENLORA_KEY_PASSPHRASE); signs the deposit here.")] = ...,
    chain_rpc: ChainRpcOpt = None,
    deployment: DeploymentOpt = None,
) -> None:
    """Deposit into your payment channel with the node (opens it on first use); prints the channel's state.
    Refused when the node's contracts are not the openlora code (or not --deployment)."""
    from .client import PaidSession

    account = _load_key(key, dev_index=2)
    pinned = _deployment(deployment)
    with _connect(node, key) as c:
        state = _chain_call(PaidSession(c, account, chain_rpc, deployment=pinned).open_channel, amount)
    _echo_channel(state)


@channel_app.command("show")
def channel_show(
    node: NodeOpt = DEFAULT_NODE,
    key: Annotated[Path, typer.Option(help="Your keystore (only its address is read).")] = ...,
    chain_rpc: ChainRpcOpt = None,
) -> None:
    """Print your channel with the node as the chain has it."""
    from .adapters.keys import KeystoreError, keystore_address
    from .client import node_contracts

    try:
        address = keystore_address(key)
    except KeystoreError as e:
        _fail(str(e))
    with _connect(node, key) as c:
        info = _rpc_call(c.node_info).chain
        _, channels = _chain_call(node_contracts, info, chain_rpc)
        _echo_channel(_chain_call(channels.channel, address, info.node_address))


def _echo_channel(state) -> None:
    typer.echo(f"epoch={state.epoch} deposited_wei={state.deposited} redeemed_wei={state.redeemed} withdraw_at={state.withdraw_at}")


@client_app.command()
def nodes(
    swarm: Annotated[str, typer.Option("--swarm", help="Any node's multiaddr /ip4/…/tcp/N/p2p/ID.")],
    base: Annotated[Optional[str], typer.Option(help="Only nodes of this base fingerprint sha256:…, looked up in the DHT by the node asked.")] = None,
) -> None:
    """List the nodes a swarm member knows: peer id, gRPC address, base, load, resident adapters, how each is
    reached (direct, or through a relay), its DHT mode, and whether it relays for others."""
    from .p2p.directory import query_nodes
    from .p2p.errors import SwarmError

    try:
        entries = query_nodes(swarm, base=base).entries
    except SwarmError as e:
        _fail(str(e))
    for e in entries:
        if base is not None and e.base_fingerprint != base:
            continue
        relay = "  relay-service" if e.relay_service else ""
        typer.echo(
            f"{e.peer_id}  {e.grpc_address}  {e.base_name} {e.base_fingerprint[:19]}  "
            f"load={e.active}+{e.waiting}/{e.max_batch}  resident={len(e.resident)}  reach={e.reach}  dht={e.dht}{relay}"
        )


#: the words README and the HTTP API use for a status (RESIDENT is a ready adapter that sits in a device slot)
STATUS_WORDS = {"READY": "ready", "RESIDENT": "ready", "AVAILABLE": "available", "FETCHING": "fetching", "VERIFYING": "verifying", "REJECTED": "rejected", "UNKNOWN": "unknown"}


def _status_word(status: int) -> str:
    from .v1 import node_pb2 as pb

    return STATUS_WORDS[pb.AdapterStatus.Name(status).removeprefix("ADAPTER_STATUS_")]


@client_app.command()
def adapters(
    node: NodeOpt = DEFAULT_NODE,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the CIDs, one a line (for scripts).")] = False,
) -> None:
    """Print the adapters the node knows, one a line: CID, name, status (ready, available, rejected…) and the
    reason of a rejection; only a ready or available one can serve a call."""
    with _connect(node) as c:
        items = _rpc_call(c.list_adapters)
    if quiet:
        for a in items:
            typer.echo(a.cid)
        return
    rows = [("CID", "NAME", "STATUS", "REASON")] + [(a.cid, a.name or "-", _status_word(a.status), a.reason or "-") for a in items]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r[:3], widths)) + "  " + r[3])


@client_app.command()
def adapter(cid: Annotated[str, typer.Argument(help="Adapter CID, or its name on the node.")], node: NodeOpt = DEFAULT_NODE) -> None:
    """Show one adapter's status (ready, available, rejected + reason; `resident`: in a device slot now) and manifest
    (JSON)."""
    import json

    from google.protobuf import json_format

    from .v1 import node_pb2 as pb

    with _connect(node) as c:
        info = _rpc_call(c.get_adapter, _adapter_cid(c, cid))
    data = json_format.MessageToDict(info)
    data["status"] = _status_word(info.status)
    data["resident"] = info.status == pb.ADAPTER_STATUS_RESIDENT
    typer.echo(json.dumps(data, indent=2))


@client_app.command()
def verify(
    receipt_file: Annotated[Path, typer.Argument(help="A file `openlora generate --receipt-out` wrote.")],
    node: Annotated[
        Optional[str], typer.Option("--node", help="host:port of a verifier node (same base); default: verify here, in this process.")
    ] = None,
    adapter_dir: Annotated[
        Optional[Path], typer.Option("--adapter-dir", help="Local verification: the adapter's PEFT folder (checked against the record's CID).")
    ] = None,
    base_model: Annotated[
        Optional[str], typer.Option("--base-model", help="Local verification: the base model folder or .gguf (default: SmolLM2-135M-Instruct).")
    ] = None,
) -> None:
    """Check a served call: re-run one prefill over its prompt + completion with the claimed base and adapter, compare
    the node's commitment and its sampling. Prints `valid` (exit 0) or the first failing check (exit 1)."""
    from .proof.wire import load_served_call

    try:
        call, manifest = load_served_call(receipt_file.read_text())
    except (OSError, ValueError) as e:
        _fail(f"{receipt_file}: {e}", 2)
    evidence = None
    if node is not None:
        with _connect(node) as c:
            response = _rpc_call(c.verify, call)
        check, detail = response.check, response.detail
        if response.HasField("evidence"):
            evidence = response.evidence
    else:
        check, detail = _verify_here(call, manifest, adapter_dir, base_model)
    if not check:
        typer.echo(f"valid ({detail})")
        return
    typer.echo(f"invalid: {check}: {detail}")
    if evidence is not None:
        typer.echo(f"evidence against node {call.record.node} signed by {evidence.verifier} (gossiped by the verifier)")
    raise typer.Exit(1)


def _verify_here(call, manifest: str, adapter_dir: Path | None, base_model: str | None) -> tuple[str, str]:
    """Verify ``call`` in this process with the torch reference (loads the base: seconds). Returns ``(check,
    detail)``; ``check`` is empty when valid."""
    from .proof.local import LocalVerifyError, verify_locally

    try:
        verdict = verify_locally(call, manifest, adapter_dir, base_model)
    except LocalVerifyError as e:
        _fail(str(e), 2)
    return verdict.check, verdict.detail


@client_app.command()
def info(node: NodeOpt = DEFAULT_NODE) -> None:
    """Show the node's base model, fingerprint, slots and load."""
    from google.protobuf import json_format

    with _connect(node) as c:
        ni = _rpc_call(c.node_info)
    typer.echo(json_format.MessageToJson(ni, indent=2))


def node_main() -> None:
    """Entry point of ``openlora-node``."""
    node_app()


def client_main() -> None:
    """Entry point of ``openlora``."""
    client_app()
