import Dispatch
import TierKVCore
import TierKVPrediction
import TierKVStorage

#if canImport(Glibc)
import Glibc
#endif

/// The cold blocks' key summaries (and sketches) on disk beside the blocks, so that after a
/// restart a predictor can rank the cold blocks at once instead of reading every block back
/// (`Hierarchy.rebuildKeySummaries`) to summarise it again. Two files:
/// - `summaries.tkv`, a snapshot of every cold block's summary, written whole (temporary file,
///   fsync, rename) by `flush`, `close`, and when the journal has grown to twice its size;
/// - `summaries.log`, a journal: each cold write, once durable, appends its blocks' entries (not
///   synced: summaries are derived data), so a crash between snapshots loses at most the tail.
///
/// A snapshot first renames the journal to `summaries.log.1` and starts a new one, then writes
/// without holding up the appends, then removes `summaries.log.1`. The compaction a long
/// journal calls for runs on a background thread, not on the cold-write queue that appends:
/// at a million blocks a snapshot is 10 GiB. A crash at any point leaves the snapshot before
/// it plus both journals, which the open reads in that order.
///
/// Summaries are derived data: each entry names the cold copy it describes by key and write
/// sequence, and is used only when the reopened cold tier holds that very copy; each entry has
/// its own checksum. A missing, foreign, differently shaped or damaged file therefore costs a
/// rebuild of the blocks it does not cover, never a wrong summary.
///
/// Format (little-endian):
/// - header, 64 bytes: magic `TKVSUMS1` (snapshot) or `TKVSLOG1` (journal) (8) · version (4) ·
///   header bytes (4) · KV heads (4) · head dim (4) · group size (4) · sketch bits (4) · tokens
///   per block (4) · record bytes (4) · reserved (16) · XXH64 of the preceding 56 bytes (8);
/// - per block: tag `ENTR` (4) · token count (4) · prefix hash high (8) · low (8) · layer (4) ·
///   reserved (4) · cold write sequence (8) · record (the table's fp16 summary, then the sketch)
///   · XXH64 of the entry before it (8);
/// - the snapshot only, at its end: tag `END.` (4) · reserved (4) · entry count (8) · XXH64 of
///   those 16 bytes (8). A journal ends where its last whole entry does.
final class KeySummaryFile: @unchecked Sendable {
    // @unchecked: the journal's descriptor and counters are behind `journal`'s lock; the rest is immutable.
    static let fileName = "summaries.tkv"
    static let journalName = "summaries.log"
    /// The journal a snapshot in progress covers; removed once the snapshot is in place.
    static let rotatedJournalName = "summaries.log.1"
    static let magic: UInt64 = 0x3153_4D55_5356_4B54  // "TKVSUMS1"
    static let journalMagic: UInt64 = 0x3147_4F4C_5356_4B54  // "TKVSLOG1"
    static let version: UInt32 = 1
    static let headerBytes = 64
    static let entryTag: UInt32 = 0x5254_4E45  // "ENTR"
    static let endTag: UInt32 = 0x2E44_4E45  // "END."
    static let entryHeaderBytes = 40

    let table: BlockSummaryTable
    let store: BlockStore
    let snapshotPath: String
    let journalPath: String
    let rotatedJournalPath: String
    /// Bytes of one entry, checksum included.
    let entryBytes: Int
    private let journal = Locked(Journal())
    /// Serialises snapshot writers (flush, close, background compaction).
    private let snapshotWriter = PlainLock()
    /// The background compaction, if one is scheduled or running (`closeJournal` waits for it).
    private let background = DispatchGroup()

    private struct Journal {
        var descriptor: Int32 = -1
        /// Entries appended since the last snapshot.
        var entries = 0
        /// The cold index and summary count at the last snapshot: a flush followed by a close
        /// writes it once.
        var snapshotVersion: [Int]?
        /// Appends that failed since the last snapshot (the snapshot covers them).
        var failures = 0
        /// A background compaction is scheduled or running.
        var compacting = false
        /// The hierarchy closed: nothing more is written.
        var closed = false
    }

    init(table: BlockSummaryTable, store: BlockStore) {
        self.table = table
        self.store = store
        snapshotPath = store.file.directory + "/" + Self.fileName
        journalPath = store.file.directory + "/" + Self.journalName
        rotatedJournalPath = store.file.directory + "/" + Self.rotatedJournalName
        entryBytes = Self.entryHeaderBytes + table.recordByteCount + 8
    }

    deinit {
        journal.withLock { if $0.descriptor >= 0 { close($0.descriptor) } }
    }

    // MARK: Open

    /// Installs every entry of the snapshot and then the journal that describes the copy the
    /// store holds now, and starts an empty journal (after a new snapshot when the journal held
    /// entries, so that the two files again cover everything). On a new cold file, removes both.
    func open(coldFileIsNew: Bool) -> Hierarchy.KeySummaryRestore {
        var result = Hierarchy.KeySummaryRestore()
        if coldFileIsNew {
            // Summaries of an earlier file's blocks must not meet this file's sequences.
            unlink(snapshotPath)
            unlink(journalPath)
            unlink(rotatedJournalPath)
        } else {
            let sequences = store.sequences
            if let problem = read(snapshotPath, magic: Self.magic, sequences: sequences, into: &result) {
                result.problem = problem
            }
            // A snapshot interrupted by a crash leaves the journal it was covering beside the new one.
            var journalResult = Hierarchy.KeySummaryRestore()
            var journalDamaged = false
            for (path, name) in [(rotatedJournalPath, Self.rotatedJournalName), (journalPath, Self.journalName)] {
                if let problem = read(path, magic: Self.journalMagic, sequences: sequences, into: &journalResult), problem != Self.absent(name) {
                    journalDamaged = true
                    result.problem = [result.problem, problem].compactMap { $0 }.joined(separator: "; ")
                }
            }
            result.stale += journalResult.stale
            result.corrupt += journalResult.corrupt
            result.fromJournal = journalResult.restored
            result.restored = table.count
            if journalResult.restored + journalResult.stale + journalResult.corrupt > 0 || journalDamaged {
                result.saveError = (try? save(force: true)) == nil ? "the new snapshot could not be written" : nil
            }
        }
        let failure = journal.withLock { state -> Int32? in
            guard state.descriptor < 0 else { return nil }
            state.descriptor = openJournal()
            return state.descriptor < 0 ? errno : nil
        }
        if let failure {
            let reason = "cannot create \(journalPath): \(TierKVError.errnoName(failure)); cold writes are not journaled, so a crash before the next flush or close loses their summaries (the blocks are safe)"
            result.problem = [result.problem, reason].compactMap { $0 }.joined(separator: "; ")
        }
        return result
    }

    /// Closes the journal (the hierarchy is closing; nothing more is written to cold) and waits
    /// for a background compaction, so nothing is written after the directory's lock is released.
    func closeJournal() {
        journal.withLock { state in
            if state.descriptor >= 0 { close(state.descriptor) }
            state.descriptor = -1
            state.closed = true
        }
        background.wait()
    }

    /// A new journal holding only its header; -1 with `errno` set when it cannot be made (then
    /// nothing is journaled and the next snapshot covers the writes).
    private func openJournal() -> Int32 {
        let descriptor = Glibc.open(journalPath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard descriptor >= 0 else { return -1 }
        let header = Self.header(table.shape, recordBytes: table.recordByteCount, magic: Self.journalMagic)
        guard Self.writeAll(descriptor, header) else {
            let code = errno
            close(descriptor)
            errno = code
            return -1
        }
        return descriptor
    }

    static func absent(_ name: String) -> String { "no \(name) (a new cache, or its files were removed)" }

    /// Reads one file's entries into the table; returns why it stopped early (nil: read whole).
    private func read(
        _ path: String, magic: UInt64, sequences: [BlockKey: UInt64], into result: inout Hierarchy.KeySummaryRestore
    ) -> String? {
        let expected = Self.header(table.shape, recordBytes: table.recordByteCount, magic: magic)
        return Self.readEntries(path, magic: magic, expected: expected, into: &result) { entry in
            guard sequences[entry.key] == entry.sequence else { return .stale }
            guard (try? table.restoreRecord(entry.key, tokenCount: entry.tokenCount, from: entry.record)) != nil else { return .corruptEntry }
            return .restored
        }
    }

    /// One entry that passed its checksum; `record` is valid only during the visit.
    struct Entry {
        let key: BlockKey
        let sequence: UInt64
        let tokenCount: Int
        let record: UnsafeRawPointer
    }

    /// Reads `path`'s entries in order, handing each one whose checksum verifies to `visit`
    /// (which says whether it was used, stale, or unusable) and counting them into `result`.
    /// `expected` is the header the reader's shape would write; nil (fsck, which knows no shape)
    /// takes the file's own header when its magic, version and checksum verify. Returns why the
    /// read stopped early; nil when the file was read whole.
    static func readEntries(
        _ path: String, magic: UInt64, expected: [UInt8]?, into result: inout Hierarchy.KeySummaryRestore,
        visit: (Entry) -> EntryOutcome
    ) -> String? {
        let name = String(path.split(separator: "/").last ?? "")
        guard let reader = SequentialFileReader(path: path) else { return absent(name) }
        var header = [UInt8](repeating: 0, count: headerBytes)
        guard header.withUnsafeMutableBytes({ reader.read(into: $0.baseAddress!, count: headerBytes) }) else {
            return "\(name) is shorter than its header"
        }
        if let expected {
            guard header == expected else { return describeHeaderMismatch(name, found: header, expected: expected) }
        } else if let problem = verifyHeader(name, header, magic: magic) {
            return problem
        }
        let recordBytes = Int(header.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 36, as: UInt32.self)) })
        let entryBytes = entryHeaderBytes + recordBytes + 8
        let payloadBytes = entryBytes - 8
        var entry = [UInt8](repeating: 0, count: entryBytes)
        var entries = 0
        while true {
            let outcome = entry.withUnsafeMutableBytes { raw -> EntryOutcome in
                let base = raw.baseAddress!
                guard reader.read(into: base, count: 4) else { return magic == journalMagic ? .end(count: entries) : .truncated }
                let tag = UInt32(littleEndian: raw.load(as: UInt32.self))
                if tag == endTag, magic == Self.magic {
                    guard reader.read(into: base + 4, count: 20) else { return .truncated }
                    let count = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                    let checksum = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
                    guard checksum == XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<16])) else { return .damaged("its end record fails its checksum") }
                    return .end(count: Int(count))
                }
                guard tag == entryTag else { return .damaged("entry \(entries + 1) has no entry tag") }
                guard reader.read(into: base + 4, count: entryBytes - 4) else { return .truncated }
                let checksum = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: payloadBytes, as: UInt64.self))
                guard checksum == XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<payloadBytes])) else { return .corruptEntry }
                let key = BlockKey(
                    prefixHash: PrefixHash(
                        high: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                        low: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))),
                    layer: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
                return visit(Entry(
                    key: key, sequence: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 32, as: UInt64.self)),
                    tokenCount: Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self))),
                    record: base + entryHeaderBytes))
            }
            switch outcome {
            case .restored: result.restored += 1
            case .stale: result.stale += 1
            case .corruptEntry: result.corrupt += 1
            case .truncated:
                return magic == journalMagic
                    ? "\(name) ends inside entry \(entries + 1) (a write cut short; the entries before it were read)"
                    : "\(name) ends after \(entries) entries, before its end record"
            case .damaged(let what):
                return "\(name) is damaged: \(what); entries after it are not read"
            case .end(let count):
                if count != entries { return "\(name) ends with an entry count of \(count) but holds \(entries)" }
                if magic == Self.magic, !reader.isAtEnd { return "\(name) has bytes after its end record" }
                return nil
            }
            entries += 1
        }
    }

    /// Why a header read without a shape to compare with is not usable; nil when it is.
    static func verifyHeader(_ name: String, _ header: [UInt8], magic expectedMagic: UInt64) -> String? {
        header.withUnsafeBytes { raw -> String? in
            guard UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self)) == expectedMagic else {
                return "\(name) is not a TierKV summary file of its kind"
            }
            let found = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            guard found == version else { return "\(name) has format version \(found); this library reads \(version)" }
            let checksum = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: headerBytes - 8, as: UInt64.self))
            guard checksum == XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<(headerBytes - 8)])) else {
                return "\(name)'s header fails its checksum"
            }
            return nil
        }
    }

    enum EntryOutcome {
        case restored, stale, corruptEntry, truncated
        case damaged(String)
        case end(count: Int)
    }

    // MARK: Writing

    /// Appends the entries of blocks whose cold writes just completed. Once the journal holds
    /// twice the entries a snapshot would, writes a snapshot instead and starts it again.
    func journalWrites(_ keys: [BlockKey]) {
        guard !keys.isEmpty else { return }
        let sequences = store.sequences(of: keys)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(keys.count * entryBytes)
        var appended = 0
        for (key, sequence) in zip(keys, sequences) {
            guard let sequence, appendEntry(key, sequence: sequence, to: &bytes) else { continue }
            appended += 1
        }
        let compact = journal.withLock { state -> Bool in
            guard state.descriptor >= 0, appended > 0 else { return false }
            if Self.writeAll(state.descriptor, bytes) {
                state.entries += appended
            } else {
                // A short write leaves a torn entry that would hide every later one: stop
                // journaling until the next snapshot, which covers these writes and starts anew.
                state.failures += 1
                close(state.descriptor)
                state.descriptor = -1
            }
            guard state.failures > 0 || state.entries > 2 * max(1024, store.statistics.blocks), !state.compacting, !state.closed else { return false }
            state.compacting = true
            return true
        }
        // Off the cold-write queue: the snapshot is as large as the cold tier's summaries. One
        // attempt; if it fails, the next flush or close retries.
        if compact {
            background.enter()
            DispatchQueue.global(qos: .utility).async { [self] in
                _ = try? save(force: true)
                journal.withLock { $0.compacting = false }
                background.leave()
            }
        }
    }

    /// Writes the snapshot (unless nothing changed since the last one and the journal is empty)
    /// and starts the journal again: the journal is renamed to `summaries.log.1` and a new one
    /// opened, so appends go on while the snapshot is written; `summaries.log.1` is removed once
    /// the snapshot is in place. (If a failed snapshot left `summaries.log.1`, the journal is
    /// kept as it is instead, and both are covered once this snapshot lands.)
    func save(force: Bool = false) throws(TierKVError) {
        try snapshotWriter.withLock { () throws(TierKVError) in
            let cold = store.statistics
            let version = [cold.writes, cold.blocks, cold.corruptions, table.count]
            let proceed = journal.withLock { state -> Bool in
                guard !state.closed else { return false }
                guard force || state.snapshotVersion != version || state.entries > 0 || state.failures > 0 else { return false }
                state.snapshotVersion = nil  // until this snapshot lands
                guard access(rotatedJournalPath, F_OK) != 0 else { return true }
                if state.descriptor >= 0 { close(state.descriptor) }
                rename(journalPath, rotatedJournalPath)
                state.descriptor = openJournal()
                state.entries = 0
                state.failures = 0
                return true
            }
            guard proceed else { return }
            try writeSnapshot()
            unlink(rotatedJournalPath)
            journal.withLock { $0.snapshotVersion = version }
        }
    }

    private func writeSnapshot() throws(TierKVError) {
        let writer = try AtomicFileWriter(path: snapshotPath)
        try writer.append(Self.header(table.shape, recordBytes: table.recordByteCount, magic: Self.magic))
        var written = 0
        var entry: [UInt8] = []
        entry.reserveCapacity(entryBytes)
        for (key, sequence) in store.sequences.sorted(by: { $0.key < $1.key }) {
            entry.removeAll(keepingCapacity: true)
            guard appendEntry(key, sequence: sequence, to: &entry) else { continue }
            try writer.append(entry)
            written += 1
        }
        var end: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { end += $0 } }
        append(Self.endTag)
        append(UInt32(0))
        append(UInt64(written))
        append(end.withUnsafeBytes { XXHash64.hash($0) })
        try writer.append(end)
        try writer.commit()
    }

    /// Appends `key`'s entry to `bytes`; false when the table has no summary of it.
    private func appendEntry(_ key: BlockKey, sequence: UInt64, to bytes: inout [UInt8]) -> Bool {
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: entryBytes))
        let filled = bytes.withUnsafeMutableBytes { whole -> Bool in
            let raw = UnsafeMutableRawBufferPointer(rebasing: whole[start...])
            guard let tokens = table.copyRecord(of: key, into: raw.baseAddress! + Self.entryHeaderBytes) else { return false }
            raw.storeBytes(of: Self.entryTag.littleEndian, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: UInt32(tokens).littleEndian, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: key.prefixHash.high.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: key.prefixHash.low.littleEndian, toByteOffset: 16, as: UInt64.self)
            raw.storeBytes(of: key.layer.littleEndian, toByteOffset: 24, as: UInt32.self)
            raw.storeBytes(of: sequence.littleEndian, toByteOffset: 32, as: UInt64.self)
            let checksum = XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<(entryBytes - 8)]))
            raw.storeBytes(of: checksum.littleEndian, toByteOffset: entryBytes - 8, as: UInt64.self)
            return true
        }
        if !filled { bytes.removeSubrange(start...) }
        return filled
    }

    private static func writeAll(_ descriptor: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var written = 0
            while written < raw.count {
                let result = Glibc.write(descriptor, raw.baseAddress! + written, raw.count - written)
                if result < 0, errno == EINTR { continue }
                guard result > 0 else { return false }
                written += result
            }
            return true
        }
    }

    static func header(_ shape: KeySummaryShape, recordBytes: Int, magic: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        append(magic)
        append(version)
        append(UInt32(headerBytes))
        for field in [shape.kvHeads, shape.headDim, shape.groupSize, shape.sketchBits, shape.tokensPerBlock, recordBytes] {
            append(UInt32(field))
        }
        append(UInt64(0))
        append(UInt64(0))
        append(bytes.withUnsafeBytes { XXHash64.hash($0) })
        return bytes
    }

    /// Why a header is not the one this hierarchy would write, in words.
    static func describeHeaderMismatch(_ name: String, found: [UInt8], expected: [UInt8]) -> String {
        func field(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
            bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
        }
        func magic(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) } }
        guard magic(found) == magic(expected) else { return "\(name) is not a TierKV summary file of its kind" }
        guard field(found, 8) == version else { return "\(name) has format version \(field(found, 8)); this library reads \(version)" }
        let names = ["KV heads", "head dim", "group size", "key sketch bits", "tokens per block", "record bytes"]
        for (index, label) in names.enumerated() where field(found, 16 + 4 * index) != field(expected, 16 + 4 * index) {
            return "\(name) holds summaries for \(label) \(field(found, 16 + 4 * index)); this hierarchy uses \(field(expected, 16 + 4 * index))"
        }
        return "\(name)'s header fails its checksum"
    }
}

extension Hierarchy {
    /// What the open found in `summaries.tkv`.
    public struct KeySummaryRestore: Sendable, Equatable {
        /// Cold blocks whose summaries were installed from the file.
        public var restored = 0
        /// Entries for a copy the cold tier no longer holds (rewritten or removed since).
        public var stale = 0
        /// Entries that failed their checksum (their blocks are rebuilt, not trusted).
        public var corrupt = 0
        /// Of `restored`, the blocks whose newest entry came from the journal (cold writes since
        /// the last snapshot).
        public var fromJournal = 0
        /// Why a file was not (or not wholly) read; nil when both were read to their ends.
        public var problem: String?
        /// Set when the open could not write the new snapshot that folds the journal in (the
        /// summaries are restored all the same; the next flush or close tries again).
        public var saveError: String?

        public init() {}
    }
}

/// `fsck` for the key-summary files of a cache directory: reads `summaries.tkv`,
/// `summaries.log` and `summaries.log.1` without opening the cache, verifies every header and entry checksum, and
/// matches each entry against the copies the block file holds (`BlockFileCheck.Report`'s
/// `newestCopies`). Summaries are derived data: a damaged, stale or missing entry costs its
/// block a rebuild at the next open or `rebuildKeySummaries`, never a wrong summary, so what this
/// finds is reported, not failed.
public enum KeySummaryFileCheck {
    public struct FileReport: Sendable, Equatable {
        public var name: String
        public var present = false
        /// Entries that describe a copy the block file holds now.
        public var current = 0
        /// Entries for a copy the block file no longer holds (rewritten, removed or quarantined).
        public var stale = 0
        /// Entries that fail their checksum.
        public var corrupt = 0
        /// Why the file was not read to its end; nil when it was (or is absent).
        public var problem: String?

        public init(name: String, present: Bool = false, current: Int = 0, stale: Int = 0, corrupt: Int = 0, problem: String? = nil) {
            (self.name, self.present, self.current, self.stale, self.corrupt, self.problem) = (name, present, current, stale, corrupt, problem)
        }

        public var json: JSONValue {
            .object([
                ("name", .string(name)), ("present", .bool(present)), ("current", .int(current)), ("stale", .int(stale)),
                ("corrupt", .int(corrupt)), ("problem", .optional(problem)),
            ])
        }
    }

    public struct Report: Sendable, Equatable {
        public var snapshot: FileReport
        public var journal: FileReport
        /// `summaries.log.1`: present only while a snapshot is written, or after a crash or a
        /// failed snapshot (the next open reads it).
        public var rotatedJournal: FileReport
        /// Blocks the block file holds.
        public var coldBlocks = 0
        /// Of those, the ones a current entry in either file covers (a reopen restores them).
        public var covered = 0

        public var json: JSONValue {
            .object([
                ("cold_blocks", .int(coldBlocks)), ("covered", .int(covered)), ("not_covered", .int(coldBlocks - covered)),
                ("snapshot", snapshot.json), ("journal", journal.json), ("rotated_journal", rotatedJournal.json),
            ])
        }
    }

    /// Checks the summary files in `directory` against `copies` (each cold block's key and the
    /// write sequence of its newest valid copy).
    public static func run(directory: String, copies: [BlockKey: UInt64]) -> Report {
        var covered = Set<BlockKey>()
        func check(_ name: String, magic: UInt64) -> FileReport {
            var report = FileReport(name: name)
            var counts = Hierarchy.KeySummaryRestore()
            let problem = KeySummaryFile.readEntries(directory + "/" + name, magic: magic, expected: nil, into: &counts) { entry in
                guard copies[entry.key] == entry.sequence else { return .stale }
                covered.insert(entry.key)
                return .restored
            }
            report.present = problem != KeySummaryFile.absent(name)
            report.problem = report.present ? problem : nil
            report.current = counts.restored
            report.stale = counts.stale
            report.corrupt = counts.corrupt
            return report
        }
        let snapshot = check(KeySummaryFile.fileName, magic: KeySummaryFile.magic)
        let rotated = check(KeySummaryFile.rotatedJournalName, magic: KeySummaryFile.journalMagic)
        let journal = check(KeySummaryFile.journalName, magic: KeySummaryFile.journalMagic)
        return Report(snapshot: snapshot, journal: journal, rotatedJournal: rotated, coldBlocks: copies.count, covered: covered.count)
    }
}
