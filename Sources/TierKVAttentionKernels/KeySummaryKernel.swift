import TierKVCore

/// Per-block key summaries for the prefetch predictors: per KV head, the element-wise minimum,
/// maximum and mean of the block's keys. Reads K once; writes `kvHeads × 3 × headDim` fp32 in
/// the order `[head][min, max, mean][dim]`.
public enum KeySummaryKernel {
    public static func summarize(
        dtype: DType, keys: UnsafeRawPointer, tokenCount: Int, kvHeads: Int, headDim: Int,
        output: UnsafeMutablePointer<Float>
    ) {
        switch dtype {
        case .fp16: run(FP16Elements.self, keys, tokenCount, kvHeads, headDim, output)
        case .bf16: run(BF16Elements.self, keys, tokenCount, kvHeads, headDim, output)
        case .fp32: run(FP32Elements.self, keys, tokenCount, kvHeads, headDim, output)
        case .fp8E4M3: preconditionFailure("fp8 K/V is validated out before reaching the kernel")
        }
    }

    @inline(__always)
    static func run<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ tokenCount: Int, _ kvHeads: Int, _ headDim: Int,
        _ output: UnsafeMutablePointer<Float>
    ) {
        let lanes = headDim / 8
        let rowBytes = kvHeads * headDim * L.elementByteCount
        let out = UnsafeMutableRawPointer(output)
        for head in 0..<kvHeads {
            let base = out + head * 3 * headDim * 4
            for lane in 0..<lanes {
                base.storeBytes(of: SIMD8<Float>(repeating: .infinity), toByteOffset: lane * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: SIMD8<Float>(repeating: -.infinity), toByteOffset: (lanes + lane) * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: SIMD8<Float>(repeating: 0), toByteOffset: (2 * lanes + lane) * 32, as: SIMD8<Float>.self)
            }
        }
        // Token-major so K is read in address order; the 3 × headDim × kvHeads results stay in L1.
        for token in 0..<tokenCount {
            let row = keys + token * rowBytes
            for head in 0..<kvHeads {
                let source = row + head * headDim * L.elementByteCount
                let base = out + head * 3 * headDim * 4
                for lane in 0..<lanes {
                    let value = L.load8(source, lane * 8)
                    let low = base.load(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                    let high = base.load(fromByteOffset: (lanes + lane) * 32, as: SIMD8<Float>.self)
                    let sum = base.load(fromByteOffset: (2 * lanes + lane) * 32, as: SIMD8<Float>.self)
                    base.storeBytes(of: pointwiseMin(low, value), toByteOffset: lane * 32, as: SIMD8<Float>.self)
                    base.storeBytes(of: pointwiseMax(high, value), toByteOffset: (lanes + lane) * 32, as: SIMD8<Float>.self)
                    base.storeBytes(of: sum + value, toByteOffset: (2 * lanes + lane) * 32, as: SIMD8<Float>.self)
                }
            }
        }
        let inverse = SIMD8<Float>(repeating: tokenCount > 0 ? 1 / Float(tokenCount) : 0)
        for head in 0..<kvHeads {
            let base = out + head * 3 * headDim * 4
            for lane in 0..<lanes {
                let sum = base.load(fromByteOffset: (2 * lanes + lane) * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: sum * inverse, toByteOffset: (2 * lanes + lane) * 32, as: SIMD8<Float>.self)
            }
        }
    }
}

/// A STREAM-like read kernel: sums 32-byte lanes of a range with four independent
/// accumulators, the yardstick `bench attention` divides the attention kernel's rate by.
public enum MemoryReadKernel {
    /// Reads every byte of `bytes` (a multiple of 128 is read; the tail is skipped) and returns a
    /// value that depends on all of them, so the reads cannot be optimised away.
    public static func read(_ bytes: UnsafeRawBufferPointer) -> Float {
        guard let base = bytes.baseAddress else { return 0 }
        let blocks = bytes.count / 128
        var a = SIMD8<Float>(repeating: 0), b = a, c = a, d = a
        for block in 0..<blocks {
            let offset = block * 128
            a += base.loadUnaligned(fromByteOffset: offset, as: SIMD8<Float>.self)
            b += base.loadUnaligned(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
            c += base.loadUnaligned(fromByteOffset: offset + 64, as: SIMD8<Float>.self)
            d += base.loadUnaligned(fromByteOffset: offset + 96, as: SIMD8<Float>.self)
        }
        return ((a + b) + (c + d)).horizontalSum
    }
}
