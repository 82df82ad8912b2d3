import TierKVAttentionKernels
import TierKVCore

/// Key summaries for every block a hierarchy holds, in any tier: small enough to stay in host
/// memory for all of them (`shape.byteCount` per block) while the blocks themselves sit in warm
/// or cold. Predictors score blocks from it without touching the blocks.
///
/// Thread-safe: one lock around the index and the fp16 storage; scoring holds it for one pass
/// over the candidates (no I/O under it).
public final class BlockSummaryTable: @unchecked Sendable {
    // @unchecked: every mutable field is behind `state`'s lock.
    public let shape: KeySummaryShape
    private let state: Locked<State>

    private struct State {
        var index: [BlockKey: Int32] = [:]
        /// fp16 summaries, `shape.byteCount` bytes per slot.
        var storage: [UInt16] = []
        /// Key sketches, `shape.sketchByteCount` bytes per slot (empty without a sketch).
        var sketches: [UInt8] = []
        /// Rows each slot's sketch holds.
        var tokenCounts: [UInt32] = []
        var freeSlots: [Int32] = []
    }

    /// - Throws: `.unsupportedHardware` when this CPU lacks AVX2/FMA/F16C (the scoring kernels).
    public init(shape: KeySummaryShape) throws(TierKVError) {
        try CPUFeatures.current.requireKernelSupport()
        self.shape = shape
        state = Locked(State())
    }

    /// Blocks with a summary.
    public var count: Int { state.withLock { $0.index.count } }

    /// Host bytes the summaries and sketches take now (slots in use and free).
    public var byteCount: Int { state.withLock { $0.storage.count * 2 + $0.sketches.count } }

    public func contains(_ key: BlockKey) -> Bool { state.withLock { $0.index[key] != nil } }

    /// Stores the summary of `key` (replacing any earlier one) from fp32 values in
    /// `KeySummaryKernel`'s order, `[head][min, max, mean][dim]`.
    /// - Throws: `.invalidArgument` when `summary` does not hold `shape.valueCount` values, or
    ///   when the table keeps sketches (they need the keys: use `insert(_:keys:dtype:tokenCount:)`).
    public func insert(_ key: BlockKey, summary: UnsafeBufferPointer<Float>) throws(TierKVError) {
        guard shape.sketchBits == 0 else {
            throw .invalid("this table keeps \(shape.sketchBits)-bit key sketches, which are made from the keys: store \(key) with its keys, not a summary")
        }
        guard summary.count == shape.valueCount, let base = summary.baseAddress else {
            throw .invalid("summary of \(key) has \(summary.count) values; expected \(shape.valueCount) (\(shape.kvHeads) KV heads × 3 × \(shape.headDim))")
        }
        store(key, tokenCount: shape.tokensPerBlock) { slot, _ in BlockScoreKernel.narrow(base, kvHeads: shape.kvHeads, headDim: shape.headDim, into: slot) }
    }

    /// Finds or makes `key`'s slot and lets `write` fill its `shape.byteCount` summary bytes and
    /// `shape.sketchByteCount` sketch bytes, under the lock.
    private func store(_ key: BlockKey, tokenCount: Int, _ write: (UnsafeMutableRawPointer, UnsafeMutableRawPointer?) -> Void) {
        let valuesPerSlot = shape.valueCount
        state.withLock { state in
            let slot: Int32
            if let existing = state.index[key] {
                slot = existing
            } else if let free = state.freeSlots.popLast() {
                slot = free
            } else {
                slot = Int32(state.storage.count / valuesPerSlot)
                state.storage.append(contentsOf: repeatElement(0, count: valuesPerSlot))
                state.sketches.append(contentsOf: repeatElement(0, count: shape.sketchByteCount))
                state.tokenCounts.append(0)
            }
            state.index[key] = slot
            state.tokenCounts[Int(slot)] = UInt32(tokenCount)
            state.storage.withUnsafeMutableBytes { summaries in
                state.sketches.withUnsafeMutableBytes { sketches in
                    write(
                        summaries.baseAddress! + Int(slot) * shape.byteCount,
                        sketches.baseAddress.map { $0 + Int(slot) * shape.sketchByteCount })
                }
            }
        }
    }

    /// Computes and stores the summary (and the sketch, when the shape has one) of a block's
    /// keys: `tokenCount` rows of `[kvHead][headDim]` elements of `dtype` (the K half of a TierKV
    /// block).
    /// - Throws: `.invalidArgument` for fp8 keys or a token count outside 1...65536 (outside
    ///   1...`shape.tokensPerBlock` with a sketch).
    public func insert(_ key: BlockKey, keys: UnsafeRawPointer, dtype: DType, tokenCount: Int) throws(TierKVError) {
        guard dtype != .fp8E4M3 else { throw .invalid("key summaries read fp16, bf16 or fp32 keys, not \(dtype)") }
        let limit = shape.sketchBits > 0 ? shape.tokensPerBlock : KVLayout.maximumTokensPerBlock
        guard tokenCount >= 1, tokenCount <= limit else {
            throw .invalid("a block of \(tokenCount) tokens cannot be summarised; expected 1...\(limit)")
        }
        // The kernels write the table's fp16 form (minima rounded down, maxima up) and the sketch
        // coded against it on the stack; the lock is held only for the copy.
        withUnsafeTemporaryAllocation(byteCount: shape.byteCount + shape.sketchByteCount, alignment: 32) { scratch in
            let summary = scratch.baseAddress!, sketch = summary + shape.byteCount
            KeySummaryKernel.summarizeFP16(
                dtype: dtype, keys: keys, tokenCount: tokenCount, kvHeads: shape.kvHeads, headDim: shape.headDim, output: summary)
            if shape.sketchBits > 0 {
                KeySketchKernel.encode(
                    dtype: dtype, keys: keys, tokenCount: tokenCount, tokensPerBlock: shape.tokensPerBlock, kvHeads: shape.kvHeads,
                    headDim: shape.headDim, bits: shape.sketchBits, summary: summary, output: sketch)
            }
            store(key, tokenCount: tokenCount) { summarySlot, sketchSlot in
                summarySlot.copyMemory(from: summary, byteCount: shape.byteCount)
                sketchSlot?.copyMemory(from: sketch, byteCount: shape.sketchByteCount)
            }
        }
    }

    /// Bytes of one block's record as `copyRecord` writes it: the fp16 summary, then the sketch.
    public var recordByteCount: Int { shape.byteCount + shape.sketchByteCount }

    /// Copies `key`'s summary and sketch (`recordByteCount` bytes, the table's own fp16 and coded
    /// form) into `destination` and returns the rows its sketch holds, or nil when the table has
    /// no summary of `key`. With `restoreRecord`, the way summaries outlive a restart.
    public func copyRecord(of key: BlockKey, into destination: UnsafeMutableRawPointer) -> Int? {
        state.withLock { state in
            guard let slot = state.index[key] else { return nil }
            state.storage.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + Int(slot) * shape.byteCount, byteCount: shape.byteCount) }
            if shape.sketchByteCount > 0 {
                state.sketches.withUnsafeBytes {
                    (destination + shape.byteCount).copyMemory(from: $0.baseAddress! + Int(slot) * shape.sketchByteCount, byteCount: shape.sketchByteCount)
                }
            }
            return Int(state.tokenCounts[Int(slot)])
        }
    }

    /// Installs a record `copyRecord` made (from a table of the same shape), replacing any
    /// summary of `key`.
    /// - Throws: `.invalidArgument` when `tokenCount` is outside what `insert` accepts.
    public func restoreRecord(_ key: BlockKey, tokenCount: Int, from source: UnsafeRawPointer) throws(TierKVError) {
        let limit = shape.sketchBits > 0 ? shape.tokensPerBlock : KVLayout.maximumTokensPerBlock
        guard tokenCount >= 1, tokenCount <= limit else {
            throw .invalid("a summary record of \(key) names \(tokenCount) tokens; expected 1...\(limit)")
        }
        store(key, tokenCount: tokenCount) { summarySlot, sketchSlot in
            summarySlot.copyMemory(from: source, byteCount: shape.byteCount)
            sketchSlot?.copyMemory(from: source + shape.byteCount, byteCount: shape.sketchByteCount)
        }
    }

    /// Forgets the summary of a block that left every tier.
    public func remove(_ key: BlockKey) {
        state.withLock { state in
            guard let slot = state.index.removeValue(forKey: key) else { return }
            state.freeSlots.append(slot)
        }
    }

    /// The stored summary of `key` widened back to fp32 (`[head][min, max, mean][dim]`), or nil.
    public func summary(of key: BlockKey) -> [Float]? {
        state.withLock { state in
            guard let slot = state.index[key] else { return nil }
            let first = Int(slot) * shape.valueCount
            return state.storage[first..<(first + shape.valueCount)].map { Float(Float16(bitPattern: $0)) }
        }
    }

    /// How a query is scored against a block's summary.
    public enum Score: Sendable {
        /// Quest's upper bound of the block's logits (from min and max).
        case bound
        /// The logit of the block's mean key.
        case mean
        /// A Gaussian estimate of the block's log-mass from mean and range (`BlockScoreKernel.moment`),
        /// for logits that will be multiplied by `scale`.
        case moment(scale: Float)
        /// The block's log-mass from its key sketch, token by token (`KeySketchKernel.score`), for
        /// logits that will be multiplied by `scale`. Needs a shape with `sketchBits`.
        case sketch(scale: Float)
    }

    /// Scores per block that `scores(score, ...)` returns: one per query head for `.sketch`, one
    /// per KV head otherwise.
    public func scoredHeads(_ score: Score) -> Int {
        if case .sketch = score { return shape.queryHeads }
        return shape.kvHeads
    }

    /// Raw (unscaled) scores of `keys` for a query of `shape.queryHeads × headDim` fp32, per
    /// block and KV head (`[block][head]`), the query heads of a group combined by max; with
    /// `.sketch`, per block and query head (`[block][queryHead]`, `scoredHeads(score)` of them).
    /// Blocks without a summary get `-infinity` on every head.
    /// - Throws: `.invalidArgument` when the query has the wrong number of values, or for sketch
    ///   scoring on a table without sketches.
    public func scores(_ score: Score, query: [Float], keys: [BlockKey]) throws(TierKVError) -> [Float] {
        guard query.count == shape.queryValueCount else {
            throw .invalid("query has \(query.count) values; expected \(shape.queryHeads) query heads × \(shape.headDim)")
        }
        if case .sketch = score, shape.sketchBits == 0 {
            throw .invalid("sketch scoring needs key sketches; this table keeps summaries only (make it with sketchBits 1, 2 or 4)")
        }
        let heads = scoredHeads(score)
        var output = [Float](repeating: -.infinity, count: keys.count * heads)
        state.withLock { state in
            var slots: [Int32] = [], positions: [Int] = []
            slots.reserveCapacity(keys.count)
            positions.reserveCapacity(keys.count)
            for (position, key) in keys.enumerated() {
                guard let slot = state.index[key] else { continue }
                slots.append(slot)
                positions.append(position)
            }
            var found = [Float](repeating: 0, count: slots.count * heads)
            query.withUnsafeBufferPointer { q in
                state.storage.withUnsafeBytes { storage in
                    slots.withUnsafeBufferPointer { slots in
                        found.withUnsafeMutableBufferPointer { out in
                            guard let storageBase = storage.baseAddress, !slots.isEmpty else { return }
                            switch score {
                            case .bound:
                                BlockScoreKernel.bound(
                                    query: q.baseAddress!, groupSize: shape.groupSize, kvHeads: shape.kvHeads, headDim: shape.headDim,
                                    summaries: storageBase, summaryByteCount: shape.byteCount, slots: slots, output: out.baseAddress!)
                            case .mean:
                                BlockScoreKernel.mean(
                                    query: q.baseAddress!, groupSize: shape.groupSize, kvHeads: shape.kvHeads, headDim: shape.headDim,
                                    summaries: storageBase, summaryByteCount: shape.byteCount, slots: slots, output: out.baseAddress!)
                            case .moment(let scale):
                                BlockScoreKernel.moment(
                                    query: q.baseAddress!, groupSize: shape.groupSize, kvHeads: shape.kvHeads, headDim: shape.headDim,
                                    scale: scale, summaries: storageBase, summaryByteCount: shape.byteCount, slots: slots,
                                    output: out.baseAddress!)
                            case .sketch(let scale):
                                state.sketches.withUnsafeBytes { sketches in
                                    state.tokenCounts.withUnsafeBufferPointer { tokenCounts in
                                        KeySketchKernel.score(
                                            query: q.baseAddress!, groupSize: shape.groupSize, kvHeads: shape.kvHeads, headDim: shape.headDim,
                                            bits: shape.sketchBits, tokensPerBlock: shape.tokensPerBlock, scale: scale,
                                            summaries: storageBase, summaryByteCount: shape.byteCount, sketches: sketches.baseAddress!,
                                            sketchByteCount: shape.sketchByteCount, tokenCounts: tokenCounts.baseAddress!, slots: slots,
                                            output: out.baseAddress!)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            for (index, position) in positions.enumerated() {
                for head in 0..<heads { output[position * heads + head] = found[index * heads + head] }
            }
        }
        return output
    }
}
