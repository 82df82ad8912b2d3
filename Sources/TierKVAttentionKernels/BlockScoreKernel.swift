/// Scores blocks for the prefetch predictors from their fp16 key summaries.
///
/// A summary is `kvHeads × 3 × headDim` fp16 values in the order `[head][min, max, mean][dim]`
/// (what `KeySummaryKernel` writes, narrowed to fp16). The query is fp32 `[queryHeads][headDim]`,
/// the `groupSize` query heads of KV head `h` being `h·groupSize ..< (h+1)·groupSize` (the GQA
/// order of Llama-style models). `headDim` is a multiple of 8.
public enum BlockScoreKernel {
    /// Per block and KV head, Quest's upper bound of the block's raw logits
    /// `max_g Σ_i max(q_gi·max_i, q_gi·min_i)` (over the group's query heads g), written to
    /// `output[block · kvHeads + head]`. Unscaled (multiply by 1/√d for logits).
    public static func bound(
        query: UnsafePointer<Float>, groupSize: Int, kvHeads: Int, headDim: Int,
        summaries: UnsafeRawPointer, summaryByteCount: Int, slots: UnsafeBufferPointer<Int32>,
        output: UnsafeMutablePointer<Float>
    ) {
        score(query, groupSize, kvHeads, headDim, summaries, summaryByteCount, slots, output) { q, low, high, _ in
            (q * high).lanewiseMax(q * low)
        }
    }

    /// Per block and KV head, the query's score against the block's mean key,
    /// `max_g Σ_i q_gi·mean_i`: the logit an average token of the block gets.
    public static func mean(
        query: UnsafePointer<Float>, groupSize: Int, kvHeads: Int, headDim: Int,
        summaries: UnsafeRawPointer, summaryByteCount: Int, slots: UnsafeBufferPointer<Int32>,
        output: UnsafeMutablePointer<Float>
    ) {
        score(query, groupSize, kvHeads, headDim, summaries, summaryByteCount, slots, output) { q, _, _, mean in q * mean }
    }

    /// Per block and KV head, a Gaussian estimate of the block's log-mass in raw logit units,
    /// `max_g [Σ_i q_gi·mean_i + ½·scale·Σ_i q_gi²·σ_i²]` with σ_i = (max_i − min_i) / 3: if a
    /// block's keys vary independently per dimension around their mean with spread σ, then
    /// `ln E[exp(scale·q·k)] = scale·q·mean + ½·scale²·Σ q_i²σ_i²`. The range of 16 normal samples
    /// is about 3.5σ; 3 was the best divisor on a trace recorded from a trained model (2.5–3.5
    /// all within 0.01 recall). `scale` is the softmax scale the logits will be multiplied by.
    public static func moment(
        query: UnsafePointer<Float>, groupSize: Int, kvHeads: Int, headDim: Int, scale: Float,
        summaries: UnsafeRawPointer, summaryByteCount: Int, slots: UnsafeBufferPointer<Int32>,
        output: UnsafeMutablePointer<Float>
    ) {
        let spread = SIMD8<Float>(repeating: 0.5 * scale / (rangeToSpread * rangeToSpread))
        score(query, groupSize, kvHeads, headDim, summaries, summaryByteCount, slots, output) { q, low, high, mean in
            let range = high - low
            return (q * mean).addingProduct(spread * q * q, range * range)
        }
    }

    /// The divisor that turns a block's per-dimension key range into the spread `moment` uses.
    public static let rangeToSpread: Float = 3

    @inline(__always)
    private static func score(
        _ query: UnsafePointer<Float>, _ groupSize: Int, _ kvHeads: Int, _ headDim: Int,
        _ summaries: UnsafeRawPointer, _ summaryByteCount: Int, _ slots: UnsafeBufferPointer<Int32>,
        _ output: UnsafeMutablePointer<Float>,
        _ term: (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) -> SIMD8<Float>
    ) {
        let lanes = headDim / 8
        let queryBase = UnsafeRawPointer(query)
        for (block, slot) in slots.enumerated() {
            let summary = summaries + Int(slot) * summaryByteCount
            for head in 0..<kvHeads {
                let low = summary + head * 3 * headDim * 2
                let high = low + headDim * 2
                let mean = high + headDim * 2
                var best = -Float.infinity
                for member in 0..<groupSize {
                    let q = queryBase + ((head * groupSize + member) * headDim) * 4
                    var accumulator = SIMD8<Float>(repeating: 0)
                    for lane in 0..<lanes {
                        let x = q.loadUnaligned(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                        accumulator += term(x, FP16Elements.load8(low, lane * 8), FP16Elements.load8(high, lane * 8), FP16Elements.load8(mean, lane * 8))
                    }
                    best = Swift.max(best, accumulator.horizontalSum)
                }
                output[block * kvHeads + head] = best
            }
        }
    }

    /// Narrows an fp32 summary (`[head][min, max, mean][dim]`) to fp16, rounding minima down and
    /// maxima up so the bound computed from the fp16 copy is still an upper bound.
    public static func narrow(_ summary: UnsafePointer<Float>, kvHeads: Int, headDim: Int, into output: UnsafeMutableRawPointer) {
        let target = output.assumingMemoryBound(to: Float16.self)
        for head in 0..<kvHeads {
            let base = head * 3 * headDim
            for dim in 0..<headDim {
                let low = summary[base + dim], high = summary[base + headDim + dim]
                var narrowLow = Float16(low), narrowHigh = Float16(high)
                if Float(narrowLow) > low { narrowLow = narrowLow.nextDown }
                if Float(narrowHigh) < high { narrowHigh = narrowHigh.nextUp }
                target[base + dim] = narrowLow
                target[base + headDim + dim] = narrowHigh
                target[base + 2 * headDim + dim] = Float16(summary[base + 2 * headDim + dim])
            }
        }
    }
}
