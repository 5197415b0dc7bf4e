"""The node's peer identity: a secp256k1 key kept in the data dir, so the peer ID survives restarts.

    <data dir>/p2p_identity.key    libp2p protobuf-serialized private key, mode 0600
                                   (libp2p.identity_utils writes and reads it)

secp256k1 because libp2p's default RSA keys take up to a second to generate and sign slowly;
the peer ID of a secp256k1 key embeds the public key (``16Uiu2…``), so gossip signatures are
checked without shipping the key.
"""

from __future__ import annotations

from pathlib import Path

from libp2p.crypto.keys import KeyPair
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.identity_utils import load_identity, save_identity

from .errors import IdentityError

IDENTITY_FILE = "p2p_identity.key"


def load_or_create_identity(data_dir: str | Path) -> KeyPair:
    """The key pair stored in ``data_dir``, created (secp256k1) on first use.

    Args:
        data_dir: the node's data folder (created if absent).

    Raises:
        IdentityError: the key file exists but does not hold a libp2p private key.
        OSError: the folder or file cannot be written or read.
    """
    path = Path(data_dir) / IDENTITY_FILE
    if path.exists():
        try:
            return load_identity(path)
        except ValueError as e:
            raise IdentityError(
                f"{path} is not a libp2p private key ({e}); restore it from a backup, or delete "
                f"it to create a new identity (the node's peer ID will change)"
            ) from None
    key_pair = create_new_key_pair()
    save_identity(key_pair, path)
    return key_pair
