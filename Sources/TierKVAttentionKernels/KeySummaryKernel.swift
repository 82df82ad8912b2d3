internal import CTierKVLinux
import TierKVCore

/// Per-block key summaries for the prefetch predictors: per KV head, the element-wise minimum,
/// maximum and mean of the block's keys. Reads K once; writes `kvHeads × 3 × headDim` fp32 in
/// the order `[head][min, max, mean][dim]`.
public enum KeySummaryKernel {
    /// - Parameter next: the keys of the block the caller summarises next (`nextTokenCount`
    ///   rows), prefetched a few lines at a time while this one is summed, so a run over many
    ///   blocks overlaps memory with arithmetic.
    public static func summarize(
        dtype: DType, keys: UnsafeRawPointer, tokenCount: Int, kvHeads: Int, headDim: Int,
        output: UnsafeMutablePointer<Float>, next: UnsafeRawPointer? = nil, nextTokenCount: Int = 0
    ) {
        switch dtype {
        case .fp16: run(FP16Elements.self, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        case .bf16: run(BF16Elements.self, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        case .fp32: run(FP32Elements.self, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        case .fp8E4M3: preconditionFailure("fp8 K/V is validated out before reaching the kernel")
        }
    }

    @inline(__always)
    static func run<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ tokenCount: Int, _ kvHeads: Int, _ headDim: Int,
        _ output: UnsafeMutablePointer<Float>, _ next: UnsafeRawPointer?, _ nextTokenCount: Int
    ) {
        let rowBytes = kvHeads * headDim * L.elementByteCount
        var ahead = PrefetchCursor()
        if let next { ahead = PrefetchCursor(next, nil, nextTokenCount * rowBytes) }
        let iterations = kvHeads * ((headDim / 8 + 1) / 2)
        ahead.linesPerStep = (ahead.end / 64 + iterations - 1) / max(iterations, 1)
        defer { ahead.finish() }
        let out = UnsafeMutableRawPointer(output)
        let inverse = SIMD8<Float>(repeating: tokenCount > 0 ? 1 / Float(tokenCount) : 0)
        // Per (head, 16 dims): min, max and sum stay in 6 registers across the block's tokens;
        // the block (32 KiB of K at Llama-3 shapes) stays in L1 across the passes.
        for head in 0..<kvHeads {
            let source = keys + head * headDim * L.elementByteCount
            let base = out + head * 3 * headDim * 4
            var lane = 0
            let lanes = headDim / 8
            while lane + 1 < lanes {
                ahead.step()
                var low0 = SIMD8<Float>(repeating: .infinity), low1 = low0
                var high0 = SIMD8<Float>(repeating: -.infinity), high1 = high0
                var sum0 = SIMD8<Float>(repeating: 0), sum1 = sum0
                for token in 0..<tokenCount {
                    let row = source + token * rowBytes
                    let x = L.load8(row, lane * 8)
                    let y = L.load8(row, lane * 8 + 8)
                    low0 = low0.lanewiseMin(x); low1 = low1.lanewiseMin(y)
                    high0 = high0.lanewiseMax(x); high1 = high1.lanewiseMax(y)
                    sum0 += x; sum1 += y
                }
                base.storeBytes(of: low0, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: low1, toByteOffset: lane * 32 + 32, as: SIMD8<Float>.self)
                base.storeBytes(of: high0, toByteOffset: headDim * 4 + lane * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: high1, toByteOffset: headDim * 4 + lane * 32 + 32, as: SIMD8<Float>.self)
                base.storeBytes(of: sum0 * inverse, toByteOffset: 2 * headDim * 4 + lane * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: sum1 * inverse, toByteOffset: 2 * headDim * 4 + lane * 32 + 32, as: SIMD8<Float>.self)
                lane += 2
            }
            if lane < lanes {  // head dims that are an odd number of 8-lanes (8, 24, 40, ...)
                var low = SIMD8<Float>(repeating: .infinity), high = SIMD8<Float>(repeating: -.infinity)
                var sum = SIMD8<Float>(repeating: 0)
                for token in 0..<tokenCount {
                    let x = L.load8(source + token * rowBytes, lane * 8)
                    low = low.lanewiseMin(x)
                    high = high.lanewiseMax(x)
                    sum += x
                }
                base.storeBytes(of: low, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: high, toByteOffset: headDim * 4 + lane * 32, as: SIMD8<Float>.self)
                base.storeBytes(of: sum * inverse, toByteOffset: 2 * headDim * 4 + lane * 32, as: SIMD8<Float>.self)
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
