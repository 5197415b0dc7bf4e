"""The publisher's signature over a manifest: EIP-712 typed data, chain-independent.

What is signed, exactly (EIP-712, https://eips.ethereum.org/EIPS/eip-712):

    domain       EIP712Domain(string name,string version)
                 {name: "OpenLoRA Manifest", version: "1"}          (no chainId, no contract:
                                                                     a manifest is valid on any chain)
    primaryType  Manifest(bytes32 contentHash,address publisher,uint256 pricePer1kTokens,
                          uint16 royaltyBps,uint64 createdAt)
    message      contentHash      = keccak256(canonical JSON of the manifest WITHOUT "signature")
                 publisher        = manifest.publisher
                 pricePer1kTokens = int(manifest.price_per_1k_tokens)         (wei)
                 royaltyBps       = manifest.royalty_bps
                 createdAt        = manifest.created_at                       (unix s)
    digest       keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(message))
    signature    secp256k1 over digest, 65 bytes r ‖ s ‖ v, v ∈ {27, 28}, s ≤ n/2 (EIP-2 low-s)

``contentHash`` binds every field (name, base, PEFT summary, file CIDs, …); the money fields are
repeated in clear so a wallet shows them when asking to sign and a contract can check them
without parsing JSON. High-s and v ∉ {27, 28} are refused: otherwise anyone could re-encode a
publisher's signature into a second valid one and mint a second adapter ID for the same content.

Signing and recovery are eth-account's (``encode_typed_data``, ``sign_message``,
``recover_message``). The chain layer's EIP-712 helpers (chain/vouchers.py) bind a chainId and a
verifying contract in their domain, which a manifest must not have, so nothing there fits.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from .manifest import Manifest, UnsignedManifest, encode_manifest
from .reasons import AdapterRejected, RejectReason

DOMAIN = {"name": "OpenLoRA Manifest", "version": "1"}
TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
    "Manifest": [
        {"name": "contentHash", "type": "bytes32"},
        {"name": "publisher", "type": "address"},
        {"name": "pricePer1kTokens", "type": "uint256"},
        {"name": "royaltyBps", "type": "uint16"},
        {"name": "createdAt", "type": "uint64"},
    ],
}
# secp256k1 group order; EIP-2 caps s at n/2
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def content_hash(manifest: UnsignedManifest) -> bytes:
    """keccak256 of the canonical JSON of ``manifest`` without its signature (32 bytes)."""
    unsigned = manifest.unsigned() if isinstance(manifest, Manifest) else manifest
    return keccak(encode_manifest(unsigned))


def manifest_message(manifest: UnsignedManifest) -> SignableMessage:
    """The EIP-712 message a publisher signs for ``manifest`` (signed or not; the signature is ignored)."""
    return encode_typed_data(
        full_message={
            "types": TYPES,
            "primaryType": "Manifest",
            "domain": DOMAIN,
            "message": {
                "contentHash": content_hash(manifest),
                "publisher": manifest.publisher,
                "pricePer1kTokens": manifest.price_wei,
                "royaltyBps": manifest.royalty_bps,
                "createdAt": manifest.created_at,
            },
        }
    )


def sign_manifest(manifest: UnsignedManifest, account: LocalAccount) -> Manifest:
    """Sign ``manifest`` with the publisher's key.

    Raises:
        ValueError: ``account.address`` is not ``manifest.publisher``.
    """
    if account.address != manifest.publisher:
        raise ValueError(f"manifest.publisher is {manifest.publisher} but the signing key is {account.address}")
    signature = bytes(account.sign_message(manifest_message(manifest)).signature)
    return Manifest.model_validate({**manifest.model_dump(), "signature": "0x" + signature.hex()})


def signature_form_error(sig: bytes) -> str | None:
    """Why the chain's ECDSA (OpenZeppelin, EIP-2) would refuse the 65-byte signature ``sig``; ``None`` if it
    would not: v must be 27 or 28 and 0 < r < n, 0 < s <= n/2. eth-account also accepts v in {0, 1, 35+} and
    high s, so every signature that ends up on chain (manifests, vouchers) is checked with this first."""
    if len(sig) != 65:
        return f"signature must be 65 bytes (r, s, v), got {len(sig)}"
    r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    if v not in (27, 28):
        return f"signature v is {v}; it must be 27 or 28"
    if not 0 < r < _N or not 0 < s <= _N // 2:
        return "signature r/s out of range (s must be in the lower half, EIP-2)"
    return None


def recover_signer(manifest: Manifest) -> str:
    """The checksummed address whose key produced ``manifest.signature``.

    Raises:
        AdapterRejected: BAD_SIGNATURE — v not 27/28, r or s out of range, high s, or no key
            recovers.
    """
    sig = bytes.fromhex(manifest.signature[2:])
    if (problem := signature_form_error(sig)) is not None:
        raise AdapterRejected(RejectReason.BAD_SIGNATURE, problem)
    try:
        return Account.recover_message(manifest_message(manifest), signature=sig)
    except Exception as e:  # eth-keys raises several types for an (r, s) with no curve point
        raise AdapterRejected(RejectReason.BAD_SIGNATURE, f"signature does not recover to any key: {e}") from None


def check_signature(manifest: Manifest) -> None:
    """Refuse a manifest not signed by its ``publisher``.

    Raises:
        AdapterRejected: BAD_SIGNATURE (malformed), WRONG_SIGNER (a valid signature by another
            key, or by the publisher over different content).
    """
    signer = recover_signer(manifest)
    if signer != manifest.publisher:
        raise AdapterRejected(
            RejectReason.WRONG_SIGNER,
            f"manifest is signed by {signer}, not by its publisher {manifest.publisher} "
            "(the manifest was changed after signing, or signed with another key)",
        )
