// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title AdapterRegistry: who published a LoRA adapter, what it costs, what the publisher earns.
/// @notice An adapter is addressed by its publisher and its manifest CID (a string such as "bafkrei..."). Its on-chain
///         key is `adapterId = keccak256(abi.encodePacked(publisher, cid))`, so anyone who holds the signed manifest
///         (which names the publisher and hashes to the CID) can compute it, and `AdapterRegistered` carries the CID
///         string so anyone can map an id (and every `AdapterUsage` event of PaymentChannels) back to the CID.
///         Callers pass the canonical CID string (CIDv1: lowercase base32; CIDv0: base58btc), because two
///         spellings of one CID give two ids.
/// @dev `msg.sender` becomes the publisher and is part of the key: whoever registers a CID first (say after seeing
///      it on gossip) only registers (themselves, CID), which no node uses, since a node looks the adapter up
///      under the publisher its signed manifest names. The real publisher can always register its own.
contract AdapterRegistry {
    /// @notice Royalties are in basis points of each call's amount: 10_000 gives the publisher everything.
    uint16 public constant MAX_ROYALTY_BPS = 10_000;
    /// @notice Longest accepted CID string in bytes (a CIDv1 sha2-256 in base32 is 59).
    uint256 public constant MAX_CID_LENGTH = 128;

    struct Adapter {
        address publisher; // zero while unregistered
        uint16 royaltyBps;
        uint64 revokedAt; // block timestamp of revocation, 0 while active
        uint256 pricePer1kTokens; // wei per 1000 tokens, the publisher's price (a node adds its fee on top)
        string cid;
    }

    mapping(bytes32 adapterId => Adapter) private _adapters;
    bytes32[] private _ids;

    event AdapterRegistered(
        bytes32 indexed adapterId, address indexed publisher, string cid, uint256 pricePer1kTokens, uint16 royaltyBps
    );
    event AdapterRevoked(bytes32 indexed adapterId, address indexed publisher);

    /// @notice The CID string is empty or longer than MAX_CID_LENGTH bytes.
    error InvalidCid(uint256 length);
    /// @notice royaltyBps is above MAX_ROYALTY_BPS.
    error RoyaltyTooHigh(uint16 royaltyBps);
    /// @notice `publisher` already registered this CID.
    error AlreadyRegistered(bytes32 adapterId, address publisher);
    /// @notice No adapter is registered under this id.
    error UnknownAdapter(bytes32 adapterId);
    /// @notice Only the adapter's publisher may do this.
    error NotPublisher(bytes32 adapterId, address caller);
    /// @notice The adapter is already revoked.
    error AlreadyRevoked(bytes32 adapterId);
    /// @notice A page of ids was asked beyond the end of the list.
    error IndexOutOfRange(uint256 offset, uint256 count);

    /// @notice The on-chain key of `publisher`'s adapter `cid`: keccak256 of the 20 address bytes then the CID bytes.
    function adapterIdOf(address publisher, string calldata cid) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(publisher, cid));
    }

    /// @notice Registers the caller's adapter with manifest CID `cid` (id `adapterIdOf(msg.sender, cid)`).
    /// @param pricePer1kTokens the publisher's price in wei per 1000 tokens (informs quotes).
    /// @param royaltyBps the publisher's share of every settled amount, in basis points.
    function register(string calldata cid, uint256 pricePer1kTokens, uint16 royaltyBps)
        external
        returns (bytes32 adapterId)
    {
        uint256 length = bytes(cid).length;
        if (length == 0 || length > MAX_CID_LENGTH) revert InvalidCid(length);
        if (royaltyBps > MAX_ROYALTY_BPS) revert RoyaltyTooHigh(royaltyBps);
        adapterId = adapterIdOf(msg.sender, cid);
        Adapter storage a = _adapters[adapterId];
        if (a.publisher != address(0)) revert AlreadyRegistered(adapterId, a.publisher);
        a.publisher = msg.sender;
        a.royaltyBps = royaltyBps;
        a.pricePer1kTokens = pricePer1kTokens;
        a.cid = cid;
        _ids.push(adapterId);
        emit AdapterRegistered(adapterId, msg.sender, cid, pricePer1kTokens, royaltyBps);
    }

    /// @notice Marks the adapter revoked: nodes stop serving new calls for it. Calls served before are still
    ///         settled (see PaymentChannels.settle); revocation cannot be undone.
    function revoke(bytes32 adapterId) external {
        Adapter storage a = _adapters[adapterId];
        if (a.publisher == address(0)) revert UnknownAdapter(adapterId);
        if (a.publisher != msg.sender) revert NotPublisher(adapterId, msg.sender);
        if (a.revokedAt != 0) revert AlreadyRevoked(adapterId);
        a.revokedAt = uint64(block.timestamp);
        emit AdapterRevoked(adapterId, msg.sender);
    }

    /// @notice Everything known about a registered adapter; reverts UnknownAdapter otherwise.
    function adapter(bytes32 adapterId)
        external
        view
        returns (address publisher, uint256 pricePer1kTokens, uint16 royaltyBps, uint64 revokedAt, string memory cid)
    {
        Adapter storage a = _adapters[adapterId];
        if (a.publisher == address(0)) revert UnknownAdapter(adapterId);
        return (a.publisher, a.pricePer1kTokens, a.royaltyBps, a.revokedAt, a.cid);
    }

    /// @notice Publisher and royalty in one storage read, for settlement; publisher is zero when unknown.
    function terms(bytes32 adapterId) external view returns (address publisher, uint16 royaltyBps) {
        Adapter storage a = _adapters[adapterId];
        return (a.publisher, a.royaltyBps);
    }

    /// @notice Number of adapters ever registered (revoked ones included).
    function adapterCount() external view returns (uint256) {
        return _ids.length;
    }

    /// @notice Up to `limit` adapter ids in registration order, starting at `offset` (offset == count gives none).
    function adapterIds(uint256 offset, uint256 limit) external view returns (bytes32[] memory ids) {
        uint256 count = _ids.length;
        if (offset > count) revert IndexOutOfRange(offset, count);
        uint256 end = limit > count - offset ? count : offset + limit;
        ids = new bytes32[](end - offset);
        for (uint256 i = offset; i < end; ++i) {
            ids[i - offset] = _ids[i];
        }
    }
}
