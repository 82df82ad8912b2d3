#if canImport(Glibc)
import Glibc
#endif
import TierKVCore

/// H2O-style prediction from what the engine reported: each block's attention mass accumulated
/// with exponential decay per step of its layer (heavy hitters stay heavy), blended with recency
/// (the newest blocks are attended most). Needs no hint.
///
/// Thread-safe: one lock around the per-block state.
public final class AttentionHistoryPredictor: BlockPredictor {
    /// Kept fraction of the accumulated mass per step (0.9: a step's mass fades over ~10 steps).
    public let decay: Float
    /// Share of the prediction given to recency.
    public let recencyWeight: Float
    /// Recency falls as exp(−age/window), age in blocks behind the newest.
    public let recencyWindowBlocks: Float
    private let state: Locked<State>
    public var name: String { "history" }

    private struct State {
        var mass: [BlockKey: Entry] = [:]
        var steps: [Int: UInt32] = [:]  // per layer
        /// Entries at which the next sweep for faded ones runs.
        var sweepAt = 4096
    }

    /// An accumulated mass that decayed below this is forgotten (a layer's step adds 1 in all).
    public static let forgottenBelow: Float = 1e-6

    private struct Entry {
        var value: Float
        var step: UInt32
        /// The layer whose steps decay it (the `layer` it was observed at).
        var layer: Int
    }

    public init(decay: Float = 0.9, recencyWeight: Float = 0.2, recencyWindowBlocks: Float = 8) throws(TierKVError) {
        guard decay > 0, decay <= 1 else { throw .invalid("history decay is \(decay); expected 0 < decay ≤ 1") }
        guard recencyWeight >= 0, recencyWeight <= 1 else { throw .invalid("recency weight is \(recencyWeight); expected 0...1") }
        guard recencyWindowBlocks > 0 else { throw .invalid("recency window is \(recencyWindowBlocks) blocks; expected > 0") }
        self.decay = decay
        self.recencyWeight = recencyWeight
        self.recencyWindowBlocks = recencyWindowBlocks
        state = Locked(State())
    }

    /// Records one step of `layer`: the mass each block received (blocks not listed received 0).
    public func observe(layer: Int, keys: [BlockKey], mass: [Float]) throws(TierKVError) {
        guard keys.count == mass.count else { throw .invalid("observe got \(keys.count) keys and \(mass.count) masses") }
        state.withLock { state in
            let step = state.steps[layer, default: 0] &+ 1
            state.steps[layer] = step
            for (key, value) in zip(keys, mass) {
                let old = state.mass[key].map { $0.value * pow(decay, Float(step &- $0.step)) } ?? 0
                state.mass[key] = Entry(value: old + value, step: step, layer: layer)
            }
            if state.mass.count >= state.sweepAt { sweep(&state) }
        }
    }

    /// Drops the entries whose mass faded below `forgottenBelow`, so that a long-running engine's
    /// history stays the size of what it still remembers (amortised: the next sweep waits until
    /// the entries have doubled).
    private func sweep(_ state: inout State) {
        let steps = state.steps
        state.mass = state.mass.filter { _, entry in
            let now = steps[entry.layer] ?? entry.step
            return entry.value * pow(decay, Float(now &- entry.step)) >= Self.forgottenBelow
        }
        state.sweepAt = max(4096, 2 * state.mass.count)
    }

    /// Blocks with a remembered mass (for tests and metrics).
    public var rememberedBlocks: Int { state.withLock { $0.mass.count } }

    /// Forgets blocks that left every tier.
    public func forget(_ keys: [BlockKey]) { state.withLock { state in for key in keys { state.mass[key] = nil } } }

    public func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        let accumulated = state.withLock { state -> [Float]? in
            guard let step = state.steps[candidates.layer] else { return nil }
            return candidates.keys.map { key in
                state.mass[key].map { $0.value * pow(decay, Float(step &- $0.step)) } ?? 0
            }
        }
        guard let accumulated else { return nil }
        let recency = candidates.positions.map { exp(-Float(candidates.newestPosition - $0) / recencyWindowBlocks) }
        let history = normalised(accumulated), recent = normalised(recency)
        return zip(history, recent).map { (1 - recencyWeight) * $0 + recencyWeight * $1 }
    }
}

/// Scales to sum 1 (all zeros stay zeros).
func normalised(_ values: [Float]) -> [Float] {
    let sum = values.reduce(0, +)
    return sum > 0 ? values.map { $0 / sum } : values
}
