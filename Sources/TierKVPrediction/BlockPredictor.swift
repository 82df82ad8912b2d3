#if canImport(Glibc)
import Glibc
#endif
import TierKVCore

/// The blocks a predictor ranks for one layer: those not in the always-resident set (sinks and
/// the recent window, which the engine keeps in hot anyway and which are never predicted).
public struct PredictionCandidates: Sendable {
    public var layer: Int
    public var keys: [BlockKey]
    /// Each block's index in its sequence (0 = first block).
    public var positions: [Int]
    /// Tokens in each block (the last may be partial); nil means all full.
    public var tokenCounts: [Int]?
    /// The index of the sequence's newest block (recency is measured from it).
    public var newestPosition: Int
    /// The always-resident blocks of the layer (full blocks only), not ranked: the summary
    /// predictors score them too so that each head's softmax is shared with them, as the head's
    /// real attention is. A head that gives most of its attention to the sinks then weighs little
    /// in the candidates' mass, as it does in the attention averaged over heads.
    public var alwaysResidentKeys: [BlockKey]
    /// The keys the layer attends that no stored block holds yet (the partly filled block, and
    /// the current token when the engine has its key), fp32 `[token][kvHead][dim]`. Sketch
    /// scoring puts their exact logits in each query head's softmax, as the attention has them:
    /// on a trained model's trace this took the exact query's 2-bit sketch recall from 0.74 to
    /// 0.89 (heads that look mostly at the newest tokens stop outweighing the others).
    public var tailKeys: [Float]

    public init(
        layer: Int, keys: [BlockKey], positions: [Int], tokenCounts: [Int]? = nil, newestPosition: Int,
        alwaysResidentKeys: [BlockKey] = [], tailKeys: [Float] = []
    ) {
        self.layer = layer
        self.keys = keys
        self.positions = positions
        self.tokenCounts = tokenCounts
        self.newestPosition = newestPosition
        self.alwaysResidentKeys = alwaysResidentKeys
        self.tailKeys = tailKeys
    }

    /// Splits a sequence's blocks `0..<blockCount` into the always-resident set (the first
    /// `sinkBlocks` and the last `recentBlocks`) and the rest, which are the candidates.
    public static func excludingAlwaysResident(
        layer: Int, keys: [BlockKey], sinkBlocks: Int, recentBlocks: Int
    ) -> (candidates: PredictionCandidates, alwaysResident: [Int]) {
        let count = keys.count
        let sinks = min(max(0, sinkBlocks), count)
        let recentStart = max(sinks, count - max(0, recentBlocks))
        let positions = Array(sinks..<recentStart)
        let resident = Array(0..<sinks) + Array(recentStart..<count)
        let candidates = PredictionCandidates(
            layer: layer, keys: positions.map { keys[$0] }, positions: positions, newestPosition: max(0, count - 1),
            alwaysResidentKeys: resident.map { keys[$0] })
        return (candidates, resident)
    }
}

/// A query the engine hands over as a hint: `queryHeads × headDim` fp32, post-RoPE, the query
/// heads of one KV head adjacent.
public struct QueryHint: Sendable, Equatable {
    public var values: [Float]
    public init(_ values: [Float]) { self.values = values }
}

/// Turns what the engine knows before a layer runs into a predicted attention mass per candidate
/// block: non-negative, summing to at most 1 over the candidates (the rest belongs to the
/// always-resident blocks or is unknown). Nil when the predictor has nothing to go on (no hint,
/// no history yet).
public protocol BlockPredictor: AnyObject, Sendable {
    /// `bound`, `speculative`, `history` or `combined`.
    var name: String { get }
    func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]?
}

/// Per-head logit scores (`[block][head]`, per KV head or per query head) to a predicted block
/// mass: per head a softmax over the candidates of
/// `scale·score + ln(tokens)` (a block of n tokens whose tokens all scored s holds n·e^s), then the
/// mean over heads, as the attention a decode step reports is averaged over heads.
public enum PredictedMass {
    public static func fromScores(_ scores: [Float], heads: Int, scale: Float, tokenCounts: [Int]?, tokensPerBlock: Int) -> [Float] {
        let blocks = scores.count / heads
        var mass = [Float](repeating: 0, count: blocks)
        guard blocks > 0 else { return mass }
        var logits = [Float](repeating: 0, count: blocks)
        let fullLog = Float(log(Double(max(1, tokensPerBlock))))
        for head in 0..<heads {
            var maximum = -Float.infinity
            for block in 0..<blocks {
                let raw = scores[block * heads + head]
                let tokens = tokenCounts?[block]
                let logit = raw == -.infinity ? -.infinity : scale * raw + (tokens.map { Float(log(Double(max(1, $0)))) } ?? fullLog)
                logits[block] = logit
                maximum = max(maximum, logit)
            }
            guard maximum > -.infinity else { continue }
            var sum: Float = 0
            for block in 0..<blocks {
                let weight = exp(logits[block] - maximum)
                logits[block] = weight
                sum += weight
            }
            let share = 1 / (sum * Float(heads))
            for block in 0..<blocks { mass[block] += logits[block] * share }
        }
        return mass
    }
}
