import TierKVCore

/// Quest's query-aware selection (Tang et al., ICML 2024): per KV head the upper bound
/// Σᵢ max(qᵢ·maxᵢ, qᵢ·minᵢ) of every logit in the block, the group's query heads combined by max,
/// turned into a predicted mass per block. Needs a query hint for the layer: the engine's current
/// query (lookahead 0) or the freshest one it has for that layer (the previous token's).
public final class QuestBoundPredictor: BlockPredictor {
    public let summaries: BlockSummaryTable
    public let tokensPerBlock: Int
    public let scale: Float
    public let scoring: SummaryScoring
    public var name: String { "bound" }

    /// - Parameters:
    ///   - scale: the softmax scale, default 1/√headDim.
    ///   - scoring: how a block's summary is scored against the query (Quest's bound by default).
    public init(summaries: BlockSummaryTable, tokensPerBlock: Int, scale: Float? = nil, scoring: SummaryScoring = .bound) {
        self.summaries = summaries
        self.tokensPerBlock = tokensPerBlock
        self.scale = scale ?? 1 / Float(summaries.shape.headDim).squareRoot()
        self.scoring = scoring
    }

    public func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        guard let hint else { return nil }
        func mass(_ kind: BlockSummaryTable.Score) throws(TierKVError) -> [Float] {
            let scores = try summaries.scores(kind, query: hint.values, keys: candidates.keys)
            return PredictedMass.fromScores(
                scores, kvHeads: summaries.shape.kvHeads, scale: scale, tokenCounts: candidates.tokenCounts, tokensPerBlock: tokensPerBlock)
        }
        switch scoring {
        case .bound: return try mass(.bound)
        case .mean: return try mass(.mean)
        case .boundAndMean: return zip(try mass(.bound), try mass(.mean)).map { ($0 + $1) / 2 }
        case .moment: return try mass(.moment(scale: scale))
        case .boundAndMoment: return zip(try mass(.bound), try mass(.moment(scale: scale))).map { ($0 + $1) / 2 }
        }
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
}
