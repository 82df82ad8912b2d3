import Synchronization

/// Hands out slot indices `0..<slotCount` in O(1), from many threads, without one global lock.
///
/// Free slots live in `shardCount` stacks, each behind its own lock; a thread starts at the
/// shard its thread id hashes to and steals from the others when that one is empty. A per-slot
/// atomic state catches double frees and frees of slots never handed out. Used by the host
/// arena (warm slots) and by device slot pools (hot slots).
public final class SlotAllocator: @unchecked Sendable {
    // @unchecked: `states` points to atomics only, and each shard's stack is behind its lock.
    public let slotCount: Int
    private let shards: [Shard]
    private let states: UnsafeMutablePointer<Atomic<UInt8>>
    private let usedCount = Atomic<Int>(0)
    private let highWater = Atomic<Int>(0)

    /// A snapshot of use.
    public struct Statistics: Sendable, Equatable {
        public var used: Int
        public var free: Int
        public var highWater: Int
    }

    /// - Parameters:
    ///   - slotCount: number of slots, at most `UInt32.max`.
    ///   - shardCount: free-list shards; default one per CPU up to 16.
    public init(slotCount: Int, shardCount: Int? = nil) throws(TierKVError) {
        guard slotCount >= 1, slotCount <= Int(UInt32.max) else {
            throw .invalid("slot count \(slotCount) is out of range 1...\(UInt32.max)")
        }
        self.slotCount = slotCount
        let shards = max(1, min(shardCount ?? Self.defaultShardCount, slotCount))
        // Deal slots round-robin so each shard starts with an equal share; pop order is ascending.
        var lists = Array(repeating: [UInt32](), count: shards)
        for slot in stride(from: slotCount - 1, through: 0, by: -1) { lists[slot % shards].append(UInt32(slot)) }
        self.shards = lists.map { Shard($0) }
        states = .allocate(capacity: slotCount)
        for index in 0..<slotCount { (states + index).initialize(to: Atomic<UInt8>(0)) }
    }

    deinit {
        states.deinitialize(count: slotCount)
        states.deallocate()
    }

    static var defaultShardCount: Int { min(16, max(1, Int(sysconfProcessorCount()))) }

    /// Takes a free slot, or returns nil when every slot is in use.
    public func allocate() -> Int? {
        let home = Self.homeShard(shardCount: shards.count)
        for step in 0..<shards.count {
            let shard = (home + step) % shards.count
            if let slot = shards[shard].stack.withLock({ $0.popLast() }) {
                let (exchanged, _) = states[Int(slot)].compareExchange(expected: 0, desired: 1, ordering: .acquiring)
                precondition(exchanged, "slot \(slot) was on a free list while allocated")
                let used = usedCount.add(1, ordering: .relaxed).newValue
                var seen = highWater.load(ordering: .relaxed)
                while used > seen {
                    let (done, current) = highWater.compareExchange(expected: seen, desired: used, ordering: .relaxed)
                    if done { break }
                    seen = current
                }
                return Int(slot)
            }
        }
        return nil
    }

    /// Returns a slot to the free lists.
    /// - Throws: `.invalidArgument` for an index out of range, a double free, or a slot never allocated.
    public func free(_ slot: Int) throws(TierKVError) {
        guard slot >= 0, slot < slotCount else { throw .invalid("slot \(slot) is out of range 0..<\(slotCount)") }
        let (exchanged, _) = states[slot].compareExchange(expected: 1, desired: 0, ordering: .releasing)
        guard exchanged else { throw .invalid("slot \(slot) is not allocated (double free?)") }
        usedCount.subtract(1, ordering: .relaxed)
        let home = Self.homeShard(shardCount: shards.count)
        shards[home].stack.withLock { $0.append(UInt32(slot)) }
    }

    /// Whether `slot` is currently handed out.
    public func isAllocated(_ slot: Int) -> Bool {
        slot >= 0 && slot < slotCount && states[slot].load(ordering: .acquiring) == 1
    }

    public var statistics: Statistics {
        let used = usedCount.load(ordering: .relaxed)
        return Statistics(used: used, free: slotCount - used, highWater: highWater.load(ordering: .relaxed))
    }

    private final class Shard: Sendable {
        let stack: Locked<[UInt32]>
        init(_ slots: [UInt32]) { stack = Locked(slots) }
    }

    private static func homeShard(shardCount: Int) -> Int {
        guard shardCount > 1 else { return 0 }
        return Int(((currentThreadID() >> 12) &* 0x9E37_79B9) % UInt(shardCount))
    }
}

#if canImport(Glibc)
import Glibc

func sysconfProcessorCount() -> Int { sysconf(Int32(_SC_NPROCESSORS_ONLN)) }
func currentThreadID() -> UInt { UInt(pthread_self()) }
#endif
