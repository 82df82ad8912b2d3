import Dispatch
import TierKVAccelerator
import TierKVCore

/// A set of blocks being made resident in one tier for one step (typically one layer), returned
/// by `Hierarchy.makeResident`. Its blocks are pinned from the call until `Hierarchy.release`:
/// they cannot be evicted or moved while the engine uses them.
///
/// Wait with `wait()` (blocks the calling thread) or poll `isReady`. Then read each block's
/// address: `deviceAddress(at:)` for the hot tier, `hostBytes(at:)` for the warm tier. Blocks the
/// hierarchy does not hold, or could not bring back (a corrupt cold copy), are listed in
/// `missingKeys` and `failures`: the engine recomputes them. Thread-safe.
public final class ResidencyRequest: @unchecked Sendable {
    // @unchecked: mutable state is behind `state`'s lock; the rest is immutable.
    public let keys: [BlockKey]
    public let tier: Tier
    /// Demand (the engine waits for it now) or prefetch.
    public let isDemand: Bool
    let ids: [Int32?]
    /// Indexes of the blocks that were not resident when the request was made: the ones the
    /// hierarchy registered waiters for (empty in the steady state of decode).
    let waitedIndexes: [Int]
    /// Index by block id, of the waited blocks only.
    private let indexByID: [Int32: Int]
    private let hierarchy: Hierarchy
    private let group = DispatchGroup()
    private let state: Locked<State>

    struct State {
        var slots: [Int32]
        var remaining: Int
        var failures: [Int: String] = [:]
        var isReleased = false
        var readyNanoseconds: UInt64?
    }

    /// - Parameter slots: per key, the slot of a block already resident in `tier` (it counts as
    ///   arrived at `nanoseconds`), or -1.
    init(
        keys: [BlockKey], ids: [Int32?], slots: [Int32], tier: Tier, isDemand: Bool, hierarchy: Hierarchy,
        nanoseconds: UInt64
    ) {
        self.keys = keys
        self.ids = ids
        self.tier = tier
        self.isDemand = isDemand
        self.hierarchy = hierarchy
        var waitedIndexes: [Int] = []
        var indexByID: [Int32: Int] = [:]
        for (index, id) in ids.enumerated() {
            guard let id, slots[index] < 0 else { continue }
            waitedIndexes.append(index)
            indexByID[id] = index
        }
        self.waitedIndexes = waitedIndexes
        self.indexByID = indexByID
        let pending = waitedIndexes.count
        state = Locked(State(slots: slots, remaining: pending, readyNanoseconds: pending == 0 ? nanoseconds : nil))
        if pending > 0 { group.enter() }
    }

    /// Blocks until every block arrived or failed.
    public func wait() {
        // Under a virtual clock (the simulator) time moves only when a waiter runs its events.
        let clock = hierarchy.configuration.clock
        while !isReady {
            if !clock.advanceToNextEvent() { return group.wait() }
        }
    }

    /// Waits at most `seconds`; returns whether the request is ready.
    public func wait(seconds: Double) -> Bool {
        group.wait(timeout: .now() + .nanoseconds(Int(seconds * 1e9))) == .success
    }

    public var isReady: Bool { state.withLock { $0.remaining == 0 } }

    /// Keys the hierarchy does not hold at all.
    public var missingKeys: [BlockKey] { zip(keys, ids).compactMap { $1 == nil ? $0 : nil } }

    /// Blocks that could not be made resident, with the reason (corrupt cold copy, I/O error).
    public var failures: [BlockKey: String] {
        state.withLock { state in Dictionary(uniqueKeysWithValues: state.failures.map { (keys[$0.key], $0.value) }) }
    }

    /// When the last block arrived, on the hierarchy's clock (virtual time in the simulator).
    public var readyNanoseconds: UInt64? { state.withLock { $0.readyNanoseconds } }

    /// Where one block of a request stands.
    public enum BlockState: Sendable, Equatable {
        case pending
        case ready
        /// The hierarchy does not hold the block.
        case missing
        /// It could not be made resident (the reason: a corrupt cold copy, an I/O error).
        case failed(String)
    }

    /// The state of block `index` (in the order of `keys`); nil for an index out of range.
    public func state(at index: Int) -> BlockState? { location(at: index)?.state }

    /// The hot-tier address of block `index`, or nil when it is missing or failed (or the request
    /// is not ready). Valid until `release`.
    public func deviceAddress(at index: Int) -> DeviceAddress? { location(at: index)?.deviceAddress }

    /// The warm-tier bytes of block `index` (pinned host memory), or nil when missing or failed.
    /// Valid until `release`.
    public func hostBytes(at index: Int) -> UnsafeRawBufferPointer? { location(at: index)?.hostBytes }

    /// Where block `index` is; nil for an index out of range.
    public func location(at index: Int) -> Location? {
        guard index >= 0, index < keys.count else { return nil }
        var found: Location?
        forEachLocation(in: index..<(index + 1)) { _, location in found = location }
        return found
    }

    /// Where one block of a request is: its state and, when ready, its address in the request's
    /// tier (valid until `release`).
    public struct Location: Equatable {
        public var state: BlockState
        /// The hot-tier address (hot requests, ready blocks).
        public var deviceAddress: DeviceAddress?
        /// The warm-tier bytes (warm requests, ready blocks).
        public var hostBytes: UnsafeRawBufferPointer?

        public static func == (a: Location, b: Location) -> Bool {
            a.state == b.state && a.deviceAddress == b.deviceAddress && a.hostBytes?.baseAddress == b.hostBytes?.baseAddress
                && a.hostBytes?.count == b.hostBytes?.count
        }
    }

    /// Calls `body` with the location of each block of `indexes` (within `keys.indices`), all read
    /// under one lock: a layer's block table in one pass instead of a locked call per block.
    /// `body` must not call back into the request.
    public func forEachLocation(in indexes: Range<Int>, _ body: (Int, Location) -> Void) {
        precondition(indexes.lowerBound >= 0 && indexes.upperBound <= keys.count, "indexes \(indexes) leave the request's \(keys.count) blocks")
        let isHot = tier == .hot
        state.withLock { state in
            for index in indexes {
                var location = Location(state: .pending)
                if ids[index] == nil {
                    location.state = .missing
                } else if !state.failures.isEmpty, let reason = state.failures[index] {
                    location.state = .failed(reason)
                } else if state.slots[index] >= 0 {
                    let slot = state.slots[index]
                    location.state = .ready
                    if isHot {
                        location.deviceAddress = hierarchy.hotPool.address(ofSlot: Int(slot))
                    } else {
                        location.hostBytes = UnsafeRawBufferPointer(hierarchy.warmPayload(ofSlot: slot))
                    }
                }
                body(index, location)
            }
        }
    }

    /// Every block's location, in the order of `keys`.
    public func locations() -> [Location] {
        var locations: [Location] = []
        locations.reserveCapacity(keys.count)
        forEachLocation(in: keys.indices) { _, location in locations.append(location) }
        return locations
    }

    /// The hot-tier address of every block, nil where a block is not ready (or the request is
    /// warm): a layer's block table in one call. Valid until `release`.
    public func deviceAddresses() -> [DeviceAddress?] {
        var addresses: [DeviceAddress?] = []
        addresses.reserveCapacity(keys.count)
        forEachLocation(in: keys.indices) { _, location in addresses.append(location.deviceAddress) }
        return addresses
    }

    // Called by the hierarchy with its lock held.

    func arrived(_ id: Int32, slot: Int32, nanoseconds: UInt64) {
        guard let index = indexByID[id] else { return }
        finish(index, nanoseconds: nanoseconds) { $0.slots[index] = slot }
    }

    func failed(_ id: Int32, reason: String, nanoseconds: UInt64) {
        guard let index = indexByID[id] else { return }
        finish(index, nanoseconds: nanoseconds) { $0.failures[index] = reason }
    }

    private func finish(_ index: Int, nanoseconds: UInt64, _ update: (inout State) -> Void) {
        let isComplete = state.withLock { state -> Bool in
            guard state.slots[index] < 0, state.failures[index] == nil, state.remaining > 0 else { return false }
            update(&state)
            state.remaining -= 1
            if state.remaining == 0 { state.readyNanoseconds = nanoseconds }
            return state.remaining == 0
        }
        if isComplete { group.leave() }
    }

    /// Marks the request released; false when it already was.
    func markReleased() -> Bool {
        state.withLock { state in
            defer { state.isReleased = true }
            return !state.isReleased
        }
    }
}
