import Testing
import TierKVCore
import TierKVTestSupport
@testable import TierKVStorage

#if canImport(Glibc)
import Glibc
#endif

/// Slot-sized, aligned buffers holding seeded payloads.
final class SlotBuffers {
    let slotBytes: Int
    let count: Int
    let base: UnsafeMutableRawPointer

    init(slotBytes: Int, count: Int) {
        self.slotBytes = slotBytes
        self.count = count
        base = .allocate(byteCount: slotBytes * count, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: slotBytes * count)
    }

    deinit { base.deallocate() }

    subscript(index: Int) -> UnsafeMutableRawPointer { base + index * slotBytes }

    func fill(_ index: Int, payload: Int, seed: UInt64) {
        var generator = SeededGenerator(seed: seed)
        let bytes = self[index] + ColdSlotHeader.byteCount
        for offset in 0..<payload { bytes.storeBytes(of: UInt8(truncatingIfNeeded: generator.next()), toByteOffset: offset, as: UInt8.self) }
    }

    func payloadEquals(_ a: Int, _ other: SlotBuffers, _ b: Int, payload: Int) -> Bool {
        memcmp(self[a] + ColdSlotHeader.byteCount, other[b] + ColdSlotHeader.byteCount, payload) == 0
    }
}

func key(_ index: Int, layer: UInt32 = 0) -> BlockKey {
    BlockKey(prefixHash: PrefixHash(high: UInt64(index) &* 0x9E37_79B9_7F4A_7C15, low: UInt64(index)), layer: layer)
}

@Suite struct BlockStoreTests {
    static let geometry = BlockFile.Geometry(slotByteCount: BlockFile.Geometry.slotByteCount(forPayload: 64 << 10), slotCount: 64)
    static let payload = 64 << 10

    @Test func blocksReadBackByteExact() throws {
        let directory = try TemporaryDirectory()
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry)
        #expect(store.file.isDirect)
        let source = SlotBuffers(slotBytes: Self.geometry.slotByteCount, count: 20)
        for index in 0..<20 { source.fill(index, payload: Self.payload - index, seed: UInt64(index)) }
        let results = store.write((0..<20).map { BlockStore.Write(key: key($0), buffer: source[$0], payloadByteCount: Self.payload - $0) })
        #expect(results.allSatisfy { if case .stored = $0 { true } else { false } })
        let target = SlotBuffers(slotBytes: Self.geometry.slotByteCount, count: 21)
        let reads = store.read((0..<21).map { (key: key($0), buffer: target[$0]) })
        for index in 0..<20 {
            #expect(reads[index] == .hit(payloadByteCount: Self.payload - index))
            #expect(target.payloadEquals(index, source, index, payload: Self.payload - index))
        }
        #expect(reads[20] == .miss)
        #expect(store.statistics.hits == 20 && store.statistics.misses == 1 && store.statistics.blocks == 20)
    }

    /// Any flipped byte, in the header or the payload, makes the read a miss and a counted
    /// corruption; the block is never handed out.
    @Test(arguments: [0, 9, 17, 33, 37, 41, 50, 64, 65 + 4096, 64 + (64 << 10) - 1])
    func aFlippedByteIsACorruptionNotData(offset: Int) throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        let store = try BlockStore(directory: path, geometry: Self.geometry)
        let source = SlotBuffers(slotBytes: Self.geometry.slotByteCount, count: 1)
        source.fill(0, payload: Self.payload, seed: 5)
        _ = store.write([BlockStore.Write(key: key(7), buffer: source[0], payloadByteCount: Self.payload)])
        // Flip the byte on disk, behind the store's back (slot 0 follows the 4 KiB file header).
        let raw = open(path + "/" + BlockFile.fileName, O_RDWR | O_CLOEXEC)
        var byte: UInt8 = 0
        pread(raw, &byte, 1, off_t(BlockFile.fileHeaderByteCount + offset))
        byte ^= 0x10
        pwrite(raw, &byte, 1, off_t(BlockFile.fileHeaderByteCount + offset))
        fdatasync(raw)
        close(raw)
        let target = SlotBuffers(slotBytes: Self.geometry.slotByteCount, count: 1)
        let result = store.read([(key: key(7), buffer: target[0])])[0]
        guard case .corrupt = result else {
            Issue.record("flipped byte at \(offset) gave \(result)")
            return
        }
        #expect(store.statistics.corruptions == 1)
        #expect(!store.contains(key(7)))
        #expect(store.read([(key: key(7), buffer: target[0])])[0] == .miss)
    }

    @Test func reopeningRebuildsTheIndexAndTheNewestCopyWins() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        let source = SlotBuffers(slotBytes: Self.geometry.slotByteCount, count: 11)
        do {
            let store = try BlockStore(directory: path, geometry: Self.geometry)
            for index in 0..<10 { source.fill(index, payload: 1000, seed: UInt64(index)) }
            _ = store.write((0..<10).map { BlockStore.Write(key: key($0), buffer: source[$0], payloadByteCount: 1000) })
            source.fill(10, payload: 2000, seed: 99)  // a new version of key 3
            _ = store.write([BlockStore.Write(key: key(3), buffer: source[10], payloadByteCount: 2000)])
            store.remove(key(9))
        }
        let reopened = try BlockStore(directory: path, geometry: Self.geometry)
        #expect(reopened.statistics.recoveredBlocks == 10)  // key 9's removal is not durable: it returns, intact
        let target = SlotBuffers(slotBytes: Self.geometry.slotByteCount, count: 10)
        let reads = reopened.read((0..<10).map { (key: key($0), buffer: target[$0]) })
        for index in 0..<10 where index != 3 {
            #expect(reads[index] == .hit(payloadByteCount: 1000))
            #expect(target.payloadEquals(index, source, index, payload: 1000))
        }
        #expect(reads[3] == .hit(payloadByteCount: 2000))
        #expect(target.payloadEquals(3, source, 10, payload: 2000))
        // New writes continue the sequence and do not reuse live slots.
        source.fill(0, payload: 10, seed: 1234)
        _ = reopened.write([BlockStore.Write(key: key(50), buffer: source[0], payloadByteCount: 10)])
        #expect(reopened.read((0..<10).map { (key: key($0), buffer: target[$0]) }).allSatisfy { if case .hit = $0 { true } else { false } })
    }

    @Test func aSecondOpenerIsRefusedByName() throws {
        let directory = try TemporaryDirectory()
        let owner = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry)
        withExtendedLifetime(owner) {
            do throws(TierKVError) {
                _ = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry)
                Issue.record("expected an error")
            } catch {
                #expect(error.message.contains("in use by process \(getpid())"))
            }
        }
    }

    @Test func foreignTruncatedAndMisshapedFilesAreRefused() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        _ = try BlockStore(directory: path, geometry: Self.geometry)
        #expect {
            _ = try BlockStore(directory: path, geometry: .init(slotByteCount: Self.geometry.slotByteCount, slotCount: 32))
        } throws: { ($0 as? TierKVError)?.message.contains("64 slots") == true }
        truncate(path + "/" + BlockFile.fileName, 8192)
        #expect {
            _ = try BlockStore(directory: path, geometry: Self.geometry)
        } throws: { ($0 as? TierKVError)?.message.contains("truncated") == true }
        let foreign = open(path + "/" + BlockFile.fileName, O_WRONLY | O_TRUNC | O_CLOEXEC)
        var text = Array("hello, not a cache file".utf8) + [UInt8](repeating: 0, count: 4096)
        pwrite(foreign, &text, text.count, 0)
        close(foreign)
        #expect {
            _ = try BlockStore(directory: path, geometry: Self.geometry)
        } throws: { ($0 as? TierKVError)?.message.contains("not a TierKV block file") == true }
    }

    @Test func aFullTierFailsTheWriteAndKeepsTheIndex() throws {
        let directory = try TemporaryDirectory()
        let small = BlockFile.Geometry(slotByteCount: 8192, slotCount: 2)
        let store = try BlockStore(directory: directory.path + "/cache", geometry: small)
        let source = SlotBuffers(slotBytes: 8192, count: 3)
        let results = store.write((0..<3).map { BlockStore.Write(key: key($0), buffer: source[$0], payloadByteCount: 100) })
        #expect(results.filter { if case .stored = $0 { true } else { false } }.count == 2)
        guard case .failed(let error) = results[2] else { Issue.record("third write should fail"); return }
        #expect(error.code == .capacityExceeded)
        #expect(store.statistics.blocks == 2)
        #expect(store.write([BlockStore.Write(key: key(9), buffer: source[0], payloadByteCount: 9000)]).allSatisfy {
            if case .failed(let error) = $0 { error.code == .invalidArgument } else { false }
        })
    }
}

@Suite struct BlockStoreQueueDepthTests {
    /// Found by the crash test: recovery must batch its header reads within the ring's size.
    @Test(arguments: [1, 8, 256] as [UInt32])
    func reopensWithAnyQueueDepth(_ depth: UInt32) throws {
        let directory = try TemporaryDirectory()
        let geometry = BlockFile.Geometry(slotByteCount: 8192, slotCount: 100)
        let buffers = SlotBuffers(slotBytes: 8192, count: 2)
        do {
            let store = try BlockStore(directory: directory.path + "/cache", geometry: geometry, queueDepth: depth)
            _ = store.write([BlockStore.Write(key: key(1), buffer: buffers[0], payloadByteCount: 10)])
        }
        let reopened = try BlockStore(directory: directory.path + "/cache", geometry: geometry, queueDepth: depth)
        #expect(reopened.read([(key: key(1), buffer: buffers[1])])[0] == .hit(payloadByteCount: 10))
    }
}

@Suite struct BlockStoreCoalescingTests {
    static let geometry = BlockFile.Geometry(slotByteCount: 16384, slotCount: 128)

    @Test func adjacentSlotsFromAdjacentBuffersBecomeOneIO() throws {
        let directory = try TemporaryDirectory()
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry)
        let source = SlotBuffers(slotBytes: 16384, count: 16)
        for index in 0..<16 { source.fill(index, payload: 9000, seed: UInt64(index)) }
        _ = store.write((0..<16).map { BlockStore.Write(key: key($0), buffer: source[$0], payloadByteCount: 9000) })
        #expect(store.statistics.ios == 1, "16 × 16 KiB adjacent slots: one 256 KiB write")
        let target = SlotBuffers(slotBytes: 16384, count: 16)
        let inOrder = store.read((0..<16).map { (key: key($0), buffer: target[$0]) })
        #expect(inOrder.allSatisfy { $0 == .hit(payloadByteCount: 9000) })
        #expect(store.statistics.ios == 2, "and one read")
        for index in 0..<16 { #expect(target.payloadEquals(index, source, index, payload: 9000)) }
        // Destinations in reverse order are not adjacent to their slots' neighbours: 16 reads.
        let reversed = store.read((0..<16).map { (key: key($0), buffer: target[15 - $0]) })
        #expect(reversed.allSatisfy { $0 == .hit(payloadByteCount: 9000) })
        #expect(store.statistics.ios == 18)
        for index in 0..<16 { #expect(target.payloadEquals(15 - index, source, index, payload: 9000)) }
    }

    @Test func aFaultInAMergedIOFailsEveryMemberAndIndexesNone() throws {
        let directory = try TemporaryDirectory()
        let injector = IOFaultInjector { isWrite, slot in isWrite && slot == 5 ? EIO : nil }
        let store = try BlockStore(directory: directory.path + "/cache", geometry: Self.geometry, faultInjector: injector)
        let source = SlotBuffers(slotBytes: 16384, count: 8)
        let results = store.write((0..<8).map { BlockStore.Write(key: key($0), buffer: source[$0], payloadByteCount: 100) })
        #expect(results.allSatisfy { if case .failed(let error) = $0 { error.errno == EIO } else { false } })
        #expect(store.statistics.blocks == 0)
    }
}
