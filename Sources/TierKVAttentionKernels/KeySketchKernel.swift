#if canImport(Glibc)
import Glibc
#endif
import TierKVCore

/// Key sketches for the prefetch predictors: every key element of a block quantised to `bits`
/// bits (1, 2 or 4) between the block's per-channel minimum and maximum, the fp16 values of its
/// key summary (KIVI-style per-channel key quantisation, whose scales the summary already holds).
/// A sketch lets a block be scored token by token, `ln Σ_t exp(scale·q·k̂_t)`, instead of from
/// one bound or one mean per channel.
///
/// Codes are `[head][token][dim]`, `bits` per element packed from the low bits of each byte up;
/// a block of `tokensPerBlock` rows takes `kvHeads × tokensPerBlock × headDim × bits / 8` bytes.
/// The summary is `[head][min, max, mean][dim]` fp16 (`BlockScoreKernel`'s input).
public enum KeySketchKernel {
    /// Writes the codes of `tokenCount` key rows (`[token][kvHead][headDim]` of `dtype`, the K half
    /// of a TierKV block) into `output`, which holds `tokensPerBlock` rows per head; rows at and
    /// after `tokenCount` are zeroed.
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

    @inline(__always)
    private static func encode<L: KVElementLoader>(
        _ loader: L.Type, _ keys: UnsafeRawPointer, _ tokenCount: Int, _ tokensPerBlock: Int, _ kvHeads: Int, _ headDim: Int,
        _ bits: Int, _ summary: UnsafeRawPointer, _ output: UnsafeMutableRawPointer
    ) {
        let levels = Float((1 << bits) - 1)
        let shifts = laneShifts(bits)
        let rowBytes = headDim * bits / 8
        output.initializeMemory(as: UInt8.self, repeating: 0, count: kvHeads * tokensPerBlock * rowBytes)
        for head in 0..<kvHeads {
            let low = summary + head * 3 * headDim * 2
            let high = low + headDim * 2
            for lane in 0..<(headDim / 8) {
                let l = FP16Elements.load8(low, lane * 8), h = FP16Elements.load8(high, lane * 8)
                let range = h - l
                // A channel whose keys are all equal codes 0 (its one value is the minimum).
                let toLevels = (levels / range).replacing(with: 0, where: range .<= 0)
                for token in 0..<tokenCount {
                    let k = L.load8(keys, (token * kvHeads + head) * headDim + lane * 8)
                    let level = ((k - l) * toLevels).clamped(lowerBound: .zero, upperBound: SIMD8(repeating: levels))
                    // Adding 2²³ rounds to the nearest integer (ties to even) and leaves it in the
                    // low mantissa bits (the generic SIMD float-to-int conversion is scalar code).
                    let code = unsafeBitCast(level + SIMD8(repeating: 8_388_608), to: SIMD8<UInt32>.self) & SIMD8(repeating: 0xFF)
                    let packed = (code &<< shifts).wrappedSum()
                    let target = output + (head * tokensPerBlock + token) * rowBytes + lane * bits
                    switch bits {
                    case 1: target.storeBytes(of: UInt8(truncatingIfNeeded: packed), as: UInt8.self)
                    case 2: target.storeBytes(of: UInt16(truncatingIfNeeded: packed).littleEndian, as: UInt16.self)
                    default: target.storeBytes(of: packed.littleEndian, as: UInt32.self)
                    }
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
    /// trained model's trace gave 0.89 top-k recall at 2 bits; combined by max, 0.67.
    /// - Parameters:
    ///   - tokenCounts: per slot, the rows the sketch holds (a partly filled block has fewer).
    public static func score(
        query: UnsafePointer<Float>, groupSize: Int, kvHeads: Int, headDim: Int, bits: Int, tokensPerBlock: Int, scale: Float,
        summaries: UnsafeRawPointer, summaryByteCount: Int, sketches: UnsafeRawPointer, sketchByteCount: Int,
        tokenCounts: UnsafePointer<UInt16>, slots: UnsafeBufferPointer<Int32>, output: UnsafeMutablePointer<Float>
    ) {
        let lanes = headDim / 8
        let levels = Float((1 << bits) - 1)
        let shifts = laneShifts(bits)
        let mask = SIMD8<UInt32>(repeating: (1 << UInt32(bits)) - 1)
        let rowBytes = headDim * bits / 8
        // Per query head of the group: w = q ⊙ (max − min) / levels and base = q · min, so that
        // q · k̂ = base + w · code; then one logit per token.
        // Logit rows padded to whole vectors; the padding stays -infinity.
        let logitStride = (tokensPerBlock + 7) / 8 * 8
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: groupSize * (headDim + 1 + logitStride))
        defer { scratch.deallocate() }
        let weights = scratch, bases = scratch + groupSize * headDim, logits = bases + groupSize
        let log2e: Float = 1.442_695_04
        @inline(__always) func codes(_ row: UnsafeRawPointer, _ lane: Int) -> SIMD8<Float> {
            let at = row + lane * bits
            let chunk: UInt32
            switch bits {
            case 1: chunk = UInt32(at.load(as: UInt8.self))
            case 2: chunk = UInt32(UInt16(littleEndian: at.loadUnaligned(as: UInt16.self)))
            default: chunk = UInt32(littleEndian: at.loadUnaligned(as: UInt32.self))
            }
            let values = (SIMD8<UInt32>(repeating: chunk) &>> shifts) & mask
            return SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: values))
        }
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
                            of: qv * (h - l) / levels, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                    }
                    bases[member] = base.horizontalSum
                }
                let rows = sketch + head * tokensPerBlock * rowBytes
                for token in 0..<tokens {
                    let row = rows + token * rowBytes
                    var member = 0
                    while member + 4 <= groupSize {
                        var a0 = SIMD8<Float>.zero, a1 = a0, a2 = a0, a3 = a0
                        let w = UnsafeRawPointer(weights + member * headDim)
                        let stride = headDim * 4
                        for lane in 0..<lanes {
                            let c = codes(row, lane)
                            a0 = a0.addingProduct(w.loadUnaligned(fromByteOffset: lane * 32, as: SIMD8<Float>.self), c)
                            a1 = a1.addingProduct(w.loadUnaligned(fromByteOffset: stride + lane * 32, as: SIMD8<Float>.self), c)
                            a2 = a2.addingProduct(w.loadUnaligned(fromByteOffset: 2 * stride + lane * 32, as: SIMD8<Float>.self), c)
                            a3 = a3.addingProduct(w.loadUnaligned(fromByteOffset: 3 * stride + lane * 32, as: SIMD8<Float>.self), c)
                        }
                        logits[member * logitStride + token] = bases[member] + a0.horizontalSum
                        logits[(member + 1) * logitStride + token] = bases[member + 1] + a1.horizontalSum
                        logits[(member + 2) * logitStride + token] = bases[member + 2] + a2.horizontalSum
                        logits[(member + 3) * logitStride + token] = bases[member + 3] + a3.horizontalSum
                        member += 4
                    }
                    while member < groupSize {
                        var a = SIMD8<Float>.zero
                        let w = UnsafeRawPointer(weights + member * headDim)
                        for lane in 0..<lanes {
                            a = a.addingProduct(w.loadUnaligned(fromByteOffset: lane * 32, as: SIMD8<Float>.self), codes(row, lane))
                        }
                        logits[member * logitStride + token] = bases[member] + a.horizontalSum
                        member += 1
                    }
                }
                let vectors = (tokens + 7) / 8
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

    /// Lane i's shift, i·bits: the codes of 8 consecutive elements are one `8·bits`-bit word.
    @inline(__always)
    private static func laneShifts(_ bits: Int) -> SIMD8<UInt32> {
        SIMD8<UInt32>(0, 1, 2, 3, 4, 5, 6, 7) &* UInt32(bits)
    }
}
