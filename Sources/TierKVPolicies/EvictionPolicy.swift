/// A block as a tier's policy sees it: a dense id given by the residency table (stable while the
/// block is in the hierarchy) and what a real engine can tell about it.
public struct PolicyBlockContext: Sendable, Hashable {
    /// Index of the block within its sequence (0 = the first block), or -1 when unknown (a block
    /// found in the cold tier at open).
    public var position: Int32
    public var layer: Int32

    public init(position: Int32, layer: Int32) {
        self.position = position
        self.layer = layer
    }
}

/// The eviction order of one tier. A policy keeps its own metadata per block id and never sees
/// more than a real engine reports (insertions, accesses, attention mass).
///
/// Not thread-safe: the residency table calls it under its lock. Ids are small non-negative
/// integers; a policy grows its per-id storage on demand.
public protocol EvictionPolicy: AnyObject {
    /// Short name for reports and metrics (`lru`, `s3fifo`...).
    var name: String { get }
    /// Blocks the policy tracks now.
    var count: Int { get }
    /// The block entered the tier.
    func insert(_ id: Int32, context: PolicyBlockContext)
    /// The engine used the block (a hit in this tier).
    func access(_ id: Int32)
    /// A demand lookup found the block in this tier: the layer it belongs to is running now (a
    /// prefetch's lookups are `access`). Policies that do not care treat it as `access`.
    func demandAccess(_ id: Int32)
    /// The block left the tier (evicted, moved or dropped). Unknown ids are ignored.
    func remove(_ id: Int32)
    /// The engine's attention mass for the block in the last step (attention-aware policies).
    func reportAttention(_ id: Int32, mass: Float)
    /// The block no longer exists (its id may be reused for another): drop everything kept
    /// about it, in the tier or not. `remove` only says it left this tier.
    func forget(_ id: Int32)
    /// The block to evict next among those `isEvictable` accepts (not pinned, not in flight), or
    /// nil when there is none. Does not remove it: the caller calls `remove` once it is gone.
    func victim(where isEvictable: (Int32) -> Bool) -> Int32?
}

extension EvictionPolicy {
    public func demandAccess(_ id: Int32) { access(id) }
    public func reportAttention(_ id: Int32, mass: Float) {}
    public func forget(_ id: Int32) { remove(id) }
}

/// The policies TierKV ships, with their parameters; `makePolicy()` builds one.
public enum EvictionPolicyKind: Sendable, Hashable, CustomStringConvertible {
    case lru
    /// Least frequently used; every `agingInterval` accesses all counts are halved, so a block
    /// that was hot long ago does not stay forever.
    case lfu(agingInterval: Int)
    /// S3-FIFO (Yang et al., SOSP'23): a small probationary FIFO (`smallFraction` of the
    /// blocks), a main FIFO with reinsertion, and a ghost list of recent evictions.
    case s3fifo(smallFraction: Double)
    /// H2O (Zhang et al., NeurIPS'23): evict the lowest accumulated attention mass, never one of
    /// the `recentWindow` most recently inserted blocks.
    case h2o(recentWindow: Int)
    /// TOVA (Oren et al., 2024): evict the lowest attention mass of the latest step.
    case tova(recentWindow: Int)
    /// StreamingLLM (Xiao et al., ICLR'24): the first `sinks` blocks of a sequence and the
    /// `recentWindow` newest blocks are never evicted; the rest leave oldest first.
    case streamingLLM(sinks: Int, recentWindow: Int)
    /// Layer-cyclic (`LayerCyclicPolicy`): evicts by when each block's layer next runs, stale
    /// blocks first; decode's walk over the layers is the forecast.
    case layered

    public static let defaultLFU = EvictionPolicyKind.lfu(agingInterval: 0)
    public static let defaultS3FIFO = EvictionPolicyKind.s3fifo(smallFraction: 0.1)
    public static let defaultH2O = EvictionPolicyKind.h2o(recentWindow: 4)
    public static let defaultTOVA = EvictionPolicyKind.tova(recentWindow: 1)
    public static let defaultStreamingLLM = EvictionPolicyKind.streamingLLM(sinks: 1, recentWindow: 4)
    /// One of each, with default parameters (tests iterate over these).
    public static let all: [EvictionPolicyKind] = [.lru, defaultLFU, defaultS3FIFO, defaultH2O, defaultTOVA, defaultStreamingLLM, .layered]

    public var name: String {
        switch self {
        case .lru: "lru"
        case .lfu: "lfu"
        case .s3fifo: "s3fifo"
        case .h2o: "h2o"
        case .tova: "tova"
        case .streamingLLM: "streamingllm"
        case .layered: "layered"
        }
    }

    public var description: String { name }

    public func makePolicy() -> any EvictionPolicy {
        switch self {
        case .lru: LRUPolicy()
        case .lfu(let interval): LFUPolicy(agingInterval: interval)
        case .s3fifo(let fraction): S3FIFOPolicy(smallFraction: fraction)
        case .h2o(let window): AttentionScorePolicy(mode: .accumulated, recentWindow: window)
        case .tova(let window): AttentionScorePolicy(mode: .latest, recentWindow: window)
        case .streamingLLM(let sinks, let window): StreamingLLMPolicy(sinks: sinks, recentWindow: window)
        case .layered: LayerCyclicPolicy()
        }
    }

    /// Parses `lru`, `lfu`, `s3fifo`, `h2o`, `tova`, `streamingllm` (default parameters), or with
    /// parameters: `h2o:8` (window), `streamingllm:1:8` (sinks, window), `s3fifo:0.1`, `lfu:100000`.
    public init?(parsing text: String) {
        let parts = text.lowercased().split(separator: ":").map(String.init)
        guard let head = parts.first else { return nil }
        let numbers = parts.dropFirst().map { Double($0) }
        guard numbers.allSatisfy({ $0 != nil && $0! >= 0 }) else { return nil }
        let values = numbers.map { $0! }
        switch (head, values.count) {
        case ("lru", 0): self = .lru
        case ("layered", 0): self = .layered
        case ("lfu", 0): self = Self.defaultLFU
        case ("lfu", 1): self = .lfu(agingInterval: Int(values[0]))
        case ("s3fifo", 0), ("s3-fifo", 0): self = Self.defaultS3FIFO
        case ("s3fifo", 1), ("s3-fifo", 1):
            guard values[0] > 0, values[0] < 1 else { return nil }
            self = .s3fifo(smallFraction: values[0])
        case ("h2o", 0): self = Self.defaultH2O
        case ("h2o", 1): self = .h2o(recentWindow: Int(values[0]))
        case ("tova", 0): self = Self.defaultTOVA
        case ("tova", 1): self = .tova(recentWindow: Int(values[0]))
        case ("streamingllm", 0), ("streaming", 0): self = Self.defaultStreamingLLM
        case ("streamingllm", 2), ("streaming", 2): self = .streamingLLM(sinks: Int(values[0]), recentWindow: Int(values[1]))
        default: return nil
        }
    }

    public static let parsingHelp = "lru, layered, lfu[:AGING], s3fifo[:SMALL_FRACTION], h2o[:WINDOW], tova[:WINDOW], streamingllm[:SINKS:WINDOW]"
}

extension EvictionPolicyKind {
    /// Metadata a policy keeps per tracked block, from its arrays' element strides.
    public var metadataBytesPerBlock: Int {
        let heapEntry = MemoryLayout<Int32>.stride * 2  // heap slot + position
        switch self {
        case .lru: return 2 * MemoryLayout<Int32>.stride + MemoryLayout<Bool>.stride
        case .lfu: return heapEntry + MemoryLayout<(UInt32, UInt64)?>.stride
        case .s3fifo: return 2 * (2 * MemoryLayout<Int32>.stride + 1) + 1 + MemoryLayout<UInt64>.stride
        case .h2o, .tova:
            // Heap key, plus the insertion number and the score kept per id beside the heap.
            return heapEntry + MemoryLayout<(Float, UInt64)?>.stride + MemoryLayout<UInt64>.stride + MemoryLayout<Float>.stride
        case .streamingLLM: return 2 * MemoryLayout<Int32>.stride + 1 + MemoryLayout<Int32>.stride + MemoryLayout<UInt64>.stride
        case .layered: return 3 * MemoryLayout<Int32>.stride + MemoryLayout<Int64>.stride + MemoryLayout<UInt64>.stride
        }
    }
}
