// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title RefusingForwarder: test helper, an account that refuses ETH.
/// @notice Forwards calls (with value) to any contract, so it can be a client or a publisher, but has no receive or
///         fallback function: every ETH transfer to it fails. Tests use it to reach PaymentChannels' TransferFailed.
///         Not deployed by the node.
contract RefusingForwarder {
    /// @notice Calls `target` with `data` and msg.value; bubbles up the callee's revert data unchanged.
    function forward(address target, bytes calldata data) external payable returns (bytes memory result) {
        bool ok;
        (ok, result) = target.call{value: msg.value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
    }
}
