import Dispatch
import Synchronization
import Testing
@testable import TierKVCore

@Suite struct SlotAllocatorTests {
    @Test func handsOutEverySlotOnceThenRunsOut() throws {
        let allocator = try SlotAllocator(slotCount: 100, shardCount: 4)
        var seen = Set<Int>()
        while let slot = allocator.allocate() { #expect(seen.insert(slot).inserted) }
        #expect(seen == Set(0..<100))
        #expect(allocator.statistics == .init(used: 100, free: 0, highWater: 100))
        try allocator.free(42)
        #expect(allocator.allocate() == 42)
    }

    @Test func rejectsDoubleFreeAndOutOfRange() throws {
        let allocator = try SlotAllocator(slotCount: 4)
        let slot = try #require(allocator.allocate())
        try allocator.free(slot)
        #expect(throws: TierKVError.self) { try allocator.free(slot) }
        #expect(throws: TierKVError.self) { try allocator.free(4) }
        #expect(throws: TierKVError.self) { try allocator.free(-1) }
        #expect(throws: TierKVError.self) { try SlotAllocator(slotCount: 0) }
    }

    /// Many threads allocate and free at random; no slot is ever held by two threads at once and
    /// the counts add up at the end.
    @Test(arguments: [1, 3, 16])
    func concurrentUseNeverDoubleAllocates(shards: Int) throws {
        let slotCount = 64
        let allocator = try SlotAllocator(slotCount: slotCount, shardCount: shards)
        let holders = OwnerTable(slotCount: slotCount)
        let violations = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            var state = UInt64(worker + 1) &* 0x9E37_79B9_7F4A_7C15
            var held: [Int] = []
            for _ in 0..<5000 {
                state = state &* 6_364_136_223_846_793_005 &+ 1
                if state >> 63 == 0 || held.isEmpty, let slot = allocator.allocate() {
                    if !holders.claim(slot, by: worker) { violations.add(1, ordering: .relaxed) }
                    held.append(slot)
                } else if !held.isEmpty {
                    let slot = held.remove(at: Int((state >> 32) % UInt64(held.count)))
                    holders.release(slot)
                    do { try allocator.free(slot) } catch { violations.add(1, ordering: .relaxed) }
                }
            }
            for slot in held {
                holders.release(slot)
                do { try allocator.free(slot) } catch { violations.add(1, ordering: .relaxed) }
            }
        }
        #expect(violations.load(ordering: .relaxed) == 0)
        #expect(allocator.statistics.used == 0)
        #expect(allocator.statistics.highWater <= slotCount)
    }
}

/// Which worker holds each slot, to catch two holders at once.
final class OwnerTable: Sendable {
    private let owners: Locked<[Int]>
    init(slotCount: Int) { owners = Locked(Array(repeating: -1, count: slotCount)) }
    func claim(_ slot: Int, by worker: Int) -> Bool {
        owners.withLock { table in
            guard table[slot] == -1 else { return false }
            table[slot] = worker
            return true
        }
    }
    func release(_ slot: Int) { owners.withLock { $0[slot] = -1 } }
}
