import Foundation
import Testing
import TierKV
import TierKVPrometheus
import TierKVTestSupport

@Suite struct ReadmeExampleTests {
    /// The README's "Using the library" example, verbatim between the markers.
    @Test func theReadmeExampleRuns() throws {
        let temporary = try TemporaryDirectory()
        let cacheDirectory = temporary.path + "/kv"
        // README-EXAMPLE-BEGIN
        let layout = try KVLayout(layers: 32, kvHeads: 8, queryHeads: 32, headDim: 128)  // Llama-3-8B, 64 KiB blocks
        var configuration = HierarchyConfiguration(
            layout: layout, hotCapacityBlocks: 64, warmCapacityBlocks: 256, coldCapacityBlocks: 4096,
            cacheDirectory: cacheDirectory, policy: .lru, accelerator: .emulated(.pcieGen5))
        configuration.hotPolicy = .defaultH2O
        let cache = try Hierarchy(configuration)

        // A request arrives: how much of its prompt is cached, and where?
        let prompt: [UInt32] = Array(0..<512)
        let hit = cache.lookupPrefix(tokens: prompt)
        print("cached blocks: \(hit.cached) of \(hit.requested), in hot: \(hit.inHot)")

        // After prefill, store each layer's KV blocks (K then V, layout.blockByteCount bytes each).
        let sequence = SequenceID(1)
        let kv = [UInt8](repeating: 0x2A, count: layout.blockByteCount)
        for layer in 0..<layout.layers {
            try kv.withUnsafeBytes { bytes in
                _ = try cache.storeSequence(tokens: prompt, layer: layer, sequence: sequence) { _ in bytes }
            }
        }

        // Before layer 0 runs: make its blocks resident in hot, wait, attend, release.
        let keys = cache.blockKeys(tokens: prompt, layer: 0)
        let resident = try cache.makeResident(keys, in: .hot)
        resident.wait()
        let blockTable = resident.deviceAddresses()  // the layer's block table, for the attention kernel
        cache.release(resident)

        // Feedback for attention-aware policies, then the request ends.
        try cache.reportAttention(keys, mass: Array(repeating: 1 / Float(keys.count), count: keys.count))
        cache.drop(sequence: sequence)
        try cache.close(flushing: true)
        // README-EXAMPLE-END
        #expect(hit.cached == 0)
        #expect(blockTable.count == keys.count && blockTable.allSatisfy { $0 != nil })
        #expect(cache.statistics.storedBlocks == 32 * 32)
        #expect(cache.checkInvariants() == [])
        // Reopened, the prompt's blocks are found in cold.
        let reopened = try Hierarchy(configuration)
        #expect(reopened.lookupPrefix(tokens: prompt).cached == 32)
    }

    /// The README's prediction example, verbatim between the markers.
    @Test func theReadmePredictionExampleRuns() throws {
        // Llama-3-8B blocks (64 KiB of fp16 K then V) whose keys differ: block b's first token, KV
        // head 0, points along dimension b % 128. The query heads of KV head 0 look along dimension 9.
        let blockKV = (0..<256).map { block -> UnsafeMutableRawPointer in
            let bytes = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 64)
            bytes.initializeMemory(as: Float16.self, repeating: 0, count: 32768)
            bytes.storeBytes(of: Float16(4), toByteOffset: (block % 128) * 2, as: Float16.self)
            return bytes
        }
        defer { blockKV.forEach { $0.deallocate() } }
        let query = (0..<(32 * 128)).map { $0 == 9 || $0 == 128 + 9 || $0 == 256 + 9 || $0 == 384 + 9 ? Float(8) : 0 }
        let tail = [Float](repeating: 0, count: 8 * 128)  // the token being decoded
        // README-PREDICTION-BEGIN
        // Keep, for every block in any tier, its key summary and a 2-bit sketch of its keys.
        let layout = try KVLayout(layers: 32, kvHeads: 8, queryHeads: 32, headDim: 128, dtype: .fp16)
        var configuration = HierarchyConfiguration(
            layout: layout, hotCapacityBlocks: 64, warmCapacityBlocks: 512, accelerator: .emulated(.pcieGen5))
        configuration.keySummaries = .fromStoredKeys
        configuration.keySketchBits = 2
        let cache = try Hierarchy(configuration)
        let prompt: [UInt32] = Array(0..<4096)
        let keys = try cache.storeSequence(tokens: prompt, layer: 7, sequence: SequenceID(1)) { block in
            UnsafeRawBufferPointer(start: blockKV[block], count: layout.blockByteCount)
        }

        // When layer 7's query is known: its predicted attention mass per block outside the
        // sinks and the recent window, token by token from the sketches, and the heaviest 16.
        var candidates = PredictionCandidates.excludingAlwaysResident(
            layer: 7, keys: keys, sinkBlocks: 1, recentBlocks: 1).candidates
        candidates.tailKeys = tail  // fp32 [token][KV head][dim]: keys no stored block holds yet
        let predictor = QuestBoundPredictor(summaries: cache.summaries!, tokensPerBlock: 16, scoring: .sketch)
        let mass = try predictor.predictMass(candidates, hint: QueryHint(query))!  // query: fp32 [32 heads][128]
        let heaviest = PredictionQuality.topK(mass, k: 16).map { candidates.keys[$0] }
        let resident = try cache.makeResident(heaviest, in: .hot)
        // README-PREDICTION-END
        resident.wait()
        #expect(resident.failures.isEmpty)
        cache.release(resident)
        #expect(heaviest.first == keys[9])
        #expect(mass.reduce(0, +) < 1)
        try cache.close()
    }

    /// The README shows both examples as they are compiled here, line for line.
    @Test(arguments: ["README-EXAMPLE", "README-PREDICTION"])
    func theReadmeShowsTheExampleVerbatim(marker: String) throws {
        let source = try String(contentsOfFile: #filePath, encoding: .utf8).components(separatedBy: "\n")
        let begin = try #require(source.firstIndex { $0.hasSuffix("// \(marker)-BEGIN") })
        let end = try #require(source.firstIndex { $0.hasSuffix("// \(marker)-END") })
        let example = source[(begin + 1)..<end].map { $0.hasPrefix("        ") ? String($0.dropFirst(8)) : $0 }.joined(separator: "\n")
        let readmePath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md").path
        let readme = try String(contentsOfFile: readmePath, encoding: .utf8)
        #expect(readme.contains(example), "README.md does not show the \(marker) example as compiled")
    }

    /// Residency metadata per block (record + key index + the three tiers' policy arrays, which
    /// are indexed by block id): within the 128-byte aim with LRU; the heap-based
    /// policies pay more: LFU 182, H2O and TOVA 218 (they keep a block's score while it is in
    /// another tier).
    @Test(arguments: EvictionPolicyKind.all)
    func metadataPerBlockFitsTheBudget(policy: EvictionPolicyKind) {
        let bytes = Hierarchy.metadataBytesPerBlock(policies: [policy, policy, policy])
        print("metadata per block with \(policy) in all three tiers: \(bytes) bytes")
        #expect(bytes <= (policy == .lru ? 128 : 224))
    }

    /// Prometheus export: the hierarchy's counters appear in the text exposition.
    @Test func prometheusExpositionCarriesTheHierarchyCounters() throws {
        let registry = TierKVPrometheus.bootstrap()
        let temporary = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: temporary.path + "/cache"))
        for index in 0..<10 { try hierarchy.storeTestBlock(testKey(index), position: index, sequence: SequenceID(1)) }
        #expect(try hierarchy.holdsTestPattern(testKey(0)))
        let text = TierKVPrometheus.exposition(registry)
        #expect(text.contains("tierkv_link_bytes_total{link=\"h2d\"}"))
        #expect(text.contains("tierkv_stored_blocks_total"))
        #expect(text.contains("tierkv_evictions_total"))
        #expect(text.contains("tierkv_transfer_seconds"))
        try hierarchy.close()
    }
}
