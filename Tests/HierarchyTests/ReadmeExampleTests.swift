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
        let firstBlock = resident.deviceAddress(at: 0)  // pass to the attention kernel
        cache.release(resident)

        // Feedback for attention-aware policies, then the request ends.
        try cache.reportAttention(keys, mass: Array(repeating: 1 / Float(keys.count), count: keys.count))
        cache.drop(sequence: sequence)
        try cache.close(flushing: true)
        // README-EXAMPLE-END
        #expect(hit.cached == 0)
        #expect(firstBlock != nil)
        #expect(cache.statistics.storedBlocks == 32 * 32)
        #expect(cache.checkInvariants() == [])
        // Reopened, the prompt's blocks are found in cold.
        let reopened = try Hierarchy(configuration)
        #expect(reopened.lookupPrefix(tokens: prompt).cached == 32)
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
