internal import CTierKVLinux
import TierKVCore

/// Where one block's keys and values are: `tokenCount` rows of `[kvHeads][headDim]` elements
/// each, K and V at separate addresses (a paged block, or a chunk of a contiguous K/V array).
public struct KVBlockView: @unchecked Sendable {
    // @unchecked: a view of memory the caller keeps alive and unchanged during the call.
    public var keys: UnsafeRawPointer
    public var values: UnsafeRawPointer
    public var tokenCount: Int

    public init(keys: UnsafeRawPointer, values: UnsafeRawPointer, tokenCount: Int) {
        self.keys = keys
        self.values = values
        self.tokenCount = tokenCount
    }
}

/// The SIMD decode-attention kernel: one pass over K and V with an online softmax.
///
/// For every query head (`kvHeads × groupSize` of them) over `blocks`, it writes the normalised
/// partial output `o`, the max logit `m` (natural-log units) and the sum of exponentials
/// `l = Σ exp(sᵢ − m)`. An empty range gives `m = −∞`, `l = 0`, `o = 0`.
///
/// Work goes 16 tokens at a time: all KV heads of those rows (32 KiB of K at Llama-3 shapes, in L1)
/// before the next chunk, so memory streams in address order (a per-KV-head walk reads 256 bytes
/// every 2 KiB, which the prefetcher does not follow: measured 3× slower). Within a chunk, query
/// heads go in tiles of 4 with accumulators in registers, so each K/V vector is converted once per
/// tile and feeds 4 FMAs. No allocation; `scratch` holds `scratchFloatCount` floats.
public enum DecodeAttentionKernel {
    /// Tokens scored together before one rescale of the accumulators.
    public static let chunkTokens = 16
    static let log2e: Float = 1.442_695_04
    static let ln2: Float = 0.693_147_18

    public static func scratchFloatCount(queryHeads: Int, kvHeads: Int, headDim: Int) -> Int {
        queryHeads * headDim + queryHeads * chunkTokens
    }

    /// - Parameters:
    ///   - query: `queryHeads × headDim` fp32 (query head `i` uses KV head `i / groupSize`).
    ///   - scale: softmax scale (usually 1/√headDim).
    ///   - output: `queryHeads × headDim` fp32, normalised partial outputs.
    ///   - maxima, sums: `queryHeads` each: `m` and `l` per query head.
    public static func partial(
        dtype: DType, query: UnsafePointer<Float>, scale: Float, groupSize: Int, headDim: Int, kvHeads: Int,
        blocks: UnsafeBufferPointer<KVBlockView>, output: UnsafeMutablePointer<Float>,
        maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        switch dtype {
        case .fp16:
            run(FP16Elements.self, query, scale, groupSize, headDim, kvHeads, blocks, output, maxima, sums, scratch)
        case .bf16:
            run(BF16Elements.self, query, scale, groupSize, headDim, kvHeads, blocks, output, maxima, sums, scratch)
        case .fp32:
            run(FP32Elements.self, query, scale, groupSize, headDim, kvHeads, blocks, output, maxima, sums, scratch)
        case .fp8E4M3:
            preconditionFailure("fp8 K/V is validated out before reaching the kernel")
        }
    }

    @inline(__always)
    static func run<L: KVElementLoader>(
        _ loader: L.Type, _ query: UnsafePointer<Float>, _ scale: Float, _ groupSize: Int, _ headDim: Int,
        _ kvHeads: Int, _ blocks: UnsafeBufferPointer<KVBlockView>, _ output: UnsafeMutablePointer<Float>,
        _ maxima: UnsafeMutablePointer<Float>, _ sums: UnsafeMutablePointer<Float>, _ scratch: UnsafeMutablePointer<Float>
    ) {
        let queryHeads = kvHeads * groupSize
        let scaledQuery = scratch  // query × scale × log2(e): scores come out in base 2
        let scores = scaledQuery + queryHeads * headDim  // queryHeads × chunkTokens
        let factor = scale * log2e
        for index in 0..<(queryHeads * headDim) {
            scaledQuery[index] = query[index] * factor
            output[index] = 0
        }
        for head in 0..<queryHeads {
            maxima[head] = -.infinity
            sums[head] = 0
        }
        let rowBytes = kvHeads * headDim * L.elementByteCount
        let headBytes = headDim * L.elementByteCount

        for (blockIndex, block) in blocks.enumerated() {
            var start = 0
            while start < block.tokenCount {
                let count = min(chunkTokens, block.tokenCount - start)
                let keys = block.keys + start * rowBytes
                let values = block.values + start * rowBytes
                // Ask for the next chunk's rows now: a single stream otherwise waits on DRAM
                // latency at every new row (measured: the kernel then runs at a third of memory speed).
                if start + count < block.tokenCount {
                    prefetch(keys + count * rowBytes, values + count * rowBytes, min(chunkTokens, block.tokenCount - start - count) * rowBytes)
                } else if blockIndex + 1 < blocks.count {
                    let next = blocks[blockIndex + 1]
                    prefetch(next.keys, next.values, min(chunkTokens, next.tokenCount) * rowBytes)
                }
                for kvHead in 0..<kvHeads {
                    var first = kvHead * groupSize
                    let end = first + groupSize
                    while first + 4 <= end {
                        scoreTile4(L.self, keys + kvHead * headBytes, rowBytes, count, headDim, scaledQuery + first * headDim, scores + first * chunkTokens)
                        first += 4
                    }
                    while first < end {
                        scoreTile1(L.self, keys + kvHead * headBytes, rowBytes, count, headDim, scaledQuery + first * headDim, scores + first * chunkTokens)
                        first += 1
                    }
                }
                softmaxChunk(queryHeads, headDim, count, scores, output, maxima, sums)
                for kvHead in 0..<kvHeads {
                    var first = kvHead * groupSize
                    let end = first + groupSize
                    while first + 4 <= end {
                        accumulateTile4(L.self, values + kvHead * headBytes, rowBytes, count, headDim, scores + first * chunkTokens, output + first * headDim)
                        first += 4
                    }
                    while first < end {
                        accumulateTile1(L.self, values + kvHead * headBytes, rowBytes, count, headDim, scores + first * chunkTokens, output + first * headDim)
                        first += 1
                    }
                }
                start += count
            }
        }
        for head in 0..<queryHeads {
            let sum = sums[head]
            let inverse: Float = sum > 0 ? 1 / sum : 0
            for index in 0..<headDim { output[head * headDim + index] *= inverse }
            if maxima[head] != -.infinity { maxima[head] *= ln2 }
        }
    }

    /// Prefetches `byteCount` bytes of keys and of values, a cache line at a time.
    @_transparent
    static func prefetch(_ keys: UnsafeRawPointer, _ values: UnsafeRawPointer, _ byteCount: Int) {
        var offset = 0
        while offset < byteCount {
            ctierkv_prefetch(keys + offset)
            ctierkv_prefetch(values + offset)
            offset += 64
        }
    }

    /// Scores of 4 query heads against `count` keys, two tokens at a time: 8 accumulators in
    /// registers, each key vector converted once and used by 4 FMAs.
    @_transparent
    static func scoreTile4<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ rowBytes: Int, _ count: Int, _ headDim: Int,
        _ query: UnsafeMutablePointer<Float>, _ scores: UnsafeMutablePointer<Float>
    ) {
        let lanes = headDim / 8
        let q = UnsafeRawPointer(query)
        let stride = headDim * 4
        var token = 0
        while token < count {
            let pair = token + 1 < count
            let k0 = keys + token * rowBytes
            let k1 = pair ? k0 + rowBytes : k0
            var a0 = SIMD8<Float>(repeating: 0), a1 = a0, a2 = a0, a3 = a0
            var b0 = a0, b1 = a0, b2 = a0, b3 = a0
            for lane in 0..<lanes {
                let x = L.load8(k0, lane * 8)
                let y = L.load8(k1, lane * 8)
                let offset = lane * 32
                let q0 = q.load(fromByteOffset: offset, as: SIMD8<Float>.self)
                let q1 = q.load(fromByteOffset: stride + offset, as: SIMD8<Float>.self)
                let q2 = q.load(fromByteOffset: 2 * stride + offset, as: SIMD8<Float>.self)
                let q3 = q.load(fromByteOffset: 3 * stride + offset, as: SIMD8<Float>.self)
                a0.addProduct(q0, x); a1.addProduct(q1, x); a2.addProduct(q2, x); a3.addProduct(q3, x)
                b0.addProduct(q0, y); b1.addProduct(q1, y); b2.addProduct(q2, y); b3.addProduct(q3, y)
            }
            scores[token] = a0.horizontalSum
            scores[chunkTokens + token] = a1.horizontalSum
            scores[2 * chunkTokens + token] = a2.horizontalSum
            scores[3 * chunkTokens + token] = a3.horizontalSum
            if pair {
                scores[token + 1] = b0.horizontalSum
                scores[chunkTokens + token + 1] = b1.horizontalSum
                scores[2 * chunkTokens + token + 1] = b2.horizontalSum
                scores[3 * chunkTokens + token + 1] = b3.horizontalSum
            }
            token += 2
        }
    }

    /// Scores of one query head (MHA, or the remainder of a group that is not a multiple of 4).
    @_transparent
    static func scoreTile1<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ rowBytes: Int, _ count: Int, _ headDim: Int,
        _ query: UnsafeMutablePointer<Float>, _ scores: UnsafeMutablePointer<Float>
    ) {
        let lanes = headDim / 8
        let q = UnsafeRawPointer(query)
        for token in 0..<count {
            let k = keys + token * rowBytes
            var even = SIMD8<Float>(repeating: 0), odd = even
            var lane = 0
            while lane < lanes {  // lanes is even for every supported head dim
                even.addProduct(q.load(fromByteOffset: lane * 32, as: SIMD8<Float>.self), L.load8(k, lane * 8))
                odd.addProduct(q.load(fromByteOffset: lane * 32 + 32, as: SIMD8<Float>.self), L.load8(k, lane * 8 + 8))
                lane += 2
            }
            scores[token] = (even + odd).horizontalSum
        }
    }

    /// Online softmax over one chunk: new max per head, rescale what was accumulated, and turn
    /// the chunk's scores into weights 2^(s − m) in place. Vectorised over the chunk's 16 tokens
    /// (scalar code here cost as much as all the FMAs, measured).
    @_transparent
    static func softmaxChunk(
        _ queryHeads: Int, _ headDim: Int, _ count: Int, _ scores: UnsafeMutablePointer<Float>,
        _ output: UnsafeMutablePointer<Float>, _ maxima: UnsafeMutablePointer<Float>, _ sums: UnsafeMutablePointer<Float>
    ) {
        for head in 0..<queryHeads {
            let headScores = scores + head * chunkTokens
            for token in count..<chunkTokens { headScores[token] = -.infinity }
            let raw = UnsafeMutableRawPointer(headScores)
            let s0 = raw.load(as: SIMD8<Float>.self)
            let s1 = raw.load(fromByteOffset: 32, as: SIMD8<Float>.self)
            let chunkMax = s0.lanewiseMax(s1).horizontalMax
            let previous = maxima[head]
            let current = max(previous, chunkMax)
            if current > previous {
                if previous == -.infinity {
                    sums[head] = 0
                } else {
                    let alpha = fastExp2(SIMD8<Float>(repeating: previous - current))
                    sums[head] *= alpha[0]
                    let accumulator = UnsafeMutableRawPointer(output + head * headDim)
                    for lane in 0..<(headDim / 8) {
                        let value = accumulator.load(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                        accumulator.storeBytes(of: value * alpha, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                    }
                }
                maxima[head] = current
            }
            let m = SIMD8<Float>(repeating: current)
            let w0 = fastExp2(s0 - m), w1 = fastExp2(s1 - m)
            raw.storeBytes(of: w0, as: SIMD8<Float>.self)
            raw.storeBytes(of: w1, toByteOffset: 32, as: SIMD8<Float>.self)
            sums[head] += (w0 + w1).horizontalSum
        }
    }

    /// 2^x for 8 lanes: x = n + f with n an integer and f in [-0.5, 0.5]; 2^f from its degree-6
    /// Taylor polynomial (relative error ≤ 1.2e-7, at fp32 rounding), n added to the exponent
    /// bits (adding 1.5·2²³ rounds to nearest and leaves n in the low mantissa bits). Inputs below
    /// -126 give 2⁻¹²⁶ (not 0): a weight that small does not change an fp32 sum. A static member of the
    /// kernel so it inlines (as a free function in another file it was called, ~25% of the time).
    @_transparent
    static func fastExp2(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let clamped = x.lanewiseMax(SIMD8(repeating: -126)).lanewiseMin(SIMD8(repeating: 127))
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let shifted = clamped + magic
        let f = clamped - (shifted - magic)
        let integer = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- SIMD8(repeating: 0x4B40_0000)
        var p = SIMD8<Float>(repeating: 1.540_353_0e-4)
        p = p * f + SIMD8(repeating: 1.333_355_8e-3)
        p = p * f + SIMD8(repeating: 9.618_129_1e-3)
        p = p * f + SIMD8(repeating: 5.550_410_9e-2)
        p = p * f + SIMD8(repeating: 2.402_265_1e-1)
        p = p * f + SIMD8(repeating: 6.931_471_8e-1)
        p = p * f + SIMD8(repeating: 1.0)
        return p * unsafeBitCast((integer &+ 127) &<< 23, to: SIMD8<Float>.self)
    }

    /// Adds weight × value rows into 4 query heads' outputs, 16 dims at a time: 8 accumulators
    /// in registers across all `count` tokens, each value vector converted once per 4 heads.
    @_transparent
    static func accumulateTile4<L: KVElementLoader>(
        _ loader: L.Type, _ values: UnsafeRawPointer, _ rowBytes: Int, _ count: Int, _ headDim: Int,
        _ weights: UnsafeMutablePointer<Float>, _ output: UnsafeMutablePointer<Float>
    ) {
        let out = UnsafeMutableRawPointer(output)
        let stride = headDim * 4
        var lane = 0
        while lane < headDim / 8 {
            let offset = lane * 32
            var a0 = out.load(fromByteOffset: offset, as: SIMD8<Float>.self)
            var a1 = out.load(fromByteOffset: stride + offset, as: SIMD8<Float>.self)
            var a2 = out.load(fromByteOffset: 2 * stride + offset, as: SIMD8<Float>.self)
            var a3 = out.load(fromByteOffset: 3 * stride + offset, as: SIMD8<Float>.self)
            var b0 = out.load(fromByteOffset: offset + 32, as: SIMD8<Float>.self)
            var b1 = out.load(fromByteOffset: stride + offset + 32, as: SIMD8<Float>.self)
            var b2 = out.load(fromByteOffset: 2 * stride + offset + 32, as: SIMD8<Float>.self)
            var b3 = out.load(fromByteOffset: 3 * stride + offset + 32, as: SIMD8<Float>.self)
            for token in 0..<count {
                let row = values + token * rowBytes
                let x = L.load8(row, lane * 8)
                let y = L.load8(row, lane * 8 + 8)
                let w0 = SIMD8<Float>(repeating: weights[token])
                let w1 = SIMD8<Float>(repeating: weights[chunkTokens + token])
                let w2 = SIMD8<Float>(repeating: weights[2 * chunkTokens + token])
                let w3 = SIMD8<Float>(repeating: weights[3 * chunkTokens + token])
                a0.addProduct(w0, x); a1.addProduct(w1, x); a2.addProduct(w2, x); a3.addProduct(w3, x)
                b0.addProduct(w0, y); b1.addProduct(w1, y); b2.addProduct(w2, y); b3.addProduct(w3, y)
            }
            out.storeBytes(of: a0, toByteOffset: offset, as: SIMD8<Float>.self)
            out.storeBytes(of: a1, toByteOffset: stride + offset, as: SIMD8<Float>.self)
            out.storeBytes(of: a2, toByteOffset: 2 * stride + offset, as: SIMD8<Float>.self)
            out.storeBytes(of: a3, toByteOffset: 3 * stride + offset, as: SIMD8<Float>.self)
            out.storeBytes(of: b0, toByteOffset: offset + 32, as: SIMD8<Float>.self)
            out.storeBytes(of: b1, toByteOffset: stride + offset + 32, as: SIMD8<Float>.self)
            out.storeBytes(of: b2, toByteOffset: 2 * stride + offset + 32, as: SIMD8<Float>.self)
            out.storeBytes(of: b3, toByteOffset: 3 * stride + offset + 32, as: SIMD8<Float>.self)
            lane += 2
        }
    }

    /// Adds weight × value rows into one query head's output, 32 dims at a time.
    @_transparent
    static func accumulateTile1<L: KVElementLoader>(
        _ loader: L.Type, _ values: UnsafeRawPointer, _ rowBytes: Int, _ count: Int, _ headDim: Int,
        _ weights: UnsafeMutablePointer<Float>, _ output: UnsafeMutablePointer<Float>
    ) {
        let out = UnsafeMutableRawPointer(output)
        let lanes = headDim / 8
        var lane = 0
        while lane < lanes {
            let width = min(4, lanes - lane)  // 2 or 4: lanes is even
            var a = out.load(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
            var b = out.load(fromByteOffset: lane * 32 + 32, as: SIMD8<Float>.self)
            var c = width == 4 ? out.load(fromByteOffset: lane * 32 + 64, as: SIMD8<Float>.self) : SIMD8<Float>()
            var d = width == 4 ? out.load(fromByteOffset: lane * 32 + 96, as: SIMD8<Float>.self) : SIMD8<Float>()
            for token in 0..<count {
                let row = values + token * rowBytes
                let w = SIMD8<Float>(repeating: weights[token])
                a.addProduct(w, L.load8(row, lane * 8))
                b.addProduct(w, L.load8(row, lane * 8 + 8))
                if width == 4 {
                    c.addProduct(w, L.load8(row, lane * 8 + 16))
                    d.addProduct(w, L.load8(row, lane * 8 + 24))
                }
            }
            out.storeBytes(of: a, toByteOffset: lane * 32, as: SIMD8<Float>.self)
            out.storeBytes(of: b, toByteOffset: lane * 32 + 32, as: SIMD8<Float>.self)
            if width == 4 {
                out.storeBytes(of: c, toByteOffset: lane * 32 + 64, as: SIMD8<Float>.self)
                out.storeBytes(of: d, toByteOffset: lane * 32 + 96, as: SIMD8<Float>.self)
            }
            lane += width
        }
    }
}
