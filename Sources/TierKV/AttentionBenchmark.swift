import TierKVAttention
import TierKVAttentionKernels
import TierKVCore
import TierKVHostArena
import TierKVTransfer

#if canImport(Glibc)
import Glibc
#endif

/// Measures CPU decode attention over a paged KV cache in the NUMA host arena, and in the same
/// run the memory read bandwidth of the same threads over the same memory (a STREAM-like sum),
/// so the kernel is judged as a fraction of what the memory can deliver.
public struct AttentionBenchmark: Sendable {
    public struct Result: Sendable {
        public var kvByteCount: Int
        public var attentionSeconds: Double
        public var memorySeconds: Double
        /// Key summaries of every block in the prediction table's fp16 format (what the hierarchy
        /// keeps), through the batch call.
        public var summarySeconds: Double
        /// The same summaries over keys packed contiguously (no V between blocks' keys).
        public var contiguousSummarySeconds: Double
        /// The paged summaries written as fp32 (twice the bytes written).
        public var fp32SummarySeconds: Double
        /// The STREAM-like kernel reading only the keys of every paged block (the bytes the
        /// summary kernel reads, in its layout): what the memory delivers for that access pattern.
        public var keyReadSeconds: Double
        public var threads: Int
        public var batch: Int
        public var contextTokens: Int

        /// Bytes of K and V read per second by the attention kernel.
        public var attentionGBPerSecond: Double { Double(kvByteCount) / attentionSeconds / 1e9 }
        public var memoryGBPerSecond: Double { Double(kvByteCount) / memorySeconds / 1e9 }
        public var ratioToMemory: Double { attentionGBPerSecond / memoryGBPerSecond }
        /// Bytes of K read per second by the key-summary kernel (it reads only K: half the cache).
        public var summaryGBPerSecond: Double { Double(kvByteCount / 2) / summarySeconds / 1e9 }
        /// Bytes of K per second when the keys are contiguous: the kernel without the paged
        /// layout's cost (the hardware prefetcher also pulls in the V that follows each block's K).
        public var contiguousSummaryGBPerSecond: Double { Double(kvByteCount / 2) / contiguousSummarySeconds / 1e9 }
        public var fp32SummaryGBPerSecond: Double { Double(kvByteCount / 2) / fp32SummarySeconds / 1e9 }
        /// Bytes of K per second read by the STREAM-like kernel from the paged blocks' keys alone.
        public var keyReadGBPerSecond: Double { Double(kvByteCount / 2) / keyReadSeconds / 1e9 }
        /// KV tokens attended per second (batch × context ÷ time), for one layer.
        public var tokensPerSecond: Double { Double(batch * contextTokens) / attentionSeconds }
        /// Decode steps per second for one layer (batch ÷ time).
        public var decodeStepsPerSecond: Double { Double(batch) / attentionSeconds }
    }

    public var shape: AttentionShape
    public var contextTokens: Int
    public var batch: Int
    public var threads: Int
    public var tokensPerBlock: Int
    public var iterations: Int
    public var numaNode: Int?

    public init(
        shape: AttentionShape, contextTokens: Int, batch: Int = 1, threads: Int, tokensPerBlock: Int = 16,
        iterations: Int = 5, numaNode: Int? = nil
    ) {
        self.shape = shape
        self.contextTokens = contextTokens
        self.batch = batch
        self.threads = threads
        self.tokensPerBlock = tokensPerBlock
        self.iterations = iterations
        self.numaNode = numaNode
    }

    public func run(progress: (String) -> Void = { _ in }) throws(TierKVError) -> Result {
        guard contextTokens >= 1, batch >= 1, iterations >= 1, tokensPerBlock >= 1 else {
            throw .invalid("context, batch, iterations and tokens per block must all be at least 1")
        }
        // Workers next to the memory they read. A node that does not exist: HostArena names it below.
        let cpus = numaNode.flatMap { NUMATopology.current().usableCPUs(ofNode: $0) }
        if let numaNode, cpus?.isEmpty == true {
            throw .invalid("NUMA node \(numaNode) has no CPU this process may run on; run the benchmark without --numa-node or on that node's CPUs")
        }
        let attention = try CPUAttention(threadCount: threads, cpus: cpus)
        let elementsPerToken = shape.kvHeads * shape.headDim
        let halfBlockBytes = tokensPerBlock * elementsPerToken * shape.dtype.byteSize
        let blocksPerSequence = (contextTokens + tokensPerBlock - 1) / tokensPerBlock
        let arena = try HostArena(.init(
            slotByteCount: 2 * halfBlockBytes, slotCount: batch * blocksPerSequence, numaNode: numaNode))
        progress("filling \(ByteCount(UInt64(arena.slotStride * arena.slotCount))) of KV in the host arena")
        Self.fill(arena.region, dtype: shape.dtype)

        var blocks: [KVBlockView] = []
        blocks.reserveCapacity(batch * blocksPerSequence)
        for sequence in 0..<batch {
            for block in 0..<blocksPerSequence {
                let slot = sequence * blocksPerSequence + block
                let tokens = min(tokensPerBlock, contextTokens - block * tokensPerBlock)
                blocks.append(KVBlockView(keys: arena.address(ofSlot: slot), values: arena.address(ofSlot: slot) + halfBlockBytes, tokenCount: tokens))
            }
        }
        let kvBytes = batch * contextTokens * elementsPerToken * shape.dtype.byteSize * 2
        var generator = SplitMix(seed: 42)
        let query = (0..<(batch * shape.queryHeads * shape.headDim)).map { _ in Float(generator.unit() * 2 - 1) }
        let output = UnsafeMutablePointer<Float>.allocate(capacity: batch * shape.queryHeads * shape.headDim)
        let maxima = UnsafeMutablePointer<Float>.allocate(capacity: batch * shape.queryHeads)
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: batch * shape.queryHeads)
        let summaries = UnsafeMutablePointer<Float>.allocate(capacity: batch * blocksPerSequence * shape.kvHeads * 3 * shape.headDim)
        defer { [output, maxima, sums, summaries].forEach { $0.deallocate() } }

        var attentionTimes: [Double] = []
        var memoryTimes: [Double] = []
        var summaryTimes: [Double] = []
        var contiguousSummaryTimes: [Double] = []
        var fp32SummaryTimes: [Double] = []
        var keyReadTimes: [Double] = []
        let keysOnly = try HostArena(.init(
            slotByteCount: halfBlockBytes, slotCount: batch * blocksPerSequence, numaNode: numaNode))
        Self.fill(keysOnly.region, dtype: shape.dtype)
        let keyBlocks = blocks.indices.map { index in
            KVBlockView(keys: keysOnly.address(ofSlot: index), values: keysOnly.address(ofSlot: index), tokenCount: blocks[index].tokenCount)
        }
        try query.withUnsafeBufferPointer { (queries) throws(TierKVError) in
            try blocks.withUnsafeBufferPointer { (blockBuffer) throws(TierKVError) in
                let sequences = (0..<batch).map { index in
                    AttentionSequence(
                        query: queries.baseAddress! + index * shape.queryHeads * shape.headDim,
                        blocks: UnsafeBufferPointer(rebasing: blockBuffer[(index * blocksPerSequence)..<((index + 1) * blocksPerSequence)]),
                        output: output + index * shape.queryHeads * shape.headDim, maxima: maxima + index * shape.queryHeads,
                        sums: sums + index * shape.queryHeads)
                }
                try attention.attend(shape, batch: sequences)  // warm-up: grows the workspace
                for iteration in 0..<iterations {
                    memoryTimes.append(Self.time { _ = Self.readAll(arena, slots: batch * blocksPerSequence, pool: attention.pool) })
                    attentionTimes.append(try Self.timeThrowing { () throws(TierKVError) in try attention.attend(shape, batch: sequences) })
                    summaryTimes.append(Self.time { attention.keySummariesFP16(shape, blocks: blockBuffer, into: summaries) })
                    contiguousSummaryTimes.append(Self.time {
                        keyBlocks.withUnsafeBufferPointer { attention.keySummariesFP16(shape, blocks: $0, into: summaries) }
                    })
                    fp32SummaryTimes.append(Self.time { attention.keySummaries(shape, blocks: blockBuffer, into: summaries) })
                    keyReadTimes.append(Self.time { _ = Self.readKeys(blockBuffer, byteCount: halfBlockBytes, pool: attention.pool) })
                    progress("iteration \(iteration + 1)/\(iterations): attention \(Self.milliseconds(attentionTimes.last!)) ms, memory read \(Self.milliseconds(memoryTimes.last!)) ms")
                }
            }
        }
        return Result(
            kvByteCount: kvBytes, attentionSeconds: median(attentionTimes), memorySeconds: median(memoryTimes),
            summarySeconds: median(summaryTimes), contiguousSummarySeconds: median(contiguousSummaryTimes),
            fp32SummarySeconds: median(fp32SummaryTimes), keyReadSeconds: median(keyReadTimes), threads: attention.pool.threadCount, batch: batch, contextTokens: contextTokens)
    }

    /// Reads the K and V bytes of every slot with the STREAM-like kernel on the pool's threads.
    static func readAll(_ arena: HostArena, slots: Int, pool: WorkerPool) -> Float {
        let chunkSlots = max(1, (4 << 20) / arena.slotStride)
        let chunks = (slots + chunkSlots - 1) / chunkSlots
        let partials = UnsafeMutablePointer<Float>.allocate(capacity: chunks)
        defer { partials.deallocate() }
        pool.run(count: chunks) { _, chunk in
            let first = chunk * chunkSlots
            let count = min(chunkSlots, slots - first)
            partials[chunk] = MemoryReadKernel.read(UnsafeRawBufferPointer(start: arena.address(ofSlot: first), count: count * arena.slotStride))
        }
        return (0..<chunks).reduce(0) { $0 + partials[$1] }
    }

    /// Reads the keys of every block (`byteCount` from each `keys` address) with the STREAM-like
    /// kernel, in runs of consecutive blocks per worker as the summary batch call takes them.
    static func readKeys(_ blocks: UnsafeBufferPointer<KVBlockView>, byteCount: Int, pool: WorkerPool) -> Float {
        let runs = min(blocks.count, pool.threadCount * 8)
        guard runs > 0 else { return 0 }
        let partials = UnsafeMutablePointer<Float>.allocate(capacity: runs)
        defer { partials.deallocate() }
        pool.run(count: runs) { _, run in
            var total: Float = 0
            for index in (run * blocks.count / runs)..<((run + 1) * blocks.count / runs) {
                total += MemoryReadKernel.read(UnsafeRawBufferPointer(start: blocks[index].keys, count: byteCount))
            }
            partials[run] = total
        }
        return (0..<runs).reduce(0) { $0 + partials[$1] }
    }

    /// Fills memory with finite values of `dtype` in about [-2, 2].
    static func fill(_ region: UnsafeMutableRawBufferPointer, dtype: DType) {
        var generator = SplitMix(seed: 7)
        let words = region.count / 8
        let base = region.baseAddress!.assumingMemoryBound(to: UInt64.self)
        for index in 0..<words {
            let random = generator.next()
            switch dtype {
            case .fp32:
                // Two floats: sign, exponent 126 or 127, random mantissa.
                let mask: UInt64 = 0x807F_FFFF_807F_FFFF
                base[index] = (random & mask) | 0x3F00_0000_3F00_0000 | ((random >> 7) & 0x0080_0000_0080_0000)
            case .bf16:
                base[index] = (random & 0x807F_807F_807F_807F) | 0x3F00_3F00_3F00_3F00 | ((random >> 7) & 0x0080_0080_0080_0080)
            default:
                base[index] = (random & 0x83FF_83FF_83FF_83FF) | 0x3800_3800_3800_3800 | ((random >> 10) & 0x0400_0400_0400_0400)
            }
        }
    }

    static func time(_ body: () -> Void) -> Double {
        let start = monotonicSeconds()
        body()
        return monotonicSeconds() - start
    }

    static func timeThrowing(_ body: () throws(TierKVError) -> Void) throws(TierKVError) -> Double {
        let start = monotonicSeconds()
        try body()
        return monotonicSeconds() - start
    }

    public static func monotonicSeconds() -> Double { Double(MonotonicClock().nanoseconds()) / 1e9 }

    static func milliseconds(_ seconds: Double) -> String { String((seconds * 100_000).rounded() / 100) }
}

/// SplitMix64, for reproducible benchmark data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
