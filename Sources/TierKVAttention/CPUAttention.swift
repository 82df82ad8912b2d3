import Synchronization
import TierKVAttentionKernels
import TierKVCore

@_exported import struct TierKVAttentionKernels.KVBlockView

/// The shape of a decode-attention problem.
public struct AttentionShape: Sendable, Hashable {
    public var queryHeads: Int
    public var kvHeads: Int
    public var headDim: Int
    /// Storage type of K and V (fp16, bf16 or fp32). Queries are fp32.
    public var dtype: DType
    /// Softmax scale; default 1/√headDim.
    public var scale: Float

    public static let supportedHeadDims = [64, 80, 96, 128, 256]

    /// - Throws: `.invalidArgument` naming the bad value.
    public init(queryHeads: Int, kvHeads: Int, headDim: Int, dtype: DType, scale: Float? = nil) throws(TierKVError) {
        guard kvHeads >= 1, queryHeads >= kvHeads, queryHeads % kvHeads == 0 else {
            throw .invalid("queryHeads (\(queryHeads)) must be a positive multiple of kvHeads (\(kvHeads))")
        }
        guard Self.supportedHeadDims.contains(headDim) else {
            throw .invalid("head dim \(headDim) is not supported; CPU attention supports \(Self.supportedHeadDims)")
        }
        guard dtype != .fp8E4M3 else { throw .invalid("CPU attention reads fp16, bf16 or fp32 K/V, not \(dtype)") }
        let resolved = scale ?? 1 / Float(headDim).squareRoot()
        guard resolved.isFinite, resolved > 0 else { throw .invalid("softmax scale \(resolved) must be positive and finite") }
        self.queryHeads = queryHeads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.dtype = dtype
        self.scale = resolved
    }

    public init(layout: KVLayout, scale: Float? = nil) throws(TierKVError) {
        try self.init(queryHeads: layout.queryHeads, kvHeads: layout.kvHeads, headDim: layout.headDim, dtype: layout.dtype, scale: scale)
    }

    public var groupSize: Int { queryHeads / kvHeads }
}

/// One sequence of a batched call: its query, its blocks, and where its results go.
public struct AttentionSequence: @unchecked Sendable {
    // @unchecked: views of caller memory, alive and unshared for the duration of the call.
    /// `queryHeads × headDim` fp32.
    public var query: UnsafePointer<Float>
    public var blocks: UnsafeBufferPointer<KVBlockView>
    /// `queryHeads × headDim` fp32: the normalised output over all `blocks`.
    public var output: UnsafeMutablePointer<Float>
    /// `queryHeads` each: `m` and `l` of the result, so it can merge with parts computed elsewhere.
    public var maxima: UnsafeMutablePointer<Float>
    public var sums: UnsafeMutablePointer<Float>

    public init(
        query: UnsafePointer<Float>, blocks: UnsafeBufferPointer<KVBlockView>, output: UnsafeMutablePointer<Float>,
        maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>
    ) {
        self.query = query
        self.blocks = blocks
        self.output = output
        self.maxima = maxima
        self.sums = sums
    }
}

/// Decode attention on CPU threads over KV blocks in host memory (the warm tier), returning
/// partials that merge exactly with the GPU's (see `AttentionPartial`).
///
/// Work is split over (sequence, block range) flash-decoding style and the splits are merged
/// by log-sum-exp; every head of a token row is handled together so K and V stream in address
/// order, and query heads of a GQA group share each converted row. Calls on one instance
/// are serialised (it owns one scratch workspace); use one instance per engine thread for
/// concurrency. After the workspace has grown to a shape, calls allocate nothing.
public final class CPUAttention: @unchecked Sendable {
    // @unchecked: the workspace is only touched while `lock` is held.
    public let pool: WorkerPool
    private let lock = PlainLock()
    private var workspace = Workspace()

    /// - Parameters:
    ///   - threadCount: workers, the calling thread included (default: every online CPU, or
    ///     every CPU in `cpus`).
    ///   - spinMicroseconds: how long idle workers poll for the next call before they sleep
    ///     (default 50 µs: the next layer's call of a decode step usually comes sooner; 0 when
    ///     the CPUs are needed for other work between calls).
    ///   - cpus: the CPUs the worker threads run on, e.g. the CPUs of the NUMA node that holds
    ///     the warm arena (`NUMATopology`), so the K/V reads stay on that node; nil leaves them
    ///     to the scheduler. The calling thread keeps its own affinity.
    /// - Throws: `.unsupported` when the CPU lacks AVX2/FMA/F16C (instead of SIGILL later);
    ///   `.invalidArgument` for `cpus` this process may not run on.
    public init(threadCount: Int? = nil, spinMicroseconds: Int = WorkerPool.defaultSpinMicroseconds, cpus: [Int]? = nil) throws(TierKVError) {
        try CPUFeatures.current.requireKernelSupport()
        if let cpus {
            pool = try WorkerPool(threadCount: threadCount ?? cpus.count, spinMicroseconds: spinMicroseconds, cpus: cpus)
        } else {
            pool = WorkerPool(threadCount: threadCount ?? Self.onlineCPUCount, spinMicroseconds: spinMicroseconds)
        }
    }

    static var onlineCPUCount: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    /// Attention for many sequences at once (one decode step of a batch).
    /// - Parameter splits: block ranges per (sequence, KV head); nil picks enough to keep every
    ///   thread busy.
    public func attend(_ shape: AttentionShape, batch: [AttentionSequence], splits: Int? = nil) throws(TierKVError) {
        try batch.withUnsafeBufferPointer { (batch) throws(TierKVError) in try attend(shape, batch, splits) }
    }

    private func attend(_ shape: AttentionShape, _ batch: UnsafeBufferPointer<AttentionSequence>, _ splits: Int?) throws(TierKVError) {
        if let splits, splits < 1 { throw .invalid("splits must be at least 1, got \(splits)") }
        for sequence in batch {
            for block in sequence.blocks where block.tokenCount < 0 {
                throw .invalid("a block has a negative token count (\(block.tokenCount))")
            }
        }
        lock.withLock { run(shape, batch, splits) }
    }

    /// Attention for one sequence.
    public func attend(
        _ shape: AttentionShape, query: UnsafePointer<Float>, blocks: UnsafeBufferPointer<KVBlockView>,
        output: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>,
        splits: Int? = nil
    ) throws(TierKVError) {
        // A one-element batch on the stack: a call allocates nothing.
        let sequence = AttentionSequence(query: query, blocks: blocks, output: output, maxima: maxima, sums: sums)
        try withUnsafePointer(to: sequence) { (pointer) throws(TierKVError) in
            try attend(shape, UnsafeBufferPointer(start: pointer, count: 1), splits)
        }
    }

    /// Array convenience: the partial over `blocks` for a query of `queryHeads × headDim` floats.
    public func partial(
        _ shape: AttentionShape, query: [Float], blocks: [KVBlockView], splits: Int? = nil
    ) throws(TierKVError) -> AttentionPartial {
        guard query.count == shape.queryHeads * shape.headDim else {
            throw .invalid("query has \(query.count) floats; expected queryHeads × headDim = \(shape.queryHeads * shape.headDim)")
        }
        var result = AttentionPartial.empty(heads: shape.queryHeads, headDim: shape.headDim)
        try query.withUnsafeBufferPointer { (queryBuffer) throws(TierKVError) in
            try blocks.withUnsafeBufferPointer { (blockBuffer) throws(TierKVError) in
                try result.output.withUnsafeMutableBufferPointer { (output) throws(TierKVError) in
                    try result.maxima.withUnsafeMutableBufferPointer { (maxima) throws(TierKVError) in
                        try result.sums.withUnsafeMutableBufferPointer { (sums) throws(TierKVError) in
                            try attend(
                                shape, query: queryBuffer.baseAddress!, blocks: blockBuffer, output: output.baseAddress!,
                                maxima: maxima.baseAddress!, sums: sums.baseAddress!, splits: splits)
                        }
                    }
                }
            }
        }
        return result
    }

    /// Key summaries of one block (per KV head: min, max and mean of its keys), `kvHeads × 3 ×
    /// headDim` floats in `[head][min, max, mean][dim]` order.
    public static func keySummary(_ shape: AttentionShape, keys: UnsafeRawPointer, tokenCount: Int, into output: UnsafeMutablePointer<Float>) {
        KeySummaryKernel.summarize(
            dtype: shape.dtype, keys: keys, tokenCount: tokenCount, kvHeads: shape.kvHeads, headDim: shape.headDim,
            output: output)
    }

    /// Key summaries of many blocks on the worker threads: block `i`'s summary goes to
    /// `output + i · kvHeads · 3 · headDim`. Each worker takes runs of consecutive blocks and
    /// prefetches the next block's keys while it sums the current one.
    public func keySummaries(_ shape: AttentionShape, blocks: UnsafeBufferPointer<KVBlockView>, into output: UnsafeMutablePointer<Float>) {
        summarizeInRuns(shape, blocks, UnsafeMutableRawPointer(output), .fp32)
    }

    /// `keySummaries` written as fp16 in the format the prediction table stores
    /// (`KeySummaryKernel.summarizeFP16`: minima rounded down, maxima up): block `i`'s summary at
    /// `output + i · kvHeads · 3 · headDim · 2` bytes. A 16-byte-aligned `output` is written with
    /// non-temporal stores (fenced before return): the summaries of a large batch go to memory
    /// without first being read into the cache, a third less traffic than ordinary stores.
    public func keySummariesFP16(_ shape: AttentionShape, blocks: UnsafeBufferPointer<KVBlockView>, into output: UnsafeMutableRawPointer) {
        let bytes = shape.kvHeads * 3 * shape.headDim * 2
        let streaming = Int(bitPattern: output) % 16 == 0 && bytes % 16 == 0
        summarizeInRuns(shape, blocks, output, .fp16(streaming: streaming))
    }

    /// Summarises `blocks` in runs of consecutive blocks, several runs per worker.
    private func summarizeInRuns(
        _ shape: AttentionShape, _ blocks: UnsafeBufferPointer<KVBlockView>, _ output: UnsafeMutableRawPointer, _ format: SummaryTask.Format
    ) {
        let runs = min(blocks.count, pool.threadCount * 8)
        pool.run(count: runs, SummaryTask(shape: shape, blocks: blocks, output: output, format: format, runs: runs))
    }

    /// Key summaries of a batch of blocks, one run of consecutive blocks per item; each block's
    /// successor in the run is prefetched while it is summed.
    private struct SummaryTask: WorkerPoolTask {
        enum Format {
            case fp32
            case fp16(streaming: Bool)
        }

        let shape: AttentionShape
        let blocks: UnsafeBufferPointer<KVBlockView>
        let output: UnsafeMutableRawPointer
        let format: Format
        let runs: Int

        func run(worker: Int, item run: Int) {
            let values = shape.kvHeads * 3 * shape.headDim
            let range = (run * blocks.count / runs)..<((run + 1) * blocks.count / runs)
            for index in range {
                let block = blocks[index]
                let next = index + 1 < range.upperBound ? blocks[index + 1] : nil
                switch format {
                case .fp32:
                    KeySummaryKernel.summarize(
                        dtype: shape.dtype, keys: block.keys, tokenCount: block.tokenCount, kvHeads: shape.kvHeads,
                        headDim: shape.headDim, output: (output + index * values * 4).assumingMemoryBound(to: Float.self),
                        next: next?.keys, nextTokenCount: next?.tokenCount ?? 0)
                case .fp16(let streaming):
                    KeySummaryKernel.summarizeFP16(
                        dtype: shape.dtype, keys: block.keys, tokenCount: block.tokenCount, kvHeads: shape.kvHeads,
                        headDim: shape.headDim, output: output + index * values * 2, next: next?.keys,
                        nextTokenCount: next?.tokenCount ?? 0, streaming: streaming)
                    if streaming && next == nil { KeySummaryKernel.fenceStreamingStores() }
                }
            }
        }
    }

    // MARK: Work splitting

    /// One block range of one sequence, all heads (rows are read whole; see the kernel).
    private struct Item {
        var sequence: Int
        var firstBlock: Int
        var endBlock: Int
    }

    /// Scratch that grows to the largest problem seen and is then reused.
    private struct Workspace {
        var items: [Item] = []
        var partialOutputs = GrowableFloats()
        var partialMaxima = GrowableFloats()
        var partialSums = GrowableFloats()
        var scratch = GrowableFloats()
        var scratchPerThread = 0

        mutating func reserve(items count: Int, shape: AttentionShape, threads: Int) {
            partialOutputs.reserve(count * shape.queryHeads * shape.headDim)
            partialMaxima.reserve(count * shape.queryHeads)
            partialSums.reserve(count * shape.queryHeads)
            scratchPerThread = DecodeAttentionKernel.scratchFloatCount(
                queryHeads: shape.queryHeads, kvHeads: shape.kvHeads, headDim: shape.headDim)
            scratch.reserve(scratchPerThread * threads)
            items.reserveCapacity(count)
        }
    }

    /// A float buffer that only grows (doubling), so steady-state calls allocate nothing.
    private struct GrowableFloats {
        var pointer: UnsafeMutablePointer<Float>?
        var capacity = 0

        mutating func reserve(_ count: Int) {
            guard count > capacity else { return }
            pointer?.deallocate()
            capacity = max(count, capacity * 2)
            pointer = .allocate(capacity: capacity)
        }

        func release() { pointer?.deallocate() }
    }

    private func run(_ shape: AttentionShape, _ batch: UnsafeBufferPointer<AttentionSequence>, _ requestedSplits: Int?) {
        let threads = pool.threadCount
        // Enough items for 4 per thread (load balance), but no split smaller than one block.
        let automatic = max(1, (4 * threads + batch.count - 1) / max(1, batch.count))
        let splits = requestedSplits ?? automatic
        workspace.items.removeAll(keepingCapacity: true)
        for (index, sequence) in batch.enumerated() {
            let blocks = sequence.blocks.count
            let parts = max(1, min(splits, blocks))
            for part in 0..<parts {
                workspace.items.append(Item(sequence: index, firstBlock: part * blocks / parts, endBlock: (part + 1) * blocks / parts))
            }
        }
        let itemCount = workspace.items.count
        workspace.reserve(items: itemCount, shape: shape, threads: threads)
        let outputs = workspace.partialOutputs.pointer!
        let maxima = workspace.partialMaxima.pointer!
        let sums = workspace.partialSums.pointer!
        let scratch = workspace.scratch.pointer!
        let scratchStride = workspace.scratchPerThread
        let items = workspace.items
        items.withUnsafeBufferPointer { items in
            pool.run(count: itemCount, DecodeTask(
                shape: shape, batch: batch, items: items, outputs: outputs, maxima: maxima, sums: sums, scratch: scratch,
                scratchStride: scratchStride))
        }
        mergeSplits(shape, batch, items, outputs, maxima, sums)
    }

    /// The decode items of one call, as the pool runs them (a task, not a closure: nothing to box).
    private struct DecodeTask: WorkerPoolTask {
        let shape: AttentionShape
        let batch: UnsafeBufferPointer<AttentionSequence>
        let items: UnsafeBufferPointer<Item>
        let outputs: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>
        let scratch: UnsafeMutablePointer<Float>
        let scratchStride: Int

        func run(worker: Int, item index: Int) {
            let item = items[index]
            let sequence = batch[item.sequence]
            let heads = shape.queryHeads, dim = shape.headDim
            DecodeAttentionKernel.partial(
                dtype: shape.dtype, query: sequence.query, scale: shape.scale, groupSize: shape.groupSize,
                headDim: dim, kvHeads: shape.kvHeads,
                blocks: UnsafeBufferPointer(rebasing: sequence.blocks[item.firstBlock..<item.endBlock]),
                output: outputs + index * heads * dim, maxima: maxima + index * heads, sums: sums + index * heads,
                scratch: scratch + worker * scratchStride)
        }
    }

    /// Items of one sequence are adjacent; merge each run into the sequence's output by LSE.
    private func mergeSplits(
        _ shape: AttentionShape, _ batch: UnsafeBufferPointer<AttentionSequence>, _ items: [Item], _ outputs: UnsafeMutablePointer<Float>,
        _ maxima: UnsafeMutablePointer<Float>, _ sums: UnsafeMutablePointer<Float>
    ) {
        let heads = shape.queryHeads
        let dim = shape.headDim
        var start = 0
        while start < items.count {
            var end = start + 1
            while end < items.count, items[end].sequence == items[start].sequence { end += 1 }
            let sequence = batch[items[start].sequence]
            for head in 0..<heads {
                var maximum = -Float.infinity
                for item in start..<end where sums[item * heads + head] > 0 {
                    maximum = max(maximum, maxima[item * heads + head])
                }
                let destination = sequence.output + head * dim
                for index in 0..<dim { destination[index] = 0 }
                var total: Float = 0
                if maximum > -.infinity {
                    for item in start..<end where sums[item * heads + head] > 0 {
                        let weight = sums[item * heads + head] * expf(maxima[item * heads + head] - maximum)
                        total += weight
                        let source = outputs + (item * heads + head) * dim
                        for index in 0..<dim { destination[index] += weight * source[index] }
                    }
                    let inverse = 1 / total
                    for index in 0..<dim { destination[index] *= inverse }
                }
                sequence.maxima[head] = maximum
                sequence.sums[head] = total
            }
            start = end
        }
    }

    deinit {
        workspace.partialOutputs.release()
        workspace.partialMaxima.release()
        workspace.partialSums.release()
        workspace.scratch.release()
    }
}

#if canImport(Glibc)
import Glibc
#endif
