import Foundation
import Testing
import TierKVCore
import TierKVTestSupport
@testable import TierKVPrediction

private func key(_ index: Int, layer: UInt32 = 0) -> BlockKey {
    BlockKey(prefixHash: PrefixHash(high: 0, low: UInt64(index + 1)), layer: layer)
}

/// fp32 summary `[head][min, max, mean][dim]` of token-major keys `[token][head][dim]`, computed
/// the plain way.
private func directSummary(_ keys: [[Float]], kvHeads: Int, headDim: Int) -> [Float] {
    var summary = [Float](repeating: 0, count: kvHeads * 3 * headDim)
    for head in 0..<kvHeads {
        for dim in 0..<headDim {
            let column = keys.map { $0[head * headDim + dim] }
            summary[head * 3 * headDim + dim] = column.min()!
            summary[head * 3 * headDim + headDim + dim] = column.max()!
            summary[head * 3 * headDim + 2 * headDim + dim] = column.reduce(0, +) / Float(column.count)
        }
    }
    return summary
}

/// A predictor that always returns the same mass (nil: nothing to go on).
private final class FixedPredictor: BlockPredictor, @unchecked Sendable {
    // @unchecked: `mass` is set once, before any use.
    let mass: [Float]?
    var name: String { "fixed" }
    init(_ mass: [Float]?) { self.mass = mass }
    func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? { mass }
}

@Suite struct BlockSummaryTableTests {
    @Test func questBoundMatchesAHandComputedCase() throws {
        // One KV head of dim 8, two query heads in its group. Keys of the block's 2 tokens:
        let keys: [[Float]] = [[1, -2, 0, 3, 0.5, -1, 2, 0], [-1, 1, 4, -3, 0.5, 1, 2, 1]]
        // min = [-1,-2,0,-3,0.5,-1,2,0], max = [1,1,4,3,0.5,1,2,1]
        let q1: [Float] = [1, -1, 0.5, 0, 2, 0, -1, 1]
        // Σ max(q·max, q·min): 1 + 2 + 2 + 0 + 1 + 0 + (-2) + 1 = 5
        let q2: [Float] = [0, 0, 0, 1, 0, 0, 0, 0]
        // 3 (max of 3 and -3)
        let table = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: 1, headDim: 8, groupSize: 2))
        let summary = directSummary(keys, kvHeads: 1, headDim: 8)
        try summary.withUnsafeBufferPointer { try table.insert(key(0), summary: $0) }
        #expect(try table.scores(.bound, query: q1 + q2, keys: [key(0)]) == [5])
        #expect(try table.scores(.bound, query: q2 + q2, keys: [key(0)]) == [3])
        // Mean key [0,-0.5,2,0,0.5,0,2,0.5]: q1 scores 0+0.5+1+0+1+0-2+0.5 = 1, q2 scores 0.
        #expect(try table.scores(.mean, query: q1 + q2, keys: [key(0)]) == [1])
        // A block without a summary scores -infinity; order follows the keys asked for.
        #expect(try table.scores(.bound, query: q1 + q2, keys: [key(7), key(0)]) == [-.infinity, 5])
    }

    @Test(arguments: [DType.fp16, .fp32])
    func boundIsAtLeastEveryLogitInTheBlock(dtype: DType) throws {
        var generator = SeededGenerator(seed: 7)
        let kvHeads = 2, headDim = 64, groupSize = 4, tokens = 16
        let table = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: kvHeads, headDim: headDim, groupSize: groupSize))
        var blocks: [[[Float]]] = []
        for block in 0..<8 {
            let keys = (0..<tokens).map { _ in (0..<(kvHeads * headDim)).map { _ in Float.random(in: -3...3, using: &generator) } }
            blocks.append(keys)
            let flat = keys.flatMap { $0 }
            switch dtype {
            case .fp16:
                let half = flat.map { Float16($0) }
                try half.withUnsafeBytes { try table.insert(key(block), keys: $0.baseAddress!, dtype: .fp16, tokenCount: tokens) }
                blocks[block] = keys.map { $0.map { Float(Float16($0)) } }
            default:
                try flat.withUnsafeBytes { try table.insert(key(block), keys: $0.baseAddress!, dtype: .fp32, tokenCount: tokens) }
            }
        }
        let query = (0..<(kvHeads * groupSize * headDim)).map { _ in Float.random(in: -1...1, using: &generator) }
        let bounds = try table.scores(.bound, query: query, keys: (0..<8).map { key($0) })
        for (block, keys) in blocks.enumerated() {
            for head in 0..<kvHeads {
                var largest = -Float.infinity
                for member in 0..<groupSize {
                    let q = query[((head * groupSize + member) * headDim)..<((head * groupSize + member + 1) * headDim)]
                    for row in keys {
                        let k = row[(head * headDim)..<((head + 1) * headDim)]
                        largest = max(largest, zip(q, k).reduce(0) { $0 + $1.0 * $1.1 })
                    }
                }
                #expect(bounds[block * kvHeads + head] >= largest - 1e-4, "block \(block) head \(head)")
            }
        }
    }

    @Test func summariesRoundTripAndSlotsAreReused() throws {
        let shape = try KeySummaryShape(kvHeads: 1, headDim: 8)
        let table = try BlockSummaryTable(shape: shape)
        let values: [Float] = (0..<24).map { Float($0) / 4 }
        try values.withUnsafeBufferPointer { try table.insert(key(1), summary: $0) }
        #expect(table.summary(of: key(1)) == values)
        let bytes = table.byteCount
        #expect(bytes == shape.byteCount)
        table.remove(key(1))
        #expect(!table.contains(key(1)))
        try values.withUnsafeBufferPointer { try table.insert(key(2), summary: $0) }
        #expect(table.byteCount == bytes)
        #expect(table.count == 1)
        // fp16 narrowing rounds a minimum down and a maximum up.
        var odd = values
        odd[0] = 0.1; odd[8] = 0.1
        try odd.withUnsafeBufferPointer { try table.insert(key(3), summary: $0) }
        let stored = try #require(table.summary(of: key(3)))
        #expect(stored[0] <= 0.1 && stored[8] >= 0.1 && stored[0] < stored[8])
        #expect(throws: TierKVError.self) { try [Float](repeating: 0, count: 23).withUnsafeBufferPointer { try table.insert(key(4), summary: $0) } }
        #expect(throws: TierKVError.self) { _ = try table.scores(.bound, query: [1, 2], keys: [key(2)]) }
        #expect(throws: TierKVError.self) { _ = try KeySummaryShape(kvHeads: 1, headDim: 12) }
    }
}

@Suite struct PredictorTests {
    @Test func predictedMassIsASoftmaxPerHeadAveragedOverHeads() {
        // Two blocks, two heads; scores [block][head] with scale 1 and full blocks (ln n cancels).
        let mass = PredictedMass.fromScores([0, log(3), 0, 0], heads: 2, scale: 1, tokenCounts: nil, tokensPerBlock: 16)
        // Block 0 scores (0, ln 3), block 1 (0, 0). Head 0: softmax(0, 0) = (0.5, 0.5); head 1:
        // softmax(ln 3, 0) = (0.75, 0.25); mean (0.625, 0.375).
        #expect(abs(mass[0] - 0.625) < 1e-6 && abs(mass[1] - 0.375) < 1e-6)
        let skewed = PredictedMass.fromScores([log(3), log(3), 0, 0], heads: 2, scale: 1, tokenCounts: nil, tokensPerBlock: 16)
        #expect(abs(skewed[0] - 0.75) < 1e-6)
        // A half-full block holds half the mass of a full one at equal scores.
        let partial = PredictedMass.fromScores([0, 0], heads: 1, scale: 1, tokenCounts: [16, 8], tokensPerBlock: 16)
        #expect(abs(partial[0] - 2.0 / 3) < 1e-6)
    }

    @Test func boundPredictorRanksTheBlockHoldingTheMatchingKeyFirst() throws {
        let headDim = 8
        let table = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: 1, headDim: headDim))
        for block in 0..<4 {
            var keys = [[Float]](repeating: [Float](repeating: 0, count: headDim), count: 4)
            keys[1][block] = 4  // block b has a token pointing along dimension b
            try directSummary(keys, kvHeads: 1, headDim: headDim).withUnsafeBufferPointer { try table.insert(key(block), summary: $0) }
        }
        let predictor = QuestBoundPredictor(summaries: table, tokensPerBlock: 4)
        let candidates = PredictionCandidates(layer: 0, keys: (0..<4).map { key($0) }, positions: Array(0..<4), newestPosition: 3)
        var query = [Float](repeating: 0, count: headDim)
        query[2] = 2
        let mass = try #require(try predictor.predictMass(candidates, hint: QueryHint(query)))
        #expect(PredictionQuality.topK(mass, k: 1) == [2])
        // Bound of block 2 is 8, the others 0: softmax over 8/√8 and 0s.
        let e = exp(Float(8) / Float(headDim).squareRoot())
        #expect(abs(mass[2] - e / (e + 3)) < 1e-5)
        #expect(try predictor.predictMass(candidates, hint: nil) == nil)

        let speculative = SpeculativePredictor(summaries: table, tokensPerBlock: 4)
        #expect(try speculative.predictMass(candidates, hint: nil) == nil)
        speculative.offer(QueryHint(query), forLayer: 0)
        #expect(try speculative.predictMass(candidates, hint: nil) == mass)
    }

    @Test func meanScoringRanksByTheAverageKeyAndBlendingAveragesTheMasses() throws {
        let headDim = 8
        let table = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: 1, headDim: headDim))
        // Block 0: one token points hard along dimension 0 (a high bound, a low mean); block 1:
        // every token points mildly along it (a lower bound, a higher mean).
        var spiky = [[Float]](repeating: [Float](repeating: 0, count: headDim), count: 4)
        spiky[0][0] = 4
        let steady = [[Float]](repeating: [2] + [Float](repeating: 0, count: headDim - 1), count: 4)
        try directSummary(spiky, kvHeads: 1, headDim: headDim).withUnsafeBufferPointer { try table.insert(key(0), summary: $0) }
        try directSummary(steady, kvHeads: 1, headDim: headDim).withUnsafeBufferPointer { try table.insert(key(1), summary: $0) }
        let candidates = PredictionCandidates(layer: 0, keys: [key(0), key(1)], positions: [0, 1], newestPosition: 1)
        var query = [Float](repeating: 0, count: headDim)
        query[0] = 1
        let hint = QueryHint(query)
        let bound = try #require(try QuestBoundPredictor(summaries: table, tokensPerBlock: 4, scoring: .bound).predictMass(candidates, hint: hint))
        let mean = try #require(try QuestBoundPredictor(summaries: table, tokensPerBlock: 4, scoring: .mean).predictMass(candidates, hint: hint))
        let both = try #require(try QuestBoundPredictor(summaries: table, tokensPerBlock: 4, scoring: .boundAndMean).predictMass(candidates, hint: hint))
        #expect(bound[0] > bound[1], "the bound favours the spike (4 vs 2)")
        #expect(mean[1] > mean[0], "the mean favours the steady block (2 vs 1)")
        // Scores 1 and 2 scaled by 1/√8: softmax (e^a, e^b) / sum.
        let a = exp(Float(1) / Float(headDim).squareRoot()), b = exp(Float(2) / Float(headDim).squareRoot())
        #expect(abs(mean[1] - b / (a + b)) < 1e-5)
        for index in 0..<2 { #expect(abs(both[index] - (bound[index] + mean[index]) / 2) < 1e-6) }
    }

    @Test func momentScoringAddsASpreadTermFromTheKeyRangeToTheMeanScore() throws {
        // The hand-made keys of questBoundMatchesAHandComputedCase: min [-1,-2,0,-3,0.5,-1,2,0],
        // max [1,1,4,3,0.5,1,2,1], mean [0,-0.5,2,0,0.5,0,2,0.5]; range [2,3,4,6,0,2,0,1].
        let keys: [[Float]] = [[1, -2, 0, 3, 0.5, -1, 2, 0], [-1, 1, 4, -3, 0.5, 1, 2, 1]]
        let q1: [Float] = [1, -1, 0.5, 0, 2, 0, -1, 1]
        let q2: [Float] = [0, 0, 0, 1, 0, 0, 0, 0]
        let table = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: 1, headDim: 8, groupSize: 2))
        try directSummary(keys, kvHeads: 1, headDim: 8).withUnsafeBufferPointer { try table.insert(key(0), summary: $0) }
        // q1: q·mean = 1; Σ q²·range² = 1·4 + 1·9 + 0.25·16 + 0 + 4·0 + 0 + 1·0 + 1·1 = 18.
        // q2: q·mean = 0; Σ q²·range² = 36. With scale 0.5 and σ = range / 3 the spread term is
        // ½ · 0.5 · Σ q²·range² / 9: q1 1 + 0.5, q2 0 + 1; the group takes the larger, 1.5.
        let scores = try table.scores(.moment(scale: 0.5), query: q1 + q2, keys: [key(0)])
        #expect(scores.count == 1)
        #expect(abs(scores[0] - 1.5) < 1e-5, "\(scores)")
        // With q1 alone in the group (q1 twice): 1.5 as well; with q2 twice: 1.
        #expect(try abs(table.scores(.moment(scale: 0.5), query: q1 + q1, keys: [key(0)])[0] - 1.5) < 1e-5)
        #expect(try abs(table.scores(.moment(scale: 0.5), query: q2 + q2, keys: [key(0)])[0] - 1) < 1e-5)

        // The blended scoring averages the bound's and the moment's predicted masses.
        let candidates = PredictionCandidates(layer: 0, keys: [key(0), key(1)], positions: [0, 1], newestPosition: 1)
        try directSummary([[0, 0, 0, 2, 0, 0, 0, 0]], kvHeads: 1, headDim: 8).withUnsafeBufferPointer { try table.insert(key(1), summary: $0) }
        let hint = QueryHint(q1 + q2)
        let bound = try #require(try QuestBoundPredictor(summaries: table, tokensPerBlock: 2, scoring: .bound).predictMass(candidates, hint: hint))
        let moment = try #require(try QuestBoundPredictor(summaries: table, tokensPerBlock: 2, scoring: .moment).predictMass(candidates, hint: hint))
        let both = try #require(try QuestBoundPredictor(summaries: table, tokensPerBlock: 2, scoring: .boundAndMoment).predictMass(candidates, hint: hint))
        for index in 0..<2 { #expect(abs(both[index] - (bound[index] + moment[index]) / 2) < 1e-6) }
        // At the predictor's scale 1/√8 the spread terms are 18·c and 36·c with c = ½·(1/√8)/9:
        // block 0 scores max(1 + 18c, 36c); block 1 (one key, 2 along dimension 3: no spread)
        // max(0, 2) = 2. Both count as full blocks (no token counts given), so the masses are the
        // softmax of the scaled scores.
        let scale = 1 / Float(8).squareRoot(), c = 0.5 * scale / 9
        let s0 = max(1 + 18 * c, 36 * c), s1: Float = 2
        let expected0 = exp(scale * s0), expected1 = exp(scale * s1)
        #expect(abs(moment[0] - expected0 / (expected0 + expected1)) < 1e-5, "\(moment)")
    }

    @Test func aBlockOfTheLargestTokenCountIsSummarised() throws {
        // 65,536 tokens (the layout limit) of one KV head of dim 8: the table keeps each slot's
        // token count, which must hold that many.
        let table = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: 1, headDim: 8))
        var keys = [Float16](repeating: 0, count: 65536 * 8)
        keys[65535 * 8 + 2] = 5
        try keys.withUnsafeBytes { try table.insert(key(0), keys: $0.baseAddress!, dtype: .fp16, tokenCount: 65536) }
        let summary = try #require(table.summary(of: key(0)))
        #expect(summary[8 + 2] == 5 && summary[2] == 0)
    }

    @Test func sketchCodesEachKeyBetweenTheBlocksMinAndMaxAndScoresTokenByToken() throws {
        // One KV head of dim 8, one query head, 2-bit sketch, a block of 4 tokens (3 filled).
        // Channel 0 runs 0, 1, 3 (min 0, max 3: codes 0, 1, 3, exact); channel 1 is 2 everywhere
        // (range 0: code 0, decoded as the minimum 2); channel 2 runs -1, 0, 1 (codes 0, 2 (1.5
        // rounds to even), 3: decoded -1, 1/3, 1); the rest are 0.
        let shape = try KeySummaryShape(kvHeads: 1, headDim: 8, sketchBits: 2, tokensPerBlock: 4)
        #expect(shape.sketchByteCount == 16)  // 8 dims × 4 tokens (rounded up to 8) × 2 bits
        let table = try BlockSummaryTable(shape: shape)
        let keys: [[Float]] = [[0, 2, -1, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0, 0], [3, 2, 1, 0, 0, 0, 0, 0]]
        try keys.flatMap { $0 }.withUnsafeBytes { try table.insert(key(0), keys: $0.baseAddress!, dtype: .fp32, tokenCount: 3) }
        let query: [Float] = [1, 0.5, 3, 0, 0, 0, 0, 0]
        // Decoded logits: 0 + 1 − 3 = −2, 1 + 1 + 1 = 3, 3 + 1 + 3 = 7.
        let scale: Float = 0.5
        let logits: [Float] = [-2, 3, 7]
        let expected = (log(logits.reduce(0) { $0 + exp(scale * $1) }) - log(3)) / scale
        let score = try table.scores(.sketch(scale: scale), query: query, keys: [key(0), key(9)])
        #expect(score.count == 2 && abs(score[0] - expected) < 1e-5)
        #expect(score[1] == -.infinity)
        // Stored as a summary alone, a sketching table refuses: it needs the keys.
        let error = #expect(throws: TierKVError.self) {
            try [Float](repeating: 0, count: shape.valueCount).withUnsafeBufferPointer { try table.insert(key(1), summary: $0) }
        }
        #expect(error?.message.contains("sketch") == true)
        // A table without sketches refuses sketch scoring.
        let plain = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: 1, headDim: 8))
        #expect(throws: TierKVError.self) { _ = try plain.scores(.sketch(scale: 1), query: query, keys: [key(0)]) }
        #expect(throws: TierKVError.self) { _ = try KeySummaryShape(kvHeads: 1, headDim: 8, sketchBits: 3) }
    }

    @Test(arguments: [(1, DType.fp16), (2, .bf16), (4, .fp32), (2, .fp16)])
    func sketchScoresMatchADirectComputationPerQueryHead(bits: Int, dtype: DType) throws {
        var generator = SeededGenerator(seed: 11 + UInt64(bits))
        // Groups of 5 query heads: 4 at a time and one alone; blocks of 24 tokens, 3 chunks of 8.
        let kvHeads = 2, headDim = 64, groupSize = 5, tokens = 24
        let shape = try KeySummaryShape(kvHeads: kvHeads, headDim: headDim, groupSize: groupSize, sketchBits: bits, tokensPerBlock: tokens)
        let table = try BlockSummaryTable(shape: shape)
        let scale = 1 / Float(headDim).squareRoot()
        var blocks: [[Float]] = []
        for block in 0..<5 {
            let filled = block == 4 ? 9 : tokens  // the last block is partly filled
            let values = (0..<(filled * kvHeads * headDim)).map { _ in Float.random(in: -2...2, using: &generator) }
            switch dtype {
            case .fp16:
                let rows = values.map { Float16($0) }
                try rows.withUnsafeBytes { try table.insert(key(block), keys: $0.baseAddress!, dtype: .fp16, tokenCount: filled) }
                blocks.append(rows.map { Float($0) })
            case .bf16:
                let rows = values.map { UInt16($0.bitPattern >> 16) }  // truncated to bf16
                try rows.withUnsafeBytes { try table.insert(key(block), keys: $0.baseAddress!, dtype: .bf16, tokenCount: filled) }
                blocks.append(rows.map { Float(bitPattern: UInt32($0) << 16) })
            default:
                try values.withUnsafeBytes { try table.insert(key(block), keys: $0.baseAddress!, dtype: .fp32, tokenCount: filled) }
                blocks.append(values)
            }
        }
        let query = (0..<(kvHeads * groupSize * headDim)).map { _ in Float.random(in: -1...1, using: &generator) }
        let scores = try table.scores(.sketch(scale: scale), query: query, keys: (0..<5).map { key($0) })
        #expect(scores.count == 5 * kvHeads * groupSize)
        let levels = Float((1 << bits) - 1)
        var worstExact: Float = 0
        for (block, rows) in blocks.enumerated() {
            let filled = rows.count / (kvHeads * headDim)
            for head in 0..<kvHeads {
                // The reference quantises against the fp16 summary the table keeps (min rounded
                // down, max up), as the kernel does.
                var low = [Float](repeating: .infinity, count: headDim), high = [Float](repeating: -.infinity, count: headDim)
                for token in 0..<filled {
                    for dim in 0..<headDim {
                        low[dim] = min(low[dim], rows[(token * kvHeads + head) * headDim + dim])
                        high[dim] = max(high[dim], rows[(token * kvHeads + head) * headDim + dim])
                    }
                }
                for dim in 0..<headDim {
                    var narrowLow = Float16(low[dim]), narrowHigh = Float16(high[dim])
                    if Float(narrowLow) > low[dim] { narrowLow = narrowLow.nextDown }
                    if Float(narrowHigh) < high[dim] { narrowHigh = narrowHigh.nextUp }
                    low[dim] = Float(narrowLow)
                    high[dim] = Float(narrowHigh)
                }
                for member in 0..<groupSize {
                    let q = Array(query[((head * groupSize + member) * headDim)..<((head * groupSize + member + 1) * headDim)])
                    var decoded: [Float] = [], exact: [Float] = []
                    for token in 0..<filled {
                        var sum: Float = 0, exactSum: Float = 0
                        for dim in 0..<headDim {
                            let value = rows[(token * kvHeads + head) * headDim + dim]
                            let range = high[dim] - low[dim]
                            let code = range > 0 ? min(levels, max(0, ((value - low[dim]) * (levels / range)).rounded(.toNearestOrEven))) : 0
                            sum += q[dim] * (low[dim] + code * range / levels)
                            exactSum += q[dim] * value
                        }
                        decoded.append(sum)
                        exact.append(exactSum)
                    }
                    func logMass(_ logits: [Float]) -> Float {
                        (log(logits.reduce(0) { $0 + exp(scale * $1) }) - log(Float(filled))) / scale
                    }
                    let got = scores[(block * kvHeads + head) * groupSize + member]
                    #expect(abs(got - logMass(decoded)) < 1e-3, "block \(block) head \(head) member \(member)")
                    worstExact = max(worstExact, abs(got - logMass(exact)))
                }
            }
        }
        // More bits, closer to the exact keys' log-mass.
        let bound: Float = [1: 12, 2: 4, 4: 0.8][bits]!
        #expect(worstExact < bound, "worst distance from the exact keys' score \(worstExact) at \(bits) bits")
    }

    @Test func sketchMassSharesEachHeadsSoftmaxWithTheResidentBlocksAndTheTail() throws {
        // One KV head of dim 8 with 2 query heads; blocks of 2 tokens whose keys are constant
        // (so the sketch is exact): A along dim 0 (2), B along dim 1 (2), the always-resident C
        // along dim 0 (1). Head 0 = e0 likes A (logit 2); head 1 = 3·e1 likes B (logit 6), and
        // the tail token, 4·e1, gets logit 12 from head 1: head 1 looks at the newest token.
        let shape = try KeySummaryShape(kvHeads: 1, headDim: 8, groupSize: 2, sketchBits: 4, tokensPerBlock: 2)
        let table = try BlockSummaryTable(shape: shape)
        func along(_ dim: Int, _ value: Float) -> [Float] { (0..<8).map { $0 == dim ? value : 0 } }
        for (index, keys) in [along(0, 2), along(1, 2), along(0, 1)].enumerated() {
            try (keys + keys).withUnsafeBytes { try table.insert(key(index), keys: $0.baseAddress!, dtype: .fp32, tokenCount: 2) }
        }
        let predictor = QuestBoundPredictor(summaries: table, tokensPerBlock: 2, scale: 1, scoring: .sketch)
        let hint = QueryHint(along(0, 1) + along(1, 3))
        var candidates = PredictionCandidates(layer: 0, keys: [key(0), key(1)], positions: [1, 2], newestPosition: 3)
        // Alone, each head's softmax is over A and B: head 1's near-certainty about B wins.
        let alone = try #require(try predictor.predictMass(candidates, hint: hint))
        #expect(alone[1] > alone[0])
        // Shared with C and the tail, as the real attention is: head 1 gives B almost nothing.
        candidates.alwaysResidentKeys = [key(2)]
        candidates.tailKeys = along(1, 4)
        let shared = try #require(try predictor.predictMass(candidates, hint: hint))
        let e = Float(M_E)
        let total0 = 2 * e * e + 2 + 2 * e + 1, total1 = 4 + 2 * pow(e, 6) + pow(e, 12)
        #expect(abs(shared[0] - (2 * e * e / total0 + 2 / total1) / 2) < 1e-5)
        #expect(abs(shared[1] - (2 / total0 + 2 * pow(e, 6) / total1) / 2) < 1e-5)
        #expect(shared[0] > shared[1])
        candidates.tailKeys = [1, 2, 3]
        #expect(throws: TierKVError.self) { _ = try predictor.predictMass(candidates, hint: hint) }
    }

    @Test func aSketchShortlistScoresOnlyTheBoundsTopCandidates() throws {
        // Three blocks of 2 tokens along dims 0, 1, 2 with values 1, 3, 2: for the query
        // (1, 1, 1, 0...) the bounds rank B (3), C (2), A (1). A shortlist of 2 scores B and C from
        // their sketches and gives A nothing.
        let shape = try KeySummaryShape(kvHeads: 1, headDim: 8, sketchBits: 2, tokensPerBlock: 2)
        let table = try BlockSummaryTable(shape: shape)
        for (index, value) in [Float(1), 3, 2].enumerated() {
            let row = (0..<8).map { $0 == index ? value : Float(0) }
            try (row + row).withUnsafeBytes { try table.insert(key(index), keys: $0.baseAddress!, dtype: .fp32, tokenCount: 2) }
        }
        let hint = QueryHint([1, 1, 1, 0, 0, 0, 0, 0])
        let candidates = PredictionCandidates(layer: 0, keys: [key(0), key(1), key(2)], positions: [0, 1, 2], newestPosition: 2)
        let all = try #require(try QuestBoundPredictor(summaries: table, tokensPerBlock: 2, scale: 1, scoring: .sketch).predictMass(candidates, hint: hint))
        let short = try #require(
            try QuestBoundPredictor(summaries: table, tokensPerBlock: 2, scale: 1, scoring: .sketch, sketchShortlist: 2).predictMass(candidates, hint: hint))
        #expect(short[0] == 0 && short[1] > short[2] && short[2] > 0)
        // Among the shortlist, the same softmax as without it, over the two blocks.
        #expect(abs(short[1] - exp(3) / (exp(3) + exp(2))) < 1e-5)
        #expect(all.allSatisfy { $0 > 0 })
    }

    @Test func historyDecaysAccumulatedMassAndBlendsRecency() throws {
        let history = try AttentionHistoryPredictor(decay: 0.5, recencyWeight: 0, recencyWindowBlocks: 4)
        let candidates = PredictionCandidates(layer: 3, keys: [key(0), key(1), key(2)], positions: [0, 1, 2], newestPosition: 2)
        #expect(try history.predictMass(candidates, hint: nil) == nil)
        try history.observe(layer: 3, keys: [key(0)], mass: [0.8])
        try history.observe(layer: 3, keys: [key(1)], mass: [0.2])
        // key 0: 0.8 · 0.5 = 0.4; key 1: 0.2; key 2: 0 → normalised (2/3, 1/3, 0).
        let mass = try #require(try history.predictMass(candidates, hint: nil))
        #expect(abs(mass[0] - 2.0 / 3) < 1e-6 && abs(mass[1] - 1.0 / 3) < 1e-6 && mass[2] == 0)
        // Another layer's steps do not decay this one's.
        try history.observe(layer: 4, keys: [key(9)], mass: [1])
        #expect(try history.predictMass(candidates, hint: nil) == mass)

        let recent = try AttentionHistoryPredictor(decay: 1, recencyWeight: 1, recencyWindowBlocks: 1)
        try recent.observe(layer: 3, keys: [key(0)], mass: [1])
        let recency = try #require(try recent.predictMass(candidates, hint: nil))
        // exp(-2), exp(-1), 1, normalised.
        let sum = exp(Float(-2)) + exp(Float(-1)) + 1
        #expect(abs(recency[2] - 1 / sum) < 1e-6 && abs(recency[0] - exp(-2) / sum) < 1e-6)
        #expect(throws: TierKVError.self) { try recent.observe(layer: 0, keys: [key(0)], mass: []) }
    }

    @Test func historyForgetsWhatFadedSoALongRunStaysBounded() throws {
        // Every step attends 64 new blocks: without forgetting, 200 steps would remember 12,800.
        let history = try AttentionHistoryPredictor(decay: 0.5, recencyWeight: 0)
        var largest = 0
        for step in 0..<200 {
            let keys = (0..<64).map { key(step * 64 + $0) }
            try history.observe(layer: 0, keys: keys, mass: Array(repeating: 1.0 / 64, count: 64))
            largest = max(largest, history.rememberedBlocks)
        }
        // 0.5^n / 64 < 1e-6 after 14 steps: at most ~15 steps' blocks survive a sweep, and the
        // next sweep waits for twice the survivors (at least 4,096).
        #expect(largest <= 4096 + 64, "remembered \(largest) blocks")
        // What is still remembered is predicted as before.
        let recent = PredictionCandidates(layer: 0, keys: [key(199 * 64), key(0)], positions: [1, 0], newestPosition: 1)
        let mass = try #require(try history.predictMass(recent, hint: nil))
        #expect(mass[0] > 0 && mass[1] == 0)
        // Without decay nothing fades.
        let keeper = try AttentionHistoryPredictor(decay: 1, recencyWeight: 0)
        for step in 0..<80 { try keeper.observe(layer: 0, keys: (0..<64).map { key(step * 64 + $0) }, mass: Array(repeating: 1.0 / 64, count: 64)) }
        #expect(keeper.rememberedBlocks == 80 * 64)
    }

    @Test func combinedWeighsNormalisedPartsAndLeavesOutSilentOnes() throws {
        let table = try BlockSummaryTable(shape: KeySummaryShape(kvHeads: 1, headDim: 8))
        let bound = QuestBoundPredictor(summaries: table, tokensPerBlock: 16)
        let history = try AttentionHistoryPredictor(decay: 1, recencyWeight: 0)
        let combined = try CombinedPredictor([(bound, 3), (history, 1)])
        let candidates = PredictionCandidates(layer: 0, keys: [key(0), key(1)], positions: [0, 1], newestPosition: 1)
        #expect(try combined.predictMass(candidates, hint: nil) == nil)
        try history.observe(layer: 0, keys: [key(0), key(1)], mass: [0.3, 0.1])
        // Bound has no hint: history alone, normalised.
        let alone = try #require(try combined.predictMass(candidates, hint: nil))
        #expect(abs(alone[0] - 0.75) < 1e-6)
        for block in 0..<2 {
            var summary = [Float](repeating: 0, count: 24)
            summary[8 + block] = 8  // max of dimension `block`
            try summary.withUnsafeBufferPointer { try table.insert(key(block), summary: $0) }
        }
        var query = [Float](repeating: 0, count: 8)
        query[1] = Float(8).squareRoot()  // block 1's bound logit: 8, block 0's: 0
        let both = try #require(try combined.predictMass(candidates, hint: QueryHint(query)))
        let boundMass = try #require(try bound.predictMass(candidates, hint: QueryHint(query)))
        #expect(abs(both[1] - (3 * boundMass[1] + 0.25) / 4) < 1e-6)
        #expect(throws: TierKVError.self) { _ = try CombinedPredictor([(bound, -1)]) }
    }

    @Test func adaptiveCombinedLearnsWeightsFromObservedAttention() throws {
        let right = FixedPredictor([0.6, 0.3, 0.1]), wrong = FixedPredictor([0.1, 0.2, 0.7]), silent = FixedPredictor(nil)
        let combined = try CombinedPredictor(
            [(right, 1), (wrong, 1), (silent, 2)], adaptation: CombinedPredictor.Adaptation(topK: 1, rate: 10, memory: 0.5))
        let keys = [key(0), key(1), key(2)]
        let candidates = PredictionCandidates(layer: 2, keys: keys, positions: [1, 2, 3], newestPosition: 5)
        // Before any observation: the given weights, the silent part left out.
        #expect(combined.weights(layer: 2) == [1, 1, 2])
        let first = try #require(try combined.predictMass(candidates, hint: nil))
        #expect(abs(first[2] - 0.4) < 1e-6)
        // The layer attends block 0 most (plus an always-resident block the candidates lack).
        try combined.observe(layer: 2, keys: [key(9)] + keys, mass: [0.3, 0.49, 0.14, 0.07])
        // k = 1: `right` picks block 0 (coverage 1, loss 0); `wrong` picks block 2 (0.07 of 0.49,
        // loss 6/7). `silent` was not scored and keeps its weight.
        let learned = combined.weights(layer: 2)
        #expect(learned[0] == 1 && learned[2] == 2)
        #expect(abs(learned[1] - exp(-10 * Float(6) / 7)) < 1e-6)
        let mass = try #require(try combined.predictMass(candidates, hint: nil))
        #expect(abs(mass[0] - (0.6 + learned[1] * 0.1) / (1 + learned[1])) < 1e-6)
        // Other layers keep the given weights.
        #expect(combined.weights(layer: 3) == [1, 1, 2])
        // Memory 0.5: a step where `wrong` is right halves its average loss.
        try combined.observe(layer: 2, keys: keys, mass: [0.1, 0.2, 0.7])
        let after = combined.weights(layer: 2)
        // right: 0.5·0 + 0.5·(1 − 0.1/0.7) = 3/7; wrong: 0.5·6/7 + 0 = 3/7: equal again.
        #expect(abs(after[0] - after[1]) < 1e-6 && after[0] == 1)
        // An observation with no prediction outstanding (or of other blocks) changes nothing.
        try combined.observe(layer: 2, keys: keys, mass: [1, 0, 0])
        #expect(combined.weights(layer: 2) == after)
        #expect(throws: TierKVError.self) { try combined.observe(layer: 2, keys: keys, mass: [1]) }
        #expect(throws: TierKVError.self) { _ = try CombinedPredictor([(right, 1)], adaptation: .init(topK: 0)) }
        #expect(throws: TierKVError.self) { _ = try CombinedPredictor([(right, 1)], adaptation: .init(topK: 1, memory: 1)) }
        #expect(throws: TierKVError.self) { _ = try CombinedPredictor([(right, 1)], adaptation: .init(topK: 1, rate: -1)) }
        // Without adaptation, observing changes nothing.
        let fixed = try CombinedPredictor([(right, 1), (wrong, 1)])
        _ = try fixed.predictMass(candidates, hint: nil)
        try fixed.observe(layer: 2, keys: keys, mass: [0.49, 0.14, 0.07])
        #expect(fixed.weights(layer: 2) == [1, 1])
    }

    @Test func qualityMeasuresRecallAndMassCoverage() {
        let actual: [Float] = [0.5, 0.3, 0.15, 0.05]
        let predicted: [Float] = [0.4, 0.1, 0.45, 0.05]
        #expect(PredictionQuality.topK(actual, k: 2) == [0, 1])
        #expect(PredictionQuality.recall(predicted: predicted, actual: actual, k: 2) == 0.5)
        // Predicted top-2 {2, 0} hold 0.65 of the best 0.8.
        #expect(abs(PredictionQuality.massCoverage(predicted: predicted, actual: actual, k: 2) - 0.65 / 0.8) < 1e-6)
        #expect(PredictionQuality.recall(predicted: actual, actual: actual, k: 3) == 1)
    }

    @Test func alwaysResidentBlocksAreNotCandidates() {
        let keys = (0..<10).map { key($0) }
        let (candidates, resident) = PredictionCandidates.excludingAlwaysResident(layer: 2, keys: keys, sinkBlocks: 1, recentBlocks: 2)
        #expect(candidates.positions == Array(1..<8))
        #expect(resident == [0, 8, 9])
        #expect(candidates.keys == Array(keys[1..<8]))
        #expect(candidates.newestPosition == 9)
        let tiny = PredictionCandidates.excludingAlwaysResident(layer: 0, keys: Array(keys[0..<2]), sinkBlocks: 1, recentBlocks: 4)
        #expect(tiny.candidates.keys.isEmpty && tiny.alwaysResident == [0, 1])
    }
}

@Suite struct AttentionPlacementPlannerTests {
    @Test func withoutCPUAttentionEveryNeededBlockIsFetched() throws {
        let planner = try AttentionPlacementPlanner(hostToDeviceBytesPerSecond: 1000, coldReadBytesPerSecond: 500)
        let plan = planner.plan(blocks: [(.warm, 0.1), (.cold, 0.1)], blockByteCount: 100, gpuSeconds: 1)
        #expect(plan.decisions == [.fetch, .fetch])
        // Cold block: read 0.2 s, then copy 0.1 s → link done at 0.3; + GPU 1 s.
        #expect(abs(plan.estimatedSeconds - 1.3) < 1e-9)
    }

    @Test func aSlowLinkSendsWarmBlocksToTheCPU() throws {
        // Copy: 1 s per block; CPU attention: 0.5 s per block; GPU compute 0.5 s.
        let planner = try AttentionPlacementPlanner(hostToDeviceBytesPerSecond: 100, coldReadBytesPerSecond: 100, cpuAttentionBytesPerSecond: 200)
        let plan = planner.plan(blocks: Array(repeating: (.warm, 0.1), count: 4), blockByteCount: 100, gpuSeconds: 0.5)
        // Layer finish if the block is fetched / attended on CPU. Block 1: 1.5 / 0.5: CPU. Block 2:
        // 1.5 / 1.0: CPU. Block 3: 1.5 / 1.5: a tie fetches (link free at 1). Block 4: 2.5 / 1.5: CPU.
        #expect(plan.decisions == [.attendOnCPU, .attendOnCPU, .fetch, .attendOnCPU])
        #expect(abs(plan.estimatedSeconds - 1.5) < 1e-9)
        #expect(plan.attendedOnCPU == 3 && plan.fetched == 1)
    }

    @Test func fetchesStopAtTheHotRoomAndTheRestGoToTheCPU() throws {
        // A fast link (0.1 s per block) and a slow CPU (1 s): every block would be fetched, but
        // hot has room for 2; without CPU attention the limit cannot apply.
        let planner = try AttentionPlacementPlanner(hostToDeviceBytesPerSecond: 1000, coldReadBytesPerSecond: 1000, cpuAttentionBytesPerSecond: 100)
        let blocks: [(source: AttentionPlacementPlanner.Source, mass: Float)] = Array(repeating: (.warm, 0.1), count: 4)
        #expect(planner.plan(blocks: blocks, blockByteCount: 100, gpuSeconds: 0).fetched == 4)
        let limited = planner.plan(blocks: blocks, blockByteCount: 100, gpuSeconds: 0, fetchLimit: 2)
        #expect(limited.decisions == [.fetch, .fetch, .attendOnCPU, .attendOnCPU])
        #expect(abs(limited.estimatedSeconds - 2) < 1e-9)  // the CPU's two blocks, 1 s each
        let noCPU = try AttentionPlacementPlanner(hostToDeviceBytesPerSecond: 1000, coldReadBytesPerSecond: 1000)
        #expect(noCPU.plan(blocks: blocks, blockByteCount: 100, gpuSeconds: 0, fetchLimit: 2).fetched == 4)
    }

    @Test func approximateModeSkipsOnlyBelowItsThreshold() throws {
        let exact = try AttentionPlacementPlanner(hostToDeviceBytesPerSecond: 100, coldReadBytesPerSecond: 100)
        #expect(exact.plan(blocks: [(.warm, 0.0001)], blockByteCount: 100, gpuSeconds: 0).decisions == [.fetch])
        let approximate = try AttentionPlacementPlanner(hostToDeviceBytesPerSecond: 100, coldReadBytesPerSecond: 100, skipBelowMass: 0.001)
        #expect(approximate.plan(blocks: [(.warm, 0.0001), (.cold, 0.01)], blockByteCount: 100, gpuSeconds: 0).decisions == [.skip, .fetch])
        #expect(throws: TierKVError.self) { _ = try AttentionPlacementPlanner(hostToDeviceBytesPerSecond: 0, coldReadBytesPerSecond: 1) }
    }
}
