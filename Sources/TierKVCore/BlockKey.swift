/// A 128-bit chained hash naming a token prefix: the tokens of one block and of every block
/// before it in the sequence, salted by a namespace.
///
/// 128 bits because a cache of 10^9 blocks under a 64-bit hash has a ~2.7% chance of *some*
/// collision (birthday bound n²/2⁶⁵), and a collision hands one request another's KV. At 128
/// bits that chance is ~1.5·10⁻²¹.
public struct PrefixHash: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// 32 lowercase hex digits, high word first.
    public var description: String { Self.hex(high) + Self.hex(low) }

    /// Parses the 32-hex-digit form `description` prints.
    public init(hex text: String) throws(TierKVError) {
        guard text.utf8.count == 32, let high = UInt64(text.prefix(16), radix: 16),
            let low = UInt64(text.suffix(16), radix: 16)
        else { throw .invalid("prefix hash '\(text)' is not 32 hex digits") }
        self.init(high: high, low: low)
    }

    public static func < (lhs: PrefixHash, rhs: PrefixHash) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }

    private static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// Names one stored block: a token prefix and a layer.
public struct BlockKey: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public var prefixHash: PrefixHash
    public var layer: UInt32

    public init(prefixHash: PrefixHash, layer: UInt32) {
        self.prefixHash = prefixHash
        self.layer = layer
    }

    public var description: String { "\(prefixHash)/L\(layer)" }

    public static func < (lhs: BlockKey, rhs: BlockKey) -> Bool {
        (lhs.prefixHash, lhs.layer) < (rhs.prefixHash, rhs.layer)
    }
}
