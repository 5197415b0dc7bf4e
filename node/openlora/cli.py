"""Command lines: ``openlora-node`` (operators and publishers) and ``openlora`` (clients).

Heavy imports (torch, transformers, peft) happen only inside ``openlora-node start``, so every
client command and ``--help`` start instantly.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_NODE = os.environ.get("OPENLORA_NODE", "127.0.0.1:50051")

node_app = typer.Typer(help="Run an openlora node and publish adapters to it.", no_args_is_help=True, add_completion=False)
client_app = typer.Typer(help="Call an openlora node: generate, list adapters, inspect.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Publisher keys (encrypted keystore files) that sign adapter manifests.", no_args_is_help=True)
node_app.add_typer(keys_app, name="keys")

NodeOpt = Annotated[str, typer.Option("--node", help="host:port of the node's gRPC server (env OPENLORA_NODE).")]


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _rpc_call(fn, *args, **kwargs):
    """Run a client call, turning gRPC errors into one readable line and exit code 1."""
    import grpc

    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        _fail(f"{e.code().name}: {e.details()}")


# ----- openlora-node -----


@node_app.command()
def start(
    port: Annotated[int, typer.Option(help="gRPC port on the listen host; 0 picks a free one.")] = 50051,
    data_dir: Annotated[Path, typer.Option(help="Blockstore, catalog and converted base model.")] = Path(".data"),
    host: Annotated[str, typer.Option(help="Listen address. Loopback unless you mean to expose the node.")] = "127.0.0.1",
    base_model: Annotated[Optional[str], typer.Option(help="A .gguf file or HF causal-LM folder; default SmolLM2-135M-Instruct.")] = None,
    model_cache: Annotated[Optional[Path], typer.Option(help="Where GGUF conversions go (env OPENLORA_MODEL_CACHE; default DATA_DIR/models).")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "bfloat16",
    max_loras: Annotated[int, typer.Option(help="Adapter slots on the device.")] = 8,
    max_cpu_loras: Annotated[int, typer.Option(help="Adapters kept parsed in host RAM.")] = 64,
    max_lora_rank: Annotated[int, typer.Option(help="Largest adapter rank served.")] = 64,
    max_batch: Annotated[int, typer.Option(help="Rows decoded together.")] = 16,
    max_waiting: Annotated[int, typer.Option(help="Queued requests before RESOURCE_EXHAUSTED.")] = 256,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads (default: all cores).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Start a node: load the base model, serve gRPC, print a line with `ready` once it accepts calls."""
    import asyncio
    import signal

    from pydantic import ValidationError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .config import NodeSettings

    try:
        settings = NodeSettings(
            host=host, port=port, data_dir=data_dir, base_model=base_model, model_cache=model_cache, dtype=dtype,
            max_loras=max_loras, max_cpu_loras=max_cpu_loras, max_lora_rank=max_lora_rank, max_batch=max_batch,
            max_waiting=max_waiting, threads=threads,
        )  # fmt: skip
    except ValidationError as e:
        first = e.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", 2)

    from .engine.base import BaseModelError
    from .node import Node

    async def run() -> None:
        node = Node(settings)
        try:
            await node.start()
        except (BaseModelError, RuntimeError) as e:
            _fail(str(e))
        print(
            f"openlora-node ready on {node.address} base={node.base_name} "
            f"fingerprint={node.fingerprint} data={settings.data_dir.resolve()}",
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
    from .adapters.keys import KeystoreError, default_key_path, load_account
    from .adapters.reasons import AdapterRejected
    from .client import NodeClient

    path = key or default_key_path()
    try:
        signer = load_account(path, _passphrase(confirm=False))
    except KeystoreError as e:
        _fail(str(e))
    with NodeClient(node) as c:
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
    typer.echo(resp.cid)


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
    node: NodeOpt = DEFAULT_NODE,
    adapter: Annotated[Optional[str], typer.Option(help="Adapter CID (default: the base model).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most (0: node default).")] = 0,
    temperature: Annotated[Optional[float], typer.Option(help="0 for greedy.")] = None,
    top_p: Annotated[Optional[float], typer.Option()] = None,
    top_k: Annotated[int, typer.Option()] = 0,
    seed: Annotated[Optional[int], typer.Option()] = None,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    system: Annotated[Optional[str], typer.Option(help="System message for the chat template.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send PROMPT as raw text, without the chat template.")] = False,
    usage: Annotated[bool, typer.Option("--usage", help="Print token usage to stderr at the end.")] = False,
) -> None:
    """Stream a completion to stdout."""
    from .client import NodeClient, chat_messages

    with NodeClient(node) as c:
        messages = None if raw else chat_messages(prompt, system)
        stream = c.generate(
            prompt, messages=messages, raw=raw, adapter=adapter, max_new_tokens=max_tokens, temperature=temperature,
            top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop or ()),
        )  # fmt: skip

        def run() -> None:
            for text in stream:
                sys.stdout.write(text)
                sys.stdout.flush()

        _rpc_call(run)
    sys.stdout.write("\n")
    if usage and stream.done is not None:
        u = stream.done.usage
        typer.echo(f"prompt_tokens={u.prompt_tokens} completion_tokens={u.completion_tokens} ttft_ms={stream.done.ttft_ms:.0f}", err=True)


@client_app.command()
def adapters(
    node: NodeOpt = DEFAULT_NODE,
    long: Annotated[bool, typer.Option("--long", "-l", help="Status, name and rank beside each CID.")] = False,
) -> None:
    """Print the adapter CIDs the node knows, one a line."""
    from .client import NodeClient
    from .v1 import node_pb2 as pb

    with NodeClient(node) as c:
        items = _rpc_call(c.list_adapters)
    for a in items:
        if long:
            status = pb.AdapterStatus.Name(a.status).removeprefix("ADAPTER_STATUS_").lower()
            extra = f" ({a.reason})" if a.reason else ""
            typer.echo(f"{a.cid}  {status}{extra}  {a.name}  r={a.r}")
        else:
            typer.echo(a.cid)


@client_app.command()
def adapter(cid: Annotated[str, typer.Argument(help="Adapter CID.")], node: NodeOpt = DEFAULT_NODE) -> None:
    """Show one adapter's status and manifest."""
    from google.protobuf import json_format

    from .client import NodeClient

    with NodeClient(node) as c:
        info = _rpc_call(c.get_adapter, cid)
    typer.echo(json_format.MessageToJson(info, indent=2))


@client_app.command()
def info(node: NodeOpt = DEFAULT_NODE) -> None:
    """Show the node's base model, fingerprint, slots and load."""
    from google.protobuf import json_format

    from .client import NodeClient

    with NodeClient(node) as c:
        ni = _rpc_call(c.node_info)
    typer.echo(json_format.MessageToJson(ni, indent=2))


def node_main() -> None:
    """Entry point of ``openlora-node``."""
    node_app()


def client_main() -> None:
    """Entry point of ``openlora``."""
    client_app()
