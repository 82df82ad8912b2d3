/// Loads 8 key or value elements of one storage type as fp32 lanes. With x86-64-v3 the fp16
/// conversion is one `vcvtph2ps`, bf16 a widen-and-shift, fp32 a plain load.
public protocol KVElementLoader {
    /// Bytes per element.
    static var elementByteCount: Int { get }
    /// Elements `index ..< index + 8` of the row at `base`.
    static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float>
}

public enum FP16Elements: KVElementLoader {
    public static var elementByteCount: Int { 2 }
    @inline(__always)
    public static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        SIMD8<Float>(base.loadUnaligned(fromByteOffset: index * 2, as: SIMD8<Float16>.self))
    }
}

public enum BF16Elements: KVElementLoader {
    public static var elementByteCount: Int { 2 }
    @inline(__always)
    public static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        let raw = base.loadUnaligned(fromByteOffset: index * 2, as: SIMD8<UInt16>.self)
        let widened = SIMD8<UInt32>(truncatingIfNeeded: raw) &<< 16
        return unsafeBitCast(widened, to: SIMD8<Float>.self)
    }
}

public enum FP32Elements: KVElementLoader {
    public static var elementByteCount: Int { 4 }
    @inline(__always)
    public static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        base.loadUnaligned(fromByteOffset: index * 4, as: SIMD8<Float>.self)
    }
}

extension SIMD8 where Scalar == Float {
    /// Sum of the lanes, reduced by halves (`.sum()` would add them one after another).
    @inline(__always)
    var horizontalSum: Float {
        let half = lowHalf + highHalf
        let quarter = half.lowHalf + half.highHalf
        return quarter[0] + quarter[1]
    }

    @inline(__always)
    var horizontalMax: Float {
        let half = pointwiseMax(lowHalf, highHalf)
        let quarter = pointwiseMax(half.lowHalf, half.highHalf)
        return Swift.max(quarter[0], quarter[1])
    }
}

/// 2^x for 8 lanes: x = n + f with n an integer and f in [-0.5, 0.5]; 2^f from its degree-6
/// Taylor polynomial (relative error ≤ 1.2e-7, at fp32 rounding), n added to the exponent bits.
/// Inputs below -126 give 0: softmax weights that small do not change an fp32 sum.
@inline(__always)
public func exp2(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let clamped = x.clamped(lowerBound: SIMD8(repeating: -126), upperBound: SIMD8(repeating: 127))
    let n = clamped.rounded(.toNearestOrEven)
    let f = clamped - n
    // ln(2)^k / k!
    var p = SIMD8<Float>(repeating: 1.540_353_0e-4)
    p = p * f + SIMD8(repeating: 1.333_355_8e-3)
    p = p * f + SIMD8(repeating: 9.618_129_1e-3)
    p = p * f + SIMD8(repeating: 5.550_410_9e-2)
    p = p * f + SIMD8(repeating: 2.402_265_1e-1)
    p = p * f + SIMD8(repeating: 6.931_471_8e-1)
    p = p * f + SIMD8(repeating: 1.0)
    let bits = (SIMD8<Int32>(n) &+ 127) &<< 23
    let result = p * unsafeBitCast(bits, to: SIMD8<Float>.self)
    return result.replacing(with: 0, where: x .< SIMD8(repeating: -126))
}
