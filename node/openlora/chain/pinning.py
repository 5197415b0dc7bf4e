"""Which contracts a client trusts with its money, checked before any deposit or voucher.

    pinned     a Deployment (chain id, AdapterRegistry, PaymentChannels) from a deployment file
               (``openlora-node chain deploy --out``) or flags; when given, the node must name exactly it
    code       at both addresses the chain must hold the code of our build artifacts (contracts/artifacts),
               compared byte for byte outside the immutables the constructor fills in (their ranges are
               ``immutableReferences`` in the artifact), and PaymentChannels.registry must be that registry

A node cannot point a client at a contract that keeps deposits (any other code is refused), nor, with a pinned
deployment, at another deployment of ours (whose vouchers, receipts and attribution the client never agreed to).
Without a pinned deployment the client still refuses code that is not openlora's: deposits then sit in a real
PaymentChannels, from which the client can always withdraw what no voucher of its own authorised.
"""

from __future__ import annotations

from .contracts import AdapterRegistry, Deployment, PaymentChannels, load_artifact
from .errors import UntrustedContracts


def code_is(code: bytes, name: str) -> bool:
    """Whether deployed ``code`` is contract ``name``'s build artifact, ignoring its immutables' bytes."""
    artifact = load_artifact(name)
    expected = bytearray(bytes.fromhex(artifact["deployedBytecode"][2:]))
    got = bytearray(code)
    if len(got) != len(expected):
        return False
    for ref in artifact.get("immutableReferences", []):
        start, end = ref["start"], ref["start"] + ref["length"]
        expected[start:end] = got[start:end] = bytes(ref["length"])
    return got == expected


def check_contracts(registry: AdapterRegistry, channels: PaymentChannels, pinned: Deployment | None) -> None:
    """Raises unless ``registry`` and ``channels`` (as a node named them, on the chain they are read from) are
    contracts this client trusts (module doc).

    Raises:
        UntrustedContracts: another chain or address than ``pinned``, code that is not ours, or a
            PaymentChannels bound to another registry; the message names what differs.
        ChainError: the chain cannot be reached.
    """
    chain = channels.chain
    named = Deployment(chain.chain_id, registry.address, channels.address)
    if pinned is not None and pinned != named:
        raise UntrustedContracts(
            f"the node is paid through {named}, but this client trusts only {pinned}; "
            "pass the node's deployment file only if you trust it"
        )
    for contract, name in ((registry, "AdapterRegistry"), (channels, "PaymentChannels")):
        if not code_is(bytes(chain.w3.eth.get_code(contract.address)), name):
            raise UntrustedContracts(
                f"{contract.address} on chain {chain.chain_id} does not hold the openlora {name} code; "
                "refusing to deposit into it or sign vouchers for it"
            )
    bound = channels.contract.functions.registry().call()
    if bound != registry.address:
        raise UntrustedContracts(f"PaymentChannels {channels.address} settles against registry {bound}, not {registry.address}")
