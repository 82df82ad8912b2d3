import Testing
@testable import TierKVCore

/// Vectors: the empty/`a`/`abc` values of the XXH64 spec and xxhsum, python-xxhash's README
/// examples, and xxhsum's sanity buffer (bytes = top byte of PRIME32 × PRIME64ⁱ), all
/// confirmed against the reference C library.
@Suite struct XXHash64Tests {
    struct Vector: Sendable, CustomTestStringConvertible {
        let input: [UInt8]
        let seed: UInt64
        let expected: UInt64
        var testDescription: String { "\(input.count) bytes, seed \(seed)" }
    }

    static let sanityBuffer: [UInt8] = {
        var generator: UInt64 = 2_654_435_761
        return (0..<2367).map { _ in
            defer { generator = generator &* 11_400_714_785_092_612_791 }
            return UInt8(generator >> 56)
        }
    }()

    static let vectors: [Vector] = [
        Vector(input: [], seed: 0, expected: 0xEF46_DB37_51D8_E999),
        Vector(input: Array("a".utf8), seed: 0, expected: 0xD24E_C4F1_A98C_6E5B),
        Vector(input: Array("abc".utf8), seed: 0, expected: 0x44BC_2CF5_AD77_0999),
        Vector(input: Array("Nobody inspects the spammish repetition".utf8), seed: 0, expected: 0xFBCE_A83C_8A37_8BF1),
        Vector(input: Array("xxhash".utf8), seed: 0, expected: 0x32DD_3895_2C4B_C720),
        Vector(input: Array("xxhash".utf8), seed: 20_141_025, expected: 0xB559_B98D_844E_0635),
        Vector(input: Array("I want an unsigned 64-bit seed!".utf8), seed: 0, expected: 0xD4CB_0A70_A2B8_C7C1),
        Vector(input: Array(sanityBuffer.prefix(0)), seed: 2_654_435_761, expected: 0xAC75_FDA2_929B_17EF),
        Vector(input: Array(sanityBuffer.prefix(1)), seed: 0, expected: 0xE934_A84A_DB05_2768),
        Vector(input: Array(sanityBuffer.prefix(1)), seed: 2_654_435_761, expected: 0x5014_6076_43A9_B4C3),
        Vector(input: Array(sanityBuffer.prefix(14)), seed: 0, expected: 0xE847_135B_B206_8301),
        Vector(input: Array(sanityBuffer.prefix(14)), seed: 2_654_435_761, expected: 0x0254_C0AF_BA65_3D75),
        Vector(input: Array(sanityBuffer.prefix(222)), seed: 0, expected: 0xD5A3_B881_8960_D75E),
        Vector(input: Array(sanityBuffer.prefix(222)), seed: 2_654_435_761, expected: 0x96E0_9027_649F_3518),
        Vector(input: sanityBuffer, seed: 0, expected: 0x2085_67DE_993C_55C0),
        Vector(input: sanityBuffer, seed: 2_654_435_761, expected: 0x4B04_5739_25A3_83A2),
    ]

    @Test(arguments: vectors)
    func matchesPublishedVector(_ vector: Vector) {
        let hash = vector.input.withUnsafeBytes { XXHash64.hash($0, seed: vector.seed) }
        #expect(hash == vector.expected)
    }

    @Test func stringOverloadHashesUTF8() {
        #expect(XXHash64.hash("abc") == 0x44BC_2CF5_AD77_0999)
    }

    @Test func unalignedInputHashesTheSame() {
        // The same 222 bytes at every offset 0..<8 of a larger buffer.
        let expected: UInt64 = 0xD5A3_B881_8960_D75E
        for offset in 0..<8 {
            var buffer = [UInt8](repeating: 0xAA, count: 240)
            buffer.replaceSubrange(offset..<(offset + 222), with: Self.sanityBuffer.prefix(222))
            let hash = buffer.withUnsafeBytes { XXHash64.hash(UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + 222)])) }
            #expect(hash == expected, "offset \(offset)")
        }
    }
}
