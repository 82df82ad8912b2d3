import TierKVCore

/// A weighted mix of predictors' masses (each normalised to sum 1 first). A part that has nothing
/// to go on (no hint yet, no history) is left out and the others' weights renormalised.
public final class CombinedPredictor: BlockPredictor {
    public let parts: [(predictor: any BlockPredictor, weight: Float)]
    public var name: String { "combined" }

    /// - Throws: `.invalidArgument` for no parts or a negative weight.
    public init(_ parts: [(predictor: any BlockPredictor, weight: Float)]) throws(TierKVError) {
        guard !parts.isEmpty else { throw .invalid("a combined predictor needs at least one part") }
        if let bad = parts.first(where: { !($0.weight >= 0) || !$0.weight.isFinite }) {
            throw .invalid("weight \(bad.weight) of \(bad.predictor.name) must be a finite non-negative number")
        }
        self.parts = parts
    }

    public func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        var total = [Float](repeating: 0, count: candidates.keys.count)
        var weights: Float = 0
        for (predictor, weight) in parts where weight > 0 {
            guard let mass = try predictor.predictMass(candidates, hint: hint) else { continue }
            for (index, value) in normalised(mass).enumerated() { total[index] += weight * value }
            weights += weight
        }
        guard weights > 0 else { return nil }
        return total.map { $0 / weights }
    }
}
