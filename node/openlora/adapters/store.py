"""Publishing adapters into the blockstore and loading them back, through the verification pipeline each time.

    publish:  signed manifest + files ─► remembered verdict? ─► validate_manifest (steps 1–5)
              ─► the upload is the listed files (6) ─► content checks (7–13)
              ─► file blocks + manifest block stored ─► catalog READY ─► adapter CID
    load:     adapter CID ─► manifest block (hash re-checked) ─► validate_manifest
              ─► each file by CID (every block re-checked) ─► content checks ─► LoraAdapter
                                                                              (+ the files, for vLLM)

Nothing reaches the engine without passing the same checks at load time that it passed at
publish time: the blockstore may have been written by another process, or by a peer.

What is remembered (catalog, by adapter CID) and what is not:

    a verdict on the content (bad signature, DoRA, NaN, …)    REJECTED, sticky: refused at once
    the copy this node holds is corrupt or absent at load     REJECTED, retryable: GetAdapter says
                                                              why; publishing it again heals it
    node policy (base, rank, size)                            REJECTED, retryable
    a bad upload (files that are not the listed ones)         not recorded: it says nothing about
                                                              the adapter the manifest names, and
                                                              recording it would let anyone who
                                                              saw a manifest poison its CID here
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from ..content.blockstore import BlockStore
from ..content.cid import RAW, cid_text, make_cid
from ..content.errors import BlockHashMismatch, BlockNotFound, InvalidDag, LimitExceeded, SizeMismatch
from .catalog import AdapterState, Catalog, CatalogEntry
from .manifest import FileRef, Manifest, parse_manifest
from .package import CONFIG_FILE, read_config
from .peft_format import LoraAdapter, config_features
from .reasons import AdapterRejected, RejectReason
from .verify import BaseProfile, Verifier

__all__ = ["AdapterNotFound", "AdapterStore", "BaseProfile", "manifest_cid"]


class AdapterNotFound(KeyError):
    """The CID is not in this node's catalog."""


def manifest_cid(raw: bytes) -> str:
    """The adapter ID of manifest bytes: CIDv1, raw codec, sha2-256 (what ``ipfs add --cid-version=1`` prints)."""
    return cid_text(make_cid(raw, RAW))


class AdapterStore:
    """Adapters in a :class:`BlockStore`, with their lifecycle in a :class:`Catalog`.

    Args:
        blocks: the node's block store.
        catalog: the node's adapter catalog.
        base: the resident base model and limits every adapter is checked against.
    """

    def __init__(self, blocks: BlockStore, catalog: Catalog, base: BaseProfile) -> None:
        self.blocks = blocks
        self.catalog = catalog
        self.verifier = Verifier(base)

    @property
    def base(self) -> BaseProfile:
        """The base profile adapters are checked against."""
        return self.verifier.base

    def validate_manifest(self, raw: bytes) -> Manifest:
        """Schema, signature, base, file list and declared size of a manifest; records nothing.

        The ``validate_manifest(raw) -> Manifest`` hook for the p2p layer (verify.py, steps 1–5).

        Raises:
            AdapterRejected: see :meth:`Verifier.validate_manifest`.
        """
        return self.verifier.validate_manifest(raw)

    def check_manifest(self, raw: bytes) -> tuple[str, Manifest]:
        """Steps 1–5 for a manifest offered to this node, remembering a verdict under its CID.

        Returns:
            ``(adapter CID, manifest)``.

        Raises:
            AdapterRejected: a remembered sticky verdict, or a failing check (now recorded).
        """
        cid = manifest_cid(raw)
        self._refuse_if_judged(cid)
        with self._recording(cid):
            return cid, self.verifier.validate_manifest(raw)

    def publish(self, manifest_raw: bytes, files: Mapping[str, bytes]) -> str:
        """Verify a signed adapter against its files and the base, store it, return its adapter CID.

        Args:
            manifest_raw: the canonical signed manifest (manifest.py).
            files: file name → bytes, exactly the files the manifest lists.

        Raises:
            AdapterRejected: the manifest, the upload or the adapter fails a check (reason
                says which; module docstring says which are remembered).
        """
        cid, manifest = self.check_manifest(manifest_raw)
        self.verifier.check_upload(manifest, files)
        with self._recording(cid):
            self.verifier.verify_content(manifest, files)
        for ref in manifest.files:
            self.blocks.add_bytes(files[ref.name], cid_version=1)
        self.blocks.add_bytes(manifest_raw, cid_version=1)
        self.catalog.set_state(cid, AdapterState.READY, name=manifest.name, manifest=manifest_raw)
        return cid

    def learn(self, cid: str, manifest_raw: bytes, name: str) -> bool:
        """Record an adapter a peer announced (manifest already validated by the swarm) as
        AVAILABLE, unless this node already knows it; past ``catalog.MAX_ANNOUNCED`` announced-only
        entries the least recently learned are forgotten. Returns whether it was new."""
        if self.catalog.get(cid) is not None:
            return False
        self.catalog.set_state(cid, AdapterState.AVAILABLE, name=name, manifest=manifest_raw)
        self.catalog.forget_announced()  # bounded: a peer announcing thousands cannot grow it without end
        return True

    def admit_fetched(self, cid: str) -> LoraAdapter:
        """Verify an adapter whose blocks were just fetched from peers and mark it READY.

        Returns:
            The parsed adapter (the engine's host cache can take it directly).

        An adapter published here while it was being fetched is READY already and stays READY while its
        blocks are checked again.

        Raises:
            AdapterRejected: any check failed (recorded under ``cid``).
        """
        self.catalog.set_state(cid, AdapterState.VERIFYING, unless=frozenset({AdapterState.READY}))
        adapter = self.load(cid)
        raw = self.blocks.get(cid)
        self.catalog.set_state(cid, AdapterState.READY, name=parse_manifest(raw).name, manifest=raw)
        return adapter

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

        Runs on the engine's loader threads. Every failure is recorded under ``cid`` (a corrupt
        or absent block as a retryable one); an I/O error propagates unrecorded.

        Raises:
            AdapterRejected: a check failed, or blocks are corrupt (HASH_MISMATCH) or absent
                (ABSENT_FILE).
        """
        return self.load_verified(cid)[0]

    def load_verified(self, cid: str) -> tuple[LoraAdapter, dict[str, bytes]]:
        """:meth:`load`, with the verified PEFT files (name → bytes) beside the parsed adapter, for
        an engine that reads adapters from files (vLLM).

        Raises:
            AdapterRejected: as :meth:`load`.
        """
        with self._recording(cid):
            try:
                raw = self.blocks.get(cid)
            except BlockNotFound:
                raise AdapterRejected(RejectReason.ABSENT_FILE, f"the manifest block {cid} is not stored on this node") from None
            except BlockHashMismatch as e:
                raise AdapterRejected(RejectReason.HASH_MISMATCH, str(e)) from None
            manifest = self.verifier.validate_manifest(raw)
            files = {ref.name: self._read(ref) for ref in manifest.files}
            return self.verifier.verify_content(manifest, files), files

    def manifest(self, cid: str) -> Manifest | None:
        """The parsed manifest recorded in the catalog, or ``None`` if not verified yet."""
        e = self.catalog.get(cid)
        return parse_manifest(e.manifest) if e and e.manifest else None

    def features(self, cid: str) -> tuple[str, ...] | None:
        """The PEFT features beyond plain LoRA a verified adapter needs (``peft_format.config_features``), read
        from its config alone; ``None`` when this node has not verified it or does not hold its config."""
        manifest = self.manifest(cid)
        ref = next((f for f in manifest.files if f.name == CONFIG_FILE), None) if manifest else None
        try:
            return config_features(read_config(self._read(ref))) if ref else None
        except AdapterRejected:
            return None

    def _read(self, ref: FileRef) -> bytes:
        try:
            return self.blocks.cat(ref.cid, ref.size)  # the root must declare the manifest's size: no more is read
        except BlockNotFound as e:
            raise AdapterRejected(RejectReason.ABSENT_FILE, f"{ref.name} ({ref.cid}) is not stored on this node: {e}") from None
        except BlockHashMismatch as e:
            raise AdapterRejected(RejectReason.HASH_MISMATCH, f"{ref.name} ({ref.cid}): {e}") from None
        except LimitExceeded as e:
            raise AdapterRejected(RejectReason.SIZE_LIMIT, f"{ref.name} ({ref.cid}): {e}") from None
        except SizeMismatch as e:
            raise AdapterRejected(RejectReason.MANIFEST_MISMATCH, f"{ref.name}: {e} (the size the manifest lists)") from None
        except InvalidDag as e:
            raise AdapterRejected(
                RejectReason.BAD_MANIFEST, f"the manifest lists {ref.name} as {ref.cid}, which is not a UnixFS file: {e}"
            ) from None

    def _refuse_if_judged(self, cid: str) -> None:
        e = self.catalog.get(cid)
        if e is not None and e.state is AdapterState.REJECTED and not RejectReason(e.reason).retryable:
            raise AdapterRejected(RejectReason(e.reason), e.detail)

    @contextmanager
    def _recording(self, cid: str) -> Iterator[None]:
        try:
            yield
        except AdapterRejected as e:
            self.catalog.set_state(cid, AdapterState.REJECTED, reason=e.reason.value, detail=e.detail)
            raise
