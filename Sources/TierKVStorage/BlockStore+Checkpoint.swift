import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// The checkpointed index: `index.tkv` in the cache directory, so an open reads the slots outside
/// the checkpoint only, instead of every slot header.
///
/// Safety rests on one rule: a slot the store has indexed is not reused after it is freed until
/// the next checkpoint is durable (it waits in `State.retired`). So every slot the last
/// checkpoint names still holds exactly what it named, and everything written since lies in slots
/// outside it. On open the checkpoint's entries join the scanned candidates and the newest
/// verified copy of each key wins, as without a checkpoint.
///
/// Format (little-endian): magic `TKVIDX01` (8) · version (4) · entry count (4) · slot bytes (8) ·
/// slot count (8) · entries of 40 bytes (prefix hash high, low, layer, payload bytes, slot,
/// sequence) · XXH64 of everything before it (8).
extension BlockStore {
    public static let checkpointFileName = "index.tkv"
    static let checkpointMagic: UInt64 = 0x3130_5844_4956_4B54  // "TKVIDX01"
    static let checkpointVersion: UInt32 = 1
    static let checkpointEntryBytes = 40

    /// Writes the index durably (temp file, fsync, rename, fsync of the directory), then lets the
    /// slots freed since the last checkpoint be reused.
    public func checkpoint() throws(TierKVError) {
        try state.withLock { (state) throws(TierKVError) in try writeCheckpoint(&state) }
    }

    /// With the state lock held.
    func writeCheckpoint(_ state: inout State) throws(TierKVError) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32 + state.index.count * Self.checkpointEntryBytes + 8)
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        append(Self.checkpointMagic)
        append(Self.checkpointVersion)
        append(UInt32(state.index.count))
        append(UInt64(geometry.slotByteCount))
        append(UInt64(geometry.slotCount))
        for (key, entry) in state.index {
            append(key.prefixHash.high)
            append(key.prefixHash.low)
            append(key.layer)
            append(UInt32(entry.payloadByteCount))
            append(UInt64(entry.slot))
            append(entry.sequence)
        }
        append(bytes.withUnsafeBytes { XXHash64.hash($0) })

        let writer = try AtomicFileWriter(path: file.directory + "/" + Self.checkpointFileName)
        try writer.append(bytes)
        try writer.commit()
        for slot in state.retired { try? allocator.free(slot) }
        state.retired.removeAll(keepingCapacity: true)
        state.statistics.checkpoints += 1
    }

    /// Marks an indexed slot free; it is reused only after the next checkpoint.
    func retire(_ slot: Int, _ state: inout State) {
        state.retired.append(slot)
    }

    /// A free slot, checkpointing first when only retired slots are left.
    func allocateSlot(_ state: inout State) -> Int? {
        if let slot = allocator.allocate() { return slot }
        guard !state.retired.isEmpty, (try? writeCheckpoint(&state)) != nil else { return nil }
        return allocator.allocate()
    }

    /// The checkpoint's entries, or nil when there is none or it does not validate (then the
    /// open scans every slot; a bad checkpoint never yields data: entries still verify on read).
    func loadCheckpoint() -> [(key: BlockKey, slot: Int, sequence: UInt64, payload: Int)]? {
        guard let text = readWholeFile(file.directory + "/" + Self.checkpointFileName), text.count >= 40 else { return nil }
        return text.withUnsafeBytes { (raw) -> [(key: BlockKey, slot: Int, sequence: UInt64, payload: Int)]? in
            func load<T: FixedWidthInteger>(_ offset: Int, _ type: T.Type) -> T { T(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: T.self)) }
            guard load(0, UInt64.self) == Self.checkpointMagic, load(8, UInt32.self) == Self.checkpointVersion,
                Int(load(16, UInt64.self)) == geometry.slotByteCount, Int(load(24, UInt64.self)) == geometry.slotCount
            else { return nil }
            let count = Int(load(12, UInt32.self))
            let end = 32 + count * Self.checkpointEntryBytes
            guard raw.count == end + 8,
                load(end, UInt64.self) == XXHash64.hash(UnsafeRawBufferPointer(rebasing: raw[0..<end]))
            else { return nil }
            var entries: [(key: BlockKey, slot: Int, sequence: UInt64, payload: Int)] = []
            entries.reserveCapacity(count)
            for index in 0..<count {
                let base = 32 + index * Self.checkpointEntryBytes
                let slot = Int(load(base + 24, UInt64.self))
                guard slot < geometry.slotCount else { return nil }
                entries.append((
                    BlockKey(prefixHash: PrefixHash(high: load(base, UInt64.self), low: load(base + 8, UInt64.self)), layer: load(base + 16, UInt32.self)),
                    slot, load(base + 32, UInt64.self), Int(load(base + 20, UInt32.self))))
            }
            return entries
        }
    }

    private func readWholeFile(_ path: String) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let got = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if got < 0, errno == EINTR { continue }
            if got <= 0 { break }
            bytes += chunk[0..<got]
        }
        return bytes
    }
}
