"""The verification pipeline every adapter passes before it touches the engine — published, loaded or fetched.

An adapter from the network is hostile until proven otherwise. The checks run in this order,
cheapest and most trust-establishing first, so no untrusted byte is parsed before the bytes are
known to be the ones the publisher signed, and no weight is read before the manifest and config
say it could be served:

    step                                              reason on failure             where
    0  manifest bytes hash to the adapter CID         HASH_MISMATCH                 blockstore / p2p
    1  manifest: size, JSON, canonical, schema        BAD_MANIFEST                  validate_manifest
    2  signature recovers to manifest.publisher       BAD_SIGNATURE, WRONG_SIGNER   validate_manifest
    3  base fingerprint equals this node's            BASE_MISMATCH                 validate_manifest
    4  file list: exactly the two PEFT files          PICKLE_REFUSED (by name, never
                                                      opened), MISSING_FILE,
                                                      UNEXPECTED_FILE               validate_manifest
    5  declared sizes within the node's limit         SIZE_LIMIT                    validate_manifest
    6  the bytes at hand are the files listed:        UNEXPECTED_FILE / PICKLE_REFUSED,
       every file present, none extra, each          ABSENT_FILE, HASH_MISMATCH    check_upload (publish);
       hashing to its CID                                                          blockstore cat (load)
    7  sizes equal the manifest's                     MANIFEST_MISMATCH             verify_content
    8  PEFT config parses and is supported            BAD_CONFIG, UNSUPPORTED_PEFT  verify_content
    9  targets exist in the base; rank limit          UNKNOWN_MODULE, RANK_LIMIT    verify_content
    10 safetensors header sane (our own parser)       HEADER_TOO_LARGE, TRUNCATED_FILE,
                                                      BAD_SAFETENSORS, BAD_DTYPE,
                                                      BAD_OFFSETS                   verify_content
    11 tensor names / shapes / dtypes = what the      MISSING_WEIGHTS, UNKNOWN_MODULE,
       targeted base modules require (on the header)  SHAPE_MISMATCH, BAD_DTYPE     verify_content
    12 no NaN / Inf                                   NON_FINITE                    verify_content
    13 the manifest's PEFT summary = the files'       MANIFEST_MISMATCH             verify_content

Steps 1–5 need only the manifest (a few KB), so the p2p layer calls :meth:`Verifier.validate_manifest`
on an announcement before fetching a single weight byte. Step 6 differs by path: a publish
recomputes each file's CID from the uploaded bytes; a load or fetch gets bytes from a DAG whose
every block was re-hashed against its CID (content.reader).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


from .manifest import Manifest, parse_manifest
from .package import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE, check_file_names, file_ref, peft_summary
from .peft_format import LoraAdapter, load_adapter
from .reasons import AdapterRejected, RejectReason
from .safetensors_header import parse_header
from .signing import check_signature

MAX_ADAPTER_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class BaseProfile:
    """What an adapter must fit: the resident base as the adapter checks see it.

    Attributes:
        name: base model name.
        fingerprint: ``"sha256:<hex>"`` (``engine.base``).
        modules: adaptable module name → ``(in_features, out_features)``.
        max_rank: largest servable LoRA rank.
        max_adapter_bytes: largest adapter (sum of file sizes) accepted, bytes.
    """

    name: str
    fingerprint: str
    modules: dict[str, tuple[int, int]]
    max_rank: int
    max_adapter_bytes: int = MAX_ADAPTER_BYTES


class Verifier:
    """Runs the pipeline (module docstring) against one base.

    Args:
        base: the node's base model profile and limits.
    """

    def __init__(self, base: BaseProfile) -> None:
        self.base = base

    def validate_manifest(self, raw: bytes) -> Manifest:
        """Steps 1–5: schema, signature, base fingerprint, file list, declared size.

        The hook the p2p layer calls on every announced or fetched manifest; records nothing.

        Raises:
            AdapterRejected: BAD_MANIFEST, BAD_SIGNATURE, WRONG_SIGNER, BASE_MISMATCH,
                PICKLE_REFUSED, MISSING_FILE, UNEXPECTED_FILE, SIZE_LIMIT.
        """
        m = parse_manifest(raw)
        check_signature(m)
        b = self.base
        if m.base.fingerprint != b.fingerprint:
            raise AdapterRejected(
                RejectReason.BASE_MISMATCH,
                f"adapter was made for base {m.base.name} ({m.base.fingerprint}); this node serves {b.name} ({b.fingerprint})",
            )
        check_file_names([f.name for f in m.files])
        declared = sum(f.size for f in m.files)
        if declared > b.max_adapter_bytes:
            raise AdapterRejected(RejectReason.SIZE_LIMIT, f"adapter is {declared} bytes; this node accepts up to {b.max_adapter_bytes}")
        return m

    @staticmethod
    def check_upload(manifest: Manifest, files: Mapping[str, bytes]) -> None:
        """Step 6 on the publish path: the uploaded files are exactly the ones the manifest lists.

        A failure here is about the upload, not about the adapter the manifest names.

        Raises:
            AdapterRejected: PICKLE_REFUSED / UNEXPECTED_FILE (a file the manifest does not
                list), ABSENT_FILE (a listed file not sent), HASH_MISMATCH (bytes whose CID is
                not the listed one).
        """
        listed = {f.name for f in manifest.files}
        extra = sorted(set(files) - listed)
        pickles = [n for n in extra if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise AdapterRejected(RejectReason.PICKLE_REFUSED, f"{', '.join(pickles)}: pickle files are refused, never unpickled")
        if extra:
            raise AdapterRejected(RejectReason.UNEXPECTED_FILE, f"uploaded file(s) {', '.join(extra)} are not in the manifest")
        for ref in manifest.files:
            if ref.name not in files:
                raise AdapterRejected(RejectReason.ABSENT_FILE, f"the manifest lists {ref.name} ({ref.cid}) but it was not sent")
            got = file_ref(ref.name, files[ref.name]).cid
            if got != ref.cid:
                raise AdapterRejected(
                    RejectReason.HASH_MISMATCH, f"{ref.name} hashes to {got}, but the manifest lists {ref.cid}"
                )

    def verify_content(self, manifest: Manifest, files: Mapping[str, bytes]) -> LoraAdapter:
        """Steps 7–13 on files already bound to the manifest's CIDs; returns the parsed adapter.

        Args:
            manifest: a manifest that passed :meth:`validate_manifest`.
            files: name → bytes for every file it lists, each known to hash to its CID.

        Raises:
            AdapterRejected: MANIFEST_MISMATCH, BAD_CONFIG, UNSUPPORTED_PEFT, UNKNOWN_MODULE,
                RANK_LIMIT, HEADER_TOO_LARGE, TRUNCATED_FILE, BAD_SAFETENSORS, BAD_DTYPE,
                BAD_OFFSETS, MISSING_WEIGHTS, SHAPE_MISMATCH, NON_FINITE.
        """
        for ref in manifest.files:
            if len(files[ref.name]) != ref.size:
                raise AdapterRejected(
                    RejectReason.MANIFEST_MISMATCH, f"{ref.name} ({ref.cid}) is {len(files[ref.name])} bytes; the manifest says {ref.size}"
                )
        b = self.base
        config, weights = files[CONFIG_FILE], files[WEIGHTS_FILE]
        adapter = load_adapter(config, weights, b.modules, b.max_rank)
        actual = peft_summary(config, parse_header(weights, WEIGHTS_FILE))
        if actual != manifest.peft:
            field = next(k for k, v in actual.model_dump().items() if getattr(manifest.peft, k) != v)
            raise AdapterRejected(
                RejectReason.MANIFEST_MISMATCH,
                f"manifest peft.{field} is {getattr(manifest.peft, field)!r} but the files say {getattr(actual, field)!r}",
            )
        return adapter
