import TierKVAccelerator
import TierKVCore
import TierKVHostArena
import TierKVPolicies
import TierKVStorage
import TierKVTransfer

/// Which accelerator holds the hot tier.
public enum AcceleratorBackend: Sendable {
    /// The real GPU through the CUDA driver (device ordinal).
    case cuda(ordinal: Int)
    /// `EmulatedAccelerator`: host memory with a modelled link; reported as emulated everywhere.
    case emulated(EmulatedAccelerator.LinkModel)
    /// A backend the caller built (a shared `CUDADriver`, a test double).
    case custom(any Accelerator)
}

/// When a block that would leave the warm tier as its last copy is written to NVMe. Blocks that
/// live sequences reference are always written (unless dropping is allowed): the filter only
/// decides for cache-only blocks, whether an SSD write is worth their predicted reuse.
public enum ColdAdmission: Sendable {
    /// Every demoted block is written.
    case always
    /// Written when the block was stored or looked up at least twice (a second sequence shared
    /// it, or it was fetched again): one-hit wonders never cost an SSD write.
    case seenTwice
    /// The caller decides from what the hierarchy knows of the block.
    case custom(@Sendable (ColdAdmissionCandidate) -> Bool)
}

/// What a cold-admission hook sees.
public struct ColdAdmissionCandidate: Sendable {
    public var key: BlockKey
    /// Stores and fetches of the block so far.
    public var seenCount: Int
    /// Live sequences referencing it.
    public var referenceCount: Int
    /// Index of the block within its sequence, -1 when unknown.
    public var position: Int
}

/// Everything `Hierarchy.open` needs. Capacities are in blocks of `layout.blockByteCount`.
public struct HierarchyConfiguration: Sendable {
    public var layout: KVLayout
    /// Salts every prefix hash (tenant or model id): equal token prefixes in one namespace share blocks.
    public var namespace: String
    public var hotCapacityBlocks: Int
    public var warmCapacityBlocks: Int
    /// 0 disables the cold tier (then `cacheDirectory` is not used).
    public var coldCapacityBlocks: Int
    /// Directory of the cold tier's block file (created 0700, locked while open).
    public var cacheDirectory: String?
    public var hotPolicy: EvictionPolicyKind
    public var warmPolicy: EvictionPolicyKind
    public var coldPolicy: EvictionPolicyKind
    /// Inclusive: a block promoted to hot keeps its warm copy, so evicting it from hot costs no
    /// copy. Exclusive: the warm copy is freed on promotion (more distinct blocks fit) and a hot
    /// eviction copies the block back down.
    public var warmTierIsInclusive: Bool
    public var coldAdmission: ColdAdmission
    /// Whether a block that live sequences reference may lose its last copy under pressure
    /// (counted as dropped). When false the hierarchy refuses stores that would need it.
    public var allowsDroppingReferencedBlocks: Bool
    /// Whether a newly stored block is also copied to hot right away (it usually is needed next).
    public var admitsNewBlocksToHot: Bool
    /// Demotion starts when a tier holds more than `highWatermark × capacity` blocks and runs
    /// until it holds at most `lowWatermark × capacity`, so demand fetches find free slots. 1.0
    /// means evict only when a slot is needed.
    public var highWatermark: Double
    public var lowWatermark: Double
    /// NUMA node of the warm arena (nil: nearest to the accelerator when known, else none).
    public var numaNode: Int?
    public var hugePages: HostArena.HugePages
    /// Lock the warm arena in RAM (needs RLIMIT_MEMLOCK).
    public var locksWarmMemory: Bool
    public var accelerator: AcceleratorBackend
    /// Open the cold file buffered on a filesystem without O_DIRECT (reported in `statistics`).
    public var coldAllowsBufferedFallback: Bool
    /// Test hook under the cold tier's I/O completions (EIO and friends).
    public var coldFaultInjector: IOFaultInjector?
    /// Cold writes between checkpoints of the cold index, so a restart after a crash scans only
    /// the slots written since (0: only `flush` and `close` checkpoint).
    public var coldCheckpointInterval: Int
    /// Bytes started and not completed per link.
    public var maximumBytesInFlightPerLink: Int
    /// Of them, the bytes of prefetches (host→device copies and cold reads at prefetch priority):
    /// a transfer once started is the link's, and a demand submitted after it waits behind it, so
    /// speculation keeps only this much started and holds the rest back in the hierarchy's queue
    /// (where a demand goes first and a withdrawn prefetch costs nothing). One block always may
    /// start. On the default long-decode simulation, a prefetch budget of 400 blocks a layer
    /// queued ~800 µs of copies ahead of the next layer's demand; 4 MiB cut the stall from
    /// 0.0756 to 0.0697 s (docs/measurements.md, session 22).
    public var maximumPrefetchBytesInFlightPerLink: Int
    public var clock: any TransferClock
    /// Key summaries for the prefetch predictors, kept in host memory for every block in any tier.
    public var keySummaries: KeySummaries
    /// Bits per key element of the key sketch kept with each summary computed from stored keys
    /// (`.fromStoredKeys`): 0 (none), 1, 2 or 4. `.provided` shapes carry their own.
    public var keySketchBits: Int = 0
    /// Whether the cold blocks' summaries are kept on disk beside them (`summaries.tkv` and its
    /// journal, so a restart need not read the blocks back). Off for a cache directory that will
    /// not be reopened (the simulator's), where the journal's writes would be wasted.
    public var persistsKeySummaries = true

    public init(
        layout: KVLayout, namespace: String = "default", hotCapacityBlocks: Int, warmCapacityBlocks: Int,
        coldCapacityBlocks: Int = 0, cacheDirectory: String? = nil, policy: EvictionPolicyKind = .lru,
        accelerator: AcceleratorBackend = .emulated(.pcieGen5)
    ) {
        self.layout = layout
        self.namespace = namespace
        self.hotCapacityBlocks = hotCapacityBlocks
        self.warmCapacityBlocks = warmCapacityBlocks
        self.coldCapacityBlocks = coldCapacityBlocks
        self.cacheDirectory = cacheDirectory
        self.hotPolicy = policy
        self.warmPolicy = policy
        self.coldPolicy = policy
        self.warmTierIsInclusive = true
        self.coldAdmission = .seenTwice
        self.allowsDroppingReferencedBlocks = false
        self.admitsNewBlocksToHot = true
        self.highWatermark = 1.0
        self.lowWatermark = 0.9
        self.numaNode = nil
        self.hugePages = .transparent
        self.locksWarmMemory = false
        self.accelerator = accelerator
        self.coldAllowsBufferedFallback = false
        self.coldFaultInjector = nil
        self.coldCheckpointInterval = 4096
        self.maximumBytesInFlightPerLink = 64 << 20
        self.maximumPrefetchBytesInFlightPerLink = 4 << 20
        self.clock = MonotonicClock()
        self.keySummaries = .off
    }

    /// Where the key summaries the predictors score come from.
    public enum KeySummaries: Sendable {
        /// None kept (no summary-based prediction).
        case off
        /// Computed from each stored block's K half with the layout's shape (reads 1/2 of the block once).
        case fromStoredKeys
        /// The engine passes each block's summary to `store` (computed on its side, for example on the GPU
        /// where the keys are made), in this shape.
        case provided(KeySummaryShape)
    }

    /// Checks every field; the error names the field, the value and what is allowed.
    public func validate() throws(TierKVError) {
        try layout.validate()
        guard hotCapacityBlocks >= 1 else { throw .invalid("hotCapacityBlocks is \(hotCapacityBlocks); the hot tier needs at least 1 block") }
        guard warmCapacityBlocks >= 1 else { throw .invalid("warmCapacityBlocks is \(warmCapacityBlocks); the warm tier needs at least 1 block (it stages every transfer)") }
        guard coldCapacityBlocks >= 0 else { throw .invalid("coldCapacityBlocks is \(coldCapacityBlocks); use 0 for no cold tier") }
        if coldCapacityBlocks > 0, cacheDirectory?.isEmpty ?? true {
            throw .invalid("coldCapacityBlocks is \(coldCapacityBlocks) but cacheDirectory is not set; the cold tier needs a directory")
        }
        guard lowWatermark > 0, lowWatermark <= highWatermark, highWatermark <= 1 else {
            throw .invalid("watermarks must satisfy 0 < low ≤ high ≤ 1 (low \(lowWatermark), high \(highWatermark))")
        }
        guard [0, 1, 2, 4].contains(keySketchBits) else { throw .invalid("keySketchBits is \(keySketchBits); expected 0 (none), 1, 2 or 4") }
        if keySketchBits > 0 {
            guard case .fromStoredKeys = keySummaries else {
                throw .invalid("keySketchBits is \(keySketchBits) but keySummaries is not .fromStoredKeys; a provided shape carries its own sketch bits")
            }
        }
        guard coldCheckpointInterval >= 0 else { throw .invalid("coldCheckpointInterval is \(coldCheckpointInterval); use 0 to checkpoint only on flush and close") }
        guard maximumPrefetchBytesInFlightPerLink > 0 else {
            throw .invalid("maximumPrefetchBytesInFlightPerLink is \(maximumPrefetchBytesInFlightPerLink); expected > 0 (one block may always start)")
        }
        guard maximumBytesInFlightPerLink >= layout.blockByteCount else {
            throw .invalid("maximumBytesInFlightPerLink \(maximumBytesInFlightPerLink) is smaller than one block (\(layout.blockByteCount) bytes)")
        }
    }
}
