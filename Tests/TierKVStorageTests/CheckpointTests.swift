import Testing
import TierKVCore
import TierKVTestSupport
@testable import TierKVStorage

#if canImport(Glibc)
import Glibc
#endif

@Suite struct CheckpointTests {
    static let geometry = BlockFile.Geometry(slotByteCount: 8192, slotCount: 100)

    func open(_ path: String, _ geometry: BlockFile.Geometry = geometry) throws -> BlockStore {
        try BlockStore(directory: path, geometry: geometry)
    }

    func write(_ store: BlockStore, _ keys: [Int], length: (Int) -> Int = { 100 + $0 }) -> [BlockStore.WriteResult] {
        let buffers = SlotBuffers(slotBytes: store.geometry.slotByteCount, count: keys.count)
        return store.write(keys.enumerated().map { BlockStore.Write(key: key($0.element), buffer: buffers[$0.offset], payloadByteCount: length($0.element)) })
    }

    func length(in store: BlockStore, _ index: Int) -> Int? {
        let buffer = SlotBuffers(slotBytes: store.geometry.slotByteCount, count: 1)
        if case .hit(let length) = store.read([(key: key(index), buffer: buffer[0])])[0] { return length }
        return nil
    }

    @Test func anOpenAfterACheckpointScansOnlyTheOtherSlots() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        do {
            let store = try open(path)
            _ = write(store, Array(0..<50))
            try store.checkpoint()
        }
        let reopened = try open(path)
        #expect(reopened.statistics.openedFromCheckpoint)
        #expect(reopened.statistics.scannedSlots == 50)
        for index in 0..<50 { #expect(length(in: reopened, index) == 100 + index) }
    }

    @Test func writesAfterTheCheckpointSurviveACrash() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        do {
            let store = try open(path)
            _ = write(store, Array(0..<10))
            try store.checkpoint()
            _ = write(store, [3], length: { _ in 999 })  // a newer copy of key 3
            _ = write(store, [60])
            store.remove(key(4))
            // No checkpoint: the process "crashes" here.
        }
        let reopened = try open(path)
        #expect(length(in: reopened, 3) == 999)
        #expect(length(in: reopened, 60) == 160)
        #expect(length(in: reopened, 4) == 104, "a removal is not durable; the block returns intact")
        for index in [0, 1, 2, 5, 9] { #expect(length(in: reopened, index) == 100 + index) }
    }

    @Test func retiredSlotsAreReusedOnlyThroughACheckpoint() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        let small = BlockFile.Geometry(slotByteCount: 8192, slotCount: 8)
        do {
            let store = try open(path, small)
            _ = write(store, Array(0..<8))
            try store.checkpoint()
            for index in 0..<8 { store.remove(key(index)) }
            let results = write(store, Array(100..<108))
            #expect(results.allSatisfy { if case .stored = $0 { true } else { false } })
            #expect(store.statistics.checkpoints == 2, "the full store checkpointed by itself to reuse retired slots")
        }
        let reopened = try open(path, small)
        for index in 100..<108 { #expect(length(in: reopened, index) == 100 + index) }
        for index in 0..<8 { #expect(length(in: reopened, index) == nil) }
    }

    @Test func aCorruptCheckpointFallsBackToAFullScan() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        do {
            let store = try open(path)
            _ = write(store, Array(0..<20))
            try store.checkpoint()
        }
        let index = Glibc.open(path + "/" + BlockStore.checkpointFileName, O_RDWR | O_CLOEXEC)
        var byte: UInt8 = 0x5A
        pwrite(index, &byte, 1, 40)
        close(index)
        let reopened = try open(path)
        #expect(!reopened.statistics.openedFromCheckpoint)
        #expect(reopened.statistics.scannedSlots == 100)
        for index in 0..<20 { #expect(length(in: reopened, index) == 100 + index) }
    }

    @Test func aNewBlockFileIgnoresAnOldIndex() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        do {
            let store = try open(path)
            _ = write(store, Array(0..<30))
            try store.checkpoint()
        }
        unlink(path + "/" + BlockFile.fileName)
        do {
            let store = try open(path)  // a new, empty file
            _ = write(store, [500, 501])
        }
        let reopened = try open(path)
        #expect(length(in: reopened, 500) == 600 && length(in: reopened, 501) == 601)
        #expect(length(in: reopened, 0) == nil)
    }

    /// Recovery frees a superseded slot the old checkpoint named; a block written into it before
    /// the next checkpoint must still be found after another crash.
    @Test func aSlotFreedByRecoveryAndReusedIsStillFound() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/cache"
        let small = BlockFile.Geometry(slotByteCount: 8192, slotCount: 4)
        do {
            let store = try open(path, small)
            _ = write(store, [1])
            try store.checkpoint()
            _ = write(store, [1], length: { _ in 777 })  // newer copy elsewhere; crash
        }
        do {
            let store = try open(path, small)  // recovery frees the old copy's slot
            #expect(length(in: store, 1) == 777)
            _ = write(store, [2, 3, 4])  // fills the store, reusing that slot; crash
        }
        let reopened = try open(path, small)
        for index in [2, 3, 4] { #expect(length(in: reopened, index) == 100 + index, "block \(index)") }
        #expect(length(in: reopened, 1) == 777)
    }
}
