/// Turns token ids into chained block hashes, deterministically across processes and machines.
///
/// The chain: `h₀ = root(namespace)`, `hᵢ = H(hᵢ₋₁ ‖ tokens of block i)`, where the bytes are
/// little-endian (`hᵢ₋₁.low`, `hᵢ₋₁.high`, then each token id as UInt32) and `H` is two XXH64
/// lanes with fixed, distinct seeds (low, high). No per-process state enters the hash. Only
/// full blocks are hashed: a partial last block has no key (it is still being written).
///
/// The namespace (tenant, model id, and anything else that changes the KV for the same
/// tokens, such as the dtype or a LoRA adapter) salts the root so equal prompts of different
/// tenants never share keys.
public struct PrefixHasher: Sendable {
    /// Format version of the chain, part of the root; bump when the chain changes.
    public static let chainVersion = "tierkv-prefix-v1"
    static let lowSeed: UInt64 = 0x0000_0000_0000_0000
    static let highSeed: UInt64 = 0x7469_6572_6B76_2D68  // "tierkv-h"

    public let namespace: String
    public let tokensPerBlock: Int
    /// The chain value before the first block.
    public let root: PrefixHash

    /// - Throws: `.invalidArgument` when `tokensPerBlock` is not 1...65536.
    public init(namespace: String, tokensPerBlock: Int) throws(TierKVError) {
        guard tokensPerBlock >= 1, tokensPerBlock <= KVLayout.maximumTokensPerBlock else {
            throw .invalid("tokensPerBlock is \(tokensPerBlock); expected 1...\(KVLayout.maximumTokensPerBlock)")
        }
        self.namespace = namespace
        self.tokensPerBlock = tokensPerBlock
        let salted = Self.chainVersion + "\u{0}" + namespace
        root = PrefixHash(
            high: XXHash64.hash(salted, seed: Self.highSeed), low: XXHash64.hash(salted, seed: Self.lowSeed))
    }

    /// The hash of a block whose predecessor's hash is `parent` and whose tokens are `tokens`.
    /// - Precondition: `tokens.count == tokensPerBlock`.
    public func hash(parent: PrefixHash, blockTokens tokens: UnsafeBufferPointer<UInt32>) -> PrefixHash {
        precondition(tokens.count == tokensPerBlock, "a block hash needs exactly tokensPerBlock tokens")
        let byteCount = 16 + 4 * tokens.count
        return withUnsafeTemporaryAllocation(byteCount: byteCount, alignment: 8) { buffer in
            buffer.storeBytes(of: parent.low.littleEndian, toByteOffset: 0, as: UInt64.self)
            buffer.storeBytes(of: parent.high.littleEndian, toByteOffset: 8, as: UInt64.self)
            for (index, token) in tokens.enumerated() {
                buffer.storeBytes(of: token.littleEndian, toByteOffset: 16 + 4 * index, as: UInt32.self)
            }
            let bytes = UnsafeRawBufferPointer(buffer)
            return PrefixHash(
                high: XXHash64.hash(bytes, seed: Self.highSeed), low: XXHash64.hash(bytes, seed: Self.lowSeed))
        }
    }

    /// Hashes of every full block of `tokens`, in order. A partial tail is not hashed.
    /// - Complexity: O(n) in the token count.
    public func blockHashes(_ tokens: [UInt32]) -> [PrefixHash] {
        let fullBlocks = tokens.count / tokensPerBlock
        var hashes: [PrefixHash] = []
        hashes.reserveCapacity(fullBlocks)
        var parent = root
        tokens.withUnsafeBufferPointer { all in
            for block in 0..<fullBlocks {
                let slice = UnsafeBufferPointer(rebasing: all[(block * tokensPerBlock)..<((block + 1) * tokensPerBlock)])
                parent = hash(parent: parent, blockTokens: slice)
                hashes.append(parent)
            }
        }
        return hashes
    }

    /// Keys of every full block of `tokens` for one layer.
    public func blockKeys(_ tokens: [UInt32], layer: Int) -> [BlockKey] {
        blockHashes(tokens).map { BlockKey(prefixHash: $0, layer: UInt32(layer)) }
    }
}
