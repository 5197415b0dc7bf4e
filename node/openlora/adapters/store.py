"""Publishing adapters into the blockstore and loading them back, checked every time.

    publish:  files ─► names ok? ─► PEFT config + weights fit the base? ─► blocks (UnixFS, CIDv1)
              ─► manifest {base fingerprint, PEFT summary, file CIDs} ─► raw block ─► adapter CID
              ─► catalog READY
    load:     adapter CID ─► manifest block (hash re-checked) ─► manifest schema, base fingerprint
              ─► each file by CID (every block re-checked) ─► size ─► PEFT checks ─► LoraAdapter

Nothing reaches the engine without passing the same checks at load time that it passed at
publish time: the blockstore may have been written by another process, or by a peer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..content.blockstore import BlockStore
from ..content.errors import BlockNotFound, ContentError
from .catalog import AdapterState, Catalog, CatalogEntry
from .manifest import MANIFEST_VERSION, BaseRef, FileRef, Manifest, PeftSummary, encode_manifest, parse_manifest
from .peft_format import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE, LoraAdapter, check_file_names, load_adapter
from .reasons import AdapterRejected, RejectReason

MAX_ADAPTER_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class BaseProfile:
    """What an adapter must fit: the resident base as the adapter checks see it.

    Attributes:
        name: base model name.
        fingerprint: ``"sha256:<hex>"`` (``engine.base``).
        modules: adaptable module name → ``(in_features, out_features)``.
        max_rank: largest servable LoRA rank.
        dtype: compute dtype adapters are converted to.
        max_adapter_bytes: largest adapter (sum of file sizes) accepted, bytes.
    """

    name: str
    fingerprint: str
    modules: dict[str, tuple[int, int]]
    max_rank: int
    dtype: torch.dtype
    max_adapter_bytes: int = MAX_ADAPTER_BYTES


class AdapterNotFound(KeyError):
    """The CID is not in this node's catalog."""


class AdapterStore:
    """Adapters in a :class:`BlockStore`, with their lifecycle in a :class:`Catalog`."""

    def __init__(self, blocks: BlockStore, catalog: Catalog, base: BaseProfile) -> None:
        self.blocks = blocks
        self.catalog = catalog
        self.base = base

    def publish(self, files: dict[str, bytes], name: str = "") -> str:
        """Check a PEFT LoRA folder against the base, store it, and return its adapter CID.

        Args:
            files: file name → bytes; exactly ``adapter_config.json`` and
                ``adapter_model.safetensors``.
            name: human-readable adapter name for the manifest.

        Raises:
            AdapterRejected: the folder is malformed or does not fit the base (reason says which).
        """
        check_file_names(list(files))
        total = sum(len(b) for b in files.values())
        if total > self.base.max_adapter_bytes:
            raise AdapterRejected(RejectReason.SIZE_LIMIT, f"adapter is {total} bytes; this node accepts up to {self.base.max_adapter_bytes}")
        adapter = self._parse(files)
        refs = [FileRef(name=n, cid=self.blocks.add_bytes(files[n], cid_version=1), size=len(files[n])) for n in ADAPTER_FILES]
        manifest = Manifest(
            version=MANIFEST_VERSION,
            name=name,
            base=BaseRef(name=self.base.name, fingerprint=self.base.fingerprint),
            peft=PeftSummary(**adapter.summary()),
            files=refs,
            created_at=int(time.time()),
        )
        raw = encode_manifest(manifest)
        cid = self.blocks.add_bytes(raw, cid_version=1)
        entry = self.catalog.get(cid)
        if entry is None or entry.state is not AdapterState.REJECTED:
            self.catalog.set_state(cid, AdapterState.READY, name=name, manifest=raw)
        return cid

    def entry(self, cid: str) -> CatalogEntry:
        """The catalog entry of ``cid``.

        Raises:
            AdapterNotFound: never seen.
        """
        e = self.catalog.get(cid)
        if e is None:
            raise AdapterNotFound(cid)
        return e

    def load(self, cid: str) -> LoraAdapter:
        """Read an adapter back from the blockstore, re-verifying everything.

        Runs on the engine's loader threads. A check that fails marks the CID REJECTED with
        its reason; missing blocks or I/O errors do not (they may be transient).

        Raises:
            AdapterRejected: a check failed.
            AdapterNotFound: blocks missing locally.
        """
        try:
            manifest = self._manifest(cid)
            files = {}
            for ref in manifest.files:
                data = self.blocks.cat(ref.cid)
                if len(data) != ref.size:
                    raise AdapterRejected(RejectReason.HASH_MISMATCH, f"{ref.name} is {len(data)} bytes, the manifest says {ref.size}")
                files[ref.name] = data
            check_file_names(list(files))
            return self._parse(files)
        except AdapterRejected as e:
            self.catalog.set_state(cid, AdapterState.REJECTED, reason=e.reason.value, detail=e.detail)
            raise
        except BlockNotFound as e:
            raise AdapterNotFound(f"{cid}: block {e} is not stored on this node") from None
        except ContentError as e:
            err = AdapterRejected(RejectReason.HASH_MISMATCH, str(e))
            self.catalog.set_state(cid, AdapterState.REJECTED, reason=err.reason.value, detail=err.detail)
            raise err from None

    def _manifest(self, cid: str) -> Manifest:
        m = parse_manifest(self.blocks.cat(cid))
        if m.base.fingerprint != self.base.fingerprint:
            raise AdapterRejected(
                RejectReason.BASE_MISMATCH,
                f"adapter was made for base {m.base.name} ({m.base.fingerprint}); this node serves "
                f"{self.base.name} ({self.base.fingerprint})",
            )
        return m

    def manifest(self, cid: str) -> Manifest | None:
        """The parsed manifest recorded in the catalog, or ``None`` if not verified yet."""
        e = self.catalog.get(cid)
        return parse_manifest(e.manifest) if e and e.manifest else None

    def _parse(self, files: dict[str, bytes]) -> LoraAdapter:
        b = self.base
        return load_adapter(files[CONFIG_FILE], files[WEIGHTS_FILE], b.modules, b.max_rank, b.dtype)
