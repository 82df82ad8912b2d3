import TierKVCore
#if canImport(Glibc)
import Glibc
#endif

/// Quest's query-aware selection (Tang et al., ICML 2024): per KV head the upper bound
/// Σᵢ max(qᵢ·maxᵢ, qᵢ·minᵢ) of every logit in the block, the group's query heads combined by max,
/// turned into a predicted mass per block. Needs a query hint for the layer: the engine's current
/// query (lookahead 0) or the freshest one it has for that layer (the previous token's).
public final class QuestBoundPredictor: BlockPredictor {
    public let summaries: BlockSummaryTable
    public let tokensPerBlock: Int
    public let scale: Float
    public let scoring: SummaryScoring
    /// With `.sketch`: score from their sketches only the candidates with the highest Quest
    /// bounds, this many; the rest get no mass. nil scores every candidate.
    public let sketchShortlist: Int?
    public var name: String { "bound" }

    /// - Parameters:
    ///   - scale: the softmax scale, default 1/√headDim.
    ///   - scoring: how a block's summary is scored against the query (Quest's bound by default).
    ///   - sketchShortlist: with `.sketch`, the bound's top candidates that are scored from their
    ///     sketches (the bound costs about 1/13 of the sketch score per block); nil: all.
    public init(
        summaries: BlockSummaryTable, tokensPerBlock: Int, scale: Float? = nil, scoring: SummaryScoring = .bound,
        sketchShortlist: Int? = nil
    ) {
        self.summaries = summaries
        self.tokensPerBlock = tokensPerBlock
        self.scale = scale ?? 1 / Float(summaries.shape.headDim).squareRoot()
        self.scoring = scoring
        self.sketchShortlist = sketchShortlist.map { max(1, $0) }
    }

    public func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        guard let hint else { return nil }
        func mass(_ kind: BlockSummaryTable.Score) throws(TierKVError) -> [Float] {
            try self.mass(kind, candidates, hint)
        }
        switch scoring {
        case .bound: return try mass(.bound)
        case .mean: return try mass(.mean)
        case .boundAndMean: return zip(try mass(.bound), try mass(.mean)).map { ($0 + $1) / 2 }
        case .moment: return try mass(.moment(scale: scale))
        case .boundAndMoment: return zip(try mass(.bound), try mass(.moment(scale: scale))).map { ($0 + $1) / 2 }
        case .sketch: return try shortlisted(candidates, hint)
        }
    }

    /// Sketch masses, of the bound's shortlist when there is one.
    private func shortlisted(_ candidates: PredictionCandidates, _ hint: QueryHint) throws(TierKVError) -> [Float] {
        guard let limit = sketchShortlist, limit < candidates.keys.count else { return try mass(.sketch(scale: scale), candidates, hint) }
        // Rank by the bound's largest head score plus the block's log-size, the bound on its log-mass.
        let heads = summaries.shape.kvHeads
        let bounds = try summaries.scores(.bound, query: hint.values, keys: candidates.keys)
        let ranks = (0..<candidates.keys.count).map { block in
            let best = (0..<heads).map { bounds[block * heads + $0] }.max()!
            let tokens = candidates.tokenCounts?[block] ?? tokensPerBlock
            return scale * best + log(Float(max(1, tokens)))
        }
        let chosen = PredictionQuality.topK(ranks, k: limit)
        var subset = candidates
        subset.keys = chosen.map { candidates.keys[$0] }
        subset.positions = chosen.map { candidates.positions[$0] }
        subset.tokenCounts = candidates.tokenCounts.map { counts in chosen.map { counts[$0] } }
        let masses = try mass(.sketch(scale: scale), subset, hint)
        var all = [Float](repeating: 0, count: candidates.keys.count)
        for (index, block) in chosen.enumerated() { all[block] = masses[index] }
        return all
    }
}

extension QuestBoundPredictor {
    /// The candidates' predicted masses under one score. With `.sketch`, the always-resident
    /// blocks and the tail keys share each query head's softmax with the candidates (their
    /// masses are then dropped), as they share the head's real attention. The summary scores
    /// are combined per KV head by max and kept to the candidates: sharing the softmax did not
    /// change their recall on the recorded trace (±0.01).
    fileprivate func mass(_ kind: BlockSummaryTable.Score, _ candidates: PredictionCandidates, _ hint: QueryHint) throws(TierKVError) -> [Float] {
        let shape = summaries.shape
        let heads = summaries.scoredHeads(kind)
        guard case .sketch = kind else {
            let scores = try summaries.scores(kind, query: hint.values, keys: candidates.keys)
            return PredictedMass.fromScores(scores, heads: heads, scale: scale, tokenCounts: candidates.tokenCounts, tokensPerBlock: tokensPerBlock)
        }
        let resident = candidates.alwaysResidentKeys
        var scores = try summaries.scores(kind, query: hint.values, keys: candidates.keys + resident)
        var tokenCounts = (candidates.tokenCounts ?? candidates.keys.map { _ in tokensPerBlock }) + resident.map { _ in tokensPerBlock }
        let rowValues = shape.kvHeads * shape.headDim
        let tail = candidates.tailKeys
        guard tail.count % rowValues == 0 else {
            throw .invalid("tail keys hold \(tail.count) values; expected rows of \(rowValues) (\(shape.kvHeads) KV heads × \(shape.headDim))")
        }
        let tailRows = tail.count / rowValues
        if tailRows > 0 {
            // The tail as one more block: per query head its exact log-mass in raw logit units.
            for queryHead in 0..<shape.queryHeads {
                let head = queryHead / shape.groupSize
                let query = hint.values[(queryHead * shape.headDim)..<((queryHead + 1) * shape.headDim)]
                var logits = [Float](repeating: 0, count: tailRows)
                for row in 0..<tailRows {
                    let key = tail[((row * shape.kvHeads + head) * shape.headDim)...].prefix(shape.headDim)
                    logits[row] = zip(query, key).reduce(0) { $0 + $1.0 * $1.1 }
                }
                let maximum = logits.max()!
                let sum = logits.reduce(Float(0)) { $0 + exp(scale * ($1 - maximum)) }
                scores.append(maximum + (log(sum) - log(Float(tailRows))) / scale)
            }
            tokenCounts.append(tailRows)
        }
        let all = PredictedMass.fromScores(scores, heads: heads, scale: scale, tokenCounts: tokenCounts, tokensPerBlock: tokensPerBlock)
        return Array(all.prefix(candidates.keys.count))
    }
}

/// How a block's key summary is scored against a query.
public enum SummaryScoring: String, Sendable, CaseIterable {
    /// Quest's upper bound Σᵢ max(qᵢ·maxᵢ, qᵢ·minᵢ): never misses a block with one large logit,
    /// but ranks wide-ranged blocks high.
    case bound
    /// q · mean of the block's keys: the block's average logit (its typical attention).
    case mean
    /// The average of the two predicted masses.
    case boundAndMean = "bound+mean"
    /// q · mean plus a variance term from the block's per-dimension key range: the log of the
    /// mean of exp(logit) if the keys were Gaussian around their mean (`BlockScoreKernel.moment`).
    case moment
    /// The average of the bound's and the moment estimate's predicted masses.
    case boundAndMoment = "bound+moment"
    /// Token by token from the block's key sketch (`KeySketchKernel.score`): needs a summary
    /// table made with `sketchBits`. On a trace recorded from a trained model with the exact
    /// query, 2 bits reach 0.87–0.92 top-k recall where bound+moment reaches 0.54–0.66
    /// (docs/measurements.md).
    case sketch
}
