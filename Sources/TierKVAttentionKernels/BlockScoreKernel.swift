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
        score(BoundTerm.self, query, groupSize, kvHeads, headDim, summaries, summaryByteCount, slots, output, nil)
    }

    /// Per block and KV head, the query's score against the block's mean key,
    /// `max_g Σ_i q_gi·mean_i`: the logit an average token of the block gets.
    public static func mean(
        query: UnsafePointer<Float>, groupSize: Int, kvHeads: Int, headDim: Int,
        summaries: UnsafeRawPointer, summaryByteCount: Int, slots: UnsafeBufferPointer<Int32>,
        output: UnsafeMutablePointer<Float>
    ) {
        score(MeanTerm.self, query, groupSize, kvHeads, headDim, summaries, summaryByteCount, slots, output, nil)
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
        // w = ½·scale·q²/3² per query element, once per call rather than once per block.
        let count = kvHeads * groupSize * headDim
        let factor = 0.5 * scale / (rangeToSpread * rangeToSpread)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: count) { weights in
            for index in 0..<count { weights[index] = factor * query[index] * query[index] }
            score(MomentTerm.self, query, groupSize, kvHeads, headDim, summaries, summaryByteCount, slots, output, UnsafePointer(weights.baseAddress!))
        }
    }

    /// The divisor that turns a block's per-dimension key range into the spread `moment` uses.
    public static let rangeToSpread: Float = 3

    /// What one 8-lane step of a query head adds to a block's score. Types, not closures: the
    /// moment term as a closure was called, not inlined, once per step (11× slower, measured
    /// with PredictionBenchmarks).
    private protocol Term {
        /// Whether `add` reads `extra` (a per-query vector the caller prepared).
        static var usesExtra: Bool { get }
        /// Work shared by the group's query heads at one step (the moment's squared range).
        static func shared(_ low: SIMD8<Float>, _ high: SIMD8<Float>) -> SIMD8<Float>
        static func add(
            _ sum: SIMD8<Float>, _ q: SIMD8<Float>, _ extra: SIMD8<Float>, _ low: SIMD8<Float>, _ high: SIMD8<Float>,
            _ mean: SIMD8<Float>, _ shared: SIMD8<Float>) -> SIMD8<Float>
    }

    /// Σ max(q·max, q·min) as q·(max where q ≥ 0, else min): one select and one FMA.
    private enum BoundTerm: Term {
        static var usesExtra: Bool { false }
        @_transparent static func shared(_ low: SIMD8<Float>, _ high: SIMD8<Float>) -> SIMD8<Float> { .zero }
        @_transparent
        static func add(
            _ sum: SIMD8<Float>, _ q: SIMD8<Float>, _ extra: SIMD8<Float>, _ low: SIMD8<Float>, _ high: SIMD8<Float>,
            _ mean: SIMD8<Float>, _ shared: SIMD8<Float>
        ) -> SIMD8<Float> {
            sum.addingProduct(q, high.replacing(with: low, where: q .< 0))
        }
    }

    private enum MeanTerm: Term {
        static var usesExtra: Bool { false }
        @_transparent static func shared(_ low: SIMD8<Float>, _ high: SIMD8<Float>) -> SIMD8<Float> { .zero }
        @_transparent
        static func add(
            _ sum: SIMD8<Float>, _ q: SIMD8<Float>, _ extra: SIMD8<Float>, _ low: SIMD8<Float>, _ high: SIMD8<Float>,
            _ mean: SIMD8<Float>, _ shared: SIMD8<Float>
        ) -> SIMD8<Float> {
            sum.addingProduct(q, mean)
        }
    }

    /// q·mean + w·range², with w = ½·scale·q²/3² prepared per query (`extra`).
    private enum MomentTerm: Term {
        static var usesExtra: Bool { true }
        @_transparent static func shared(_ low: SIMD8<Float>, _ high: SIMD8<Float>) -> SIMD8<Float> {
            let range = high - low
            return range * range
        }
        @_transparent
        static func add(
            _ sum: SIMD8<Float>, _ q: SIMD8<Float>, _ extra: SIMD8<Float>, _ low: SIMD8<Float>, _ high: SIMD8<Float>,
            _ mean: SIMD8<Float>, _ shared: SIMD8<Float>
        ) -> SIMD8<Float> {
            sum.addingProduct(q, mean).addingProduct(extra, shared)
        }
    }

    /// Every block's score per KV head, the group's query heads 4 at a time so each summary
    /// vector is converted once per 4 query heads (one at a time it was converted per head).
    @inline(__always)
    private static func score<T: Term>(
        _ term: T.Type, _ query: UnsafePointer<Float>, _ groupSize: Int, _ kvHeads: Int, _ headDim: Int,
        _ summaries: UnsafeRawPointer, _ summaryByteCount: Int, _ slots: UnsafeBufferPointer<Int32>,
        _ output: UnsafeMutablePointer<Float>, _ extra: UnsafePointer<Float>?
    ) {
        let lanes = headDim / 8
        let queryBase = UnsafeRawPointer(query)
        let extraBase = extra.map(UnsafeRawPointer.init)
        let headBytes = headDim * 4
        @inline(__always) func vector(_ base: UnsafeRawPointer?, _ member: Int, _ lane: Int) -> SIMD8<Float> {
            guard let base else { return .zero }
            return base.loadUnaligned(fromByteOffset: member * headBytes + lane * 32, as: SIMD8<Float>.self)
        }
        for (block, slot) in slots.enumerated() {
            let summary = summaries + Int(slot) * summaryByteCount
            for head in 0..<kvHeads {
                let low = summary + head * 3 * headDim * 2
                let high = low + headDim * 2
                let mean = high + headDim * 2
                var best = -Float.infinity
                var first = head * groupSize
                let end = first + groupSize
                while first + 4 <= end {
                    var a0 = SIMD8<Float>.zero, a1 = a0, a2 = a0, a3 = a0
                    for lane in 0..<lanes {
                        let l = FP16Elements.load8(low, lane * 8), h = FP16Elements.load8(high, lane * 8)
                        let m = FP16Elements.load8(mean, lane * 8)
                        let shared = T.shared(l, h)
                        let e = T.usesExtra ? extraBase : nil
                        a0 = T.add(a0, vector(queryBase, first, lane), vector(e, first, lane), l, h, m, shared)
                        a1 = T.add(a1, vector(queryBase, first + 1, lane), vector(e, first + 1, lane), l, h, m, shared)
                        a2 = T.add(a2, vector(queryBase, first + 2, lane), vector(e, first + 2, lane), l, h, m, shared)
                        a3 = T.add(a3, vector(queryBase, first + 3, lane), vector(e, first + 3, lane), l, h, m, shared)
                    }
                    best = Swift.max(best, a0.horizontalSum, a1.horizontalSum, a2.horizontalSum, a3.horizontalSum)
                    first += 4
                }
                while first < end {
                    var a = SIMD8<Float>.zero
                    for lane in 0..<lanes {
                        let l = FP16Elements.load8(low, lane * 8), h = FP16Elements.load8(high, lane * 8)
                        let e = T.usesExtra ? extraBase : nil
                        a = T.add(a, vector(queryBase, first, lane), vector(e, first, lane), l, h, FP16Elements.load8(mean, lane * 8), T.shared(l, h))
                    }
                    best = Swift.max(best, a.horizontalSum)
                    first += 1
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
