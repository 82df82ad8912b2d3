import Synchronization
import Testing
import TierKVCore
import TierKVTestSupport
@testable import TierKVStorage

#if canImport(Glibc)
import Glibc
#endif

@Suite struct BlockStorePipelineTests {
    static let geometry = BlockFile.Geometry(slotByteCount: 16384, slotCount: 400)

    func fill(_ buffer: UnsafeMutableRawPointer, index: Int, bytes: Int) {
        var generator = SeededGenerator(seed: UInt64(index) &+ 77)
        for offset in stride(from: 0, to: bytes, by: 8) {
            (buffer + ColdSlotHeader.byteCount).storeBytes(of: generator.next(), toByteOffset: offset, as: UInt64.self)
        }
    }

    @Test(arguments: [1, 8, 32])
    func pipelinedWritesAndReadsKeepEveryBlock(queueDepth: Int) throws {
        let directory = try TemporaryDirectory()
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry, queueDepth: UInt32(queueDepth))
        let buffers = SlotBuffers(slotBytes: 16384, count: queueDepth)
        let positions = (0..<queueDepth).map { buffers[$0] }
        var acknowledged: [Int] = []
        let summary = store.writePipelined(count: 300, buffers: positions, flushEvery: 16, prepare: { index, position in
            fill(positions[position], index: index, bytes: 8000)
            return (key(index), 8000)
        }, acknowledged: { acknowledged += $0 })
        #expect(summary.completed == 300 && summary.failed == 0)
        #expect(Set(acknowledged) == Set(0..<300))
        let expected = UnsafeMutableRawPointer.allocate(byteCount: 16384, alignment: 4096)
        defer { expected.deallocate() }
        var checked = 0
        let reads = store.readPipelined(count: 301, buffers: positions, key: { key($0) }) { index, position, result in
            if index == 300 {
                #expect(result == .miss)
                return
            }
            #expect(result == .hit(payloadByteCount: 8000), "block \(index)")
            fill(expected, index: index, bytes: 8000)
            #expect(memcmp(positions[position] + ColdSlotHeader.byteCount, expected + ColdSlotHeader.byteCount, 8000) == 0, "block \(index)")
            checked += 1
        }
        #expect(checked == 300 && reads.completed == 300 && reads.misses == 1)
    }

    @Test func theNewestWriteOfAKeyWinsWhateverTheCompletionOrder() throws {
        let directory = try TemporaryDirectory()
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry, queueDepth: 16)
        let buffers = SlotBuffers(slotBytes: 16384, count: 16)
        let positions = (0..<16).map { buffers[$0] }
        // 64 writes of 4 keys; write i carries payload length 100 + i, so the last write of each key is known.
        _ = store.writePipelined(count: 64, buffers: positions, flushEvery: 64, prepare: { index, _ in (key(index % 4), 100 + index) })
        for keyIndex in 0..<4 {
            #expect(store.read([(key: key(keyIndex), buffer: positions[0])])[0] == .hit(payloadByteCount: 100 + 60 + keyIndex))
        }
        #expect(store.statistics.blocks == 4)
    }

    @Test func failedWritesAreNotAcknowledged() throws {
        let directory = try TemporaryDirectory()
        let injector = IOFaultInjector { isWrite, slot in isWrite && slot % 5 == 0 ? EIO : nil }
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry, queueDepth: 8, faultInjector: injector)
        let buffers = SlotBuffers(slotBytes: 16384, count: 8)
        let positions = (0..<8).map { buffers[$0] }
        var acknowledged: [Int] = []
        let summary = store.writePipelined(count: 50, buffers: positions, prepare: { index, _ in (key(index), 500) },
            acknowledged: { acknowledged += $0 })
        #expect(summary.failed > 0 && summary.completed + summary.failed == 50)
        #expect(acknowledged.count == summary.completed)
        for index in 0..<50 {
            let hit = store.read([(key: key(index), buffer: positions[0])])[0] == .hit(payloadByteCount: 500)
            #expect(hit == acknowledged.contains(index), "block \(index)")
        }
    }
}

@Suite struct BlockStorePipelineCapacityTests {
    /// 500 rewrites of 20 keys through 40 slots at QD 8: copy-on-write keeps needing slots that
    /// only flushes free, which must be waited for, never reported as failures.
    @Test func rewritesInANearlyFullStoreAllSucceed() throws {
        let directory = try TemporaryDirectory()
        let store = try BlockStore(directory: directory.path + "/cache", geometry: .init(slotByteCount: 8192, slotCount: 40), queueDepth: 8)
        let buffers = SlotBuffers(slotBytes: 8192, count: 8)
        let summary = store.writePipelined(count: 500, buffers: (0..<8).map { buffers[$0] }, flushEvery: 8,
            prepare: { index, _ in (key(index % 20), 100) })
        #expect(summary.completed == 500 && summary.failed == 0)
        #expect(store.statistics.blocks == 20)
    }

    @Test func aReallyFullStoreFailsTheRest() throws {
        let directory = try TemporaryDirectory()
        let store = try BlockStore(directory: directory.path + "/cache", geometry: .init(slotByteCount: 8192, slotCount: 10), queueDepth: 4)
        let buffers = SlotBuffers(slotBytes: 8192, count: 4)
        let summary = store.writePipelined(count: 30, buffers: (0..<4).map { buffers[$0] }, prepare: { index, _ in (key(index), 100) })
        #expect(summary.completed == 10 && summary.failed == 20)
    }
}

@Suite struct BlockStoreFixedBufferTests {
    /// Pipelined I/O through registered (fixed) buffers: cold reads land directly in them.
    @Test func fixedBufferPipelinesRoundTripAndRefuseUnregisteredMemory() throws {
        let directory = try TemporaryDirectory()
        let store = try BlockStore(directory: directory.path + "/cache", geometry: .init(slotByteCount: 16384, slotCount: 64), queueDepth: 4)
        let region = try AlignedBuffer(byteCount: 8 * 16384)
        try store.registerBuffers([region.bytes])
        let writeBuffers = (0..<4).map { region.base + $0 * 16384 }
        let readBuffers = (4..<8).map { region.base + $0 * 16384 }
        let summary = store.writePipelined(count: 40, buffers: writeBuffers, bufferIndices: [0, 0, 0, 0], flushEvery: 4, prepare: { index, position in
            (writeBuffers[position] + ColdSlotHeader.byteCount).storeBytes(of: UInt64(index) &* 0x9E37_79B9, as: UInt64.self)
            return (key(index), 8)
        })
        #expect(summary.completed == 40)
        var seen = 0
        _ = store.readPipelined(count: 40, buffers: readBuffers, bufferIndices: [0, 0, 0, 0], key: { key($0) }) { index, position, result in
            #expect(result == .hit(payloadByteCount: 8))
            #expect((readBuffers[position] + ColdSlotHeader.byteCount).load(as: UInt64.self) == UInt64(index) &* 0x9E37_79B9)
            seen += 1
        }
        #expect(seen == 40)
        // Memory outside every registered buffer: the kernel refuses the fixed read (EFAULT).
        let outside = try AlignedBuffer(byteCount: 16384)
        var outcome: BlockStore.ReadResult?
        _ = store.readPipelined(count: 1, buffers: [outside.base], bufferIndices: [0], key: { key($0) }) { _, _, result in outcome = result }
        guard case .ioError(let reason) = outcome else { Issue.record("expected a refused read, got \(String(describing: outcome))"); return }
        #expect(reason.contains("Bad address"))
        #expect(store.contains(key(0)), "an I/O error keeps the block indexed")
    }
}
