"""Typed errors of the chain layer, in two families.

    ChainError                      the chain or the ledger cannot do what was asked
    ├── ChainUnreachable            the chain's JSON-RPC endpoint does not answer (refused, reset, timed out)
    ├── ContractRevert              a contract call reverted; carries the Solidity custom error's name and args
    ├── SettlementError             a settlement batch could not be built, sent or reconciled
    ├── LedgerError                 the receipts ledger refuses an operation (wrong state, other chain)
    ├── InvalidReceipt              a client rejects a node receipt (bad signature, overcharge) or channel account
    │   └── UntrustedQuote          a client rejects a quote (price or tokens the chain's terms do not give)
    ├── UntrustedContracts          a client refuses contracts it did not pin, or whose code is not openlora's
    └── PaymentError                a call is not paid for: the node must refuse it and stream no tokens
        ├── PaymentRequired         the call costs something and came without a voucher
        ├── AdapterNotPayable       the adapter is not registered on chain
        │   └── AdapterRevoked      its publisher revoked it
        ├── TermsMismatch           the registered price or royalty differ from the signed manifest's
        ├── InvalidVoucher          malformed voucher, or the signature is not the client's
        ├── WrongNode               the voucher pays another node
        ├── WrongEpoch              the voucher is for another epoch of the channel
        ├── ChannelClosing          the client asked to withdraw: no new calls on this channel
        ├── StaleVoucher            cumulative amount not above the latest one accepted (replays land here)
        ├── InsufficientAuthorization   the voucher's unused authorisation is below the call's max cost
        ├── InsufficientDeposit     the channel's deposit does not cover what the node would claim
        └── CreditLimitReached      the chain is unreachable and the client's unconfirmed calls hit the credit limit

Every ``PaymentError`` has ``status``, the name of the gRPC status code the API layer should answer with,
and a message that says what the client has to do.
"""

from __future__ import annotations


class ChainError(RuntimeError):
    """Base of every error raised by ``openlora.chain``."""


class ChainUnreachable(ChainError):
    """The chain's JSON-RPC endpoint does not answer (connection refused or reset, timeout): a transient fault,
    unlike a revert or a refusal. Payments run on credit meanwhile (``NodePayments``); settlement retries."""


class ContractRevert(ChainError):
    """A contract call or transaction reverted.

    Attributes:
        error: the Solidity custom error's name (e.g. ``"NothingToRedeem"``), ``"Error"`` for a
            ``require`` message, ``"Panic"`` for an assertion/overflow, ``""`` when the revert carried no data.
        args: the decoded error arguments, in ABI order (ints for uint, checksummed str for address,
            bytes for bytes32).
    """

    def __init__(self, error: str, args: tuple = (), detail: str = "") -> None:
        self.error = error
        self.args_ = tuple(args)
        shown = f"{error}({', '.join(map(_show, self.args_))})" if error else "revert without data"
        super().__init__(f"contract reverted: {shown}" + (f" ({detail})" if detail else ""))


def _show(value: object) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else str(value)


class SettlementError(ChainError):
    """Settlement could not proceed (e.g. the ledger disagrees with the chain); the message says why."""


class LedgerError(ChainError):
    """The ledger refuses: the receipt is not in the state the operation needs, or the file belongs to another
    node, chain or deployment."""


class InvalidReceipt(ChainError):
    """A node receipt is not signed by the node, is for another call, or charges more than authorised; or the
    node's account of a channel is not backed by the client's own voucher."""


class UntrustedQuote(InvalidReceipt):
    """The client rejects a node's quote: its price is not the registry's price plus an acceptable node fee,
    or it counts more tokens than the request can bill. Nothing was signed."""


class UntrustedContracts(ChainError):
    """The client refuses to deposit or sign for the contracts a node names: another chain or address than the
    pinned deployment, or code that is not the openlora contracts'. Nothing was sent or signed."""


class PaymentError(ChainError):
    """A call is not (sufficiently) paid for. ``status`` names the gRPC code to answer with."""

    status = "FAILED_PRECONDITION"


class PaymentRequired(PaymentError):
    """The call's max cost is above zero and the request carries no voucher."""


class AdapterNotPayable(PaymentError):
    """The adapter is not registered on chain, or its publisher revoked it."""

    status = "NOT_FOUND"


class AdapterRevoked(AdapterNotPayable):
    """The adapter's publisher revoked it: nodes refuse new calls to it."""

    status = "FAILED_PRECONDITION"


class TermsMismatch(PaymentError):
    """The adapter's on-chain registration by its manifest's publisher is at another price or royalty than the
    signed manifest asks (a registration by anybody else is another adapter id and never looked up)."""


class InvalidVoucher(PaymentError):
    """The voucher is malformed, or its signature does not recover to the client it names."""

    status = "PERMISSION_DENIED"


class WrongNode(PaymentError):
    """The voucher names another node."""

    status = "PERMISSION_DENIED"


class WrongEpoch(PaymentError):
    """The voucher is for an epoch of the channel other than the current one."""


class ChannelClosing(PaymentError):
    """The client requested a withdrawal from the channel; it must deposit on a new epoch to call again."""


class StaleVoucher(PaymentError):
    """The voucher's cumulative amount is not above the latest one the node accepted for the channel."""


class InsufficientAuthorization(PaymentError):
    """The voucher authorises less than what the node already committed plus this call's max cost."""


class InsufficientDeposit(PaymentError):
    """The channel's deposit does not cover what the node committed plus this call's max cost."""


class CreditLimitReached(PaymentError):
    """The chain is unreachable, so the channel cannot be checked, and this client's calls accepted since it
    was last checked would exceed the node's credit limit (``chain.credit_limit_wei``)."""

    status = "UNAVAILABLE"
