#if canImport(Glibc)
import Glibc
#endif
import Testing
import TierKV
import TierKVTestSupport

@Suite struct PrefetcherTests {
    /// A hierarchy whose host→device link takes one block at a time, so a prefetch of several
    /// blocks leaves some queued.
    private func hierarchy(_ directory: TemporaryDirectory, summaries: HierarchyConfiguration.KeySummaries = .off) throws -> Hierarchy {
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 6, warm: 8, cold: 32)
        configuration.maximumBytesInFlightPerLink = smallLayout.blockByteCount
        configuration.admitsNewBlocksToHot = false
        configuration.keySummaries = summaries
        return try Hierarchy(configuration)
    }

    @Test func cancellingAPrefetchUnpinsItAndItsLookupsAreNotHitsOrMisses() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try hierarchy(directory)
        let keys = (0..<4).map { testKey($0) }
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        hierarchy.waitUntilIdle()
        let prefetch = try hierarchy.makeResident(keys, in: .hot, priority: .prefetch)
        prefetch.wait()
        #expect(hierarchy.statistics.hot.pinnedBlocks == 4)
        // Everything arrived: nothing to withdraw; the pins go.
        #expect(hierarchy.cancelReturningWithdrawn(prefetch).isEmpty)
        #expect(hierarchy.statistics.hot.pinnedBlocks == 0)
        for key in keys { #expect(hierarchy.fastestTier(of: key) == .hot) }
        let statistics = hierarchy.statistics
        #expect(statistics.hot.hits == 0 && statistics.hot.misses == 0)
        #expect(statistics.prefetchLookups == 4 && statistics.prefetchLookupsAlreadyResident == 0)
        #expect(hierarchy.cancel(prefetch) == 0)  // cancelling twice is harmless
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func aDemandForAPrefetchedBlockIsNotWithdrawnAndIsServed() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try hierarchy(directory)
        let keys = (0..<4).map { testKey($0) }
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        hierarchy.waitUntilIdle()
        let prefetch = try hierarchy.makeResident(keys, in: .hot, priority: .prefetch)
        let demand = try hierarchy.makeResident([keys[3]], in: .hot, priority: .demand)
        let withdrawn = hierarchy.cancelReturningWithdrawn(prefetch)
        #expect(!withdrawn.contains(keys[3]))
        demand.wait()
        #expect(demand.failures.isEmpty && demand.deviceAddress(at: 0) != nil)
        hierarchy.release(demand)
        // The demand is counted once: a miss if it found the block on its way, a hit if the
        // prefetch landed first (a race the test does not control; under load either happens).
        let hot = hierarchy.statistics.hot
        #expect(hot.hits + hot.misses == 1, "hits \(hot.hits), misses \(hot.misses)")
        #expect(hierarchy.checkInvariants() == [])
    }

    /// Stores eight blocks for sequence 1: block b's first token has `value(b)` in dimension b.
    private func storeDirectionalBlocks(_ hierarchy: Hierarchy, value: (Int) -> Float16) throws -> [BlockKey] {
        var keys: [BlockKey] = []
        for block in 0..<8 {
            let key = testKey(block)
            keys.append(key)
            var bytes = [Float16](repeating: 0, count: smallLayout.blockByteCount / 2)
            bytes[block] = value(block)
            _ = try bytes.withUnsafeBytes { try hierarchy.store(key, position: block, bytes: $0, sequence: SequenceID(1)) }
        }
        hierarchy.waitUntilIdle()
        return keys
    }

    @Test func prefetcherFetchesTheBestPredictedBlocksAndSettlesAgainstTheTruth() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try hierarchy(directory, summaries: .fromStoredKeys)
        let table = try #require(hierarchy.summaries)
        // Eight blocks; block b's first token points along dimension b (fp16 keys, 64 dims).
        let keys = try storeDirectionalBlocks(hierarchy) { _ in 4 }
        #expect(table.count == 8)
        let predictor = QuestBoundPredictor(summaries: table, tokensPerBlock: 16)
        let prefetcher = try Prefetcher(hierarchy: hierarchy, predictor: predictor, configuration: Prefetcher.Configuration(
            budgetBlocks: 2, hostToDeviceBytesPerSecond: 1e12, coldReadBytesPerSecond: 1e12))
        var query = [Float](repeating: 0, count: 2 * 64)  // two query heads share the KV head
        query[5] = 1
        query[64 + 6] = 1
        let candidates = PredictionCandidates(layer: 0, keys: keys, positions: Array(0..<8), newestPosition: 7)
        let ticket = try prefetcher.prefetch(candidates, hint: QueryHint(query), secondsUntilNeeded: 1)
        #expect(Set(ticket.fetched) == [keys[5], keys[6]])
        hierarchy.waitUntilIdle()
        // The layer attended blocks 5 and 7: one hit, one waste.
        var mass = [Float](repeating: 0, count: 8)
        mass[5] = 0.7
        mass[7] = 0.3
        try prefetcher.settle(ticket, actualMass: mass, needed: [keys[5], keys[7]], topK: 2)
        let statistics = prefetcher.statistics
        #expect(statistics.fetchedBlocks == 2 && statistics.fetchedInTopK == 1 && statistics.arrivedInTime == 2)
        #expect(statistics.precision == 0.5 && statistics.recall == 0.5 && statistics.timeliness == 1)
        #expect(statistics.wastedBlocks == 1 && statistics.wastedBytes == Double(smallLayout.blockByteCount))
        #expect(hierarchy.statistics.hot.pinnedBlocks == 0)
        // No time left: nothing is fetched.
        let late = try prefetcher.prefetch(candidates, hint: QueryHint(query.map { -$0 }), secondsUntilNeeded: 0)
        #expect(late.fetched.isEmpty)
        prefetcher.abandon(late)
        // A dropped block's summary goes with it.
        hierarchy.drop(sequence: SequenceID(1))
        try hierarchy.close()
    }

    /// A predictor that answers with fixed masses.
    private final class FixedPredictor: BlockPredictor, @unchecked Sendable {
        let masses: [Float]
        init(_ masses: [Float]) { self.masses = masses }
        var name: String { "fixed" }
        func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? { masses }
    }

    /// With a coverage below 1 the prefetch stops at the best blocks that carry that share of
    /// the predicted mass, however large its budgets; 1 fills them.
    @Test func coverageStopsAtTheBlocksThatCarryThePrediction() throws {
        let predictor = FixedPredictor([0.05, 0.5, 0.0, 0.3, 0.1, 0.05, 0.0, 0.0])
        let keys = (0..<8).map { testKey($0) }
        let candidates = PredictionCandidates(layer: 0, keys: keys, positions: Array(0..<8), newestPosition: 7)
        func fetched(coverage: Double) throws -> Set<BlockKey> {
            let directory = try TemporaryDirectory()
            let tiers = try self.hierarchy(directory)
            defer { try? tiers.close() }
            for (position, key) in keys.enumerated() { try tiers.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
            tiers.waitUntilIdle()
            let prefetcher = try Prefetcher(hierarchy: tiers, predictor: predictor, configuration: Prefetcher.Configuration(
                budgetBlocks: 6, hostToDeviceBytesPerSecond: 1e12, coldReadBytesPerSecond: 1e12, coverage: coverage))
            let ticket = try prefetcher.prefetch(candidates, hint: nil, secondsUntilNeeded: 1)
            defer { prefetcher.abandon(ticket) }
            return Set(ticket.fetched)
        }
        #expect(try fetched(coverage: 0.8) == [keys[1], keys[3]])  // 0.5 + 0.3 covers 0.8
        #expect(try fetched(coverage: 0.85) == [keys[1], keys[3], keys[4]])
        #expect(try fetched(coverage: 1) == [keys[0], keys[1], keys[3], keys[4], keys[5]])  // all above zero
        let directory = try TemporaryDirectory()
        let hierarchy = try hierarchy(directory)
        #expect(throws: TierKVError.self) {
            try Prefetcher(hierarchy: hierarchy, predictor: predictor, configuration: Prefetcher.Configuration(
                budgetBlocks: 6, hostToDeviceBytesPerSecond: 1e12, coldReadBytesPerSecond: 1e12, coverage: 0))
        }
        try hierarchy.close()
    }

    /// The engine's own masses and per-call budget (the C ABI's path) override the predictor and
    /// the configuration, and statistics accumulate as for any prefetch.
    @Test func massesAndBudgetGivenPerCallOverrideTheConfiguration() throws {
        let keys = (0..<8).map { testKey($0) }
        let candidates = PredictionCandidates(layer: 0, keys: keys, positions: Array(0..<8), newestPosition: 7)
        let directory = try TemporaryDirectory()
        let tiers = try hierarchy(directory)
        defer { try? tiers.close() }
        for (position, key) in keys.enumerated() { try tiers.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        tiers.waitUntilIdle()
        let prefetcher = try Prefetcher(hierarchy: tiers, predictor: FixedPredictor([Float](repeating: 0.125, count: 8)),
            configuration: Prefetcher.Configuration(budgetBlocks: 6, hostToDeviceBytesPerSecond: 1e12, coldReadBytesPerSecond: 1e12))
        let masses: [Float] = [0, 0.1, 0, 0.6, 0, 0, 0.3, 0]
        let budget = Prefetcher.Configuration(budgetBlocks: 2, hostToDeviceBytesPerSecond: 1e12, coldReadBytesPerSecond: 1e12)
        let ticket = try prefetcher.prefetch(candidates, predicted: masses, secondsUntilNeeded: 1, budget: budget)
        #expect(ticket.fetched == [keys[3], keys[6]])
        #expect(ticket.wait(seconds: 10))
        try prefetcher.settle(ticket, actualMass: masses, needed: [keys[3], keys[6]], topK: 2)
        #expect(prefetcher.statistics.precision == 1 && prefetcher.statistics.recall == 1)
        #expect(tierKVError { _ = try prefetcher.prefetch(candidates, predicted: [0.5], secondsUntilNeeded: 1) }?
            .message.contains("1 predicted masses for 8 candidates") ?? false)
        var bad = budget
        bad.coverage = 2
        #expect(tierKVError { _ = try prefetcher.prefetch(candidates, predicted: masses, secondsUntilNeeded: 1, budget: bad) }?
            .message.contains("coverage is 2.0") ?? false)
    }

    /// A prefetch never pins more hot slots than the engine leaves it: the budget's blocks
    /// beyond the limit are not fetched (a demand would find every slot pinned).
    @Test func aPrefetchPinsNoMoreHotSlotsThanItIsLeft() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try hierarchy(directory, summaries: .fromStoredKeys)
        let table = try #require(hierarchy.summaries)
        let keys = try storeDirectionalBlocks(hierarchy) { Float16(Float($0 + 1)) }
        let prefetcher = try Prefetcher(
            hierarchy: hierarchy, predictor: QuestBoundPredictor(summaries: table, tokensPerBlock: 16),
            configuration: Prefetcher.Configuration(budgetBlocks: 4, hostToDeviceBytesPerSecond: 1e12, coldReadBytesPerSecond: 1e12))
        let query = [Float](repeating: 1, count: 2 * 64)
        let candidates = PredictionCandidates(layer: 0, keys: keys, positions: Array(0..<8), newestPosition: 7)
        let limited = try prefetcher.prefetch(candidates, hint: QueryHint(query), secondsUntilNeeded: 1, hotBlockLimit: 1)
        #expect(limited.pinnedInHot == 1)
        hierarchy.waitUntilIdle()
        #expect(hierarchy.statistics.hot.pinnedBlocks == 1)
        prefetcher.abandon(limited)
        let none = try prefetcher.prefetch(candidates, hint: QueryHint(query), secondsUntilNeeded: 1, hotBlockLimit: 0)
        #expect(none.pinnedInHot == 0 && none.fetched.isEmpty)
        prefetcher.abandon(none)
        let unlimited = try prefetcher.prefetch(candidates, hint: QueryHint(query), secondsUntilNeeded: 1)
        #expect(unlimited.pinnedInHot == 4)
        prefetcher.abandon(unlimited)
        try hierarchy.close()
    }

    @Test func providedSummariesAreRequiredAndChecked() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try hierarchy(directory, summaries: .provided(try KeySummaryShape(kvHeads: 2, headDim: 8)))
        let bytes = blockBytes(for: testKey(0), count: smallLayout.blockByteCount)
        let missing = tierKVError { _ = try bytes.withUnsafeBytes { try hierarchy.store(testKey(0), position: 0, bytes: $0, sequence: SequenceID(1)) } }
        #expect(missing?.message.contains("key summary") ?? false)
        let summary = [Float](repeating: 1, count: 48)
        _ = try summary.withUnsafeBufferPointer { summary in
            try bytes.withUnsafeBytes { try hierarchy.store(testKey(0), position: 0, bytes: $0, sequence: SequenceID(1), keySummary: summary) }
        }
        #expect(hierarchy.summaries?.summary(of: testKey(0)) == summary)
        try hierarchy.close()
    }

    @Test func keySketchesAreKeptFromStoredOrProvidedKeys() throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/stored", hot: 6, warm: 8, cold: 32)
        configuration.keySummaries = .fromStoredKeys
        configuration.keySketchBits = 3
        #expect(tierKVError { _ = try Hierarchy(configuration) }?.message.contains("keySketchBits is 3") ?? false)
        configuration.keySummaries = .off
        configuration.keySketchBits = 2
        #expect(tierKVError { _ = try Hierarchy(configuration) }?.message.contains("not .fromStoredKeys") ?? false)

        // Computed from the stored block's keys.
        configuration.keySummaries = .fromStoredKeys
        let stored = try Hierarchy(configuration)
        let keys = try storeDirectionalBlocks(stored) { Float16(Float($0 + 1)) }
        let table = try #require(stored.summaries)
        #expect(table.shape.sketchBits == 2 && table.shape.sketchByteCount > 0)
        var query = [Float](repeating: 0, count: table.shape.queryValueCount)
        query[3] = 1  // head 0 looks along dimension 3: block 3's first token
        let scores = try table.scores(.sketch(scale: 1), query: query, keys: keys)
        let headScores = stride(from: 0, to: scores.count, by: table.shape.queryHeads).map { scores[$0] }
        #expect(headScores.indices.max { headScores[$0] < headScores[$1] } == 3, "\(headScores)")
        let unwanted = tierKVError {
            let bytes = blockBytes(for: testKey(9), count: smallLayout.blockByteCount)
            _ = try [Float](repeating: 0, count: 16 * 64).withUnsafeBufferPointer { keys in
                try bytes.withUnsafeBytes { try stored.store(testKey(9), position: 9, bytes: $0, sequence: SequenceID(1), keys: keys) }
            }
        }
        #expect(unwanted?.message.contains("takes keys only with keySummaries .provided") ?? false)
        try stored.close()

        // Provided: the keys must come with the block.
        let shape = try KeySummaryShape(kvHeads: 2, headDim: 8, sketchBits: 2, tokensPerBlock: smallLayout.tokensPerBlock)
        configuration.keySummaries = .provided(shape)
        configuration.keySketchBits = 0
        configuration.cacheDirectory = directory.path + "/provided"
        let provided = try Hierarchy(configuration)
        let bytes = blockBytes(for: testKey(0), count: smallLayout.blockByteCount)
        let missing = tierKVError { _ = try bytes.withUnsafeBytes { try provided.store(testKey(0), position: 0, bytes: $0, sequence: SequenceID(1)) } }
        #expect(missing?.message.contains("needs its keys") ?? false, "\(String(describing: missing))")
        let rows = (0..<(smallLayout.tokensPerBlock * 16)).map { Float($0 % 7) }
        let short = tierKVError {
            _ = try Array(rows.prefix(15)).withUnsafeBufferPointer { keys in
                try bytes.withUnsafeBytes { try provided.store(testKey(0), position: 0, bytes: $0, sequence: SequenceID(1), keys: keys) }
            }
        }
        #expect(short?.message.contains("15 key values") ?? false)
        _ = try rows.withUnsafeBufferPointer { keys in
            try bytes.withUnsafeBytes { try provided.store(testKey(0), position: 0, bytes: $0, sequence: SequenceID(1), keys: keys) }
        }
        let summary = try #require(provided.summaries?.summary(of: testKey(0)))
        #expect(summary[0] == 0 && summary[8] == 6)  // head 0, dim 0: min 0, max 6
        try provided.close()
    }
}

@Suite struct KeySummaryRebuildTests {
    @Test func coldBlocksFoundAtOpenGetTheirSummariesBack() throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 4, cold: 32)
        configuration.keySummaries = .fromStoredKeys
        configuration.keySketchBits = 2
        let keys = (0..<10).map { testKey($0) }
        var before: [[UInt32]] = []  // bit patterns: the test blocks' random bytes include NaNs
        do {
            let first = try Hierarchy(configuration)
            for (position, key) in keys.enumerated() { try first.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
            #expect(try first.rebuildKeySummaries() == .init(missing: 0, rebuilt: 0, failed: 0))
            before = keys.map { first.summaries!.summary(of: $0)!.map(\.bitPattern) }
            try first.close(flushing: true)
        }
        // As after a crash (the close saves them otherwise; KeySummaryFileTests).
        #expect(unlink(directory.path + "/cache/summaries.tkv") == 0)
        let second = try Hierarchy(configuration)
        defer { try? second.close(flushing: false) }
        #expect(second.keySummaryRestore?.problem?.contains("no summaries.tkv") ?? false)
        #expect(keys.allSatisfy { second.fastestTier(of: $0) == .cold && !second.summaries!.contains($0) })
        var batches: [Int] = []
        let result = try second.rebuildKeySummaries(batchBlocks: 3) { done, missing in
            #expect(missing == 10)
            batches.append(done)
        }
        #expect(result == .init(missing: 10, rebuilt: 10, failed: 0))
        #expect(batches == [3, 6, 9, 10])
        let after = keys.map { second.summaries!.summary(of: $0)!.map(\.bitPattern) }
        #expect(after == before, "the rebuilt summaries differ from those computed at store")
        #expect(second.statistics.warm.pinnedBlocks == 0)
        #expect(second.checkInvariants() == [])
        #expect(tierKVError { _ = try second.rebuildKeySummaries(batchBlocks: 0) }?.message.contains("batchBlocks is 0") ?? false)
    }
}

@Suite struct PrefillPlacementTests {
    /// Eight prompt blocks through hot 2 / warm 3: the first three end in cold. The prefill's
    /// attention says blocks 0 and 1 matter; the placement brings them back to warm, reads the
    /// right bytes, and leaves the little-attended blocks where they were.
    @Test func theBestAttendedBlocksComeBackFromCold() throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 3, cold: 16)
        configuration.admitsNewBlocksToHot = false
        let hierarchy = try Hierarchy(configuration)
        let keys = (0..<8).map { testKey($0) }
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        hierarchy.waitUntilIdle()
        #expect(hierarchy.fastestTier(of: keys[0]) == .cold && hierarchy.fastestTier(of: keys[1]) == .cold)
        let mass: [Float] = [0.5, 0.3, 0.02, 0.02, 0.02, 0.02, 0.02, 0.1]
        let placement = try hierarchy.placeAfterPrefill([(keys, mass)], coverage: 0.8, blockLimit: 3)
        #expect(placement.chosen == 2 && placement.fromCold == 2)
        let request = try #require(placement.request)
        request.wait()
        #expect(request.failures.isEmpty)
        hierarchy.release(request)
        for key in keys[0...1] {
            #expect(hierarchy.fastestTier(of: key) == .warm)
            var bytes = [UInt8](repeating: 0, count: smallLayout.blockByteCount)
            try bytes.withUnsafeMutableBytes { try hierarchy.read(key, into: $0) }
            #expect(bytes == blockBytes(for: key, count: smallLayout.blockByteCount))
        }
        #expect(hierarchy.fastestTier(of: keys[2]) == .cold)
        #expect(hierarchy.checkInvariants() == [])
    }

    /// Across layers the best-attended shares win the limit (each layer's mass normalised);
    /// a layer with no mass places nothing.
    @Test func theLimitKeepsTheLargestSharesAcrossLayers() throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 4, cold: 32)
        configuration.admitsNewBlocksToHot = false
        let hierarchy = try Hierarchy(configuration)
        let first = (0..<4).map { testKey($0, layer: 0) }, second = (0..<4).map { testKey($0, layer: 1) }
        let silent = (10..<14).map { testKey($0, layer: 1) }
        for layer in [first, second, silent] {
            for (position, key) in layer.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        }
        hierarchy.waitUntilIdle()
        // Layer 0 sums to 10, layer 1 to 1: shares 0.9 (first[0]) and 0.6 (second[1]) lead.
        let placement = try hierarchy.placeAfterPrefill(
            [(first, [9, 0.5, 0.3, 0.2]), (second, [0.1, 0.6, 0.2, 0.1]), (silent, [0, 0, 0, 0])], coverage: 1, blockLimit: 2)
        #expect(placement.chosen == 2)
        placement.request?.wait()
        placement.request.map(hierarchy.release)
        #expect(hierarchy.fastestTier(of: first[0]) != .cold && hierarchy.fastestTier(of: second[1]) != .cold)
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func badInputIsRefusedNamingWhatIsWrong() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
        let keys = [testKey(0), testKey(1)]
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        func message(_ body: () throws -> Void) -> String {
            do { try body() } catch { return "\(error)" }
            return "no error"
        }
        #expect(message { _ = try hierarchy.placeAfterPrefill([(keys, [1, 0])], coverage: 0, blockLimit: 2) }.contains("coverage 0.0"))
        #expect(message { _ = try hierarchy.placeAfterPrefill([(keys, [1, 0])], coverage: 1, blockLimit: -1) }.contains("block limit -1"))
        #expect(message { _ = try hierarchy.placeAfterPrefill([(keys, [1])], coverage: 1, blockLimit: 2) }.contains("2 keys and 1 masses"))
        #expect(message { _ = try hierarchy.placeAfterPrefill([(keys, [1, -.infinity])], coverage: 1, blockLimit: 2) }.contains("mass -inf"))
        #expect(message { _ = try hierarchy.placeAfterPrefill([(keys, [1, 1]), (keys, [1, 1])], coverage: 1, blockLimit: 4) }.contains("\(keys[0]) twice (layer entry 1)"))
        // A block repeated inside one entry, even one no ranking would choose, is refused too.
        #expect(message { _ = try hierarchy.placeAfterPrefill([([keys[0], keys[1], keys[1]], [1, 0, 0])], coverage: 0.5, blockLimit: 4) }.contains("twice (layer entry 0)"))
        let nothing = try hierarchy.placeAfterPrefill([(keys, [1, 1])], coverage: 1, blockLimit: 0)
        #expect(nothing.chosen == 0 && nothing.request == nil)
    }
}
