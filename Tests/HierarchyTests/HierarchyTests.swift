import Testing
import TierKV
import TierKVTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite struct HierarchyTests {
    @Test func blocksComeBackFromEveryTierWithTheirBytes() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
        let keys = (0..<12).map { testKey($0) }
        for (position, key) in keys.enumerated() {
            #expect(try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) == .stored)
        }
        // 12 blocks through 2 hot + 3 warm slots: the oldest went to cold. Admission to hot is
        // asynchronous (a prefetch-priority copy): wait for it before looking.
        hierarchy.waitUntilIdle()
        let tiers = keys.map { hierarchy.fastestTier(of: $0) }
        #expect(tiers.contains(.cold))
        #expect(tiers.contains(.hot))
        for key in keys { #expect(try hierarchy.holdsTestPattern(key)) }
        let statistics = hierarchy.statistics
        #expect(statistics.nvmeWriteBytes > 0 && statistics.nvmeReadBytes > 0)
        #expect(statistics.droppedBlocks == 0)
        #expect(hierarchy.checkInvariants() == [])
        try hierarchy.close()
    }

    @Test func makeResidentPinsBlocksInHotUntilReleased() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
        let keys = (0..<8).map { testKey($0) }
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        let request = try hierarchy.makeResident([keys[0], keys[1]], in: .hot)
        request.wait()
        #expect(request.failures.isEmpty && request.missingKeys.isEmpty)
        let addresses = [request.deviceAddress(at: 0), request.deviceAddress(at: 1)]
        #expect(addresses.allSatisfy { $0 != nil })
        // The device memory (emulated) holds the block's bytes.
        let accelerator = try #require(hierarchy.accelerator as? EmulatedAccelerator)
        let device = try accelerator.deviceBytes(at: addresses[0]!, byteCount: smallLayout.blockByteCount)
        #expect(Array(device) == blockBytes(for: keys[0], count: smallLayout.blockByteCount))
        // Hot is full of pinned blocks: new stores still land (in warm) and the pinned ones stay.
        for position in keys.indices { try hierarchy.storeTestBlock(testKey(100 + position), position: position, sequence: SequenceID(2)) }
        #expect(hierarchy.fastestTier(of: keys[0]) == .hot && hierarchy.fastestTier(of: keys[1]) == .hot)
        #expect(hierarchy.statistics.hot.pinnedBlocks == 2)
        hierarchy.release(request)
        #expect(hierarchy.statistics.hot.pinnedBlocks == 0)
        let missing = try hierarchy.makeResident([testKey(999)], in: .hot)
        #expect(missing.missingKeys == [testKey(999)])
        #expect(missing.isReady)
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func blocksAlreadyResidentAreReadyAtOnceAndTheirPinsCount() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache", hot: 4, warm: 6))
        let keys = (0..<4).map { testKey($0) }
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        let first = try hierarchy.makeResident(Array(keys.prefix(2)), in: .hot)
        first.wait()
        hierarchy.release(first)
        // keys 0 and 1 are in hot now; key 2 may or may not be: it is the mixed case.
        let again = try hierarchy.makeResident([keys[1], keys[0], keys[2]], in: .hot)
        #expect(again.state(at: 0) == .ready && again.state(at: 1) == .ready)
        again.wait()
        #expect(again.isReady && again.readyNanoseconds != nil)
        let accelerator = try #require(hierarchy.accelerator as? EmulatedAccelerator)
        for (index, key) in [keys[1], keys[0], keys[2]].enumerated() {
            let address = try #require(again.deviceAddress(at: index))
            let device = try accelerator.deviceBytes(at: address, byteCount: smallLayout.blockByteCount)
            #expect(Array(device) == blockBytes(for: key, count: smallLayout.blockByteCount))
        }
        // The whole table at once equals the block-by-block answers.
        #expect(again.deviceAddresses() == (0..<3).map { again.deviceAddress(at: $0) })
        #expect(again.locations() == (0..<3).map { again.location(at: $0)! })
        #expect(again.locations().allSatisfy { $0.state == .ready && $0.hostBytes == nil })
        #expect(again.location(at: 3) == nil && again.location(at: -1) == nil)
        // The same keys in a second request at the same time: both pin, neither is a duplicate.
        let overlapping = try hierarchy.makeResident([keys[0]], in: .hot)
        #expect(overlapping.isReady)
        #expect(hierarchy.statistics.hot.pinnedBlocks == 3)
        hierarchy.release(again)
        #expect(hierarchy.statistics.hot.pinnedBlocks == 1)
        hierarchy.release(overlapping)
        hierarchy.release(overlapping)
        #expect(hierarchy.statistics.hot.pinnedBlocks == 0)
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func aBlockTheEngineUsesFromHotKeepsItsWarmCopy() throws {
        // Warm's policy must see that a block served from hot is in use: otherwise warm takes it
        // for idle, lets it go, and when hot evicts it the block is back on the NVMe.
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 3))
        let used = testKey(0)
        try hierarchy.storeTestBlock(used, position: 0, sequence: SequenceID(1))
        hierarchy.waitUntilIdle()
        let others = (1...6).map { testKey($0) }
        for (position, key) in others.enumerated() {
            try hierarchy.storeTestBlock(key, position: position + 1, sequence: SequenceID(1))
            hierarchy.waitUntilIdle()
            let request = try hierarchy.makeResident([used], in: .hot)
            request.wait()
            #expect(hierarchy.fastestTier(of: used) == .hot)
            hierarchy.release(request)
        }
        // Six stores went through a warm tier of three while the block was used from hot each time.
        let pushOut = try hierarchy.makeResident(Array(others.suffix(2)), in: .hot)
        pushOut.wait()
        #expect(hierarchy.fastestTier(of: used) == .warm)
        hierarchy.release(pushOut)
        #expect(try hierarchy.holdsTestPattern(used))
        #expect(hierarchy.checkInvariants() == [])
        try hierarchy.close()
    }

    @Test func aKeyNamedTwiceInOneRequestIsRefusedWhetherHeldOrNot() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache", hot: 4, warm: 6))
        let keys = (0..<3).map { testKey($0) }
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        let held = tierKVError { _ = try hierarchy.makeResident([keys[0], keys[1], keys[0]], in: .hot) }
        #expect(held?.code == .invalidArgument && held?.message.contains("same key more than once") == true)
        let absent = tierKVError { _ = try hierarchy.makeResident([testKey(50), keys[2], testKey(50)], in: .warm) }
        #expect(absent?.code == .invalidArgument)
        // A refused request pinned nothing, and the keys are fine in the next call.
        #expect(hierarchy.statistics.hot.pinnedBlocks == 0 && hierarchy.statistics.warm.pinnedBlocks == 0)
        let request = try hierarchy.makeResident([keys[0], keys[1], testKey(50)], in: .hot)
        request.wait()
        #expect(request.missingKeys == [testKey(50)])
        #expect(request.locations().map(\.state) == [.ready, .ready, .missing])
        #expect(request.deviceAddresses()[2] == nil && request.deviceAddresses()[0] != nil)
        hierarchy.release(request)
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func prefixSharingStoresOnceAndDroppingOneSequenceKeepsTheOther() throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 4, warm: 4, cold: 64)
        configuration.coldAdmission = .seenTwice
        let hierarchy = try Hierarchy(configuration)
        let shared: [UInt32] = Array(0..<64)  // 4 blocks of 16 tokens
        let tokensA = shared + Array(1000..<1032)
        let tokensB = shared + Array(2000..<2032)
        for layer in 0..<smallLayout.layers {
            for (tokens, sequence) in [(tokensA, SequenceID(1)), (tokensB, SequenceID(2))] {
                let keys = hierarchy.blockKeys(tokens: tokens, layer: layer)
                for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: sequence) }
            }
        }
        let statistics = hierarchy.statistics
        // 4 shared + 2 + 2 own blocks per layer, stored once each; the shared ones were offered twice.
        #expect(statistics.storedBlocks == 8 * smallLayout.layers)
        #expect(statistics.sharedStores == 4 * smallLayout.layers)
        hierarchy.drop(sequence: SequenceID(1))
        // B's blocks, shared ones included, all read back; B's prefix is fully cached.
        for layer in 0..<smallLayout.layers {
            for key in hierarchy.blockKeys(tokens: tokensB, layer: layer) { #expect(try hierarchy.holdsTestPattern(key)) }
        }
        #expect(hierarchy.lookupPrefix(tokens: tokensB).cached == 6)
        #expect(hierarchy.lookupPrefix(tokens: shared + Array(3000..<3016)).cached == 4)
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func restartFindsTheBlocksThatWereDurableInCold() throws {
        let directory = try TemporaryDirectory()
        let tokens: [UInt32] = Array(0..<(16 * 6))
        let refusal = tierKVError {
            let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
            try hierarchy.storeSequence(tokens: tokens, layer: 0, sequence: SequenceID(7)) { _ in UnsafeRawBufferPointer(start: nil, count: 0) }
        }
        // storeSequence with an empty buffer is refused with the byte count named.
        #expect(refusal?.message.contains("has 0 bytes") == true)
        do {
            let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
            for layer in 0..<smallLayout.layers {
                for (position, key) in hierarchy.blockKeys(tokens: tokens, layer: layer).enumerated() {
                    try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(7))
                }
            }
            let summary = try hierarchy.flush()
            #expect(summary.failed == 0)
            #expect(hierarchy.lookupPrefix(tokens: tokens).cached == 6)
            try hierarchy.close()
        }
        // A second process (here: a second open) finds every block, in cold, with its bytes.
        let reopened = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
        let lookup = reopened.lookupPrefix(tokens: tokens)
        #expect(lookup.cached == 6)
        #expect(lookup.inHotOrWarm == 0)
        for layer in 0..<smallLayout.layers {
            for key in reopened.blockKeys(tokens: tokens, layer: layer) { #expect(try reopened.holdsTestPattern(key)) }
        }
        #expect(reopened.checkInvariants() == [])
    }

    @Test func wrongSizesAndLayersAreRefusedWithTheValuesNamed() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache"))
        let short = [UInt8](repeating: 0, count: 100)
        #expect(throws: TierKVError.self) { try short.withUnsafeBytes { try hierarchy.store(testKey(1), position: 0, bytes: $0) } }
        let bytes = [UInt8](repeating: 0, count: smallLayout.blockByteCount)
        let layerError = tierKVError { _ = try bytes.withUnsafeBytes { try hierarchy.store(testKey(1, layer: 9), position: 0, bytes: $0) } }
        #expect(layerError?.message.contains("layer 9") == true && layerError?.message.contains("2 layers") == true)
        var bad = tinyConfiguration(directory: directory.path + "/cache")
        bad.coldCapacityBlocks = 8
        bad.cacheDirectory = nil
        #expect(throws: TierKVError.self) { try Hierarchy(bad) }
        #expect(throws: TierKVError.self) { try hierarchy.makeResident([testKey(1), testKey(1)]) }
        try hierarchy.close()
        #expect(throws: TierKVError.self) { try hierarchy.storeTestBlock(testKey(2), position: 0, sequence: nil) }
    }

    @Test func aFullHierarchyOfReferencedBlocksRefusesRatherThanDrops() throws {
        let directory = try TemporaryDirectory()
        let hierarchy = try Hierarchy(tinyConfiguration(directory: directory.path + "/cache", hot: 1, warm: 2, cold: 3))
        var refused = false
        for index in 0..<10 {
            if let error = tierKVError({ try hierarchy.storeTestBlock(testKey(index), position: index, sequence: SequenceID(1)) }) {
                #expect(error.code == .capacityExceeded)
                refused = true
                break
            }
        }
        #expect(refused)
        #expect(hierarchy.statistics.droppedBlocks == 0)
        // Dropping the sequence makes its blocks cache-only: stores proceed by dropping them.
        hierarchy.drop(sequence: SequenceID(1))
        for index in 20..<30 { try hierarchy.storeTestBlock(testKey(index), position: index, sequence: nil) }
        #expect(hierarchy.statistics.droppedBlocks > 0)
        #expect(hierarchy.statistics.droppedReferencedBlocks == 0)
        #expect(hierarchy.checkInvariants() == [])
    }

    @Test func aCorruptColdCopyIsAMissNeverData() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        let keys = (0..<10).map { testKey($0) }
        do {
            let hierarchy = try Hierarchy(tinyConfiguration(directory: path))
            for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
            try hierarchy.flush()
            try hierarchy.close()
        }
        // Flip one payload byte in every slot of the block file.
        let file = open(path + "/blocks.tkv", O_RDWR)
        #expect(file >= 0)
        let slotByteCount = 8192
        var flipped = 0
        for slot in 0..<16 {
            var byte: UInt8 = 0
            let offset = off_t(4096 + slot * slotByteCount + 64 + 100)
            if pread(file, &byte, 1, offset) == 1 {
                byte ^= 0x40
                if pwrite(file, &byte, 1, offset) == 1 { flipped += 1 }
            }
        }
        close(file)
        #expect(flipped > 0)
        let hierarchy = try Hierarchy(tinyConfiguration(directory: path))
        var corrupt = 0
        for key in keys where hierarchy.fastestTier(of: key) == .cold {
            if let error = tierKVError({
                let intact = try hierarchy.holdsTestPattern(key)
                #expect(!intact, "corrupt data must never be returned")
            }) {
                #expect(error.code == .corruption || error.code == .notFound)
                corrupt += 1
            }
        }
        #expect(corrupt > 0)
        #expect(hierarchy.statistics.corruptions == corrupt)
        #expect(hierarchy.checkInvariants() == [])
    }
}
