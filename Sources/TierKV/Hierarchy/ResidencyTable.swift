import TierKVCore
import TierKVPolicies

/// The three tiers, fastest first.
public enum Tier: Int, Sendable, CaseIterable, CustomStringConvertible {
    case hot = 0, warm = 1, cold = 2
    public var description: String {
        switch self {
        case .hot: "hot"
        case .warm: "warm"
        case .cold: "cold"
        }
    }
}

/// One block's residency: where its copies are, what is moving, who holds it. 56 bytes
/// (`MemoryLayout<BlockRecord>.stride`); the per-block total with the key index and the
/// policies' metadata is reported by `Hierarchy.metadataBytesPerBlock`.
struct BlockRecord {
    struct Flags: OptionSet {
        let rawValue: UInt16
        static let live = Flags(rawValue: 1 << 0)
        static let inHot = Flags(rawValue: 1 << 1)
        static let inWarm = Flags(rawValue: 1 << 2)
        /// Durable in the cold tier (its write completed and was flushed).
        static let inCold = Flags(rawValue: 1 << 3)
        /// A warm→hot copy is in flight into `hotSlot`.
        static let loadingHot = Flags(rawValue: 1 << 4)
        /// A cold read or hot→warm copy is in flight into `warmSlot`.
        static let loadingWarm = Flags(rawValue: 1 << 5)
        /// A warm→cold write is in flight from `warmSlot`.
        static let writingCold = Flags(rawValue: 1 << 6)
        /// Waiting in the hot or warm arrival queue.
        static let queuedHot = Flags(rawValue: 1 << 7)
        static let queuedWarm = Flags(rawValue: 1 << 8)
        /// The hot copy leaves once the hot→warm copy in flight lands.
        static let evictingHot = Flags(rawValue: 1 << 9)
        /// The warm copy leaves once the write in flight is durable.
        static let evictingWarm = Flags(rawValue: 1 << 10)
        /// A cold write of this block failed (ENOSPC, EIO): it stays in warm, not retried by demotion.
        static let coldWriteFailed = Flags(rawValue: 1 << 11)
        /// Waiting for a flush to make it durable.
        static let queuedFlush = Flags(rawValue: 1 << 12)
        /// The warm copy is being read for the engine (a hot→warm copy for a warm request).
        static let loadingWarmFromHot = Flags(rawValue: 1 << 13)
    }

    var key: BlockKey
    var hotSlot: Int32 = -1
    var warmSlot: Int32 = -1
    var references: UInt32 = 0
    var position: Int32 = -1
    var hotPins: UInt16 = 0
    var warmPins: UInt16 = 0
    var seenCount: UInt16 = 0
    var flags: Flags = []
    /// The `makeResident` call that last named this block (`HierarchyState.admissionStamp`): a
    /// second mention within one call is a duplicate key. Fits the record's padding.
    var admissionStamp: UInt32 = 0

    init(key: BlockKey, position: Int32) {
        self.key = key
        self.position = position
        self.flags = .live
    }

    var hasCopy: Bool { !flags.isDisjoint(with: [.inHot, .inWarm, .inCold]) }
    var copyCount: Int { (flags.contains(.inHot) ? 1 : 0) + (flags.contains(.inWarm) ? 1 : 0) + (flags.contains(.inCold) ? 1 : 0) }
}

/// Per-tier counters.
public struct TierStatistics: Sendable, Equatable {
    /// Requested blocks found in this tier (and not in a faster one).
    public var hits = 0
    /// Requested blocks not found in this tier or a faster one.
    public var misses = 0
    /// Blocks that left the tier to make room.
    public var evictions = 0
    /// Blocks that entered the tier.
    public var insertions = 0
    public var residentBlocks = 0
    public var capacityBlocks = 0
    public var pinnedBlocks = 0
    public var peakResidentBlocks = 0
}

/// What the hierarchy did so far. A snapshot: cheap to take, consistent at one instant.
public struct HierarchyStatistics: Sendable, Equatable {
    public var hot = TierStatistics()
    public var warm = TierStatistics()
    public var cold = TierStatistics()
    /// Bytes per link: host→device, device→host, NVMe reads, NVMe writes.
    public var hostToDeviceBytes = 0
    public var deviceToHostBytes = 0
    public var nvmeReadBytes = 0
    public var nvmeWriteBytes = 0
    public var storedBlocks = 0
    /// Blocks asked for by prefetch requests, and those of them already in the target tier.
    /// Prefetch lookups are not counted in the tiers' hits and misses, which are the demand's.
    public var prefetchLookups = 0
    public var prefetchLookupsAlreadyResident = 0
    /// Stores of a block that was already cached (prefix sharing): no bytes moved.
    public var sharedStores = 0
    /// Blocks whose last copy was freed: cache-only blocks (no live sequence) or, when allowed,
    /// referenced ones (`droppedReferencedBlocks`).
    public var droppedBlocks = 0
    public var droppedReferencedBlocks = 0
    /// Demoted blocks the cold admission filter kept off NVMe (dropped instead).
    public var coldAdmissionRejections = 0
    public var corruptions = 0
    public var coldWriteFailures = 0
    public var coldReadFailures = 0
    /// Transfers per link that failed (device or I/O errors).
    public var failedTransfers = 0
    /// `drop(sequence:)` of a block with no reference left: 0 unless the engine's bookkeeping is off.
    public var referenceUnderflows = 0
    /// Blocks in the residency table.
    public var blocks = 0
    public var liveSequences = 0
    /// Whether the cold file is open buffered because its filesystem has no O_DIRECT.
    public var coldIsBuffered = false
    /// Cold index checkpoints written between flushes (every `coldCheckpointInterval` writes),
    /// and those that failed (the index is then rebuilt by a scan on the next open: no data lost).
    public var coldCheckpoints = 0
    public var coldCheckpointFailures = 0
    /// Blocks with a key summary now, and those whose summary the open restored from
    /// `summaries.tkv` instead of reading the block back.
    public var summarizedBlocks = 0
    public var keySummariesRestored = 0

    public func tier(_ tier: Tier) -> TierStatistics {
        switch tier {
        case .hot: hot
        case .warm: warm
        case .cold: cold
        }
    }
}

/// The residency table and everything the movement logic keeps beside it. Only touched with the
/// hierarchy's lock held.
struct HierarchyState {
    var records: [BlockRecord] = []
    var freeIDs: [Int32] = []
    var index: [BlockKey: Int32] = [:]
    var sequences: [UInt64: SequenceBlocks] = [:]
    var policies: [any EvictionPolicy]
    var used = [0, 0, 0]
    var capacity: [Int]
    /// I/O demotions in flight per tier (hot→warm copies, warm→cold writes).
    var demoting = [0, 0, 0]
    var wantHot = ArrivalQueue()
    /// Prefetch-priority blocks started and not completed, per link (`LinkIndex`).
    var prefetchBlocksInFlight = [0, 0, 0, 0]
    var wantWarm = ArrivalQueue()
    var wantFlush: [Int32] = []
    var hotWaiters: [Int32: [ResidencyRequest]] = [:]
    var warmWaiters: [Int32: [ResidencyRequest]] = [:]
    /// Numbers `makeResident` calls for the duplicate-key check (0: never used).
    var admissionStamp: UInt32 = 0
    /// Transfers started and not completed, by (block id, link): the "no two in flight" invariant.
    var inFlight: Set<Int64> = []
    var statistics = HierarchyStatistics()
    var actions: [MovementAction] = []
    var isDraining = false
    /// Flush writes finished so far (`flush` waits for its share).
    var flushWritten = 0
    var flushFailed = 0
    /// Bumped on every completed movement: a store waiting for a free slot waits for a change.
    var generation: UInt64 = 0
    var isClosed = false
    /// Cold writes since the cold index was last checkpointed, and whether one is being written.
    var coldWritesSinceCheckpoint = 0
    var isCheckpointing = false
    /// Invariant violations seen at run time (tests require none).
    var violations: [String] = []

    init(policies: [any EvictionPolicy], capacity: [Int]) {
        self.policies = policies
        self.capacity = capacity
    }

    func id(of key: BlockKey) -> Int32? { index[key] }

    mutating func addRecord(_ key: BlockKey, position: Int32) -> Int32 {
        let id: Int32
        if let reused = freeIDs.popLast() {
            id = reused
            records[Int(id)] = BlockRecord(key: key, position: position)
        } else {
            id = Int32(records.count)
            records.append(BlockRecord(key: key, position: position))
        }
        index[key] = id
        statistics.blocks = index.count
        return id
    }

    mutating func removeRecord(_ id: Int32) {
        let record = records[Int(id)]
        index.removeValue(forKey: record.key)
        for policy in policies { policy.forget(id) }
        records[Int(id)].flags = []
        freeIDs.append(id)
        statistics.blocks = index.count
    }

    static func flightKey(_ id: Int32, _ link: Int) -> Int64 { Int64(id) << 3 | Int64(link) }
}

/// The blocks a live sequence references, in the order it stored them (so `drop` is
/// deterministic), with a set for the "references a block once" check.
struct SequenceBlocks {
    private(set) var keys: [BlockKey] = []
    private var members: Set<BlockKey> = []

    /// Adds `key`; false when the sequence already references it.
    mutating func insert(_ key: BlockKey) -> Bool {
        guard members.insert(key).inserted else { return false }
        keys.append(key)
        return true
    }
}

/// Blocks waiting for a slot in a tier, demand before prefetch, FIFO within each.
struct ArrivalQueue {
    private var demand: [Int32] = []
    private var demandHead = 0
    private var other: [Int32] = []
    private var otherHead = 0

    var isEmpty: Bool { demandHead == demand.count && otherHead == other.count }

    mutating func push(_ id: Int32, isDemand: Bool) {
        if isDemand { demand.append(id) } else { other.append(id) }
    }

    var first: (id: Int32, isDemand: Bool)? {
        if demandHead < demand.count { return (demand[demandHead], true) }
        if otherHead < other.count { return (other[otherHead], false) }
        return nil
    }

    mutating func removeFirst() {
        if demandHead < demand.count {
            demandHead += 1
            if demandHead == demand.count { demand.removeAll(keepingCapacity: true); demandHead = 0 }
        } else if otherHead < other.count {
            otherHead += 1
            if otherHead == other.count { other.removeAll(keepingCapacity: true); otherHead = 0 }
        }
    }
}
