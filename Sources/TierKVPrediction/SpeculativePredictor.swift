import TierKVCore

/// InfiniGen-style speculation (Lee et al., OSDI 2024): while layer L computes, the engine derives
/// an approximate query for layer L+d from layer L's input with layer L+d's query weights (the
/// residual stream changes little between layers) and `offer`s it here; the blocks of L+d are
/// scored with it, against the summaries' bound, so their fetch starts d layers early.
/// On a trained 12-layer model the query speculated from layer L-1's residual after its
/// attention (the fetch then has the MLP's time) ranked far better than from its input: top-k
/// recall 0.87 against 0.79 at a 10% hot budget (docs/measurements.md, session 13).
///
/// Thread-safe: hints are kept per target layer behind a lock.
public final class SpeculativePredictor: BlockPredictor {
    private let bound: QuestBoundPredictor
    private let hints: Locked<[Int: QueryHint]>
    public var name: String { "speculative" }

    public init(
        summaries: BlockSummaryTable, tokensPerBlock: Int, scale: Float? = nil, scoring: SummaryScoring = .bound,
        sketchShortlist: Int? = nil
    ) {
        bound = QuestBoundPredictor(
            summaries: summaries, tokensPerBlock: tokensPerBlock, scale: scale, scoring: scoring, sketchShortlist: sketchShortlist)
        hints = Locked([:])
    }

    /// The speculated query for `layer` (replaces an earlier one for that layer).
    public func offer(_ hint: QueryHint, forLayer layer: Int) { hints.withLock { $0[layer] = hint } }

    /// The speculated query for `layer`, if one was offered.
    public func hint(forLayer layer: Int) -> QueryHint? { hints.withLock { $0[layer] } }

    /// Scores with the hint offered for `candidates.layer`, else with `hint` (inside a combined
    /// predictor that is the other parts' hint, so an offer always wins).
    public func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        try bound.predictMass(candidates, hint: self.hint(forLayer: candidates.layer) ?? hint)
    }
}
