"""Who may read a channel's ledger in a quote: only its client, by a fresh signature.

    client ──GetQuote(client, issued_at, EIP-191 signature over "openlora GetQuote / client / issued_at")──► node
    node:  signature in the chain's form (v 27/28, low s) ─► recovers to ``client`` ─► |now − issued_at| ≤ window
           ─► ChannelState with the ledger's latest vouchers and charged totals
           otherwise ─► only what the chain shows anyone (epoch, deposited, redeemed, withdraw_at)

The signature is a bearer token for ``WINDOW_S`` seconds: whoever holds it (the node it was sent to) can
read the same client's channel totals elsewhere in that time, nothing more; no funds move on it.
"""

from __future__ import annotations

import time

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from ..adapters.signing import signature_form_error

WINDOW_S = 120  # seconds a quote signature stays valid either side of the node's clock


def _message(client: str, issued_at: int):
    return encode_defunct(text=f"openlora GetQuote\nclient: {client}\nissued_at: {issued_at}")


def sign_quote_auth(account: LocalAccount, issued_at: int | None = None) -> tuple[int, bytes]:
    """``(issued_at, signature)`` proving ``account`` asks for its own channel (issued_at: unix seconds)."""
    issued_at = int(time.time()) if issued_at is None else issued_at
    return issued_at, bytes(account.sign_message(_message(account.address, issued_at)).signature)


def quote_auth_error(client: str, issued_at: int, signature: bytes, now: float | None = None) -> str | None:
    """Why the signature does not show that ``client`` asked (``None``: it does)."""
    if not signature:
        return "no client signature"
    bad = signature_form_error(signature)
    if bad:
        return bad
    now = time.time() if now is None else now
    if abs(now - issued_at) > WINDOW_S:
        return f"issued_at is {int(now - issued_at)} s from the node's clock (allowed: ±{WINDOW_S} s)"
    try:
        signer = Account.recover_message(_message(client, issued_at), signature=signature)
    except Exception:  # malformed signature bytes: eth-keys raises its own types
        return "the signature recovers no key"
    return None if signer == client else f"signed by {signer}, not {client}"
