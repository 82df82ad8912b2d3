import TierKVCore

/// The 64-byte header at the start of every cold-tier slot, written in the same I/O as the
/// payload that follows it, so a slot is either wholly the new block or detectably not.
///
/// Layout (little-endian): magic `TKVSLOT1` (8) · format version (4) · header bytes (4) ·
/// prefix hash high (8) · low (8) · layer (4) · payload bytes (4) · write sequence (8) ·
/// checksum (8) · reserved (8). The checksum is XXH64 (12 GB/s per core, measured) of the header
/// with the checksum field zeroed, followed by the payload.
public struct ColdSlotHeader: Sendable, Equatable {
    public static let byteCount = 64
    public static let magic: UInt64 = 0x3154_4F4C_5356_4B54  // "TKVSLOT1"
    public static let formatVersion: UInt32 = 1
    static let checksumOffset = 48

    public var key: BlockKey
    public var payloadByteCount: Int
    /// Increases with every write to the store; the newest copy of a key wins on recovery.
    public var sequence: UInt64

    public init(key: BlockKey, payloadByteCount: Int, sequence: UInt64) {
        self.key = key
        self.payloadByteCount = payloadByteCount
        self.sequence = sequence
    }

    /// Writes the header (with its checksum over the payload already at `slot + 64`) into `slot`.
    public func seal(into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt64.self)
        slot.storeBytes(of: Self.formatVersion.littleEndian, toByteOffset: 8, as: UInt32.self)
        slot.storeBytes(of: UInt32(Self.byteCount).littleEndian, toByteOffset: 12, as: UInt32.self)
        slot.storeBytes(of: key.prefixHash.high.littleEndian, toByteOffset: 16, as: UInt64.self)
        slot.storeBytes(of: key.prefixHash.low.littleEndian, toByteOffset: 24, as: UInt64.self)
        slot.storeBytes(of: key.layer.littleEndian, toByteOffset: 32, as: UInt32.self)
        slot.storeBytes(of: UInt32(payloadByteCount).littleEndian, toByteOffset: 36, as: UInt32.self)
        slot.storeBytes(of: sequence.littleEndian, toByteOffset: 40, as: UInt64.self)
        slot.storeBytes(of: UInt64(0), toByteOffset: Self.checksumOffset, as: UInt64.self)
        slot.storeBytes(of: UInt64(0), toByteOffset: 56, as: UInt64.self)
        let checksum = Self.checksum(slot, payloadByteCount: payloadByteCount)
        slot.storeBytes(of: checksum.littleEndian, toByteOffset: Self.checksumOffset, as: UInt64.self)
    }

    /// What a slot holds, judged from its bytes.
    public enum Verdict: Sendable, Equatable {
        /// Never written (no magic): a free slot.
        case empty
        case valid(ColdSlotHeader)
        /// Written, but the header or payload fails verification.
        case corrupt(reason: String)
    }

    /// Parses and verifies the header and payload in `slot` (`slotByteCount` bytes).
    public static func verify(_ slot: UnsafeRawPointer, slotByteCount: Int) -> Verdict {
        let magic = UInt64(littleEndian: slot.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        if magic == 0 { return .empty }
        guard magic == Self.magic else { return .corrupt(reason: "bad magic 0x\(String(magic, radix: 16))") }
        let version = UInt32(littleEndian: slot.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        guard version == formatVersion else { return .corrupt(reason: "format version \(version), expected \(formatVersion)") }
        let payload = Int(UInt32(littleEndian: slot.loadUnaligned(fromByteOffset: 36, as: UInt32.self)))
        guard payload <= slotByteCount - byteCount else {
            return .corrupt(reason: "payload length \(payload) exceeds the slot's \(slotByteCount - byteCount)")
        }
        let stored = UInt64(littleEndian: slot.loadUnaligned(fromByteOffset: checksumOffset, as: UInt64.self))
        let computed = checksum(slot, payloadByteCount: payload)
        guard stored == computed else { return .corrupt(reason: "checksum mismatch") }
        let key = BlockKey(
            prefixHash: PrefixHash(
                high: UInt64(littleEndian: slot.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
                low: UInt64(littleEndian: slot.loadUnaligned(fromByteOffset: 24, as: UInt64.self))),
            layer: UInt32(littleEndian: slot.loadUnaligned(fromByteOffset: 32, as: UInt32.self)))
        let sequence = UInt64(littleEndian: slot.loadUnaligned(fromByteOffset: 40, as: UInt64.self))
        return .valid(ColdSlotHeader(key: key, payloadByteCount: payload, sequence: sequence))
    }

    /// XXH64 of header-with-zero-checksum ‖ payload, chained: seed the payload hash with the header hash.
    static func checksum(_ slot: UnsafeRawPointer, payloadByteCount: Int) -> UInt64 {
        let headerHash = withUnsafeTemporaryAllocation(byteCount: byteCount, alignment: 8) { copy in
            copy.copyMemory(from: UnsafeRawBufferPointer(start: slot, count: byteCount))
            copy.storeBytes(of: UInt64(0), toByteOffset: checksumOffset, as: UInt64.self)
            return XXHash64.hash(UnsafeRawBufferPointer(copy))
        }
        return XXHash64.hash(UnsafeRawBufferPointer(start: slot + byteCount, count: payloadByteCount), seed: headerHash)
    }
}
