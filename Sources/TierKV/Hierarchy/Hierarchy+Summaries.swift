import TierKVCore
import TierKVPrediction

extension Hierarchy {
    /// What `rebuildKeySummaries` did.
    public struct SummaryRebuild: Sendable, Equatable {
        /// Blocks held without a summary when the call began.
        public var missing: Int
        /// Of those, the blocks that now have one.
        public var rebuilt: Int
        /// Blocks that could not be read back (corrupt or unreadable cold copies) or were
        /// dropped meanwhile: still without a summary.
        public var failed: Int

        public init(missing: Int, rebuilt: Int, failed: Int) {
            self.missing = missing
            self.rebuilt = rebuilt
            self.failed = failed
        }
    }

    /// Computes the key summaries (and sketches) of every block held without one: after a
    /// restart, the blocks found in cold have none until they come back to warm, so a predictor
    /// could not rank them, and ranking cold blocks is what a prefetch is for. Each block is
    /// brought to warm at prefetch priority, summarised on arrival and released, `batchBlocks`
    /// at a time (default: a quarter of the warm tier, at least 1). This reads the blocks from
    /// cold once and passes them through warm, where they compete with the engine's blocks like
    /// any prefetch: call it at start-up, or from a background thread.
    /// - Parameter progress: called after each batch with (done, missing).
    /// - Throws: `.invalid` when the hierarchy computes no summaries (`keySummaries` is not
    ///   `.fromStoredKeys`); the errors of `makeResident`.
    @discardableResult
    public func rebuildKeySummaries(
        batchBlocks: Int? = nil, progress: ((_ done: Int, _ missing: Int) -> Void)? = nil
    ) throws(TierKVError) -> SummaryRebuild {
        guard let summaries, case .fromStoredKeys = configuration.keySummaries else {
            throw .invalid("key summaries are rebuilt from stored keys; this hierarchy's keySummaries is not .fromStoredKeys")
        }
        if let batchBlocks, batchBlocks < 1 { throw .invalid("batchBlocks is \(batchBlocks); expected ≥ 1") }
        let missing = state.withLock { state in state.index.keys.filter { !summaries.contains($0) } }
        let batch = max(1, batchBlocks ?? configuration.warmCapacityBlocks / 4)
        var done = 0
        for start in stride(from: 0, to: missing.count, by: batch) {
            let keys = Array(missing[start..<min(start + batch, missing.count)])
            let request = try makeResident(keys, in: .warm, priority: .prefetch)
            request.wait()
            release(request)
            done += keys.count
            progress?(done, missing.count)
        }
        let rebuilt = missing.count { summaries.contains($0) }
        return SummaryRebuild(missing: missing.count, rebuilt: rebuilt, failed: missing.count - rebuilt)
    }
}
