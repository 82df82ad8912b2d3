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

/// The next chunk's keys (and values), prefetched a few cache lines at a time from inside a
/// kernel's inner loops so the loads overlap the arithmetic. Issued all at once, ~1000
/// prefetches fill the core's miss buffers and stall it until they land: memory and arithmetic
/// then take turns (measured: a kernel that computes at 12 GB/s from cache ran at 7.7 from DRAM
/// with one burst per chunk, 13 with the prefetches spread out).
struct PrefetchCursor {
    var keys: UnsafeRawPointer?
    var values: UnsafeRawPointer?
    var offset = 0
    var end = 0
    var linesPerStep = 0

    init() {}

    init(_ keys: UnsafeRawPointer, _ values: UnsafeRawPointer?, _ byteCount: Int) {
        self.keys = keys
        self.values = values
        self.end = byteCount
    }

    /// Prefetches the next `linesPerStep` lines of keys and of values.
    @_transparent
    mutating func step() {
        guard offset < end, let keys else { return }
        for _ in 0..<linesPerStep {
            ctierkv_prefetch(keys + offset)
            if let values { ctierkv_prefetch(values + offset) }
            offset += 64
        }
    }

    /// Prefetches whatever the steps did not reach.
    @_transparent
    mutating func finish() {
        guard let keys else { return }
        while offset < end {
            ctierkv_prefetch(keys + offset)
            if let values { ctierkv_prefetch(values + offset) }
            offset += 64
        }
    }
}

/// The SIMD decode-attention kernel: one pass over K and V with an online softmax.
///
/// For every query head (`kvHeads × groupSize` of them) over `blocks`, it writes the normalised
/// partial output `o`, the max logit `m` (natural-log units) and the sum of exponentials
/// `l = Σ exp(sᵢ − m)`. An empty range gives `m = −∞`, `l = 0`, `o = 0`.
///
/// Work goes 16 tokens at a time: all KV heads of those rows before the next chunk (a walk over
/// the whole context one KV head at a time reads 256 bytes every 2 KiB, which the prefetcher does
/// not follow: measured 3× slower), while `PrefetchCursor` brings in the next chunk. Within a
/// chunk, per KV head, query heads go in tiles of 4: scores, softmax and the value pass of a tile
/// run back to back with accumulators in registers, so each K/V vector is converted once per
/// tile and feeds 4 FMAs. No allocation; `scratch` holds `scratchFloatCount` floats.
public enum DecodeAttentionKernel {
    /// Tokens scored together before one rescale of the accumulators. `softmaxTile4` reads a
    /// tile's scores as 8 vectors of 2 tokens × 4 heads: 16 is built into it.
    public static let chunkTokens = 16
    static let log2e: Float = 1.442_695_04
    static let ln2: Float = 0.693_147_18

    public static func scratchFloatCount(queryHeads: Int, kvHeads: Int, headDim: Int) -> Int {
        queryHeads * headDim + 4 * chunkTokens + chunkTokens
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
        let tileScores = scaledQuery + queryHeads * headDim  // [token][4 heads] of one tile
        let headScores = tileScores + 4 * chunkTokens  // [token] of one head outside a tile
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
                // Ask for the next chunk's rows while this one is computed, a few cache lines per
                // inner-loop iteration (see PrefetchCursor).
                var ahead = PrefetchCursor()
                if start + count < block.tokenCount {
                    ahead = PrefetchCursor(keys + count * rowBytes, values + count * rowBytes, min(chunkTokens, block.tokenCount - start - count) * rowBytes)
                } else if blockIndex + 1 < blocks.count {
                    let next = blocks[blockIndex + 1]
                    ahead = PrefetchCursor(next.keys, next.values, min(chunkTokens, next.tokenCount) * rowBytes)
                }
                // Inner iterations this chunk: token triples (and leftovers) of every tile, plus 16-dim (tile of 4)
                // or 32-dim (single head) passes over the values.
                let tiles = groupSize / 4, singles = groupSize % 4
                let iterations = kvHeads * (tiles * (count / 3 + count % 3 + headDim / 16) + singles * (count + (headDim + 31) / 32))
                ahead.linesPerStep = (ahead.end / 64 + iterations - 1) / max(iterations, 1)
                for kvHead in 0..<kvHeads {
                    let headKeys = keys + kvHead * headBytes
                    let headValues = values + kvHead * headBytes
                    var first = kvHead * groupSize
                    let end = first + groupSize
                    while first + 4 <= end {
                        scoreTile4(L.self, headKeys, rowBytes, count, headDim, scaledQuery + first * headDim, tileScores, &ahead)
                        softmaxTile4(headDim, tileScores, output + first * headDim, maxima + first, sums + first)
                        accumulateTile4(L.self, headValues, rowBytes, count, headDim, tileScores, output + first * headDim, &ahead)
                        first += 4
                    }
                    while first < end {
                        scoreTile1(L.self, headKeys, rowBytes, count, headDim, scaledQuery + first * headDim, headScores, &ahead)
                        softmaxHead(headDim, count, headScores, output + first * headDim, maxima + first, sums + first)
                        accumulateTile1(L.self, headValues, rowBytes, count, headDim, headScores, output + first * headDim, &ahead)
                        first += 1
                    }
                }
                ahead.finish()
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

    /// Scores of 4 query heads against `count` keys, three tokens at a time: 12 accumulators,
    /// 3 key vectors and 1 query vector fill the 16 AVX2 registers, so each query vector is
    /// loaded once per 3 keys and each key vector converted once for 4 FMAs (two tokens at a
    /// time loaded 6 vectors per 8 FMAs and ran at 1.45 FMA/cycle from L1; three: 7 per 12 and
    /// 1.73, measured in a C replica). Scores are `[token][head]`, padded to `chunkTokens` with −∞.
    @_transparent
    static func scoreTile4<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ rowBytes: Int, _ count: Int, _ headDim: Int,
        _ query: UnsafeMutablePointer<Float>, _ scores: UnsafeMutablePointer<Float>, _ ahead: inout PrefetchCursor
    ) {
        let lanes = headDim / 8
        let q = UnsafeRawPointer(query)
        let out = UnsafeMutableRawPointer(scores)
        let stride = headDim * 4
        var token = 0
        while token + 3 <= count {
            ahead.step()
            let k0 = keys + token * rowBytes, k1 = k0 + rowBytes, k2 = k1 + rowBytes
            var a0 = SIMD8<Float>(repeating: 0), a1 = a0, a2 = a0, a3 = a0
            var b0 = a0, b1 = a0, b2 = a0, b3 = a0
            var c0 = a0, c1 = a0, c2 = a0, c3 = a0
            for lane in 0..<lanes {
                let x = L.load8(k0, lane * 8), y = L.load8(k1, lane * 8), z = L.load8(k2, lane * 8)
                let offset = lane * 32
                var h = q.load(fromByteOffset: offset, as: SIMD8<Float>.self)
                a0.addProduct(h, x); b0.addProduct(h, y); c0.addProduct(h, z)
                h = q.load(fromByteOffset: stride + offset, as: SIMD8<Float>.self)
                a1.addProduct(h, x); b1.addProduct(h, y); c1.addProduct(h, z)
                h = q.load(fromByteOffset: 2 * stride + offset, as: SIMD8<Float>.self)
                a2.addProduct(h, x); b2.addProduct(h, y); c2.addProduct(h, z)
                h = q.load(fromByteOffset: 3 * stride + offset, as: SIMD8<Float>.self)
                a3.addProduct(h, x); b3.addProduct(h, y); c3.addProduct(h, z)
            }
            out.storeBytes(of: ctierkv_sums8(a0, a1, a2, a3, b0, b1, b2, b3), toByteOffset: token * 16, as: SIMD8<Float>.self)
            out.storeBytes(of: ctierkv_sums4(c0, c1, c2, c3), toByteOffset: token * 16 + 32, as: SIMD4<Float>.self)
            token += 3
        }
        while token < count {
            ahead.step()
            let k = keys + token * rowBytes
            var a0 = SIMD8<Float>(repeating: 0), a1 = a0, a2 = a0, a3 = a0
            for lane in 0..<lanes {
                let x = L.load8(k, lane * 8)
                let offset = lane * 32
                a0.addProduct(q.load(fromByteOffset: offset, as: SIMD8<Float>.self), x)
                a1.addProduct(q.load(fromByteOffset: stride + offset, as: SIMD8<Float>.self), x)
                a2.addProduct(q.load(fromByteOffset: 2 * stride + offset, as: SIMD8<Float>.self), x)
                a3.addProduct(q.load(fromByteOffset: 3 * stride + offset, as: SIMD8<Float>.self), x)
            }
            out.storeBytes(of: ctierkv_sums4(a0, a1, a2, a3), toByteOffset: token * 16, as: SIMD4<Float>.self)
            token += 1
        }
        while token < chunkTokens {
            out.storeBytes(of: SIMD4<Float>(repeating: -.infinity), toByteOffset: token * 16, as: SIMD4<Float>.self)
            token += 1
        }
    }

    /// Scores of one query head (MHA, or the remainder of a group that is not a multiple of 4).
    @_transparent
    static func scoreTile1<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ rowBytes: Int, _ count: Int, _ headDim: Int,
        _ query: UnsafeMutablePointer<Float>, _ scores: UnsafeMutablePointer<Float>, _ ahead: inout PrefetchCursor
    ) {
        let lanes = headDim / 8
        let q = UnsafeRawPointer(query)
        for token in 0..<count {
            ahead.step()
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

    /// Online softmax over one chunk of a 4-head tile (`scores` as `scoreTile4` leaves them):
    /// new maxima, rescale what the 4 heads accumulated where a maximum grew, and turn the scores
    /// into weights 2^(s − m) in place. All 4 heads at once: 8 lanes are 2 tokens × 4 heads.
    @_transparent
    static func softmaxTile4(
        _ headDim: Int, _ scores: UnsafeMutablePointer<Float>, _ output: UnsafeMutablePointer<Float>,
        _ maxima: UnsafeMutablePointer<Float>, _ sums: UnsafeMutablePointer<Float>
    ) {
        let raw = UnsafeMutableRawPointer(scores)
        let s0 = raw.loadUnaligned(as: SIMD8<Float>.self)
        let s1 = raw.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self)
        let s2 = raw.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self)
        let s3 = raw.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self)
        let s4 = raw.loadUnaligned(fromByteOffset: 128, as: SIMD8<Float>.self)
        let s5 = raw.loadUnaligned(fromByteOffset: 160, as: SIMD8<Float>.self)
        let s6 = raw.loadUnaligned(fromByteOffset: 192, as: SIMD8<Float>.self)
        let s7 = raw.loadUnaligned(fromByteOffset: 224, as: SIMD8<Float>.self)
        let top = s0.lanewiseMax(s1).lanewiseMax(s2.lanewiseMax(s3)).lanewiseMax(s4.lanewiseMax(s5).lanewiseMax(s6.lanewiseMax(s7)))
        let chunkMax = top.lanewiseMax(SIMD8(lowHalf: top.highHalf, highHalf: top.lowHalf))  // per head, twice
        let previous4 = UnsafeRawPointer(maxima).loadUnaligned(as: SIMD4<Float>.self)
        let previous = SIMD8(lowHalf: previous4, highHalf: previous4)
        let current = previous.lanewiseMax(chunkMax)
        if any(current .> previous) {
            // On the first chunk previous is −∞ and alpha 2⁻¹²⁶: it scales zeros.
            let alpha = fastExp2(previous - current)
            let sums4 = UnsafeMutableRawPointer(sums)
            sums4.storeBytes(of: sums4.loadUnaligned(as: SIMD4<Float>.self) * alpha.lowHalf, as: SIMD4<Float>.self)
            for head in 0..<4 where current[head] > previous[head] {
                let factor = SIMD8<Float>(repeating: alpha[head])
                let accumulator = UnsafeMutableRawPointer(output + head * headDim)
                for lane in 0..<(headDim / 8) {
                    let value = accumulator.loadUnaligned(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                    accumulator.storeBytes(of: value * factor, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                }
            }
            UnsafeMutableRawPointer(maxima).storeBytes(of: current.lowHalf, as: SIMD4<Float>.self)
        }
        let w0 = fastExp2(s0 - current), w1 = fastExp2(s1 - current)
        let w2 = fastExp2(s2 - current), w3 = fastExp2(s3 - current)
        let w4 = fastExp2(s4 - current), w5 = fastExp2(s5 - current)
        let w6 = fastExp2(s6 - current), w7 = fastExp2(s7 - current)
        raw.storeBytes(of: w0, as: SIMD8<Float>.self)
        raw.storeBytes(of: w1, toByteOffset: 32, as: SIMD8<Float>.self)
        raw.storeBytes(of: w2, toByteOffset: 64, as: SIMD8<Float>.self)
        raw.storeBytes(of: w3, toByteOffset: 96, as: SIMD8<Float>.self)
        raw.storeBytes(of: w4, toByteOffset: 128, as: SIMD8<Float>.self)
        raw.storeBytes(of: w5, toByteOffset: 160, as: SIMD8<Float>.self)
        raw.storeBytes(of: w6, toByteOffset: 192, as: SIMD8<Float>.self)
        raw.storeBytes(of: w7, toByteOffset: 224, as: SIMD8<Float>.self)
        let total = ((w0 + w1) + (w2 + w3)) + ((w4 + w5) + (w6 + w7))
        let sums4 = UnsafeMutableRawPointer(sums)
        sums4.storeBytes(of: sums4.loadUnaligned(as: SIMD4<Float>.self) + (total.lowHalf + total.highHalf), as: SIMD4<Float>.self)
    }

    /// Online softmax over one chunk of one head (scores `[token]`, `count` of them): the
    /// single-head counterpart of `softmaxTile4`, vectorised over the chunk's 16 tokens.
    @_transparent
    static func softmaxHead(
        _ headDim: Int, _ count: Int, _ scores: UnsafeMutablePointer<Float>, _ output: UnsafeMutablePointer<Float>,
        _ maxima: UnsafeMutablePointer<Float>, _ sums: UnsafeMutablePointer<Float>
    ) {
        for token in count..<chunkTokens { scores[token] = -.infinity }
        let raw = UnsafeMutableRawPointer(scores)
        let s0 = raw.loadUnaligned(as: SIMD8<Float>.self)
        let s1 = raw.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self)
        let chunkMax = s0.lanewiseMax(s1).horizontalMax
        let previous = maxima[0]
        let current = max(previous, chunkMax)
        if current > previous {
            if previous == -.infinity {
                sums[0] = 0
            } else {
                let alpha = fastExp2(SIMD8<Float>(repeating: previous - current))
                sums[0] *= alpha[0]
                let accumulator = UnsafeMutableRawPointer(output)
                for lane in 0..<(headDim / 8) {
                    let value = accumulator.loadUnaligned(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                    accumulator.storeBytes(of: value * alpha, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                }
            }
            maxima[0] = current
        }
        let m = SIMD8<Float>(repeating: current)
        let w0 = fastExp2(s0 - m), w1 = fastExp2(s1 - m)
        raw.storeBytes(of: w0, as: SIMD8<Float>.self)
        raw.storeBytes(of: w1, toByteOffset: 32, as: SIMD8<Float>.self)
        sums[0] += (w0 + w1).horizontalSum
    }

    /// 2^x for 8 lanes: x = n + f with n an integer and f in [-0.5, 0.5]; 2^f from its degree-6
    /// Taylor polynomial (relative error ≤ 1.2e-7, at fp32 rounding), n added to the exponent
    /// bits (adding 1.5·2²³ rounds to nearest and leaves n in the low mantissa bits). Inputs below
    /// -126 give 2⁻¹²⁶ (not 0): a weight that small does not change an fp32 sum. A static member of the
    /// kernel so it inlines (as a free function in another file it was called, ~25% of the time).
    @_transparent
    static func fastExp2(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let clamped = SIMD8<Float>(repeating: -126).lanewiseMax(x).lanewiseMin(SIMD8(repeating: 127))
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let shifted = clamped + magic
        let f = clamped - (shifted - magic)
        let integer = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- SIMD8(repeating: 0x4B40_0000)
        var p = SIMD8<Float>(repeating: 1.540_353_0e-4)
        p = SIMD8(repeating: 1.333_355_8e-3).addingProduct(p, f)
        p = SIMD8(repeating: 9.618_129_1e-3).addingProduct(p, f)
        p = SIMD8(repeating: 5.550_410_9e-2).addingProduct(p, f)
        p = SIMD8(repeating: 2.402_265_1e-1).addingProduct(p, f)
        p = SIMD8(repeating: 6.931_471_8e-1).addingProduct(p, f)
        p = SIMD8(repeating: 1.0).addingProduct(p, f)
        return p * unsafeBitCast((integer &+ 127) &<< 23, to: SIMD8<Float>.self)
    }

    /// Adds weight × value rows into 4 query heads' outputs, 16 dims at a time: 8 accumulators
    /// in registers across all `count` tokens, each value vector converted once per 4 heads.
    @_transparent
    static func accumulateTile4<L: KVElementLoader>(
        _ loader: L.Type, _ values: UnsafeRawPointer, _ rowBytes: Int, _ count: Int, _ headDim: Int,
        _ weights: UnsafeMutablePointer<Float>, _ output: UnsafeMutablePointer<Float>, _ ahead: inout PrefetchCursor
    ) {
        let out = UnsafeMutableRawPointer(output)
        let stride = headDim * 4
        var lane = 0
        while lane < headDim / 8 {
            ahead.step()
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
                let w0 = SIMD8<Float>(repeating: weights[4 * token])
                let w1 = SIMD8<Float>(repeating: weights[4 * token + 1])
                let w2 = SIMD8<Float>(repeating: weights[4 * token + 2])
                let w3 = SIMD8<Float>(repeating: weights[4 * token + 3])
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
        _ weights: UnsafeMutablePointer<Float>, _ output: UnsafeMutablePointer<Float>, _ ahead: inout PrefetchCursor
    ) {
        let out = UnsafeMutableRawPointer(output)
        let lanes = headDim / 8
        var lane = 0
        while lane < lanes {
            ahead.step()
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
