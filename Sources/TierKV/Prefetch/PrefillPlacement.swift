import TierKVCore

/// What `Hierarchy.placeAfterPrefill` chose and moved.
public struct PrefillPlacement: Sendable {
    /// Blocks chosen (the best-attended of each layer): made resident in warm, or left in hot.
    public var chosen: Int
    /// Of them, the blocks that sat only in cold and are read back into warm.
    public var fromCold: Int
    /// Pins the chosen blocks that were not in hot in warm until released: release it once it
    /// `isReady`, or cancel it to withdraw the reads not yet started. Nil when none moves.
    public var request: ResidencyRequest?
}

extension Hierarchy {
    /// Places the prompt's blocks by the attention the prefill paid them, before decode starts.
    ///
    /// A prefill writes layer after layer, so by its end the hot and warm tiers hold the last
    /// layers' blocks and the first layers' went to cold, whatever decode will attend. The
    /// attention of the last prompt tokens (SnapKV's observation window, Li et al. 2024) picks
    /// the blocks decode attends next, at a cost the engine can afford once per prompt (the
    /// window's queries against the prompt's keys). Given it per layer, this reports it to the
    /// attention-aware policies (H2O, TOVA) and makes the blocks that cover `coverage` of each
    /// layer's mass resident in warm, the best-attended touched last (a recency policy keeps them
    /// longest); blocks in cold are read back, which overlaps the rest of the prefill.
    ///
    /// - Parameters:
    ///   - layers: per layer (and sequence), its prompt blocks and the mass each received, summed
    ///     over the window's queries and query heads (any scale: each layer is ranked on its own).
    ///   - coverage: share of each layer's mass the chosen blocks hold, in (0, 1].
    ///   - blockLimit: the most blocks chosen in all (a share of the warm tier, which must keep
    ///     room for the decode's own arrivals); the best-attended across layers win, each layer's
    ///     mass normalised to 1.
    /// - Throws: `.invalidArgument` for a coverage outside (0, 1], a negative limit, a mass count
    ///   that differs from the key count, a negative or non-finite mass, or a key given twice;
    ///   the errors of `makeResident`.
    public func placeAfterPrefill(
        _ layers: [(keys: [BlockKey], mass: [Float])], coverage: Double, blockLimit: Int
    ) throws(TierKVError) -> PrefillPlacement {
        guard coverage > 0, coverage <= 1 else { throw .invalid("prefill placement coverage \(coverage) must be in (0, 1]") }
        guard blockLimit >= 0 else { throw .invalid("prefill placement block limit \(blockLimit) must be ≥ 0") }
        // Everything is checked before anything is reported or moved.
        var seen = Set<BlockKey>()
        for (index, layer) in layers.enumerated() {
            guard layer.keys.count == layer.mass.count else {
                throw .invalid("prefill placement layer entry \(index) has \(layer.keys.count) keys and \(layer.mass.count) masses")
            }
            if let bad = layer.mass.first(where: { !($0 >= 0 && $0.isFinite) }) {
                throw .invalid("prefill placement layer entry \(index) has mass \(bad); expected finite values ≥ 0")
            }
            for key in layer.keys where !seen.insert(key).inserted {
                throw .invalid("prefill placement was given block \(key) twice (layer entry \(index)); each block belongs to one layer entry once")
            }
        }
        var candidates: [(key: BlockKey, share: Float)] = []
        for layer in layers {
            let total = layer.mass.reduce(0.0) { $0 + Double($1) }
            guard total > 0 else { continue }
            try reportAttention(layer.keys, mass: layer.mass)
            var covered = 0.0
            for block in layer.mass.indices.sorted(by: { layer.mass[$0] > layer.mass[$1] }) {
                guard covered < coverage * total, layer.mass[block] > 0 else { break }
                covered += Double(layer.mass[block])
                candidates.append((layer.keys[block], Float(Double(layer.mass[block]) / total)))
            }
        }
        // The best-attended across layers within the limit, then the least attended first so
        // that the best are the most recently used.
        let chosen = candidates.sorted { $0.share > $1.share }.prefix(blockLimit).reversed().map(\.key)
        // Blocks in hot stay there (a copy back to warm would only spend the device link).
        let moving = chosen.filter { fastestTier(of: $0) != .hot }
        let fromCold = moving.count { fastestTier(of: $0) == .cold }
        let request = moving.isEmpty ? nil : try makeResident(moving, in: .warm, priority: .prefetch)
        return PrefillPlacement(chosen: chosen.count, fromCold: fromCold, request: request)
    }
}
