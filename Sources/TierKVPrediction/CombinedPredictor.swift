#if canImport(Glibc)
import Glibc
#endif
import TierKVCore

/// A weighted mix of predictors' masses (each normalised to sum 1 first). A part that has nothing
/// to go on (no hint yet, no history) is left out and the others' weights renormalised.
///
/// With `adaptation`, the weights are learned per layer from what the layer then attended
/// (`observe`): each part's loss on a step is 1 − its mass coverage at `topK` (the attention
/// mass of its top-k blocks ÷ that of the true top-k), losses are averaged with exponential
/// forgetting, and a part's weight is its given weight × exp(−rate × average loss)
/// (exponential weights, as in Hedge). The given weights are then a prior: on a model where one
/// predictor is clearly better (on a trained 12-layer model's trace the speculated query's
/// coverage was 1.00 against 0.90 for the previous token's query), the mix moves to it instead
/// of being diluted by the others.
///
/// Thread-safe: the learned state is behind a lock.
public final class CombinedPredictor: BlockPredictor {
    public let parts: [(predictor: any BlockPredictor, weight: Float)]
    public let adaptation: Adaptation?
    private let state: Locked<[Int: LayerState]>
    public var name: String { "combined" }

    /// How the weights follow observed attention.
    public struct Adaptation: Sendable, Equatable {
        /// k of the coverage a part is scored by (the blocks a layer can have in hot).
        public var topK: Int
        /// How sharply the weights follow the losses: a part whose average loss is 0.1 higher
        /// gets exp(−0.1 × rate) of the weight.
        public var rate: Float
        /// Kept share of the average loss per observation (0.9: about the last 10 steps count).
        public var memory: Float

        public init(topK: Int, rate: Float = 100, memory: Float = 0.9) {
            self.topK = topK
            self.rate = rate
            self.memory = memory
        }
    }

    private struct LayerState {
        var keys: [BlockKey] = []
        var masses: [[Float]?] = []
        /// Per part: its average loss, nil until it was first scored.
        var losses: [Float?]
    }

    /// - Throws: `.invalidArgument` for no parts, a negative weight, or adaptation settings out
    ///   of range (topK < 1, rate < 0, memory outside 0..<1).
    public init(_ parts: [(predictor: any BlockPredictor, weight: Float)], adaptation: Adaptation? = nil) throws(TierKVError) {
        guard !parts.isEmpty else { throw .invalid("a combined predictor needs at least one part") }
        if let bad = parts.first(where: { !($0.weight >= 0) || !$0.weight.isFinite }) {
            throw .invalid("weight \(bad.weight) of \(bad.predictor.name) must be a finite non-negative number")
        }
        if let adaptation {
            guard adaptation.topK >= 1 else { throw .invalid("adaptive weights need topK ≥ 1; got \(adaptation.topK)") }
            guard adaptation.rate >= 0, adaptation.rate.isFinite else {
                throw .invalid("adaptation rate is \(adaptation.rate); expected a finite number ≥ 0")
            }
            guard adaptation.memory >= 0, adaptation.memory < 1 else {
                throw .invalid("adaptation memory is \(adaptation.memory); expected 0 ≤ memory < 1")
            }
        }
        self.parts = parts
        self.adaptation = adaptation
        state = Locked([:])
    }

    public func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        var masses: [[Float]?] = []
        for (predictor, weight) in parts {
            masses.append(weight > 0 ? try predictor.predictMass(candidates, hint: hint).map(normalised) : nil)
        }
        let weights = weights(layer: candidates.layer)
        if adaptation != nil {
            state.withLock { state in
                state[candidates.layer, default: LayerState(losses: Array(repeating: nil, count: parts.count))].keys = candidates.keys
                state[candidates.layer]!.masses = masses
            }
        }
        var total = [Float](repeating: 0, count: candidates.keys.count)
        var weightSum: Float = 0
        for (mass, weight) in zip(masses, weights) {
            guard let mass else { continue }
            for (index, value) in mass.enumerated() { total[index] += weight * value }
            weightSum += weight
        }
        guard weightSum > 0 else { return nil }
        return total.map { $0 / weightSum }
    }

    /// Scores the parts' last prediction for `layer` against the mass each block then received
    /// (blocks not listed received 0) and updates the layer's weights. Does nothing without
    /// `adaptation`, without a prediction for the layer, or when the observed blocks received
    /// none of the predicted ones' mass (another sequence's blocks: the state is per layer, so
    /// with several sequences the one predicted last for a layer is the one scored).
    public func observe(layer: Int, keys: [BlockKey], mass: [Float]) throws(TierKVError) {
        guard keys.count == mass.count else { throw .invalid("observe got \(keys.count) keys and \(mass.count) masses") }
        guard let adaptation else { return }
        state.withLock { state in
            guard var layerState = state[layer], !layerState.keys.isEmpty else { return }
            let received = Dictionary(zip(keys, mass), uniquingKeysWith: +)
            let actual = layerState.keys.map { received[$0] ?? 0 }
            guard actual.contains(where: { $0 > 0 }) else { return }
            for (index, predicted) in layerState.masses.enumerated() {
                guard let predicted else { continue }
                let loss = Float(1 - PredictionQuality.massCoverage(predicted: predicted, actual: actual, k: adaptation.topK))
                // The first observation sets the average; later ones blend in.
                layerState.losses[index] = layerState.losses[index].map { adaptation.memory * $0 + (1 - adaptation.memory) * loss } ?? loss
            }
            layerState.keys = []
            layerState.masses = []
            state[layer] = layerState
        }
    }

    /// The weights `predictMass` uses for `layer` now, in the order of `parts`: the given ones
    /// without adaptation or before the layer's first observation; a part not scored yet keeps
    /// its given weight (as if its loss were the best).
    public func weights(layer: Int) -> [Float] {
        let given = parts.map(\.weight)
        guard let adaptation, let losses = state.withLock({ $0[layer]?.losses }), let best = losses.compactMap({ $0 }).min() else {
            return given
        }
        return zip(given, losses).map { weight, loss in weight * exp(-adaptation.rate * ((loss ?? best) - best)) }
    }
}
