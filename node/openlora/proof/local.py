"""``openlora verify RECEIPT_FILE`` without ``--node``: the same checks, in the client's own process.

    base      --base-model (default SmolLM2-135M-Instruct), converted once into the model cache
    adapter   --adapter-dir: the PEFT folder, run through the node's whole verification pipeline against the
              manifest the receipt file carries (publisher signature, file CIDs, shapes, …) in a throwaway store,
              so the adapter computed with is the one the record's CID names
    then      proof.verify.verify_call on a float32 Reference
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..adapters.composition import is_composition
from ..v1 import node_pb2 as pb
from .verify import CannotVerify, Verdict, verify_call


class LocalVerifyError(RuntimeError):
    """The call cannot be verified here; the message says what to pass."""


def verify_locally(call: pb.ServedCall, manifest: str, adapter_dir: Path | None, base_model: str | None) -> Verdict:
    """Verify ``call`` with a reference loaded in this process.

    Args:
        call: the served call.
        manifest: the adapter's signed manifest (the receipt file's), ``""`` for a base-model call.
        adapter_dir: the adapter's PEFT folder (needed for an adapter call).
        base_model: ``--base-model`` (``None``: the default base).

    Raises:
        LocalVerifyError: the base is not the record's, the adapter folder is missing or is not the record's
            adapter, or the receipt file carries no manifest.
    """
    from ..adapters.catalog import Catalog
    from ..adapters.manifest import parse_manifest
    from ..adapters.reasons import AdapterRejected
    from ..adapters.store import AdapterStore, BaseProfile
    from ..client.builders import adapter_files
    from ..config import shared_model_cache
    from ..content.blockstore import BlockStore
    from ..engine.base import BaseModelError, resolve_base_model
    from .reference import Reference

    cache = Path(os.environ.get("OPENLORA_MODEL_CACHE") or shared_model_cache())
    try:
        source = resolve_base_model(base_model, cache)
    except BaseModelError as e:
        raise LocalVerifyError(f"--base-model: {e}") from None
    if source.fingerprint != call.record.base_fingerprint:
        raise LocalVerifyError(
            f"the call ran on base {call.record.base_fingerprint}; {source.name} is {source.fingerprint}: "
            "pass that base with --base-model, or verify on a node with --node"
        )
    cid = call.record.adapter
    max_rank = 64
    if is_composition(cid):
        raise LocalVerifyError(
            f"the call composed several adapters ({cid}); verify it on a node that holds them, with --node"
        )
    if cid:
        if adapter_dir is None or not manifest:
            raise LocalVerifyError(
                f"the call used adapter {cid}: pass its PEFT folder with --adapter-dir (the receipt file must carry "
                "its manifest, as --receipt-out writes it), or verify on a node with --node"
            )
        try:
            peft = parse_manifest(manifest.encode()).peft
        except AdapterRejected as e:
            raise LocalVerifyError(f"the receipt file's manifest: {e}") from None
        max_rank = max(max_rank, peft.r, *peft.rank_pattern.values())
    reference = Reference(source, max_rank)
    with tempfile.TemporaryDirectory(prefix="openlora-verify-") as tmp:
        store = None
        if cid:
            profile = BaseProfile(source.name, source.fingerprint, reference.base_modules, max_rank)
            store = AdapterStore(BlockStore(Path(tmp) / "blocks"), Catalog(Path(tmp) / "catalog.sqlite"), profile)
            try:
                published = store.publish(manifest.encode(), adapter_files(adapter_dir))
            except (AdapterRejected, FileNotFoundError) as e:
                raise LocalVerifyError(f"--adapter-dir {adapter_dir}: {e}") from None
            if published != cid:
                raise LocalVerifyError(f"--adapter-dir {adapter_dir} holds adapter {published}, not the call's {cid}")
        try:
            return verify_call(call, reference, store.load if store is not None else _no_adapter)
        except CannotVerify as e:
            raise LocalVerifyError(str(e)) from None
        finally:
            if store is not None:
                store.catalog.close()


def _no_adapter(cid: str):
    raise LookupError(f"no adapter {cid} here")
