import Testing
@testable import TierKVCore

@Suite struct PrefixHasherTests {
    static func tokens(_ count: Int, seed: UInt32 = 1) -> [UInt32] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 1_664_525 &+ 1_013_904_223
            return state % 128_256
        }
    }

    @Test func onlyFullBlocksAreHashed() throws {
        let hasher = try PrefixHasher(namespace: "tenant-a", tokensPerBlock: 16)
        #expect(hasher.blockHashes(Self.tokens(15)).isEmpty)
        #expect(hasher.blockHashes(Self.tokens(16)).count == 1)
        #expect(hasher.blockHashes(Self.tokens(47)).count == 2)
    }

    @Test func equalPrefixesShareKeysAndDivergenceChangesAllLaterKeys() throws {
        let hasher = try PrefixHasher(namespace: "tenant-a", tokensPerBlock: 16)
        let shared = Self.tokens(64)
        var first = shared + Self.tokens(32, seed: 7)
        var second = shared + Self.tokens(32, seed: 9)
        let firstHashes = hasher.blockHashes(first)
        let secondHashes = hasher.blockHashes(second)
        #expect(Array(firstHashes.prefix(4)) == Array(secondHashes.prefix(4)))
        #expect(firstHashes[4] != secondHashes[4])
        #expect(firstHashes[5] != secondHashes[5])
        // A change in block 0 changes every key after it (the chain), even with equal later tokens.
        first[0] ^= 1
        second = first
        second[0] ^= 1
        let changed = hasher.blockHashes(first)
        let original = hasher.blockHashes(second)
        for index in 0..<changed.count { #expect(changed[index] != original[index]) }
    }

    @Test func namespaceSaltsEveryKey() throws {
        let tokens = Self.tokens(64)
        let a = try PrefixHasher(namespace: "tenant-a", tokensPerBlock: 16).blockHashes(tokens)
        let b = try PrefixHasher(namespace: "tenant-b", tokensPerBlock: 16).blockHashes(tokens)
        #expect(zip(a, b).allSatisfy { $0 != $1 })
    }

    @Test func blockSizeChangesKeys() throws {
        let tokens = Self.tokens(64)
        let sixteen = try PrefixHasher(namespace: "", tokensPerBlock: 16).blockHashes(tokens)
        let thirtyTwo = try PrefixHasher(namespace: "", tokensPerBlock: 32).blockHashes(tokens)
        #expect(sixteen[1] != thirtyTwo[0])
    }

    /// Pins the chain format: these hashes must never change without bumping `chainVersion`,
    /// or caches on disk would stop matching. Computed independently by `tools/prefix-hash.py`.
    @Test func chainIsStableAcrossReleases() throws {
        let hasher = try PrefixHasher(namespace: "tierkv-test", tokensPerBlock: 4)
        let hashes = hasher.blockHashes([1, 2, 3, 4, 5, 6, 7, 8])
        #expect(hashes.map(\.description) == PrefixHasherTests.pinnedChain)
    }

    static let pinnedChain: [String] = ["8fbe8f0e6854bd3898c62998c75bc174", "f2d6f8f1044a91acbafc6e0071b2b3aa"]

    @Test func keysCarryTheLayer() throws {
        let hasher = try PrefixHasher(namespace: "", tokensPerBlock: 16)
        let keys = hasher.blockKeys(Self.tokens(32), layer: 5)
        #expect(keys.count == 2)
        #expect(keys.allSatisfy { $0.layer == 5 })
        #expect(keys[0] != BlockKey(prefixHash: keys[0].prefixHash, layer: 6))
    }

    @Test func hexRoundTrips() throws {
        let hash = PrefixHash(high: 0x0123_4567_89AB_CDEF, low: 0xF)
        #expect(hash.description == "0123456789abcdef000000000000000f")
        #expect(try PrefixHash(hex: hash.description) == hash)
        #expect(throws: TierKVError.self) { try PrefixHash(hex: "xyz") }
    }

    @Test(arguments: [0, -1, 65537])
    func rejectsBadBlockSize(_ tokensPerBlock: Int) {
        #expect(throws: TierKVError.self) { try PrefixHasher(namespace: "", tokensPerBlock: tokensPerBlock) }
    }
}
