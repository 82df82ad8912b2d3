/// How good a prediction was, against the attention computed exactly.
public enum PredictionQuality {
    /// Indices of the `k` largest values, largest first (ties to the lower index).
    public static func topK(_ values: [Float], k: Int) -> [Int] {
        let count = min(max(0, k), values.count)
        guard count > 0 else { return [] }
        return Array(values.indices.sorted { values[$0] != values[$1] ? values[$0] > values[$1] : $0 < $1 }.prefix(count))
    }

    /// Share of the true top-k blocks (by `actual` mass) that the predicted top-k holds.
    public static func recall(predicted: [Float], actual: [Float], k: Int) -> Double {
        let truth = topK(actual, k: k)
        guard !truth.isEmpty else { return 1 }
        let chosen = Set(topK(predicted, k: k))
        return Double(truth.count { chosen.contains($0) }) / Double(truth.count)
    }

    /// Share of `relevant` (candidate indices, e.g. the blocks holding a layer's attention up to
    /// its coverage) that the predicted top-k holds.
    public static func recall(predicted: [Float], relevant: [Int], k: Int) -> Double {
        guard !relevant.isEmpty else { return 1 }
        let chosen = Set(topK(predicted, k: k))
        return Double(relevant.count { chosen.contains($0) }) / Double(relevant.count)
    }

    /// Attention mass of the predicted top-k ÷ mass of the true top-k (1 when the selection holds
    /// as much mass as the best possible one of its size).
    public static func massCoverage(predicted: [Float], actual: [Float], k: Int) -> Double {
        let best = topK(actual, k: k).reduce(0.0) { $0 + Double(actual[$1]) }
        guard best > 0 else { return 1 }
        return topK(predicted, k: k).reduce(0.0) { $0 + Double(actual[$1]) } / best
    }
}
