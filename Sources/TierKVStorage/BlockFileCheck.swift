import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// `fsck` for a cold-tier directory: reads every slot whole and verifies it.
public struct BlockFileCheck: Sendable {
    public struct Report: Sendable, Equatable {
        public var slots = 0
        /// Slots whose header and checksum verify.
        public var valid = 0
        public var corrupt = 0
        /// Never written (or quarantined).
        public var empty = 0
        /// Distinct blocks a reopen would serve (valid slots, newest copy per key).
        public var recovered = 0
        /// Valid but older copies of a key that also has a newer valid copy.
        public var superseded = 0
        /// Corrupt slots whose headers were zeroed by `--repair`, so they are free again.
        public var quarantined = 0
        /// Slot numbers and reasons of the first corrupt slots (at most 100).
        public var corruptSlots: [(slot: Int, reason: String)] = []
        /// The write sequence of each recovered block's newest valid copy (what a reopen
        /// serves); not part of `json`.
        public var newestCopies: [BlockKey: UInt64] = [:]

        public static func == (lhs: Report, rhs: Report) -> Bool {
            [lhs.slots, lhs.valid, lhs.corrupt, lhs.empty, lhs.recovered, lhs.superseded, lhs.quarantined]
                == [rhs.slots, rhs.valid, rhs.corrupt, rhs.empty, rhs.recovered, rhs.superseded, rhs.quarantined]
        }

        public var json: JSONValue {
            .object([
                ("slots", .int(slots)), ("valid", .int(valid)), ("corrupt", .int(corrupt)), ("empty", .int(empty)),
                ("recovered", .int(recovered)), ("superseded", .int(superseded)), ("quarantined", .int(quarantined)),
                ("corrupt_slots", .array(corruptSlots.map { .object([("slot", .int($0.slot)), ("reason", .string($0.reason))]) })),
            ])
        }
    }

    /// Checks (and with `repair`, quarantines corrupt slots in) the cache in `directory`. Takes
    /// the directory's lock, so it refuses a cache that a running process has open.
    public static func run(directory: String, repair: Bool, progress: (Int, Int) -> Void = { _, _ in }) throws(TierKVError) -> Report {
        let geometry = try BlockFile.recordedGeometry(directory: directory)
        let file = try BlockFile(directory: directory, geometry: geometry, allowBufferedFallback: true)
        let slotBytes = geometry.slotByteCount
        let buffer = try AlignedBuffer(byteCount: slotBytes)
        let zeros = try AlignedBuffer(byteCount: 4096)
        var report = Report()
        var newest: [BlockKey: UInt64] = [:]
        var validCopies = 0
        for slot in 0..<geometry.slotCount {
            if slot % 4096 == 0 { progress(slot, geometry.slotCount) }
            report.slots += 1
            let got = pread(file.descriptor, buffer.base, slotBytes, off_t(file.offset(ofSlot: slot)))
            let verdict: ColdSlotHeader.Verdict =
                got == slotBytes ? ColdSlotHeader.verify(buffer.base, slotByteCount: slotBytes)
                : .corrupt(reason: got < 0 ? "read failed: \(TierKVError.errnoName(errno))" : "short read of \(got) bytes")
            switch verdict {
            case .empty:
                report.empty += 1
            case .valid(let header):
                report.valid += 1
                validCopies += 1
                newest[header.key] = max(newest[header.key] ?? 0, header.sequence)
            case .corrupt(let reason):
                report.corrupt += 1
                if report.corruptSlots.count < 100 { report.corruptSlots.append((slot, reason)) }
                if repair {
                    let written = pwrite(file.descriptor, zeros.base, 4096, off_t(file.offset(ofSlot: slot)))
                    if written == 4096 { report.quarantined += 1 }
                }
            }
        }
        if repair, report.quarantined > 0, fdatasync(file.descriptor) != 0 {
            throw TierKVError(.systemCall, "flush after repair failed: \(TierKVError.errnoName(errno))", operation: "fdatasync", path: file.path, errno: errno)
        }
        report.recovered = newest.count
        report.newestCopies = newest
        report.superseded = validCopies - newest.count
        return report
    }
}
