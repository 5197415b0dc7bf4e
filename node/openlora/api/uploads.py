"""A PublishAdapter upload, streamed to files on disk and bounded by the signed manifest.

    header (signed manifest, checked) ──► Upload(manifest): a folder of its own under <blocks>/uploads/
    chunk (path, data) ──► appended to that path's file; a listed file may not pass the size the manifest
                           lists, the upload as a whole not the manifest's total (unlisted files count too)
    end ──► files() read back for verification ──► close(): the folder is removed, whatever happened

A chunk is held in RAM only while it is written (gRPC bounds it to 8 MiB); the files are read back
once, for verification, and the node runs at most ``MAX_CONCURRENT_UPLOADS`` uploads at a time
(``servicer.py``), so uploads take bounded RAM however many clients send at once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..adapters.manifest import Manifest
from ..adapters.reasons import AdapterRejected, RejectReason
from ..content.blockstore import _FULL as DISK_FULL_ERRNOS
from ..content.errors import StoreFull

MAX_CONCURRENT_UPLOADS = 4


class Upload:
    """The files of one upload, on disk. Not thread-safe: one upload is written by one call.

    Args:
        root: folder the upload's own folder is made in (created if absent).
        manifest: the checked manifest: which files, and how many bytes each may hold.

    Raises:
        OSError: the folder cannot be made.
    """

    def __init__(self, root: Path, manifest: Manifest) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(dir=root))
        self._listed = {f.name: f.size for f in manifest.files}
        self._limit = sum(self._listed.values())
        self._written: dict[str, int] = {}
        self._open: dict[str, BinaryIO] = {}

    def write(self, name: str, data: bytes) -> None:
        """Append ``data`` to file ``name`` (a plain file name, checked by the caller).

        Raises:
            AdapterRejected: HASH_MISMATCH: ``name`` would pass the size the manifest lists for it (those
                bytes cannot be the listed file); SIZE_LIMIT: the upload would pass the manifest's total.
            StoreFull: the disk refused the bytes (full, quota, file size limit).
        """
        size = self._written.get(name, 0) + len(data)
        listed = self._listed.get(name)
        if listed is not None and size > listed:
            raise AdapterRejected(  # more bytes than listed can never hash to the listed CID
                RejectReason.HASH_MISMATCH, f"{name} is over the {listed} bytes the manifest lists for it"
            )
        if sum(self._written.values()) + len(data) > self._limit:
            raise AdapterRejected(RejectReason.SIZE_LIMIT, f"upload exceeds the {self._limit} bytes the manifest lists")
        try:
            f = self._open.get(name)
            if f is None:
                f = self._open[name] = open(self._dir / name, "wb")  # noqa: SIM115 (closed in close())
            f.write(data)
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:
                raise StoreFull(
                    f"disk full: cannot store the upload of {name} under {self._dir.parent}: {e.strerror}; "
                    "free space on that disk (or raise its quota or file size limit) and retry"
                ) from e
            raise
        self._written[name] = size

    def files(self) -> dict[str, bytes]:
        """Every file written, name → bytes (read back for verification).

        Raises:
            StoreFull: the last buffered bytes could not be written.
        """
        self._close_files()
        return {name: (self._dir / name).read_bytes() for name in self._written}

    def close(self) -> None:
        """Remove the upload's folder and everything in it."""
        try:
            self._close_files()
        except StoreFull:
            pass  # the files go anyway
        shutil.rmtree(self._dir, ignore_errors=True)

    def _close_files(self) -> None:
        error: OSError | None = None
        for f in self._open.values():
            try:
                f.close()
            except OSError as e:  # close the others all the same
                error = error or e
        self._open.clear()
        if error is not None and error.errno in DISK_FULL_ERRNOS:
            raise StoreFull(f"disk full: cannot store the upload under {self._dir.parent}: {error.strerror}") from error
        if error is not None:
            raise error
