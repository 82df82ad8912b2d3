/// xxHash64 (XXH64), Yann Collet's 64-bit non-cryptographic hash, implemented from the
/// specification (github.com/Cyan4973/xxHash, doc/xxhash_spec.md). Verified against the
/// published test vectors in `XXHash64Tests`. Output is identical on every platform.
public enum XXHash64 {
    @usableFromInline static let prime1: UInt64 = 0x9E37_79B1_85EB_CA87
    @usableFromInline static let prime2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    @usableFromInline static let prime3: UInt64 = 0x1656_67B1_9E37_79F9
    @usableFromInline static let prime4: UInt64 = 0x85EB_CA77_C2B2_AE63
    @usableFromInline static let prime5: UInt64 = 0x27D4_EB2F_1656_67C5

    /// Hashes `bytes` with `seed`.
    /// - Complexity: O(n); about one byte per cycle-fraction, memory-bandwidth bound for large inputs.
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        let count = bytes.count
        guard let base = bytes.baseAddress else { return finalize(seed &+ prime5, count: 0) }
        var offset = 0
        var accumulator: UInt64
        if count >= 32 {
            var v1 = seed &+ prime1 &+ prime2
            var v2 = seed &+ prime2
            var v3 = seed
            var v4 = seed &- prime1
            let stripeEnd = count - 32
            while offset <= stripeEnd {
                v1 = round(v1, lane(base, offset))
                v2 = round(v2, lane(base, offset + 8))
                v3 = round(v3, lane(base, offset + 16))
                v4 = round(v4, lane(base, offset + 24))
                offset += 32
            }
            accumulator = v1.rotated(1) &+ v2.rotated(7) &+ v3.rotated(12) &+ v4.rotated(18)
            accumulator = merge(accumulator, v1)
            accumulator = merge(accumulator, v2)
            accumulator = merge(accumulator, v3)
            accumulator = merge(accumulator, v4)
        } else {
            accumulator = seed &+ prime5
        }
        accumulator &+= UInt64(count)
        while offset + 8 <= count {
            accumulator ^= round(0, lane(base, offset))
            accumulator = accumulator.rotated(27) &* prime1 &+ prime4
            offset += 8
        }
        if offset + 4 <= count {
            let word = UInt64(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            accumulator ^= word &* prime1
            accumulator = accumulator.rotated(23) &* prime2 &+ prime3
            offset += 4
        }
        while offset < count {
            accumulator ^= UInt64(base.load(fromByteOffset: offset, as: UInt8.self)) &* prime5
            accumulator = accumulator.rotated(11) &* prime1
            offset += 1
        }
        return avalanche(accumulator)
    }

    /// Hashes the UTF-8 bytes of a string.
    public static func hash(_ text: String, seed: UInt64 = 0) -> UInt64 {
        var copy = text
        return copy.withUTF8 { hash(UnsafeRawBufferPointer($0), seed: seed) }
    }

    @inline(__always) static func lane(_ base: UnsafeRawPointer, _ offset: Int) -> UInt64 {
        UInt64(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    @inline(__always) static func round(_ accumulator: UInt64, _ input: UInt64) -> UInt64 {
        (accumulator &+ input &* prime2).rotated(31) &* prime1
    }

    @inline(__always) static func merge(_ accumulator: UInt64, _ value: UInt64) -> UInt64 {
        (accumulator ^ round(0, value)) &* prime1 &+ prime4
    }

    @inline(__always) static func avalanche(_ value: UInt64) -> UInt64 {
        var hash = value
        hash ^= hash >> 33
        hash &*= prime2
        hash ^= hash >> 29
        hash &*= prime3
        hash ^= hash >> 32
        return hash
    }

    static func finalize(_ accumulator: UInt64, count: Int) -> UInt64 {
        avalanche(accumulator &+ UInt64(count))
    }
}

extension UInt64 {
    @inline(__always) func rotated(_ bits: UInt64) -> UInt64 { (self << bits) | (self >> (64 - bits)) }
}
