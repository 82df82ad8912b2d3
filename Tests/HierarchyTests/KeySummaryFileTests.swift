#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Testing
import TierKV
import TierKVTestSupport

/// `summaries.tkv`: the cold blocks' key summaries outlive a restart, matched to the exact cold
/// copy they describe, and a damaged or foreign file costs a rebuild, never a wrong summary.
@Suite struct KeySummaryFileTests {
    let directory: TemporaryDirectory
    let keys = (0..<10).map { testKey($0) }

    init() throws { directory = try TemporaryDirectory() }

    var path: String { directory.path + "/cache/summaries.tkv" }

    func configuration(sketchBits: Int = 2) -> HierarchyConfiguration {
        var configuration = tinyConfiguration(directory: directory.path + "/cache", hot: 2, warm: 4, cold: 32)
        configuration.keySummaries = .fromStoredKeys
        configuration.keySketchBits = sketchBits
        return configuration
    }

    /// Each key's record (summary and sketch, as the table keeps them).
    func records(_ hierarchy: Hierarchy, _ keys: [BlockKey]) -> [[UInt8]?] {
        let table = hierarchy.summaries!
        return keys.map { key in
            var bytes = [UInt8](repeating: 0, count: table.recordByteCount)
            let tokens = bytes.withUnsafeMutableBytes { table.copyRecord(of: key, into: $0.baseAddress!) }
            return tokens == nil ? nil : bytes
        }
    }

    /// Stores `keys` in a first run, closes it (flushing), and returns their records.
    func firstRun(sketchBits: Int = 2) throws -> [[UInt8]?] {
        let first = try Hierarchy(configuration(sketchBits: sketchBits))
        for (position, key) in keys.enumerated() { try first.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        let saved = records(first, keys)
        try first.close(flushing: true)
        return saved
    }

    func fileBytes() throws -> [UInt8] { try BinaryFile.read(path) }

    @Test func summariesComeBackWithoutReadingTheBlocks() throws {
        let saved = try firstRun()
        #expect(saved.allSatisfy { $0 != nil })
        let second = try Hierarchy(configuration())
        defer { try? second.close() }
        var expected = Hierarchy.KeySummaryRestore()
        expected.restored = 10
        #expect(second.keySummaryRestore == expected)
        #expect(second.statistics.keySummariesRestored == 10 && second.statistics.summarizedBlocks == 10)
        let same = records(second, keys) == saved
        #expect(same, "restored records differ from those computed at store")
        #expect(try second.rebuildKeySummaries() == .init(missing: 0, rebuilt: 0, failed: 0))
        #expect(second.statistics.nvmeReadBytes == 0, "the restore read blocks back")
        #expect(keys.allSatisfy { second.fastestTier(of: $0) == .cold })
    }

    @Test func aCorruptEntryIsRebuiltNotTrusted() throws {
        let saved = try firstRun()
        var bytes = try fileBytes()
        // Header 64 bytes, entries of 40 + record + 8 checksum, end record 24: flip a byte in
        // entry 3's record.
        let entryBytes = 40 + saved[0]!.count + 8
        #expect(bytes.count == 64 + 10 * entryBytes + 24, "the file is header, 10 entries, end record")
        bytes[64 + 3 * entryBytes + 40 + 100] ^= 0x10
        try BinaryFile.write(bytes, to: path)
        let second = try Hierarchy(configuration())
        defer { try? second.close() }
        #expect(second.keySummaryRestore?.restored == 9 && second.keySummaryRestore?.corrupt == 1)
        #expect(second.keySummaryRestore?.problem == nil)
        let rebuilt = try second.rebuildKeySummaries()
        #expect(rebuilt == .init(missing: 1, rebuilt: 1, failed: 0))
        let same = records(second, keys) == saved
        #expect(same, "records differ from those computed at store")
    }

    @Test func aTruncatedFileRestoresTheEntriesBeforeTheCut() throws {
        let saved = try firstRun()
        let bytes = try fileBytes()
        let entryBytes = (bytes.count - 64 - 24) / 10
        try BinaryFile.write(Array(bytes[0..<(64 + 4 * entryBytes + 17)]), to: path)
        let second = try Hierarchy(configuration())
        defer { try? second.close() }
        #expect(second.keySummaryRestore?.restored == 4)
        #expect(second.keySummaryRestore?.problem?.contains("ends after 4 entries") ?? false, "\(String(describing: second.keySummaryRestore?.problem))")
        #expect(try second.rebuildKeySummaries().rebuilt == 6)
        let same = records(second, keys) == saved
        #expect(same, "records differ from those computed at store")
    }

    @Test func aFileForAnotherShapeIsNotUsed() throws {
        _ = try firstRun(sketchBits: 2)
        let second = try Hierarchy(configuration(sketchBits: 4))
        #expect(second.keySummaryRestore?.restored == 0)
        #expect(second.keySummaryRestore?.problem?.contains("key sketch bits 2; this hierarchy uses 4") ?? false, "\(String(describing: second.keySummaryRestore?.problem))")
        #expect(try second.rebuildKeySummaries().rebuilt == 10)
        try second.close()
        // The close saved the 4-bit summaries: a third open finds them.
        let third = try Hierarchy(configuration(sketchBits: 4))
        defer { try? third.close() }
        #expect(third.keySummaryRestore?.restored == 10)
    }

    /// Entries name the cold copy (key and write sequence): the same keys written again into a
    /// new cold file get other sequences, and an old file's entries do not apply to them.
    /// fsck reads the files alone and counts what a reopen would restore: an entry whose block
    /// copy is corrupt is stale, a flipped entry is corrupt, a cut end record is named.
    @Test func fsckCountsWhatAReopenWouldRestore() throws {
        let saved = try firstRun()
        let cache = directory.path + "/cache"
        var blocks = try BlockFileCheck.run(directory: cache, repair: false)
        var report = KeySummaryFileCheck.run(directory: cache, copies: blocks.newestCopies)
        #expect(report.coldBlocks == 10 && report.covered == 10)
        #expect(report.snapshot == .init(name: "summaries.tkv", present: true, current: 10))
        #expect(report.journal == .init(name: "summaries.log", present: true))
        #expect(report.rotatedJournal == .init(name: "summaries.log.1", present: false))

        // Break one block's slot (its entry turns stale) and another block's entry.
        var file = try BinaryFile.read(cache + "/" + BlockFile.fileName)
        file[BlockFile.fileHeaderByteCount + 1000] ^= 0xFF  // slot 0's payload
        try BinaryFile.write(file, to: cache + "/" + BlockFile.fileName)
        blocks = try BlockFileCheck.run(directory: cache, repair: false)
        #expect(blocks.corrupt == 1 && blocks.newestCopies.count == 9)
        let lost = try #require(Set(keys).subtracting(blocks.newestCopies.keys).first)
        let sorted = keys.sorted()
        let flipped = try #require(sorted.firstIndex { $0 != lost })
        var bytes = try fileBytes()
        let entryBytes = 40 + saved[0]!.count + 8
        bytes[64 + flipped * entryBytes + 40 + 100] ^= 0x10
        try BinaryFile.write(bytes, to: path)
        report = KeySummaryFileCheck.run(directory: cache, copies: blocks.newestCopies)
        #expect(report.coldBlocks == 9 && report.covered == 8)
        #expect(report.snapshot == .init(name: "summaries.tkv", present: true, current: 8, stale: 1, corrupt: 1))

        try BinaryFile.write(Array(bytes.dropLast(10)), to: path)
        unlink(directory.path + "/cache/summaries.log")
        report = KeySummaryFileCheck.run(directory: cache, copies: blocks.newestCopies)
        #expect(report.snapshot.problem == "summaries.tkv ends after 10 entries, before its end record")
        #expect(report.journal == .init(name: "summaries.log", present: false))
    }

    @Test func entriesForOtherCopiesAreStale() throws {
        _ = try firstRun()
        let old = try fileBytes()
        for name in ["blocks.tkv", "index.tkv", "summaries.tkv"] { unlink(directory.path + "/cache/" + name) }
        let second = try Hierarchy(configuration())
        let others = (100..<110).map { testKey($0) }
        for (position, key) in others.enumerated() { try second.storeTestBlock(key, position: position, sequence: SequenceID(2)) }
        try second.flush()
        for (position, key) in keys.enumerated() { try second.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        try second.close(flushing: true)
        try BinaryFile.write(old, to: path)
        let third = try Hierarchy(configuration())
        defer { try? third.close() }
        #expect(third.keySummaryRestore?.restored == 0 && third.keySummaryRestore?.stale == 10)
        #expect(third.statistics.summarizedBlocks == 0)
    }

    /// A crash between snapshots: the journal holds the summaries of the blocks written to cold
    /// since the last flush, so every cold block found at the reopen has its summary.
    @Test func theJournalCoversWritesSinceTheLastSnapshot() throws {
        let later = (20..<30).map { testKey($0) }
        let first = try Hierarchy(configuration())
        for (position, key) in keys.enumerated() { try first.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        try first.flush()
        for (position, key) in later.enumerated() { try first.storeTestBlock(key, position: position, sequence: SequenceID(2)) }
        first.waitUntilIdle()
        let saved = records(first, keys + later)
        // The process "dies" here: what a restart finds is the cache directory as it is now.
        let crashed = directory.path + "/crashed"
        #expect(mkdir(crashed, 0o700) == 0)
        for name in ["blocks.tkv", "index.tkv", "summaries.tkv", "summaries.log"] {
            try BinaryFile.write(try BinaryFile.read(directory.path + "/cache/" + name), to: crashed + "/" + name)
        }
        try first.close()
        var reopened = configuration()
        reopened.cacheDirectory = crashed
        let second = try Hierarchy(reopened)
        defer { try? second.close() }
        let restore = try #require(second.keySummaryRestore)
        let cold = second.statistics.cold.residentBlocks
        #expect(cold > 10, "the later blocks did not reach cold (\(cold))")
        #expect(restore.restored == cold && restore.fromJournal >= cold - 10, "\(restore), \(cold) blocks in cold")
        #expect(restore.problem == nil && restore.saveError == nil, "\(restore)")
        #expect(try second.rebuildKeySummaries().missing == 0)
        let inCold = (keys + later).indices.filter { second.fastestTier(of: (keys + later)[$0]) == .cold }
        let now = records(second, keys + later)
        #expect(inCold.allSatisfy { now[$0] == saved[$0] }, "journaled records differ from those computed at store")
        // The open folded the journal into a new snapshot and emptied it.
        #expect(try BinaryFile.read(crashed + "/summaries.log").count == 64)
    }

    /// A crash in the middle of a snapshot: the journal it covered (`summaries.log.1`) and the
    /// one started beside it are both read, so the blocks of either have their summaries.
    @Test func aCrashMidSnapshotLosesNeitherJournal() throws {
        let later = (20..<30).map { testKey($0) }
        let first = try Hierarchy(configuration())
        for (position, key) in keys.enumerated() { try first.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        try first.flush()
        for (position, key) in later.enumerated() { try first.storeTestBlock(key, position: position, sequence: SequenceID(2)) }
        first.waitUntilIdle()
        let saved = records(first, keys + later)
        let crashed = directory.path + "/crashed"
        #expect(mkdir(crashed, 0o700) == 0)
        for name in ["blocks.tkv", "index.tkv", "summaries.tkv"] {
            try BinaryFile.write(try BinaryFile.read(directory.path + "/cache/" + name), to: crashed + "/" + name)
        }
        // The journal's entries split between the rotated journal and the new one.
        let journal = try BinaryFile.read(directory.path + "/cache/summaries.log")
        let entryBytes = 40 + first.summaries!.recordByteCount + 8
        let entries = (journal.count - 64) / entryBytes
        #expect(entries >= 4, "only \(entries) journal entries")
        let cut = 64 + entries / 2 * entryBytes
        try BinaryFile.write(Array(journal[0..<cut]), to: crashed + "/summaries.log.1")
        try BinaryFile.write(Array(journal[0..<64] + journal[cut...]), to: crashed + "/summaries.log")
        try first.close()
        var reopened = configuration()
        reopened.cacheDirectory = crashed
        let second = try Hierarchy(reopened)
        defer { try? second.close() }
        let restore = try #require(second.keySummaryRestore)
        let cold = second.statistics.cold.residentBlocks
        #expect(restore.restored == cold && restore.fromJournal == entries, "\(restore), \(cold) blocks in cold, \(entries) entries")
        #expect(restore.problem == nil && restore.saveError == nil, "\(restore)")
        #expect(try second.rebuildKeySummaries().missing == 0)
        let inCold = (keys + later).indices.filter { second.fastestTier(of: (keys + later)[$0]) == .cold }
        let now = records(second, keys + later)
        #expect(inCold.allSatisfy { now[$0] == saved[$0] }, "journaled records differ from those computed at store")
        #expect(access(crashed + "/summaries.log.1", F_OK) != 0, "the open's snapshot covers the rotated journal, which should be gone")
    }

    /// A journal twice the size of a snapshot is compacted on a background thread, without a
    /// flush; stores go on meanwhile and nothing is lost.
    @Test func aLongJournalIsCompactedInTheBackground() throws {
        var small = configuration()
        small.warmCapacityBlocks = 2
        let first = try Hierarchy(small)
        let entryBytes = 40 + first.summaries!.recordByteCount + 8
        // 32 cold slots: 2,200 distinct blocks make more than 2 × 1,024 journal entries.
        for index in 0..<2200 { try first.storeTestBlock(testKey(1000 + index), position: index, sequence: nil) }
        first.waitUntilIdle()
        var waited = 0
        while access(path, F_OK) != 0, waited < 1000 {  // the compaction is not tied to any call: poll
            usleep(10_000)
            waited += 1
        }
        #expect(access(path, F_OK) == 0, "no snapshot was written without a flush")
        let journal = try BinaryFile.read(directory.path + "/cache/summaries.log")
        #expect(journal.count < 64 + 2200 * entryBytes, "the journal was not started again (\(journal.count) bytes)")
        try first.close()
        let second = try Hierarchy(configuration())
        defer { try? second.close() }
        let cold = second.statistics.cold.residentBlocks
        #expect(second.keySummaryRestore?.restored == cold && cold > 0, "\(String(describing: second.keySummaryRestore)), \(cold) in cold")
        #expect(access(directory.path + "/cache/summaries.log.1", F_OK) != 0)
    }

    /// A journal cut inside an entry (the crash came mid-append) gives back the entries before it.
    @Test func aTornJournalTailCostsOnlyThatEntry() throws {
        let first = try Hierarchy(configuration())
        for (position, key) in keys.enumerated() { try first.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        first.waitUntilIdle()
        let journal = try BinaryFile.read(directory.path + "/cache/summaries.log")
        let entryBytes = 40 + first.summaries!.recordByteCount + 8
        let journaled = (journal.count - 64) / entryBytes
        #expect(journaled >= 6 && (journal.count - 64) % entryBytes == 0, "journal of \(journal.count) bytes")
        try first.close()
        // As if the crash came before the close, halfway through the last append.
        try BinaryFile.write(Array(journal[0..<(journal.count - entryBytes / 2)]), to: directory.path + "/cache/summaries.log")
        unlink(path)
        let second = try Hierarchy(configuration())
        defer { try? second.close() }
        #expect(second.keySummaryRestore?.fromJournal == journaled - 1)
        #expect(second.keySummaryRestore?.problem?.contains("summaries.log ends inside entry \(journaled)") ?? false, "\(String(describing: second.keySummaryRestore))")
        #expect(try second.rebuildKeySummaries().rebuilt >= 1)
    }

    /// Journal appends (on the cold-write queue) race snapshots (flush, compaction): after
    /// stores from 3 threads with flushes between them, every cold block's summary comes back.
    @Test func concurrentStoresAndFlushesLoseNoSummary() throws {
        var configuration = configuration()
        configuration.coldCapacityBlocks = 128
        let hierarchy = try Hierarchy(configuration)
        DispatchQueue.concurrentPerform(iterations: 3) { thread in
            for index in 0..<30 {
                let key = testKey(1000 * (thread + 1) + index)
                _ = try? hierarchy.storeTestBlock(key, position: index, sequence: SequenceID(UInt64(thread + 1)))
                if index % 10 == 9 { _ = try? hierarchy.flush() }
            }
        }
        hierarchy.waitUntilIdle()
        try hierarchy.close()
        let second = try Hierarchy(configuration)
        defer { try? second.close() }
        let cold = second.statistics.cold.residentBlocks
        #expect(cold >= 80)
        #expect(second.keySummaryRestore?.restored == cold, "\(String(describing: second.keySummaryRestore)), \(cold) in cold")
        #expect(try second.rebuildKeySummaries().missing == 0)
    }

    /// A real full disk (a loop-mounted ext4 image): the cold blocks, in their preallocated file,
    /// are written and kept; the journal's appends and the flush's index and summary files cannot
    /// be, and the flush says so. Once there is room again the next flush saves them, and a
    /// restart finds every block and every summary.
    @Test(.enabled(if: LoopFilesystem.isPossible, "needs root and /dev/loop-control for a loop-mounted ext4 image"))
    func aFullDiskCostsTheSummaryFilesNotTheBlocks() throws {
        let filesystem = try LoopFilesystem(megabytes: 16)
        var configuration = tinyConfiguration(directory: filesystem.mountPoint + "/cache", hot: 2, warm: 4, cold: 64)
        configuration.keySummaries = .fromStoredKeys
        configuration.keySketchBits = 2
        let hierarchy = try Hierarchy(configuration)
        // dd stops at the first write that does not fit: 64 KiB pieces, then 1 KiB ones.
        for (name, size) in [("filler", "64k"), ("filler-small", "1k")] {
            try LoopFilesystem.shell("dd if=/dev/zero of=\(filesystem.mountPoint)/\(name) bs=\(size) 2>/dev/null || true")
        }
        let blocks = (0..<20).map { testKey(200 + $0) }
        for (position, key) in blocks.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        hierarchy.waitUntilIdle()
        #expect(hierarchy.statistics.coldWriteFailures == 0, "the preallocated block file should take the writes")
        let error = tierKVError { try hierarchy.flush() }
        #expect(error?.code == .capacityExceeded && error?.errno == ENOSPC, "\(String(describing: error))")
        #expect(try blocks.allSatisfy { try hierarchy.holdsTestPattern($0) })
        unlink(filesystem.mountPoint + "/filler")
        unlink(filesystem.mountPoint + "/filler-small")
        try hierarchy.flush()
        let cold = hierarchy.statistics.cold.residentBlocks
        try hierarchy.close()
        let second = try Hierarchy(configuration)
        defer { try? second.close() }
        #expect(second.keySummaryRestore?.restored == cold && cold >= 16, "\(String(describing: second.keySummaryRestore)), \(cold) in cold")
        #expect(try blocks.allSatisfy { try second.holdsTestPattern($0) })
    }

    /// Summaries are host memory, one per block of capacity at most: a cold tier whose summaries
    /// could never fit is refused at open, before anything is created, naming the sizes.
    @Test func summariesThatCouldNotFitInMemoryAreRefusedAtOpen() throws {
        var configuration = configuration()
        configuration.coldCapacityBlocks = 2_000_000_000
        let error = tierKVError { _ = try Hierarchy(configuration) }
        #expect(error?.code == .capacityExceeded, "\(String(describing: error))")
        #expect(error?.message.contains("key summaries for 2000000006 blocks") ?? false, "\(String(describing: error))")
        #expect(error?.message.contains("lower key_sketch_bits, the cold capacity, or turn key_summaries off") ?? false)
        #expect(access(directory.path + "/cache", F_OK) != 0, "the open created the cache directory before refusing")
    }

    /// A cache that will not be reopened (the simulator's) can leave the files out.
    @Test func persistenceCanBeTurnedOff() throws {
        var configuration = configuration()
        configuration.persistsKeySummaries = false
        let hierarchy = try Hierarchy(configuration)
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        try hierarchy.close(flushing: true)
        #expect(hierarchy.keySummaryRestore == nil)
        #expect(access(path, F_OK) != 0 && access(directory.path + "/cache/summaries.log", F_OK) != 0)
    }

    /// A new cold file removes an earlier run's summaries.tkv.
    @Test func aNewColdFileForgetsOldSummaries() throws {
        _ = try firstRun()
        unlink(directory.path + "/cache/blocks.tkv")
        let second = try Hierarchy(configuration())
        #expect(second.keySummaryRestore == Hierarchy.KeySummaryRestore())
        #expect(access(path, F_OK) != 0, "the old summaries.tkv is still there")
        try second.close()
    }

    /// A save that fails says the blocks are durable; the close still releases the directory.
    @Test func aFailedSaveIsReportedAndLosesNoBlock() throws {
        let hierarchy = try Hierarchy(configuration())
        for (position, key) in keys.enumerated() { try hierarchy.storeTestBlock(key, position: position, sequence: SequenceID(1)) }
        #expect(mkdir(path + ".tmp", 0o700) == 0)
        let error = tierKVError { try hierarchy.flush() }
        #expect(error?.message.contains("the blocks are durable, but their key summaries could not be saved") ?? false, "\(String(describing: error))")
        #expect(tierKVError { try hierarchy.close() } != nil)
        rmdir(path + ".tmp")
        let second = try Hierarchy(configuration())
        defer { try? second.close() }
        #expect(second.keySummaryRestore?.problem?.contains("no summaries.tkv") ?? false)
        #expect(try keys.allSatisfy { try second.holdsTestPattern($0) })
    }
}
