import Dispatch
import Synchronization
import CTierKVLinux
import Testing
import TierKVCore
import TierKVStorage
import TierKVTestSupport
@testable import TierKVHostArena

#if canImport(Glibc)
import Glibc
#endif

@Suite struct HostArenaTests {
    @Test func pagesAreOnTheBoundNodeAndLocked() throws {
        let arena = try HostArena(.init(slotByteCount: 64 << 10, slotCount: 64, numaNode: 0))
        #expect(arena.isLocked)
        #expect(arena.placement.sampledPages > 0)
        #expect(arena.placement.singleNode == 0, "placement: \(arena.placement)")
    }

    @Test func slotsAreAlignedAndMapBothWays() throws {
        // 100 000 bytes per slot: the stride rounds up to 4 KiB multiples.
        let arena = try HostArena(.init(slotByteCount: 100_000, slotCount: 10, hugePages: .none, locksMemory: false))
        #expect(arena.slotStride == 102_400)
        #expect(!arena.isLocked)
        for slot in 0..<10 {
            let address = arena.address(ofSlot: slot)
            #expect(Int(bitPattern: address) % HostArena.slotAlignment == 0)
            #expect(arena.slot(containing: address + 99_999) == slot)
        }
        #expect(arena.slot(containing: arena.base + 10 * arena.slotStride) == nil)
        #expect(Int(bitPattern: arena.base) % (2 << 20) == 0, "2 MiB aligned for THP")
    }

    @Test func badConfigurationsAreRefusedWithReasons() {
        #expect(throws: TierKVError.self) { try HostArena(.init(slotByteCount: 0, slotCount: 1)) }
        do {
            _ = try HostArena(.init(slotByteCount: 4096, slotCount: 1, numaNode: 63))
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("NUMA node 63 does not exist"))
        }
    }

    /// Threads allocate, write a tag into the slot, check it and free, at random; a slot handed
    /// to two threads at once would show another thread's tag.
    @Test func concurrentSlotUseKeepsSlotsPrivate() throws {
        let arena = try HostArena(.init(slotByteCount: 4096, slotCount: 32, locksMemory: false))
        let corrupted = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 6) { worker in
            var state = UInt64(worker) &+ 17
            for round in 0..<3000 {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                guard let slot = arena.allocateSlot() else { continue }
                let tag = UInt64(worker) << 32 | UInt64(round)
                let words = arena.address(ofSlot: slot).assumingMemoryBound(to: UInt64.self)
                for index in 0..<16 { words[index] = tag }
                if state >> 62 == 0 { sched_yield() }
                for index in 0..<16 where words[index] != tag { corrupted.add(1, ordering: .relaxed) }
                do { try arena.freeSlot(slot) } catch { corrupted.add(1, ordering: .relaxed) }
            }
        }
        #expect(corrupted.load(ordering: .relaxed) == 0)
        #expect(arena.statistics.used == 0)
        #expect(arena.statistics.highWater <= 32)
    }

    @Test func ioRingBuffersCoverEverySlotInOneGiBPieces() throws {
        let arena = try HostArena(.init(slotByteCount: 256 << 20, slotCount: 9, hugePages: .none, locksMemory: false))
        let regions = arena.ioRingBufferRegions
        #expect(regions.count == 3)  // 4 slots of 256 MiB per 1 GiB buffer
        #expect(regions.allSatisfy { $0.count <= HostArena.maximumIORingBufferBytes })
        #expect(regions.map(\.count).reduce(0, +) == 9 * arena.slotStride)
        #expect(arena.ioRingBufferIndex(ofSlot: 3) == 0)
        #expect(arena.ioRingBufferIndex(ofSlot: 4) == 1)
        #expect(arena.ioRingBufferIndex(ofSlot: 8) == 2)
    }

    /// The cold tier's path: an O_DIRECT read through io_uring into a registered warm slot. The
    /// only destination the kernel is given is the slot's address inside a registered buffer,
    /// so the bytes arrive with no intermediate copy; a destination outside the registered
    /// buffers is refused by the kernel (EFAULT), which shows registration is what is used.
    @Test func coldReadLandsDirectlyInARegisteredWarmSlot() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/blocks"
        let blockBytes = 64 << 10
        let source = try AlignedBuffer(byteCount: 4 * blockBytes)
        for index in 0..<(4 * blockBytes) {
            source.base.storeBytes(of: UInt8(truncatingIfNeeded: index &* 131 &+ index >> 16), toByteOffset: index, as: UInt8.self)
        }
        let writer = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o600)
        try #require(writer >= 0)
        #expect(pwrite(writer, source.base, 4 * blockBytes, 0) == 4 * blockBytes)
        close(writer)

        let arena = try HostArena(.init(slotByteCount: blockBytes, slotCount: 4))
        let ring = try IORing(entryCount: 8)
        try ring.registerBuffers(arena.ioRingBufferRegions)
        let descriptor = open(path, O_RDONLY | ctierkv_o_direct() | O_CLOEXEC)
        try #require(descriptor >= 0)
        defer { close(descriptor) }

        let slot = 2
        try ring.queueReadFixed(
            descriptor: descriptor, into: arena.address(ofSlot: slot), byteCount: blockBytes, fileOffset: UInt64(3 * blockBytes),
            bufferIndex: arena.ioRingBufferIndex(ofSlot: slot), userData: 7)
        try ring.submit()
        let completion = try ring.waitCompletion()
        #expect(completion.userData == 7)
        #expect(try completion.checkedByteCount("read_fixed") == blockBytes)
        #expect(memcmp(arena.address(ofSlot: slot), source.base + 3 * blockBytes, blockBytes) == 0)
        #expect(memcmp(arena.address(ofSlot: 1), source.base + 3 * blockBytes, 16) != 0, "neighbour untouched")

        let outside = try AlignedBuffer(byteCount: blockBytes)
        try ring.queueReadFixed(
            descriptor: descriptor, into: outside.base, byteCount: blockBytes, fileOffset: 0, bufferIndex: 0, userData: 8)
        try ring.submit()
        let refused = try ring.waitCompletion()
        #expect(refused.result == -EFAULT)
    }
}
