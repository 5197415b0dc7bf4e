// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {AdapterRegistry} from "./AdapterRegistry.sol";

/// @title PaymentChannels: per-call payment for LoRA inference, settled in batches that attribute usage per adapter.
/// @notice One unidirectional channel per (client, node), in native ETH:
///
///   client ──deposit(node)──► escrow ──► node serves calls, each carrying an EIP-712 Voucher that authorises a
///                                        cumulative amount on the channel and, for the call's adapter at the
///                                        call's price, a cumulative amount on that adapter (upper bounds:
///                                        quote × max tokens)
///   node   ──settle([Redemption])──► for each channel: claim `claimedTotal` <= voucher amount (the actual cost of
///                                        the calls served); the newly claimed delta is split per adapter, each
///                                        entry backed by the client's latest voucher for that adapter:
///                                        royalty → publisher, rest → node; one AdapterUsage event per entry
///   client ──requestWithdraw(node), wait withdrawTimeout, withdraw(node)──► refund of what was never claimed;
///                                        the channel's epoch increments, so vouchers of the old epoch are dead.
///
/// Redemption is idempotent: a claim must exceed what the channel already redeemed, so replaying a voucher or a
/// settlement pays nothing twice. Payouts are credited to `earnings` and withdrawn by their owners (pull payments),
/// so a publisher that cannot receive ETH cannot block settlement for everyone else.
///
/// Usage of a revoked adapter is still settled (and still pays its royalty): revocation stops nodes from serving
/// new calls, while calls served before it were paid for by the client's signed voucher and are owed.
/// Attribution entries come from the node but are bounded by the client's signatures: an entry for adapter A is
/// accepted only with a voucher of the client naming A, and the amounts attributed to A on a channel epoch never
/// exceed that voucher's `adapterAmount`; its calls never exceed its amount in wei and its tokens never exceed what
/// the amount pays at the voucher's `pricePer1kTokens`. So a node cannot credit an adapter the client did not pay
/// for, nor shift one adapter's payment to another beyond what the client authorised for it. Clients hold
/// node-signed receipts to audit the rest against the AdapterUsage events for their channel.
contract PaymentChannels is EIP712 {
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256(
            "Voucher(address client,address node,uint64 epoch,uint256 cumulativeAmount,bytes32 adapter,"
            "uint256 pricePer1kTokens,uint256 adapterAmount)"
        );
    uint256 public constant BPS = 10_000;

    /// @notice The client authorises the node to claim up to `cumulativeAmount` wei in total from this epoch, of
    ///         which up to `adapterAmount` wei in total for calls to `adapter` (an AdapterRegistry id) at
    ///         `pricePer1kTokens` wei per 1000 tokens (publisher price + node fee).
    struct Voucher {
        address client;
        address node;
        uint64 epoch;
        uint256 cumulativeAmount;
        bytes32 adapter;
        uint256 pricePer1kTokens;
        uint256 adapterAmount;
    }

    /// @notice Usage of one adapter within one redemption: `amount` wei for `calls` calls and `tokens` tokens,
    ///         backed by `voucher` (the client's latest voucher naming the adapter) and its `signature`.
    struct UsageEntry {
        Voucher voucher;
        bytes signature;
        uint64 calls;
        uint64 tokens;
        uint128 amount;
    }

    /// @notice A claim of `claimedTotal` (cumulative over the epoch) on the voucher's channel; the usage entries'
    ///         amounts sum to the newly claimed part.
    struct Redemption {
        Voucher voucher;
        bytes signature;
        uint256 claimedTotal;
        UsageEntry[] usage;
    }

    struct Channel {
        uint256 deposited; // total deposited in this epoch, wei
        uint256 redeemed; // total claimed by the node in this epoch, wei
        uint64 epoch;
        uint64 withdrawAt; // unix seconds when withdraw() opens; 0 when no withdrawal was requested
    }

    /// @notice Running totals per adapter over all nodes and clients.
    struct Usage {
        uint128 calls;
        uint128 tokens;
        uint128 amount; // wei paid for the adapter's calls (node + publisher)
        uint128 publisherEarnings; // wei of that credited to the publisher
    }

    AdapterRegistry public immutable registry;
    /// @notice Seconds between requestWithdraw and withdraw: the node's window to settle what it is owed.
    uint64 public immutable withdrawTimeout;

    mapping(address client => mapping(address node => Channel)) private _channels;
    mapping(bytes32 adapter => Usage) private _usage;
    /// @dev keccak256(client, node, epoch, adapter) => wei attributed to the adapter on that channel epoch.
    mapping(bytes32 lane => uint256) private _attributed;
    /// @notice Wei credited to an account (node or publisher) and not yet withdrawn.
    mapping(address account => uint256) public earnings;

    event Deposited(address indexed client, address indexed node, uint64 epoch, uint256 amount, uint256 deposited);
    event WithdrawRequested(address indexed client, address indexed node, uint64 epoch, uint64 withdrawAt);
    event Withdrawn(address indexed client, address indexed node, uint64 epoch, uint256 refund);
    event Redeemed(
        address indexed client, address indexed node, uint64 epoch, uint256 claimedTotal, uint256 amount
    );
    /// @notice The attribution record: `calls` calls and `tokens` tokens of `adapter`, served by `node` to `client`,
    ///         paid `amount` wei of which `publisherAmount` went to the adapter's publisher.
    event AdapterUsage(
        bytes32 indexed adapter,
        address indexed node,
        address indexed client,
        uint64 calls,
        uint64 tokens,
        uint256 amount,
        uint256 publisherAmount
    );
    event EarningsWithdrawn(address indexed account, uint256 amount);

    /// @notice The registry address holds no contract.
    error InvalidRegistry(address registry);
    /// @notice withdrawTimeout must be at least one second.
    error InvalidTimeout();
    /// @notice A deposit must carry value.
    error ZeroDeposit();
    /// @notice The zero address cannot be a channel's node.
    error ZeroNode();
    /// @notice Everything deposited was already claimed: nothing to withdraw.
    error NothingToWithdraw();
    /// @notice A withdrawal was already requested; it opens at `withdrawAt`.
    error WithdrawAlreadyRequested(uint64 withdrawAt);
    /// @notice withdraw() needs a requestWithdraw() first.
    error NoWithdrawRequested();
    /// @notice withdraw() opens at `withdrawAt` (unix seconds); it is `timestamp`.
    error WithdrawTooEarly(uint64 withdrawAt, uint256 timestamp);
    /// @notice An ETH transfer to `to` failed (it refuses ETH).
    error TransferFailed(address to, uint256 amount);
    /// @notice The account has no earnings to withdraw.
    error NothingToClaim();
    /// @notice settle() needs at least one redemption.
    error EmptyBatch();
    /// @notice Only the voucher's node may redeem it.
    error NotVoucherNode(address node, address caller);
    /// @notice The voucher is for another epoch of the channel than the current one.
    error WrongEpoch(uint64 current, uint64 voucherEpoch);
    /// @notice The claim is above what the voucher authorises.
    error ClaimExceedsVoucher(uint256 claimedTotal, uint256 cumulativeAmount);
    /// @notice The claim is above what the client deposited in this epoch.
    error ClaimExceedsDeposit(uint256 claimedTotal, uint256 deposited);
    /// @notice The claim does not exceed what was already redeemed (a replay, or nothing new).
    error NothingToRedeem(uint256 claimedTotal, uint256 redeemed);
    /// @notice The voucher signature is malformed or not the client's.
    error InvalidSignature(address client);
    /// @notice A redemption must attribute its amount to at least one adapter.
    error NoUsage();
    /// @notice A usage entry must count at least one call.
    error ZeroCalls(bytes32 adapter);
    /// @notice A usage entry names an adapter the registry does not know.
    error UnknownAdapter(bytes32 adapter);
    /// @notice The usage entries' amounts (`attributed`, so far) do not add up to the newly claimed `delta`.
    error UsageMismatch(uint256 delta, uint256 attributed);
    /// @notice A usage entry's voucher is not for the redemption's client, node and epoch.
    error VoucherMismatch(address client, address node, uint64 epoch);
    /// @notice Attributing this entry would take `adapter`'s total on the channel epoch to `attributed` wei, above
    ///         the `authorised` adapterAmount of the client's voucher for it.
    error UsageBeyondVoucher(bytes32 adapter, uint256 attributed, uint256 authorised);
    /// @notice The entry counts more calls than wei (every paid call costs at least 1 wei) or more tokens than its
    ///         amount pays at the voucher's price.
    error UsageBeyondAmount(bytes32 adapter, uint64 calls, uint64 tokens, uint256 amount);

    /// @param registry_ the AdapterRegistry that names publishers and royalties.
    /// @param withdrawTimeout_ seconds a client waits between requestWithdraw and withdraw.
    constructor(AdapterRegistry registry_, uint64 withdrawTimeout_) EIP712("OpenLoRA", "1") {
        if (address(registry_).code.length == 0) revert InvalidRegistry(address(registry_));
        if (withdrawTimeout_ == 0) revert InvalidTimeout();
        registry = registry_;
        withdrawTimeout = withdrawTimeout_;
    }

    /// @notice Adds msg.value wei to the caller's channel with `node` (opening it, or topping it up).
    function deposit(address node) external payable {
        if (msg.value == 0) revert ZeroDeposit();
        if (node == address(0)) revert ZeroNode();
        Channel storage ch = _channels[msg.sender][node];
        ch.deposited += msg.value;
        emit Deposited(msg.sender, node, ch.epoch, msg.value, ch.deposited);
    }

    /// @notice Starts the timeout after which the caller may take back what `node` has not claimed.
    function requestWithdraw(address node) external {
        Channel storage ch = _channels[msg.sender][node];
        if (ch.deposited == ch.redeemed) revert NothingToWithdraw();
        if (ch.withdrawAt != 0) revert WithdrawAlreadyRequested(ch.withdrawAt);
        ch.withdrawAt = uint64(block.timestamp) + withdrawTimeout;
        emit WithdrawRequested(msg.sender, node, ch.epoch, ch.withdrawAt);
    }

    /// @notice After the timeout: refunds the unclaimed rest and starts the channel's next epoch.
    function withdraw(address node) external {
        Channel storage ch = _channels[msg.sender][node];
        uint64 withdrawAt = ch.withdrawAt;
        if (withdrawAt == 0) revert NoWithdrawRequested();
        if (block.timestamp < withdrawAt) revert WithdrawTooEarly(withdrawAt, block.timestamp);
        uint256 refund = ch.deposited - ch.redeemed;
        uint64 epoch = ch.epoch;
        // Effects before the transfer: a re-entrant call finds the channel already emptied.
        ch.deposited = 0;
        ch.redeemed = 0;
        ch.withdrawAt = 0;
        ch.epoch = epoch + 1;
        emit Withdrawn(msg.sender, node, epoch, refund);
        _send(msg.sender, refund);
    }

    /// @notice Redeems a batch of vouchers in one transaction and records per-adapter usage (the attribution).
    /// @dev The caller must be the node of every voucher. Reverts as a whole on any bad redemption.
    function settle(Redemption[] calldata redemptions) external {
        if (redemptions.length == 0) revert EmptyBatch();
        uint256 nodeShare;
        for (uint256 i; i < redemptions.length; ++i) {
            nodeShare += _redeem(redemptions[i]);
        }
        earnings[msg.sender] += nodeShare;
    }

    /// @notice Sends the caller everything credited to it by settlements.
    function withdrawEarnings() external {
        uint256 amount = earnings[msg.sender];
        if (amount == 0) revert NothingToClaim();
        earnings[msg.sender] = 0;
        emit EarningsWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    /// @notice The state of the channel from `client` to `node`.
    function channel(address client, address node) external view returns (Channel memory) {
        return _channels[client][node];
    }

    /// @notice Totals settled so far for `adapter`.
    function usage(bytes32 adapter) external view returns (Usage memory) {
        return _usage[adapter];
    }

    /// @notice The EIP-712 digest a client signs for `voucher` (domain "OpenLoRA", version "1").
    function voucherDigest(Voucher calldata voucher) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    VOUCHER_TYPEHASH,
                    voucher.client,
                    voucher.node,
                    voucher.epoch,
                    voucher.cumulativeAmount,
                    voucher.adapter,
                    voucher.pricePer1kTokens,
                    voucher.adapterAmount
                )
            )
        );
    }

    /// @return nodeShare the part of the newly claimed amount that is the node's.
    function _redeem(Redemption calldata r) private returns (uint256 nodeShare) {
        Voucher calldata v = r.voucher;
        if (v.node != msg.sender) revert NotVoucherNode(v.node, msg.sender);
        Channel storage ch = _channels[v.client][v.node];
        if (v.epoch != ch.epoch) revert WrongEpoch(ch.epoch, v.epoch);
        uint256 claimed = r.claimedTotal;
        if (claimed > v.cumulativeAmount) revert ClaimExceedsVoucher(claimed, v.cumulativeAmount);
        if (claimed > ch.deposited) revert ClaimExceedsDeposit(claimed, ch.deposited);
        uint256 already = ch.redeemed;
        if (claimed <= already) revert NothingToRedeem(claimed, already);
        _checkSignature(v, r.signature);

        uint256 delta = claimed - already;
        ch.redeemed = claimed;
        uint256 publisherShare = _attribute(v, r.usage, delta);
        emit Redeemed(v.client, v.node, v.epoch, claimed, delta);
        return delta - publisherShare;
    }

    /// @return publisherShare wei credited to publishers out of `delta`.
    function _attribute(Voucher calldata v, UsageEntry[] calldata entries, uint256 delta)
        private
        returns (uint256 publisherShare)
    {
        if (entries.length == 0) revert NoUsage();
        uint256 attributed;
        for (uint256 i; i < entries.length; ++i) {
            UsageEntry calldata e = entries[i];
            bytes32 adapter = _authorised(v, e);
            (address publisher, uint16 royaltyBps) = registry.terms(adapter);
            if (publisher == address(0)) revert UnknownAdapter(adapter);
            attributed += e.amount;
            // Checked before the totals grow, so every amount stored is bounded by real deposits.
            if (attributed > delta) revert UsageMismatch(delta, attributed);
            uint256 toPublisher = uint256(e.amount) * royaltyBps / BPS;
            Usage storage u = _usage[adapter];
            u.calls += e.calls;
            u.tokens += e.tokens;
            u.amount += e.amount;
            u.publisherEarnings += uint128(toPublisher); // <= e.amount, a uint128
            earnings[publisher] += toPublisher;
            publisherShare += toPublisher;
            emit AdapterUsage(adapter, v.node, v.client, e.calls, e.tokens, e.amount, toPublisher);
        }
        if (attributed != delta) revert UsageMismatch(delta, attributed);
    }

    /// @notice Wei attributed so far to `adapter` on the channel from `client` to `node` in `epoch`.
    function attributedTo(address client, address node, uint64 epoch, bytes32 adapter) external view returns (uint256) {
        return _attributed[keccak256(abi.encode(client, node, epoch, adapter))];
    }

    /// @return adapter the entry's adapter, once its voucher is the client's for this channel epoch and the entry
    ///         stays within what that voucher authorises for the adapter (its running total is then updated).
    function _authorised(Voucher calldata v, UsageEntry calldata e) private returns (bytes32 adapter) {
        Voucher calldata ev = e.voucher;
        adapter = ev.adapter;
        if (e.calls == 0) revert ZeroCalls(adapter);
        if (ev.client != v.client || ev.node != v.node || ev.epoch != v.epoch) {
            revert VoucherMismatch(ev.client, ev.node, ev.epoch);
        }
        _checkSignature(ev, e.signature);
        // ceil-rounded costs of `calls` calls of `tokens` tokens in total are >= tokens * price / 1000 and >= calls
        if (e.calls > e.amount || uint256(e.tokens) * ev.pricePer1kTokens > uint256(e.amount) * 1000) {
            revert UsageBeyondAmount(adapter, e.calls, e.tokens, e.amount);
        }
        bytes32 lane = keccak256(abi.encode(v.client, v.node, v.epoch, adapter));
        uint256 total = _attributed[lane] + e.amount;
        if (total > ev.adapterAmount) revert UsageBeyondVoucher(adapter, total, ev.adapterAmount);
        _attributed[lane] = total;
    }

    function _checkSignature(Voucher calldata v, bytes calldata signature) private view {
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(voucherDigest(v), signature);
        if (err != ECDSA.RecoverError.NoError || signer != v.client) revert InvalidSignature(v.client);
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
