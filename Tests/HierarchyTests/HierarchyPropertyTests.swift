import Testing
import TierKV
import TierKVTestSupport

/// Randomised operation sequences against tiny tiers (hot 2, warm 3, cold 12 blocks): every
/// invariant is checked after every operation, and every block handed back must hold its bytes.
@Suite struct HierarchyPropertyTests {
    static let cases: [(EvictionPolicyKind, Bool)] = EvictionPolicyKind.all.flatMap { [($0, true), ($0, false)] }

    @Test(arguments: cases)
    func invariantsHoldForRandomOperationSequences(policy: EvictionPolicyKind, inclusive: Bool) throws {
        for seed in UInt64(1)...3 {
            try run(seed: seed, policy: policy, inclusive: inclusive, operations: 250)
        }
    }

    private func run(seed: UInt64, policy: EvictionPolicyKind, inclusive: Bool, operations: Int) throws {
        let directory = try TemporaryDirectory()
        var configuration = tinyConfiguration(directory: directory.path + "/cache", policy: policy, hot: 2, warm: 3, cold: 12)
        configuration.warmTierIsInclusive = inclusive
        configuration.coldAdmission = seed % 2 == 0 ? .seenTwice : .always
        let hierarchy = try Hierarchy(configuration)
        let accelerator = try #require(hierarchy.accelerator as? EmulatedAccelerator)
        var random = SeededGenerator(seed: seed &* 7919 &+ UInt64(policy.name.count))
        let blockByteCount = smallLayout.blockByteCount
        let pool = (0..<16).map { testKey($0 % 8, layer: $0 / 8) }
        var held: [ResidencyRequest] = []
        for step in 0..<operations {
            let choice = Int(random.next() % 100)
            let key = pool[Int(random.next() % UInt64(pool.count))]
            let context = "seed \(seed) \(policy) inclusive \(inclusive) step \(step)"
            switch choice {
            case 0..<40:
                let sequence = Int(random.next() % 4)
                if let error = tierKVError({
                    try hierarchy.storeTestBlock(key, position: Int(key.prefixHash.low) - 1, sequence: sequence == 0 ? nil : SequenceID(UInt64(sequence)))
                }) {
                    #expect(error.code == .capacityExceeded, "\(context): \(error)")
                }
            case 40..<65:
                let count = 1 + Int(random.next() % 2)
                let keys = Array(Set((0..<count).map { _ in pool[Int(random.next() % UInt64(pool.count))] }))
                let tier: Tier = random.next() % 2 == 0 ? .hot : .warm
                let request = try hierarchy.makeResident(keys, in: tier, priority: random.next() % 3 == 0 ? .prefetch : .demand)
                #expect(request.wait(seconds: 10), "\(context): request never completed")
                for (index, requested) in keys.enumerated() {
                    let expected = blockBytes(for: requested, count: blockByteCount)
                    if tier == .hot, let address = request.deviceAddress(at: index) {
                        #expect(Array(try accelerator.deviceBytes(at: address, byteCount: blockByteCount)) == expected, "\(context): wrong hot bytes")
                    }
                    if tier == .warm, let bytes = request.hostBytes(at: index) {
                        #expect(Array(bytes) == expected, "\(context): wrong warm bytes")
                    }
                }
                // Hold at most one request across operations so pins do not fill the tiny tiers.
                held.append(request)
                if held.count > 1 { hierarchy.release(held.removeFirst()) }
            case 65..<80:
                if let error = tierKVError({
                    let intact = try hierarchy.holdsTestPattern(key)
                    #expect(intact, "\(context): read returned wrong bytes")
                }) {
                    #expect([.notFound, .corruption].contains(error.code) || error.message.contains("no slot"), "\(context): \(error)")
                }
            case 80..<88:
                hierarchy.drop(sequence: SequenceID(1 + random.next() % 3))
            case 88..<95:
                try hierarchy.reportAttention([key], mass: [Float(random.next() % 100) / 100])
            default:
                for request in held { hierarchy.release(request) }
                held.removeAll()
                let summary = try hierarchy.flush()
                #expect(summary.failed == 0 || configuration.coldCapacityBlocks < 16, "\(context): flush failed \(summary.failed)")
            }
            let violations = hierarchy.checkInvariants()
            #expect(violations.isEmpty, "\(context): \(violations)")
            if !violations.isEmpty { return }
        }
        for request in held { hierarchy.release(request) }
        let statistics = hierarchy.statistics
        #expect(statistics.droppedReferencedBlocks == 0)
        #expect(statistics.hot.pinnedBlocks == 0 && statistics.warm.pinnedBlocks == 0)
        #expect(statistics.corruptions == 0)
        // The tiny tiers really were all used.
        #expect(statistics.nvmeWriteBytes > 0, "seed \(seed) \(policy): the cold tier was never written")
        try hierarchy.close()
    }
}
