import TierKV
import TierKVTestSupport

/// A small layout (4 KiB blocks) so tests with tiny tiers run fast.
let smallLayout = try! KVLayout(layers: 2, kvHeads: 1, queryHeads: 2, headDim: 64, tokensPerBlock: 16, dtype: .fp16)

/// Tiny tiers that force all three: hot 2, warm 3, cold 16 blocks.
func tinyConfiguration(
    directory: String, policy: EvictionPolicyKind = .lru, hot: Int = 2, warm: Int = 3, cold: Int = 16
) -> HierarchyConfiguration {
    var configuration = HierarchyConfiguration(
        layout: smallLayout, hotCapacityBlocks: hot, warmCapacityBlocks: warm, coldCapacityBlocks: cold,
        cacheDirectory: directory, policy: policy, accelerator: .emulated(.instant))
    configuration.coldAdmission = .always
    return configuration
}

/// The bytes a block with `key` holds in these tests: a pattern only that key produces.
func blockBytes(for key: BlockKey, count: Int) -> [UInt8] {
    var state = key.prefixHash.low ^ (UInt64(key.layer) &* 0x9E37_79B9_7F4A_7C15) ^ key.prefixHash.high
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: state >> 56)
    }
}

/// A key from a small integer (as if block `n` of some prefix).
func testKey(_ n: Int, layer: Int = 0) -> BlockKey {
    BlockKey(prefixHash: PrefixHash(high: UInt64(n) &* 0x1234_5678_9ABC_DEF1, low: UInt64(n) + 1), layer: UInt32(layer))
}

extension Hierarchy {
    /// Stores the test pattern of `key`.
    @discardableResult
    func storeTestBlock(_ key: BlockKey, position: Int, sequence: SequenceID?) throws -> StoreOutcome {
        let bytes = blockBytes(for: key, count: configuration.layout.blockByteCount)
        return try bytes.withUnsafeBytes { try store(key, position: position, bytes: $0, sequence: sequence) }
    }

    /// Reads `key` back and says whether it holds its test pattern.
    func holdsTestPattern(_ key: BlockKey) throws -> Bool {
        var buffer = [UInt8](repeating: 0, count: configuration.layout.blockByteCount)
        try buffer.withUnsafeMutableBytes { try read(key, into: $0) }
        return buffer == blockBytes(for: key, count: buffer.count)
    }
}

/// The TierKVError `body` throws, or nil (a helper: `catch let e as TierKVError` around typed
/// throws crashes the Swift 6.3 compiler).
func tierKVError(_ body: () throws -> Void) -> TierKVError? {
    do {
        try body()
        return nil
    } catch {
        return error as? TierKVError
    }
}
