internal import CTierKVLinux

/// Loads 8 key or value elements of one storage type as fp32 lanes. With x86-64-v3 the fp16
/// conversion is one `vcvtph2ps`, bf16 a widen-and-shift, fp32 a plain load (the C helpers in
/// CTierKVLinux, which always inline).
protocol KVElementLoader {
    /// Bytes per element.
    static var elementByteCount: Int { get }
    /// Elements `index ..< index + 8` of the row at `base`.
    static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float>
}

enum FP16Elements: KVElementLoader {
    static var elementByteCount: Int { 2 }
    @_transparent
    static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        ctierkv_load_fp16x8(base + index * 2)
    }
}

enum BF16Elements: KVElementLoader {
    static var elementByteCount: Int { 2 }
    @_transparent
    static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        // bf16 is the top half of an fp32: widen each value to 32 bits and shift it up.
        ctierkv_load_bf16x8(base + index * 2)
    }
}

enum FP32Elements: KVElementLoader {
    static var elementByteCount: Int { 4 }
    @_transparent
    static func load8(_ base: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
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

    /// Lane-wise minimum and maximum through clang's vector builtins (one vminps/vmaxps): the
    /// stdlib's `pointwiseMin` is an out-of-line call and `replacing(with:where:)` compiles to a
    /// scalar loop with branches, which measured at 45% of the attention kernel's time.
    @_transparent
    func lanewiseMin(_ other: SIMD8<Float>) -> SIMD8<Float> { ctierkv_min8(self, other) }

    @_transparent
    func lanewiseMax(_ other: SIMD8<Float>) -> SIMD8<Float> { ctierkv_max8(self, other) }

    @_transparent
    var horizontalMax: Float {
        let folded = lanewiseMax(SIMD8(lowHalf: highHalf, highHalf: lowHalf))
        return Swift.max(Swift.max(folded[0], folded[1]), Swift.max(folded[2], folded[3]))
    }
}
