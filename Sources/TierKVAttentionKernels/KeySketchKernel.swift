#if canImport(Glibc)
import Glibc
#endif
internal import CTierKVLinux
import TierKVCore

/// Key sketches for the prefetch predictors: every key element of a block quantised to `bits`
/// bits (1, 2 or 4) between the block's per-channel minimum and maximum, the fp16 values of its
/// key summary (KIVI-style per-channel key quantisation, whose scales the summary already holds).
/// A sketch lets a block be scored token by token, `ln Σ_t exp(scale·q·k̂_t)`, instead of from
/// one bound or one mean per channel.
///
/// Codes are dim-major, `[head][dim][token]`, the codes of 8 consecutive tokens one
/// `8·bits`-bit little-endian word (token j of the 8 in bits j·bits...): scoring then computes 8
/// tokens' logits at once, one broadcast weight per dim, with no horizontal sums (token-major it
/// spent a fifth of its time summing lanes). A block takes `kvHeads × headDim × ⌈tokensPerBlock/8⌉
/// × bits` bytes (`sketchByteCount`). The summary is `[head][min, max, mean][dim]` fp16
/// (`BlockScoreKernel`'s input).
public enum KeySketchKernel {
    /// Writes the codes of `tokenCount` key rows (`[token][kvHead][headDim]` of `dtype`, the K half
    /// of a TierKV block) into `output` (`byteCount(...)` bytes, room for `tokensPerBlock`
    /// tokens); codes of tokens at and after `tokenCount` are zero.
    public static func encode(
        dtype: DType, keys: UnsafeRawPointer, tokenCount: Int, tokensPerBlock: Int, kvHeads: Int, headDim: Int, bits: Int,
        summary: UnsafeRawPointer, output: UnsafeMutableRawPointer
    ) {
        switch dtype {
        case .fp16: encode(FP16Elements.self, keys, tokenCount, tokensPerBlock, kvHeads, headDim, bits, summary, output)
        case .bf16: encode(BF16Elements.self, keys, tokenCount, tokensPerBlock, kvHeads, headDim, bits, summary, output)
        case .fp32: encode(FP32Elements.self, keys, tokenCount, tokensPerBlock, kvHeads, headDim, bits, summary, output)
        case .fp8E4M3: preconditionFailure("fp8 keys are validated out before reaching the kernel")
        }
    }

    /// Bytes of one block's sketch.
    public static func byteCount(tokensPerBlock: Int, kvHeads: Int, headDim: Int, bits: Int) -> Int {
        kvHeads * headDim * ((tokensPerBlock + 7) / 8) * bits
    }

    @inline(__always)
    private static func encode<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ tokenCount: Int, _ tokensPerBlock: Int, _ kvHeads: Int, _ headDim: Int,
        _ bits: Int, _ summary: UnsafeRawPointer, _ output: UnsafeMutableRawPointer
    ) {
        let levels = Float((1 << bits) - 1)
        let top = SIMD8<Float>(repeating: levels)
        let chunks = (tokensPerBlock + 7) / 8
        let wordStride = chunks * bits  // bytes from one dim's word to the next dim's
        output.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount(tokensPerBlock: tokensPerBlock, kvHeads: kvHeads, headDim: headDim, bits: bits))
        // Per 8 dims and 8 tokens: the 8 tokens' codes are OR-ed into one vector of 8 words (one
        // per dim) in registers, and each word is stored once. (Spreading each token's codes into
        // memory dim by dim, read-modify-write, took 87 µs per Llama-3-8B block of 2-bit codes.)
        for head in 0..<kvHeads {
            let low = summary + head * 3 * headDim * 2
            let high = low + headDim * 2
            let headOutput = output + head * headDim * wordStride
            for lane in 0..<(headDim / 8) {
                let l = FP16Elements.load8(low, lane * 8), h = FP16Elements.load8(high, lane * 8)
                let range = h - l
                // A channel whose keys are all equal codes 0 (its one value is the minimum).
                let toLevels = (levels / range).replacing(with: 0, where: range .<= 0)
                let laneOutput = headOutput + lane * 8 * wordStride
                var chunk = 0
                while chunk * 8 < tokenCount {
                    var words = SIMD8<UInt32>.zero
                    for token in (chunk * 8)..<min(chunk * 8 + 8, tokenCount) {
                        let k = L.load8(keys, (token * kvHeads + head) * headDim + lane * 8)
                        let level = ((k - l) * toLevels).lanewiseMax(.zero).lanewiseMin(top)
                        // Adding 2²³ rounds to the nearest integer (ties to even) and leaves it in
                        // the low mantissa bits (the generic SIMD float-to-int conversion is scalar).
                        let codes = unsafeBitCast(level + SIMD8(repeating: 8_388_608), to: SIMD8<UInt32>.self) & SIMD8(repeating: 0xFF)
                        words |= codes &<< SIMD8(repeating: UInt32((token % 8) * bits))
                    }
                    let word = laneOutput + chunk * bits
                    for dim in 0..<8 {
                        let at = word + dim * wordStride
                        switch bits {
                        case 1: at.storeBytes(of: UInt8(truncatingIfNeeded: words[dim]), as: UInt8.self)
                        case 2: at.storeBytes(of: UInt16(truncatingIfNeeded: words[dim]).littleEndian, as: UInt16.self)
                        default: at.storeBytes(of: words[dim].littleEndian, as: UInt32.self)
                        }
                    }
                    chunk += 1
                }
            }
        }
    }

    /// Per block and query head, the block's log-mass from its sketch in raw logit units, as the
    /// other block scores are: `(ln Σ_t exp(scale·q·k̂_t) − ln n) / scale` over the block's n
    /// tokens, k̂ = min + code·(max − min)/(2^bits − 1). Written to
    /// `output[block · queryHeads + queryHead]`; `PredictedMass.fromScores` adds ln n back.
    ///
    /// Per query head, not combined over a GQA group as the summary scores are: each head's
    /// softmax has its own normaliser, so the head with the largest logits would decide every
    /// block. Normalised per head and then averaged (the attention mass engines report), the
    /// trained model's trace gave 0.89 top-k recall at 2 bits; combined by max, 0.67 (numpy
    /// harness, docs/measurements.md).
    /// - Parameters:
    ///   - tokenCounts: per slot, the rows the sketch holds (a partly filled block has fewer).
    public static func score(
        query: UnsafePointer<Float>, groupSize: Int, kvHeads: Int, headDim: Int, bits: Int, tokensPerBlock: Int, scale: Float,
        summaries: UnsafeRawPointer, summaryByteCount: Int, sketches: UnsafeRawPointer, sketchByteCount: Int,
        tokenCounts: UnsafePointer<UInt32>, slots: UnsafeBufferPointer<Int32>, output: UnsafeMutablePointer<Float>
    ) {
        switch bits {
        case 1:
            score(OneBitCodes.self, query, groupSize, kvHeads, headDim, tokensPerBlock, scale, summaries, summaryByteCount, sketches, sketchByteCount, tokenCounts, slots, output)
        case 2:
            score(TwoBitCodes.self, query, groupSize, kvHeads, headDim, tokensPerBlock, scale, summaries, summaryByteCount, sketches, sketchByteCount, tokenCounts, slots, output)
        default:
            score(FourBitCodes.self, query, groupSize, kvHeads, headDim, tokensPerBlock, scale, summaries, summaryByteCount, sketches, sketchByteCount, tokenCounts, slots, output)
        }
    }

    /// The score, specialised per code width so that decoding a lane is a few vector instructions.
    @inline(__always)
    private static func score<C: SketchCodes>(
        _ codes: C.Type, _ query: UnsafePointer<Float>, _ groupSize: Int, _ kvHeads: Int, _ headDim: Int, _ tokensPerBlock: Int,
        _ scale: Float, _ summaries: UnsafeRawPointer, _ summaryByteCount: Int, _ sketches: UnsafeRawPointer, _ sketchByteCount: Int,
        _ tokenCounts: UnsafePointer<UInt32>, _ slots: UnsafeBufferPointer<Int32>, _ output: UnsafeMutablePointer<Float>
    ) {
        let bits = C.bits
        let lanes = headDim / 8
        let levels = Float((1 << bits) - 1)
        let chunks = (tokensPerBlock + 7) / 8
        // Per query head of the group: w = q ⊙ (max − min) / levels and base = q · min, so that
        // q · k̂ = base + w · code; then one logit per token.
        // Logit rows padded to whole vectors (the padding is set to -infinity before the sum).
        let logitStride = chunks * 8
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: groupSize * (headDim + 1 + logitStride))
        defer { scratch.deallocate() }
        let weights = scratch, bases = scratch + groupSize * headDim, logits = bases + groupSize
        let log2e: Float = 1.442_695_04
        for (block, slot) in slots.enumerated() {
            let summary = summaries + Int(slot) * summaryByteCount
            let sketch = sketches + Int(slot) * sketchByteCount
            let tokens = Int(tokenCounts[Int(slot)])
            for head in 0..<kvHeads {
                let low = summary + head * 3 * headDim * 2
                let high = low + headDim * 2
                for member in 0..<groupSize {
                    let q = UnsafeRawPointer(query + (head * groupSize + member) * headDim)
                    var base = SIMD8<Float>.zero
                    for lane in 0..<lanes {
                        let l = FP16Elements.load8(low, lane * 8), h = FP16Elements.load8(high, lane * 8)
                        let qv = q.loadUnaligned(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                        base = base.addingProduct(qv, l)
                        UnsafeMutableRawPointer(weights + member * headDim).storeBytes(
                            of: qv * (h - l) * (1 / levels), toByteOffset: lane * 32, as: SIMD8<Float>.self)
                    }
                    bases[member] = base.horizontalSum
                }
                // Logits of 8 tokens at a time: per dim, the 8 tokens' codes times the head's weight
                // (the codes in place, each lane's power of two taken out once at the end).
                let words = sketch + head * headDim * chunks * bits
                let vectors = (tokens + 7) / 8
                for chunk in 0..<vectors {
                    var member = 0
                    while member + 4 <= groupSize {
                        // Even and odd dims in separate accumulators: 8 FMA chains, not 4, so the
                        // loop is not held to one FMA latency per dim.
                        var a0 = SIMD8<Float>.zero, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0
                        let w = weights + member * headDim
                        var dim = 0
                        while dim < headDim {
                            let c = C.decode(words, dim * chunks + chunk), d = C.decode(words, (dim + 1) * chunks + chunk)
                            a0 = a0.addingProduct(SIMD8(repeating: w[dim]), c)
                            a1 = a1.addingProduct(SIMD8(repeating: w[headDim + dim]), c)
                            a2 = a2.addingProduct(SIMD8(repeating: w[2 * headDim + dim]), c)
                            a3 = a3.addingProduct(SIMD8(repeating: w[3 * headDim + dim]), c)
                            b0 = b0.addingProduct(SIMD8(repeating: w[dim + 1]), d)
                            b1 = b1.addingProduct(SIMD8(repeating: w[headDim + dim + 1]), d)
                            b2 = b2.addingProduct(SIMD8(repeating: w[2 * headDim + dim + 1]), d)
                            b3 = b3.addingProduct(SIMD8(repeating: w[3 * headDim + dim + 1]), d)
                            dim += 2
                        }
                        a0 += b0
                        a1 += b1
                        a2 += b2
                        a3 += b3
                        let out = UnsafeMutableRawPointer(logits + member * logitStride + chunk * 8)
                        let scale = C.laneScale
                        out.storeBytes(of: SIMD8(repeating: bases[member]).addingProduct(a0, scale), as: SIMD8<Float>.self)
                        (out + logitStride * 4).storeBytes(of: SIMD8(repeating: bases[member + 1]).addingProduct(a1, scale), as: SIMD8<Float>.self)
                        (out + 2 * logitStride * 4).storeBytes(of: SIMD8(repeating: bases[member + 2]).addingProduct(a2, scale), as: SIMD8<Float>.self)
                        (out + 3 * logitStride * 4).storeBytes(of: SIMD8(repeating: bases[member + 3]).addingProduct(a3, scale), as: SIMD8<Float>.self)
                        member += 4
                    }
                    while member < groupSize {
                        var a = SIMD8<Float>.zero
                        let w = weights + member * headDim
                        for dim in 0..<headDim { a = a.addingProduct(SIMD8(repeating: w[dim]), C.decode(words, dim * chunks + chunk)) }
                        UnsafeMutableRawPointer(logits + member * logitStride + chunk * 8).storeBytes(
                            of: SIMD8(repeating: bases[member]).addingProduct(a, C.laneScale), as: SIMD8<Float>.self)
                        member += 1
                    }
                }
                for member in 0..<groupSize {
                    var score = -Float.infinity
                    if tokens > 0 {
                        let row = UnsafeMutableRawPointer(logits + member * logitStride)
                        for token in tokens..<(vectors * 8) { logits[member * logitStride + token] = -.infinity }
                        var top = SIMD8<Float>(repeating: -.infinity)
                        for vector in 0..<vectors { top = top.lanewiseMax(row.loadUnaligned(fromByteOffset: vector * 32, as: SIMD8<Float>.self)) }
                        let maximum = top.max()
                        // Σ exp(scale·(x − max)) as 2^(scale·log2(e)·(x − max)), 8 tokens at a time.
                        let factor = SIMD8<Float>(repeating: scale * log2e), shift = SIMD8<Float>(repeating: maximum)
                        var sum = SIMD8<Float>.zero
                        for vector in 0..<vectors {
                            sum += DecodeAttentionKernel.fastExp2(factor * (row.loadUnaligned(fromByteOffset: vector * 32, as: SIMD8<Float>.self) - shift))
                        }
                        // The -infinity padding adds 2⁻¹²⁶ per lane (fastExp2's floor): nothing in an fp32 sum ≥ 1.
                        score = maximum + (log(sum.horizontalSum) - log(Float(tokens))) / scale
                    }
                    output[(block * kvHeads + head) * groupSize + member] = score
                }
            }
        }
    }
}

/// Decodes the codes of 8 consecutive tokens (one `8·bits`-bit word) to floats.
private protocol SketchCodes {
    static var bits: Int { get }
    /// The 8 codes of word `index` (counted in words of `8·bits` bits), lane j multiplied by
    /// 1 / `laneScale[j]` (the 1- and 2-bit words are not shifted down, only masked).
    static func decode(_ words: UnsafeRawPointer, _ index: Int) -> SIMD8<Float>
    /// What a sum of decoded lanes is multiplied by to be a sum of codes.
    static var laneScale: SIMD8<Float> { get }
}

extension SketchCodes {
    /// Lane j's mask, the code's bits in place: `(2^bits − 1) << j·bits`.
    @_transparent
    static var inPlaceMasks: SIMD8<UInt32> {
        (SIMD8<UInt32>(repeating: (1 << UInt32(bits)) - 1)) &<< (SIMD8<UInt32>(0, 1, 2, 3, 4, 5, 6, 7) &* UInt32(bits))
    }
    /// 2^(−j·bits) per lane.
    @_transparent
    static var inPlaceScale: SIMD8<Float> {
        let step = Float(1 << bits)
        return SIMD8<Float>(1, 1 / step, 1 / (step * step), 1 / (step * step * step), 1 / pow(step, 4), 1 / pow(step, 5), 1 / pow(step, 6), 1 / pow(step, 7))
    }
}

private enum OneBitCodes: SketchCodes {
    static var bits: Int { 1 }
    static let masks = inPlaceMasks
    static let laneScale = inPlaceScale
    @_transparent static func decode(_ words: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        ctierkv_sketch_lanes8(UInt32(words.load(fromByteOffset: index, as: UInt8.self)), masks)
    }
}

private enum TwoBitCodes: SketchCodes {
    static var bits: Int { 2 }
    static let masks = inPlaceMasks
    static let laneScale = inPlaceScale
    @_transparent static func decode(_ words: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        ctierkv_sketch_lanes8(UInt32(UInt16(littleEndian: words.loadUnaligned(fromByteOffset: index * 2, as: UInt16.self))), masks)
    }
}

/// 4-bit codes: each half-word's 4 codes in place (the top lanes would otherwise reach bit 31).
private enum FourBitCodes: SketchCodes {
    static var bits: Int { 4 }
    static let masks = SIMD8<UInt32>(0xF, 0xF0, 0xF00, 0xF000, 0xF, 0xF0, 0xF00, 0xF000)
    static let laneScale = SIMD8<Float>(1, 1.0 / 16, 1.0 / 256, 1.0 / 4096, 1, 1.0 / 16, 1.0 / 256, 1.0 / 4096)
    @_transparent static func decode(_ words: UnsafeRawPointer, _ index: Int) -> SIMD8<Float> {
        ctierkv_sketch_nibbles8(UInt32(littleEndian: words.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self)), masks)
    }
}
