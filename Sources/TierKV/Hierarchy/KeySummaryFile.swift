import TierKVCore
import TierKVPrediction
import TierKVStorage

/// `summaries.tkv` in the cache directory: the key summaries (and sketches) of the blocks in the
/// cold tier, so that after a restart a predictor can rank the cold blocks at once instead of
/// reading every block back (`Hierarchy.rebuildKeySummaries`) to summarise it again.
///
/// Summaries are derived data: each entry names the cold copy it describes by key and write
/// sequence, and is used only when the reopened cold tier holds that very copy; each entry has
/// its own checksum. A missing, foreign, differently shaped or damaged file therefore costs a
/// rebuild of the blocks it does not cover, never a wrong summary. Written whole (temporary
/// file, fsync, rename) by `flush` and `close`.
///
/// Format (little-endian):
/// - header, 64 bytes: magic `TKVSUMS1` (8) · version (4) · header bytes (4) · KV heads (4) ·
///   head dim (4) · group size (4) · sketch bits (4) · tokens per block (4) · record bytes (4) ·
///   reserved (16) · XXH64 of the preceding 56 bytes (8);
/// - per block: tag `ENTR` (4) · token count (4) · prefix hash high (8) · low (8) · layer (4) ·
///   reserved (4) · cold write sequence (8) · record (the table's fp16 summary, then the sketch)
///   · XXH64 of the entry before it (8);
/// - end: tag `END.` (4) · reserved (4) · entry count (8) · XXH64 of those 16 bytes (8).
enum KeySummaryFile {
    static let fileName = "summaries.tkv"
    static let magic: UInt64 = 0x3153_4D55_5356_4B54  // "TKVSUMS1"
    static let version: UInt32 = 1
    static let headerBytes = 64
    static let entryTag: UInt32 = 0x5254_4E45  // "ENTR"
    static let endTag: UInt32 = 0x2E44_4E45  // "END."
    static let entryHeaderBytes = 40

    /// Writes the summaries of every block in `store` that `table` has one for; returns how many.
    static func write(_ table: BlockSummaryTable, of store: BlockStore) throws(TierKVError) -> Int {
        let shape = table.shape
        let writer = try AtomicFileWriter(path: store.file.directory + "/" + fileName)
        try writer.append(header(shape, recordBytes: table.recordByteCount))
        let entryBytes = entryHeaderBytes + table.recordByteCount
        var entry = [UInt8](repeating: 0, count: entryBytes + 8)
        var written = 0
        for (key, sequence) in store.sequences.sorted(by: { $0.key < $1.key }) {
            let filled = entry.withUnsafeMutableBytes { raw -> Bool in
                guard let tokens = table.copyRecord(of: key, into: raw.baseAddress! + entryHeaderBytes) else { return false }
                raw.storeBytes(of: entryTag.littleEndian, toByteOffset: 0, as: UInt32.self)
                raw.storeBytes(of: UInt32(tokens).littleEndian, toByteOffset: 4, as: UInt32.self)
                raw.storeBytes(of: key.prefixHash.high.littleEndian, toByteOffset: 8, as: UInt64.self)
                raw.storeBytes(of: key.prefixHash.low.littleEndian, toByteOffset: 16, as: UInt64.self)
                raw.storeBytes(of: key.layer.littleEndian, toByteOffset: 24, as: UInt32.self)
                raw.storeBytes(of: UInt32(0), toByteOffset: 28, as: UInt32.self)
                raw.storeBytes(of: sequence.littleEndian, toByteOffset: 32, as: UInt64.self)
                let checksum = XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<entryBytes]))
                raw.storeBytes(of: checksum.littleEndian, toByteOffset: entryBytes, as: UInt64.self)
                return true
            }
            guard filled else { continue }
            try writer.append(entry)
            written += 1
        }
        var end: [UInt8] = []
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { end += $0 } }
        append(endTag)
        append(UInt32(0))
        append(UInt64(written))
        append(end.withUnsafeBytes { XXHash64.hash($0) })
        try writer.append(end)
        try writer.commit()
        return written
    }

    /// Installs into `table` every entry of the file that describes the copy `store` holds now.
    static func restore(into table: BlockSummaryTable, from store: BlockStore) -> Hierarchy.KeySummaryRestore {
        var result = Hierarchy.KeySummaryRestore()
        guard let reader = SequentialFileReader(path: store.file.directory + "/" + fileName) else {
            result.problem = "no \(fileName) (first open, or the last run did not close or flush)"
            return result
        }
        var header = [UInt8](repeating: 0, count: headerBytes)
        guard header.withUnsafeMutableBytes({ reader.read(into: $0.baseAddress!, count: headerBytes) }) else {
            result.problem = "\(fileName) is shorter than its header"
            return result
        }
        let expected = self.header(table.shape, recordBytes: table.recordByteCount)
        guard header == expected else {
            result.problem = describeHeaderMismatch(found: header, expected: expected)
            return result
        }
        let sequences = store.sequences
        let entryBytes = entryHeaderBytes + table.recordByteCount
        var entry = [UInt8](repeating: 0, count: entryBytes + 8)
        var entries = 0
        while true {
            let outcome = entry.withUnsafeMutableBytes { raw -> EntryOutcome in
                let base = raw.baseAddress!
                guard reader.read(into: base, count: 4) else { return .truncated }
                let tag = UInt32(littleEndian: raw.load(as: UInt32.self))
                if tag == endTag {
                    guard reader.read(into: base + 4, count: 20) else { return .truncated }
                    let count = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                    let checksum = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
                    guard checksum == XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<16])) else { return .damaged("its end record fails its checksum") }
                    return .end(count: Int(count))
                }
                guard tag == entryTag else { return .damaged("entry \(entries + 1) has no entry tag") }
                guard reader.read(into: base + 4, count: entryBytes + 4) else { return .truncated }
                let checksum = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: entryBytes, as: UInt64.self))
                guard checksum == XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<entryBytes])) else { return .corruptEntry }
                let key = BlockKey(
                    prefixHash: PrefixHash(
                        high: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                        low: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))),
                    layer: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
                let sequence = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 32, as: UInt64.self))
                guard sequences[key] == sequence else { return .stale }
                let tokens = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
                guard (try? table.restoreRecord(key, tokenCount: tokens, from: base + entryHeaderBytes)) != nil else { return .corruptEntry }
                return .restored
            }
            switch outcome {
            case .restored: result.restored += 1
            case .stale: result.stale += 1
            case .corruptEntry: result.corrupt += 1
            case .truncated:
                result.problem = "\(fileName) ends after \(entries) entries, before its end record"
                return result
            case .damaged(let what):
                result.problem = "\(fileName) is damaged: \(what); entries after it are not read"
                return result
            case .end(let count):
                if count != entries {
                    result.problem = "\(fileName) ends with an entry count of \(count) but holds \(entries)"
                } else if !reader.isAtEnd {
                    result.problem = "\(fileName) has bytes after its end record"
                }
                return result
            }
            entries += 1
        }
    }

    private enum EntryOutcome {
        case restored, stale, corruptEntry, truncated
        case damaged(String)
        case end(count: Int)
    }

    static func header(_ shape: KeySummaryShape, recordBytes: Int) -> [UInt8] {
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
    static func describeHeaderMismatch(found: [UInt8], expected: [UInt8]) -> String {
        func field(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
            bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
        }
        let magicFound = found.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard magicFound == magic else { return "\(fileName) is not a TierKV summary file" }
        guard field(found, 8) == version else { return "\(fileName) has format version \(field(found, 8)); this library reads \(version)" }
        let names = ["KV heads", "head dim", "group size", "key sketch bits", "tokens per block", "record bytes"]
        for (index, name) in names.enumerated() where field(found, 16 + 4 * index) != field(expected, 16 + 4 * index) {
            return "\(fileName) holds summaries for \(name) \(field(found, 16 + 4 * index)); this hierarchy uses \(field(expected, 16 + 4 * index))"
        }
        return "\(fileName)'s header fails its checksum"
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
        /// Why the file was not (or not wholly) read; nil when it was read to its end record.
        public var problem: String?

        public init() {}
    }
}
