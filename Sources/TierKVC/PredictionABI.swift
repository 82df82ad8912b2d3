import CTierKVABI
import TierKV

// The prediction half of tierkv.h: predicted attention mass per candidate block from the key
// summaries (and sketches) the hierarchy keeps for every block it holds.

@c @implementation public func tierkv_predict_mass(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ tokenCounts: UnsafePointer<Int32>?,
    _ residentKeys: UnsafePointer<tierkv_block_key>?, _ residentCount: Int, _ tailKeys: UnsafePointer<Float>?, _ tailTokens: Int,
    _ query: UnsafePointer<Float>?, _ queryCount: Int, _ scale: Float, _ scoring: Int32, _ massOut: UnsafeMutablePointer<Float>?,
    _ knownOut: UnsafeMutablePointer<Int32>?
) -> tierkv_status {
    abiCall("tierkv_predict_mass") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let mass = try mutableBuffer(massOut, count: keyCount, "mass_out")
        let known = try mutableBuffer(knownOut, count: knownOut == nil ? 0 : keyCount, "known_out")
        let prediction = try PredictionInputs(
            owner, keys, keyCount, tokenCounts, residentKeys, residentCount, tailKeys, tailTokens, query, queryCount, scale, scoring,
            missingIsError: knownOut == nil)
        let predicted = try prediction.predict()
        for index in 0..<keyCount {
            mass[index] = predicted[index]
            if !known.isEmpty { known[index] = prediction.held[index] ? 1 : 0 }
        }
    }
}

/// The candidate arguments `tierkv_predict_mass`, `tierkv_prefetch` and
/// `tierkv_predictor_predict` share, checked, as the predictors' candidates.
struct CandidateInputs {
    let candidates: PredictionCandidates

    /// - Parameters:
    ///   - positions: each candidate's block index in its sequence; NULL: the candidates' order.
    ///   - newestPosition: the sequence's newest block; < 0: the last candidate's position.
    init(
        _ owner: HierarchyHandle, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ tokenCounts: UnsafePointer<Int32>?,
        positions: UnsafePointer<Int32>? = nil, newestPosition: Int32 = -1,
        _ residentKeys: UnsafePointer<tierkv_block_key>?, _ residentCount: Int, _ tailKeys: UnsafePointer<Float>?, _ tailTokens: Int
    ) throws(TierKVError) {
        let layout = owner.hierarchy.configuration.layout
        let candidates = try blockKeys(keys, count: keyCount, "keys")
        let resident = try blockKeys(residentKeys, count: residentCount, "resident_keys")
        if let first = candidates.first ?? resident.first {
            for (name, list) in [("keys", candidates), ("resident_keys", resident)] {
                if let index = list.firstIndex(where: { $0.layer != first.layer }) {
                    throw .invalid("\(name)[\(index)] is at layer \(list[index].layer) but the first block is at layer \(first.layer); one call predicts one layer")
                }
            }
        }
        let counts = tokenCounts == nil ? nil : try buffer(tokenCounts, count: keyCount, "token_counts")
        if let counts, let bad = counts.firstIndex(where: { $0 < 1 || Int($0) > layout.tokensPerBlock }) {
            throw .invalid("token_counts[\(bad)] is \(counts[bad]); a stored block holds 1…\(layout.tokensPerBlock) tokens")
        }
        var order = Array(candidates.indices)
        if positions != nil {
            let given = try buffer(positions, count: keyCount, "positions")
            if let bad = given.firstIndex(where: { $0 < 0 }) { throw .invalid("positions[\(bad)] is \(given[bad]); block positions are ≥ 0") }
            order = given.map(Int.init)
        }
        let newest = newestPosition >= 0 ? Int(newestPosition) : (order.last ?? 0)
        if let bad = order.firstIndex(where: { $0 > newest }) {
            throw .invalid("positions[\(bad)] is \(order[bad]), after newest_position \(newest); the newest block is the sequence's last")
        }
        let rowValues = layout.kvHeads * layout.headDim
        guard tailTokens >= 0, tailTokens <= Int.max / rowValues else { throw .invalid("tail_tokens \(UInt(bitPattern: tailTokens)) is too large") }
        let tail = try buffer(tailKeys, count: tailTokens * rowValues, "tail_keys")
        if let bad = tail.firstIndex(where: { !$0.isFinite }) { throw .invalid("tail_keys[\(bad)] is \(tail[bad]); keys must be finite") }
        self.candidates = PredictionCandidates(
            layer: Int(candidates.first?.layer ?? 0), keys: candidates, positions: order,
            tokenCounts: counts.map { $0.map(Int.init) }, newestPosition: newest, alwaysResidentKeys: resident, tailKeys: Array(tail))
    }
}

/// A query argument checked against the summaries' shape: `query_heads × head_dim` finite floats.
func queryHint(_ query: UnsafePointer<Float>?, count: Int, _ shape: KeySummaryShape, _ name: String) throws(TierKVError) -> QueryHint {
    guard count == shape.queryValueCount else {
        throw .invalid("\(name): query_count is \(count); query_heads × head_dim = \(shape.queryHeads) × \(shape.headDim) = \(shape.queryValueCount)")
    }
    let values = try buffer(query, count: count, name)
    if let bad = values.firstIndex(where: { !$0.isFinite }) { throw .invalid("\(name)[\(bad)] is \(values[bad]); queries must be finite") }
    return QueryHint(Array(values))
}

/// Checks that the hierarchy holds a summary of every block a query is scored on, when the
/// caller did not ask for flags instead; returns, per candidate, whether it holds one.
func summaryFlags(_ summaries: BlockSummaryTable, _ candidates: PredictionCandidates, missingIsError: Bool) throws(TierKVError) -> [Bool] {
    let held = candidates.keys.map { summaries.contains($0) }
    if missingIsError {
        if let index = held.firstIndex(of: false) {
            throw TierKVError(.notFound, "block \(candidates.keys[index]) (keys[\(index)]) has no key summary: the hierarchy does not hold it (pass known_out to get mass 0 and a flag instead)")
        }
        if let index = candidates.alwaysResidentKeys.firstIndex(where: { !summaries.contains($0) }) {
            throw TierKVError(.notFound, "block \(candidates.alwaysResidentKeys[index]) (resident_keys[\(index)]) has no key summary: the hierarchy does not hold it")
        }
    }
    return held
}

/// The arguments `tierkv_predict_mass` and `tierkv_prefetch` share, checked, as the bound
/// predictor's candidates and hint.
struct PredictionInputs {
    let candidates: PredictionCandidates
    /// Whether the hierarchy holds each candidate's summary.
    let held: [Bool]
    let predictor: QuestBoundPredictor
    let query: QueryHint

    /// - Parameter missingIsError: a candidate or resident block without a summary is
    ///   `NOT_FOUND` naming it; otherwise such a candidate gets mass 0 and a resident one is left out.
    init(
        _ owner: HierarchyHandle, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ tokenCounts: UnsafePointer<Int32>?,
        _ residentKeys: UnsafePointer<tierkv_block_key>?, _ residentCount: Int, _ tailKeys: UnsafePointer<Float>?, _ tailTokens: Int,
        _ query: UnsafePointer<Float>?, _ queryCount: Int, _ scale: Float, _ scoring: Int32, missingIsError: Bool
    ) throws(TierKVError) {
        let summaries = try keptSummaries(owner)
        let scoring = try summaryScoring(scoring, hasSketches: summaries.shape.sketchBits > 0)
        guard scale.isFinite else { throw .invalid("scale is \(scale); pass a positive scale or 0 for 1/sqrt(head_dim)") }
        candidates = try CandidateInputs(owner, keys, keyCount, tokenCounts, residentKeys, residentCount, tailKeys, tailTokens).candidates
        self.query = try queryHint(query, count: queryCount, summaries.shape, "query")
        held = try summaryFlags(summaries, candidates, missingIsError: missingIsError)
        predictor = QuestBoundPredictor(
            summaries: summaries, tokensPerBlock: owner.hierarchy.configuration.layout.tokensPerBlock, scale: scale > 0 ? scale : nil,
            scoring: scoring)
    }

    /// The predicted mass per candidate, 0 for those without a summary.
    func predict() throws(TierKVError) -> [Float] {
        let predicted = try predictor.predictMass(candidates, hint: query) ?? []
        return held.indices.map { held[$0] && $0 < predicted.count ? predicted[$0] : 0 }
    }
}

/// The hierarchy's key summaries, or an error saying how to keep them.
func keptSummaries(_ owner: HierarchyHandle) throws(TierKVError) -> BlockSummaryTable {
    guard let summaries = owner.hierarchy.summaries else {
        throw .invalid("this hierarchy keeps no key summaries; open it with \"key_summaries\": \"from-keys\" to predict")
    }
    return summaries
}

@c @implementation public func tierkv_rebuild_key_summaries(
    _ handle: OpaquePointer?, _ batchBlocks: Int, _ missingOut: UnsafeMutablePointer<UInt64>?,
    _ rebuiltOut: UnsafeMutablePointer<UInt64>?, _ failedOut: UnsafeMutablePointer<UInt64>?
) -> tierkv_status {
    abiCall("tierkv_rebuild_key_summaries") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        guard owner.hierarchy.summaries != nil else {
            throw .invalid("this hierarchy keeps no key summaries; open it with \"key_summaries\": \"from-keys\"")
        }
        guard batchBlocks >= 0 else { throw .invalid("batch_blocks \(UInt(bitPattern: batchBlocks)) is too large") }
        let result = try owner.hierarchy.rebuildKeySummaries(batchBlocks: batchBlocks == 0 ? nil : batchBlocks)
        missingOut?.pointee = UInt64(result.missing)
        rebuiltOut?.pointee = UInt64(result.rebuilt)
        failedOut?.pointee = UInt64(result.failed)
    }
}

/// `TIERKV_SCORING_*` to the predictor's scoring.
func summaryScoring(_ raw: Int32, hasSketches: Bool) throws(TierKVError) -> SummaryScoring {
    switch raw {
    case TIERKV_SCORING_DEFAULT: return hasSketches ? .sketch : .boundAndMoment
    case TIERKV_SCORING_BOUND: return .bound
    case TIERKV_SCORING_BOUND_MOMENT: return .boundAndMoment
    case TIERKV_SCORING_SKETCH:
        guard hasSketches else {
            throw .invalid("TIERKV_SCORING_SKETCH needs key sketches; this hierarchy keeps summaries only (open it with \"key_sketch_bits\": 1, 2 or 4)")
        }
        return .sketch
    default:
        throw .invalid("scoring is \(raw); expected TIERKV_SCORING_DEFAULT (0), _BOUND (1), _BOUND_MOMENT (2) or _SKETCH (3)")
    }
}
