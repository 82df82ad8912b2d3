import Testing
#if canImport(Glibc)
import Glibc
#endif
import TierKV
import TierKVTestSupport

/// Stores from accelerator memory and the per-block state of a request (both used by the C ABI).
@Suite struct DeviceStoreTests {
    @Test func aBlockStoredFromDeviceMemoryReadsBackByteExact() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 4))
        let source = testKey(1)
        try hierarchy.storeTestBlock(source, position: 0, sequence: SequenceID(1))
        let request = try hierarchy.makeResident([source], in: .hot)
        request.wait()
        #expect(request.state(at: 0) == .ready)
        #expect(request.state(at: 1) == nil)
        let address = try #require(request.deviceAddress(at: 0))
        let copy = testKey(2)
        #expect(try hierarchy.store(copy, position: 0, deviceAddress: address, sequence: SequenceID(1)) == .stored)
        hierarchy.release(request)
        var bytes = [UInt8](repeating: 0, count: smallLayout.blockByteCount)
        try bytes.withUnsafeMutableBytes { try hierarchy.read(copy, into: $0) }
        #expect(bytes == blockBytes(for: source, count: smallLayout.blockByteCount))
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func aDeviceAddressOutsideDeviceMemoryIsAnErrorAndStoresNothing() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
        #expect(throws: TierKVError.self) {
            try hierarchy.store(testKey(3), position: 0, deviceAddress: DeviceAddress(0x1000), sequence: nil)
        }
        #expect(hierarchy.fastestTier(of: testKey(3)) == nil)
        #expect(hierarchy.statistics.storedBlocks == 0)
    }

    /// Writes each key's test pattern into device memory at a scattered slot (slot i·37 mod n)
    /// and returns the blocks that name them, positions counting per layer.
    private func deviceBlocks(
        _ keys: [BlockKey], in hierarchy: Hierarchy
    ) throws -> (blocks: [Hierarchy.DeviceBlock], device: DeviceAddress, accelerator: EmulatedAccelerator) {
        let accelerator = try #require(hierarchy.accelerator as? EmulatedAccelerator)
        let byteCount = smallLayout.blockByteCount
        let device = try accelerator.allocateMemory(byteCount: keys.count * byteCount)
        var blocks: [Hierarchy.DeviceBlock] = []
        for (index, key) in keys.enumerated() {
            let address = device + (index * 37 % keys.count) * byteCount
            let pattern = blockBytes(for: key, count: byteCount)
            let target = try accelerator.deviceBytes(at: address, byteCount: byteCount)
            pattern.withUnsafeBytes { target.copyMemory(from: $0) }
            blocks.append(Hierarchy.DeviceBlock(key: key, position: index / 2, deviceAddress: address))
        }
        return (blocks, device, accelerator)
    }

    @Test func manyBlocksStoredFromDeviceMemoryInBatchesReadBackByteExact() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 8, cold: 256))
        #expect(hierarchy.deviceStagingBlockCount == 64)
        let keys = (0..<100).map { testKey(1000 + $0, layer: $0 % 2) }
        let (blocks, device, accelerator) = try deviceBlocks(keys, in: hierarchy)
        defer { try? accelerator.freeMemory(device) }
        // Two batches (64 + 36), and block 3 again at the end: by then it is cached.
        let outcomes = try hierarchy.store(deviceBlocks: blocks + [blocks[3]], sequence: SequenceID(9))
        #expect(outcomes.count == 101)
        #expect(outcomes.prefix(100).allSatisfy { $0 == .stored })
        #expect(outcomes.last == .alreadyCached)
        for key in keys {
            var bytes = [UInt8](repeating: 0, count: smallLayout.blockByteCount)
            try bytes.withUnsafeMutableBytes { try hierarchy.read(key, into: $0) }
            #expect(bytes == blockBytes(for: key, count: smallLayout.blockByteCount), "\(key)")
        }
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func aBadLayerIsRefusedBeforeAnythingIsCopiedAndABadAddressNamesItsBatch() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 8, cold: 256))
        let keys = (0..<80).map { testKey(2000 + $0) }
        var (blocks, device, accelerator) = try deviceBlocks(keys, in: hierarchy)
        defer { try? accelerator.freeMemory(device) }
        var badLayer = blocks
        badLayer[2].key = testKey(5, layer: 7)
        let layerError = tierKVError { _ = try hierarchy.store(deviceBlocks: badLayer, sequence: nil) }
        #expect(layerError?.message.contains("block 2") == true && layerError?.message.contains("nothing was stored") == true)
        #expect(hierarchy.statistics.storedBlocks == 0)

        blocks[70].deviceAddress = DeviceAddress(0x1000)
        let addressError = tierKVError { _ = try hierarchy.store(deviceBlocks: blocks, sequence: nil) }
        #expect(addressError?.message.hasPrefix("copying blocks 64…79 from the device: ") == true, "\(addressError?.message ?? "")")
        #expect(addressError?.message.hasSuffix("; blocks 0…63 were stored") == true)
        #expect(hierarchy.statistics.storedBlocks == 64)
        #expect(hierarchy.fastestTier(of: keys[63]) != nil && hierarchy.fastestTier(of: keys[64]) == nil)
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func requestStatesNameMissingBlocks() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
        try hierarchy.storeTestBlock(testKey(4), position: 0, sequence: nil)
        let request = try hierarchy.makeResident([testKey(4), testKey(5)], in: .warm)
        request.wait()
        #expect(request.state(at: 0) == .ready)
        #expect(request.state(at: 1) == .missing)
        hierarchy.release(request)
    }
}

/// Key summaries of blocks an earlier run left in cold, when summaries.tkv did not survive (a
/// crash before the close saved it), are rebuilt when the blocks come back.
@Suite struct SummaryRestartTests {
    @Test func summariesOfBlocksFoundInColdAreRebuiltOnTheirFirstReturn() throws {
        let directory = try TemporaryDirectory()
        func open() throws -> Hierarchy {
            var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 4)
            configuration.keySummaries = .fromStoredKeys
            return try Hierarchy(configuration)
        }
        let keys = (0..<3).map { testKey($0) }
        let first = try open()
        for (position, key) in keys.enumerated() {
            // Finite fp16 keys (random bytes would hold NaNs, which never compare equal).
            let values = (0..<smallLayout.blockByteCount / 2).map { Float16(Float(($0 * 7 + position * 13) % 41) - 20) }
            _ = try values.withUnsafeBytes { try first.store(key, position: position, bytes: $0, sequence: nil) }
        }
        let original = keys.map { first.summaries?.summary(of: $0) }
        #expect(original.allSatisfy { $0 != nil })
        try first.close(flushing: true)
        #expect(unlink(directory.path + "/cache/summaries.tkv") == 0)

        let second = try open()
        let table = try #require(second.summaries)
        #expect(keys.allSatisfy { !table.contains($0) }, "without summaries.tkv a restart starts without them")
        var bytes = [UInt8](repeating: 0, count: smallLayout.blockByteCount)
        try bytes.withUnsafeMutableBytes { try second.read(keys[1], into: $0) }
        #expect(table.summary(of: keys[1]) == original[1])
        #expect(!table.contains(keys[0]) && !table.contains(keys[2]))
        try second.close()
    }
}

/// The manager checkpoints the cold index every `coldCheckpointInterval` writes, so a restart
/// after a crash scans only what was written since.
@Suite struct ColdCheckpointTests {
    private func indexFileBytes(_ directory: String) -> Int {
        var info = stat()
        return stat(directory + "/" + BlockStore.checkpointFileName, &info) == 0 ? Int(info.st_size) : -1
    }

    @Test(arguments: [0, 4])
    func theColdIndexIsCheckpointedEveryIntervalOfWrites(interval: Int) throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 3, cold: 32)
        configuration.coldCheckpointInterval = interval
        let hierarchy = try Hierarchy(configuration)
        let emptyIndex = indexFileBytes(directory.path + "/cache")
        for position in 0..<16 { try hierarchy.storeTestBlock(testKey(position), position: position, sequence: SequenceID(1)) }
        hierarchy.waitUntilIdle()
        let statistics = hierarchy.statistics
        #expect(statistics.cold.insertions >= 12)
        if interval == 0 {
            #expect(statistics.coldCheckpoints == 0 && indexFileBytes(directory.path + "/cache") == emptyIndex)
        } else {
            #expect(statistics.coldCheckpoints >= statistics.cold.insertions / interval - 1, "\(statistics.coldCheckpoints)")
            #expect(statistics.coldCheckpointFailures == 0)
            #expect(indexFileBytes(directory.path + "/cache") > emptyIndex, "the checkpoint holds the written blocks")
        }
        #expect(hierarchy.checkInvariants() == [])
        try hierarchy.close()
    }

    @Test func aNegativeIntervalIsRefused() throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache")
        configuration.coldCheckpointInterval = -1
        #expect(tierKVError { _ = try Hierarchy(configuration) }?.message.contains("coldCheckpointInterval") == true)
    }
}

@Suite struct CloseWithWaitersTests {
    /// A request whose blocks cannot arrive (every hot slot pinned) is failed by `close`, so a
    /// thread waiting on it returns instead of hanging.
    @Test func closingFailsRequestsThatCouldNeverComplete() throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 4)
        configuration.admitsNewBlocksToHot = false
        let hierarchy = try Hierarchy(configuration)
        for position in 0..<3 { try hierarchy.storeTestBlock(testKey(position), position: position, sequence: SequenceID(1)) }
        hierarchy.waitUntilIdle()
        let holding = try hierarchy.makeResident([testKey(0), testKey(1)], in: .hot)
        holding.wait()
        let starved = try hierarchy.makeResident([testKey(2)], in: .hot)
        #expect(!starved.wait(seconds: 0.05) || !starved.failures.isEmpty)
        try hierarchy.close()
        starved.wait()
        #expect(starved.isReady)
        #expect(starved.deviceAddress(at: 0) == nil)
        hierarchy.release(holding)
    }
}
