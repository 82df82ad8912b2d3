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
        dispatch(FP32Summary.self, dtype, keys, tokenCount, kvHeads, headDim, UnsafeMutableRawPointer(output), next, nextTokenCount)
    }

    /// The same summary written as fp16 in the prediction table's format (`BlockScoreKernel`'s
    /// input): minima rounded down and maxima rounded up, so a bound computed from them is still
    /// an upper bound, means rounded to nearest; `kvHeads × 3 × headDim × 2` bytes. Half the
    /// bytes written of the fp32 form, which matters when summarising blocks from DRAM.
    public static func summarizeFP16(
        dtype: DType, keys: UnsafeRawPointer, tokenCount: Int, kvHeads: Int, headDim: Int,
        output: UnsafeMutableRawPointer, next: UnsafeRawPointer? = nil, nextTokenCount: Int = 0,
        streaming: Bool = false
    ) {
        if streaming {
            dispatch(FP16BoundsStreamingSummary.self, dtype, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        } else {
            dispatch(FP16BoundsSummary.self, dtype, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        }
    }

    /// Orders the non-temporal stores of `summarizeFP16(..., streaming: true)` before whatever
    /// the caller stores next (the flag that hands the summaries to another thread).
    public static func fenceStreamingStores() { ctierkv_store_fence() }

    @inline(__always)
    static func dispatch<S: SummaryWriter>(
        _ writer: S.Type, _ dtype: DType, _ keys: UnsafeRawPointer, _ tokenCount: Int, _ kvHeads: Int, _ headDim: Int,
        _ output: UnsafeMutableRawPointer, _ next: UnsafeRawPointer?, _ nextTokenCount: Int
    ) {
        switch dtype {
        case .fp16: run(FP16Elements.self, S.self, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        case .bf16: run(BF16Elements.self, S.self, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        case .fp32: run(FP32Elements.self, S.self, keys, tokenCount, kvHeads, headDim, output, next, nextTokenCount)
        case .fp8E4M3: preconditionFailure("fp8 K/V is validated out before reaching the kernel")
        }
    }

    @inline(__always)
    static func run<L: KVElementLoader, S: SummaryWriter>(
        _ loader: L.Type, _ writer: S.Type, _ keys: UnsafeRawPointer, _ tokenCount: Int, _ kvHeads: Int, _ headDim: Int,
        _ output: UnsafeMutableRawPointer, _ next: UnsafeRawPointer?, _ nextTokenCount: Int
    ) {
        let rowBytes = kvHeads * headDim * L.elementByteCount
        var ahead = PrefetchCursor()
        if let next { ahead = PrefetchCursor(next, nil, nextTokenCount * rowBytes) }
        let iterations = kvHeads * ((headDim / 8 + 1) / 2)
        ahead.linesPerStep = (ahead.end / 64 + iterations - 1) / max(iterations, 1)
        defer { ahead.finish() }
        let inverse = SIMD8<Float>(repeating: tokenCount > 0 ? 1 / Float(tokenCount) : 0)
        // Per (head, 16 dims): min, max and mean stay in 6 registers across the block's tokens;
        // the block (32 KiB of K at Llama-3 shapes) stays in L1 across the passes. The means
        // accumulate x · (1/n) with FMAs, not x with adds: on Zen 3 vminps, vmaxps and vaddps
        // share two pipes while FMAs have two others (a C replica from L1: 25.6 GB/s with adds,
        // 33.8 with FMAs).
        for head in 0..<kvHeads {
            let source = keys + head * headDim * L.elementByteCount
            let base = output + head * 3 * headDim * S.elementByteCount
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
                    sum0.addProduct(x, inverse); sum1.addProduct(y, inverse)
                }
                S.storeMinima(low0, base + lane * 8 * S.elementByteCount)
                S.storeMinima(low1, base + (lane + 1) * 8 * S.elementByteCount)
                S.storeMaxima(high0, base + headDim * S.elementByteCount + lane * 8 * S.elementByteCount)
                S.storeMaxima(high1, base + headDim * S.elementByteCount + (lane + 1) * 8 * S.elementByteCount)
                S.storeMeans(sum0, base + 2 * headDim * S.elementByteCount + lane * 8 * S.elementByteCount)
                S.storeMeans(sum1, base + 2 * headDim * S.elementByteCount + (lane + 1) * 8 * S.elementByteCount)
                lane += 2
            }
            if lane < lanes {  // head dims that are an odd number of 8-lanes (8, 24, 40, ...)
                var low = SIMD8<Float>(repeating: .infinity), high = SIMD8<Float>(repeating: -.infinity)
                var sum = SIMD8<Float>(repeating: 0)
                for token in 0..<tokenCount {
                    let x = L.load8(source + token * rowBytes, lane * 8)
                    low = low.lanewiseMin(x)
                    high = high.lanewiseMax(x)
                    sum.addProduct(x, inverse)
                }
                S.storeMinima(low, base + lane * 8 * S.elementByteCount)
                S.storeMaxima(high, base + headDim * S.elementByteCount + lane * 8 * S.elementByteCount)
                S.storeMeans(sum, base + 2 * headDim * S.elementByteCount + lane * 8 * S.elementByteCount)
            }
        }
    }
}

/// How a summary's vectors are written: fp32, or fp16 with minima rounded down and maxima up.
protocol SummaryWriter {
    static var elementByteCount: Int { get }
    static func storeMinima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer)
    static func storeMaxima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer)
    static func storeMeans(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer)
}

/// `FP16BoundsSummary` with non-temporal stores; the output must be 16-byte aligned.
enum FP16BoundsStreamingSummary: SummaryWriter {
    static var elementByteCount: Int { 2 }
    @_transparent static func storeMinima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { ctierkv_stream_fp16x8_down(address, value) }
    @_transparent static func storeMaxima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { ctierkv_stream_fp16x8_up(address, value) }
    @_transparent static func storeMeans(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { ctierkv_stream_fp16x8_nearest(address, value) }
}

enum FP32Summary: SummaryWriter {
    static var elementByteCount: Int { 4 }
    @_transparent static func storeMinima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { address.storeBytes(of: value, as: SIMD8<Float>.self) }
    @_transparent static func storeMaxima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { address.storeBytes(of: value, as: SIMD8<Float>.self) }
    @_transparent static func storeMeans(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { address.storeBytes(of: value, as: SIMD8<Float>.self) }
}

enum FP16BoundsSummary: SummaryWriter {
    static var elementByteCount: Int { 2 }
    @_transparent static func storeMinima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { ctierkv_store_fp16x8_down(address, value) }
    @_transparent static func storeMaxima(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { ctierkv_store_fp16x8_up(address, value) }
    @_transparent static func storeMeans(_ value: SIMD8<Float>, _ address: UnsafeMutableRawPointer) { ctierkv_store_fp16x8_nearest(address, value) }
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
