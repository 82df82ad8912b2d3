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

    /// Host bytes the summaries take now (slots in use and free).
    public var byteCount: Int { state.withLock { $0.storage.count * 2 } }

    public func contains(_ key: BlockKey) -> Bool { state.withLock { $0.index[key] != nil } }

    /// Stores the summary of `key` (replacing any earlier one) from fp32 values in
    /// `KeySummaryKernel`'s order, `[head][min, max, mean][dim]`.
    /// - Throws: `.invalidArgument` when `summary` does not hold `shape.valueCount` values.
    public func insert(_ key: BlockKey, summary: UnsafeBufferPointer<Float>) throws(TierKVError) {
        guard summary.count == shape.valueCount, let base = summary.baseAddress else {
            throw .invalid("summary of \(key) has \(summary.count) values; expected \(shape.valueCount) (\(shape.kvHeads) KV heads × 3 × \(shape.headDim))")
        }
        store(key) { slot in BlockScoreKernel.narrow(base, kvHeads: shape.kvHeads, headDim: shape.headDim, into: slot) }
    }

    /// Finds or makes `key`'s slot and lets `write` fill its `shape.byteCount` bytes, under the lock.
    private func store(_ key: BlockKey, _ write: (UnsafeMutableRawPointer) -> Void) {
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
            }
            state.index[key] = slot
            state.storage.withUnsafeMutableBytes { bytes in write(bytes.baseAddress! + Int(slot) * shape.byteCount) }
        }
    }

    /// Computes and stores the summary of a block's keys: `tokenCount` rows of
    /// `[kvHead][headDim]` elements of `dtype` (the K half of a TierKV block).
    /// - Throws: `.invalidArgument` for fp8 keys or a token count outside 1...65536.
    public func insert(_ key: BlockKey, keys: UnsafeRawPointer, dtype: DType, tokenCount: Int) throws(TierKVError) {
        guard dtype != .fp8E4M3 else { throw .invalid("key summaries read fp16, bf16 or fp32 keys, not \(dtype)") }
        guard tokenCount >= 1, tokenCount <= KVLayout.maximumTokensPerBlock else {
            throw .invalid("a block of \(tokenCount) tokens cannot be summarised; expected 1...\(KVLayout.maximumTokensPerBlock)")
        }
        // The kernel writes the table's fp16 form (minima rounded down, maxima up) on the stack;
        // the lock is held only for the copy.
        withUnsafeTemporaryAllocation(byteCount: shape.byteCount, alignment: 32) { summary in
            KeySummaryKernel.summarizeFP16(
                dtype: dtype, keys: keys, tokenCount: tokenCount, kvHeads: shape.kvHeads, headDim: shape.headDim,
                output: summary.baseAddress!)
            store(key) { slot in slot.copyMemory(from: summary.baseAddress!, byteCount: summary.count) }
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
    }

    /// Raw (unscaled) scores of `keys` for a query of `shape.queryHeads × headDim` fp32, per
    /// block and KV head (`[block][head]`), the query heads of a group combined by max. Blocks
    /// without a summary get `-infinity` on every head.
    /// - Throws: `.invalidArgument` when the query has the wrong number of values.
    public func scores(_ score: Score, query: [Float], keys: [BlockKey]) throws(TierKVError) -> [Float] {
        guard query.count == shape.queryValueCount else {
            throw .invalid("query has \(query.count) values; expected \(shape.queryHeads) query heads × \(shape.headDim)")
        }
        var output = [Float](repeating: -.infinity, count: keys.count * shape.kvHeads)
        state.withLock { state in
            var slots: [Int32] = [], positions: [Int] = []
            slots.reserveCapacity(keys.count)
            positions.reserveCapacity(keys.count)
            for (position, key) in keys.enumerated() {
                guard let slot = state.index[key] else { continue }
                slots.append(slot)
                positions.append(position)
            }
            var found = [Float](repeating: 0, count: slots.count * shape.kvHeads)
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
                            }
                        }
                    }
                }
            }
            for (index, position) in positions.enumerated() {
                for head in 0..<shape.kvHeads { output[position * shape.kvHeads + head] = found[index * shape.kvHeads + head] }
            }
        }
        return output
    }
}
