import TierKVCore

/// Quest's query-aware selection (Tang et al., ICML 2024): per KV head the upper bound
/// Σᵢ max(qᵢ·maxᵢ, qᵢ·minᵢ) of every logit in the block, the group's query heads combined by max,
/// turned into a predicted mass per block. Needs a query hint for the layer: the engine's current
/// query (lookahead 0) or the freshest one it has for that layer (the previous token's).
public final class QuestBoundPredictor: BlockPredictor {
    public let summaries: BlockSummaryTable
    public let tokensPerBlock: Int
    public let scale: Float
    public var name: String { "bound" }

    /// - Parameter scale: the softmax scale, default 1/√headDim.
    public init(summaries: BlockSummaryTable, tokensPerBlock: Int, scale: Float? = nil) {
        self.summaries = summaries
        self.tokensPerBlock = tokensPerBlock
        self.scale = scale ?? 1 / Float(summaries.shape.headDim).squareRoot()
    }

    public func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        guard let hint else { return nil }
        let scores = try summaries.scores(.bound, query: hint.values, keys: candidates.keys)
        return PredictedMass.fromScores(
            scores, kvHeads: summaries.shape.kvHeads, scale: scale, tokenCounts: candidates.tokenCounts, tokensPerBlock: tokensPerBlock)
    }
}
