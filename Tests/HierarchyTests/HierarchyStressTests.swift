import Dispatch
import Testing
import TierKV
import TierKVTestSupport

/// Many threads storing, fetching, pinning, reading and dropping for a bounded time over shared
/// keys (prefix sharing and contention on the same blocks). Every block handed back must hold its
/// bytes; the invariants hold at the end. CI also runs this under ThreadSanitizer.
@Suite struct HierarchyStressTests {
    @Test(arguments: [EvictionPolicyKind.lru, .defaultS3FIFO, .defaultH2O])
    func concurrentEnginesKeepEveryInvariant(policy: EvictionPolicyKind) throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", policy: policy, hot: 6, warm: 12, cold: 96)
        configuration.coldAdmission = .seenTwice
        let hierarchy = try Hierarchy(configuration)
        let accelerator = try #require(hierarchy.accelerator as? EmulatedAccelerator)
        let threadCount = 4
        // Run for 1.5 s and at least `minimumPerThread` operations per thread: under ThreadSanitizer
        // on a slow CI machine 1.5 s alone was once only 78 operations in all. The hard limit keeps a
        // livelock from hanging the suite.
        let start = DispatchTime.now().uptimeNanoseconds
        let deadline = start + 1_500_000_000
        let hardLimit = start + 60_000_000_000
        let minimumPerThread = 60
        let wrongBytes = Locked(0)
        let operations = Locked(0)
        let unexpectedErrors = Locked<[String]>([])
        let blockByteCount = smallLayout.blockByteCount
        DispatchQueue.concurrentPerform(iterations: threadCount) { thread in
            var random = SeededGenerator(seed: 1000 + UInt64(thread))
            var count = 0
            let sequence = SequenceID(UInt64(thread + 1))
            while true {
                let now = DispatchTime.now().uptimeNanoseconds
                if now >= hardLimit || (now >= deadline && count >= minimumPerThread) { break }
                count += 1
                let key = testKey(Int(random.next() % 24), layer: Int(random.next() % 2))
                switch random.next() % 10 {
                case 0..<4:
                    if let error = tierKVError({ try hierarchy.storeTestBlock(key, position: Int(random.next() % 8), sequence: sequence) }),
                        error.code != .capacityExceeded
                    {
                        unexpectedErrors.withLock { $0.append("store: \(error)") }
                    }
                case 4..<7:
                    let tier: Tier = random.next() % 2 == 0 ? .hot : .warm
                    guard let request = try? hierarchy.makeResident([key], in: tier) else { continue }
                    if !request.wait(seconds: 20) { unexpectedErrors.withLock { $0.append("request never completed") } }
                    let expected = blockBytes(for: key, count: blockByteCount)
                    if tier == .hot, let address = request.deviceAddress(at: 0),
                        let bytes = try? accelerator.deviceBytes(at: address, byteCount: blockByteCount), Array(bytes) != expected
                    {
                        wrongBytes.withLock { $0 += 1 }
                    }
                    if tier == .warm, let bytes = request.hostBytes(at: 0), Array(bytes) != expected { wrongBytes.withLock { $0 += 1 } }
                    hierarchy.release(request)
                case 7..<9:
                    if let error = tierKVError({
                        if try !hierarchy.holdsTestPattern(key) { wrongBytes.withLock { $0 += 1 } }
                    }), error.code != .notFound, !error.message.contains("no slot") {
                        unexpectedErrors.withLock { $0.append("read: \(error)") }
                    }
                default:
                    hierarchy.drop(sequence: sequence)
                }
            }
            operations.withLock { $0 += count }
        }
        #expect(wrongBytes.withLock { $0 } == 0)
        #expect(unexpectedErrors.withLock { $0 } == [])
        #expect(hierarchy.checkInvariants() == [])
        let statistics = hierarchy.statistics
        #expect(statistics.hot.pinnedBlocks == 0 && statistics.warm.pinnedBlocks == 0)
        #expect(operations.withLock { $0 } >= threadCount * minimumPerThread, "the hard time limit cut the run short")
        try hierarchy.close()
    }
}
