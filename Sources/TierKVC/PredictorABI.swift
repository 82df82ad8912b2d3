import CTierKVABI
import TierKV

// The learned-prediction half of tierkv.h: a combined predictor (speculated query, freshest
// query, attention history) whose weights follow the attention each layer then had.

@c @implementation public func tierkv_predictor_create(
    _ handle: OpaquePointer?, _ options: UnsafePointer<tierkv_predictor_options>?, _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> tierkv_status {
    abiCall("tierkv_predictor_create") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let out = try required(out, "out")
        out.pointee = nil
        let predictor = try PredictorHandle(owner: owner, options: try required(options, "options").pointee)
        let pointer = HandleRegistry.register(predictor)
        owner.openPredictors.withLock { $0[UInt(bitPattern: pointer)] = predictor }
        out.pointee = pointer
    }
}

@c @implementation public func tierkv_predictor_predict(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ tokenCounts: UnsafePointer<Int32>?,
    _ positions: UnsafePointer<Int32>?, _ newestPosition: Int32, _ residentKeys: UnsafePointer<tierkv_block_key>?,
    _ residentCount: Int, _ tailKeys: UnsafePointer<Float>?, _ tailTokens: Int, _ speculatedQuery: UnsafePointer<Float>?,
    _ query: UnsafePointer<Float>?, _ queryCount: Int, _ massOut: UnsafeMutablePointer<Float>?, _ knownOut: UnsafeMutablePointer<Int32>?
) -> tierkv_status {
    abiCall("tierkv_predictor_predict") { () throws(TierKVError) in
        let predictor = try HandleRegistry.lookup(handle, as: PredictorHandle.self, "predictor")
        let mass = try mutableBuffer(massOut, count: keyCount, "mass_out")
        let known = try mutableBuffer(knownOut, count: knownOut == nil ? 0 : keyCount, "known_out")
        let candidates = try CandidateInputs(
            predictor.owner, keys, keyCount, tokenCounts, positions: positions, newestPosition: newestPosition, residentKeys,
            residentCount, tailKeys, tailTokens
        ).candidates
        let shape = predictor.owner.hierarchy.summaries?.shape
        func hint(_ pointer: UnsafePointer<Float>?, _ name: String) throws(TierKVError) -> QueryHint? {
            guard pointer != nil else { return nil }
            guard let shape else {
                throw .invalid("\(name) was passed, but this hierarchy keeps no key summaries to score it on; pass NULL (the predictor then uses history alone)")
            }
            return try queryHint(pointer, count: queryCount, shape, name)
        }
        let hints = PredictorHandle.Hints(speculated: try hint(speculatedQuery, "speculated_query"), query: try hint(query, "query"))
        let held = try predictor.held(candidates, hints, missingIsError: knownOut == nil)
        let predicted = try predictor.predict(candidates, hints)
        for index in 0..<keyCount {
            mass[index] = held[index] ? predicted?[index] ?? 0 : 0
            if !known.isEmpty { known[index] = held[index] ? 1 : 0 }
        }
    }
}

@c @implementation public func tierkv_predictor_observe(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ mass: UnsafePointer<Float>?
) -> tierkv_status {
    abiCall("tierkv_predictor_observe") { () throws(TierKVError) in
        let predictor = try HandleRegistry.lookup(handle, as: PredictorHandle.self, "predictor")
        let blocks = try blockKeys(keys, count: keyCount, "keys")
        if let first = blocks.first, let index = blocks.firstIndex(where: { $0.layer != first.layer }) {
            throw .invalid("keys[\(index)] is at layer \(blocks[index].layer) but keys[0] is at layer \(first.layer); one call observes one layer")
        }
        let masses = try buffer(mass, count: keyCount, "mass")
        if let bad = masses.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw .invalid("mass[\(bad)] is \(masses[bad]); attention masses are finite and ≥ 0")
        }
        guard let layer = blocks.first?.layer else { return }
        // The mix scores its last prediction first; the history then takes the step in.
        try predictor.combined.observe(layer: Int(layer), keys: blocks, mass: Array(masses))
        try predictor.history.observe(layer: Int(layer), keys: blocks, mass: Array(masses))
    }
}

@c @implementation public func tierkv_predictor_weights(
    _ handle: OpaquePointer?, _ layer: UInt32, _ weightsOut: UnsafeMutablePointer<Float>?
) -> tierkv_status {
    abiCall("tierkv_predictor_weights") { () throws(TierKVError) in
        let predictor = try HandleRegistry.lookup(handle, as: PredictorHandle.self, "predictor")
        let out = try mutableBuffer(weightsOut, count: PredictorHandle.partCount, "weights_out")
        for (index, weight) in predictor.combined.weights(layer: Int(layer)).enumerated() { out[index] = weight }
    }
}

@c @implementation public func tierkv_predictor_forget(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int
) -> tierkv_status {
    abiCall("tierkv_predictor_forget") { () throws(TierKVError) in
        let predictor = try HandleRegistry.lookup(handle, as: PredictorHandle.self, "predictor")
        predictor.history.forget(try blockKeys(keys, count: keyCount, "keys"))
    }
}

@c @implementation public func tierkv_predictor_release(_ handle: OpaquePointer?) -> tierkv_status {
    abiCall("tierkv_predictor_release") { () throws(TierKVError) in
        let removed = try HandleRegistry.remove(handle, as: PredictorHandle.self, "predictor")
        removed.owner.openPredictors.withLock { $0[UInt(bitPattern: handle)] = nil }
    }
}

/// A `tierkv_predictor`: a `CombinedPredictor` of the speculated query, the freshest query and
/// the history, in that order. Both query parts score with one bound predictor; the hints of the
/// prediction in progress are on a board the parts read, so predictions run one at a time.
final class PredictorHandle: @unchecked Sendable {
    // @unchecked: `board` is written and read only under `predicting`; the rest is immutable or
    // thread-safe.
    static let partCount = 3
    let owner: HierarchyHandle
    let combined: CombinedPredictor
    let history: AttentionHistoryPredictor
    /// Whether each query part has a weight (a part of weight 0 never scores).
    private let queryPartsUsed: (speculated: Bool, query: Bool)
    private let board: HintBoard
    private let predicting = PlainLock()

    struct Hints {
        var speculated: QueryHint?
        var query: QueryHint?
    }

    init(owner: HierarchyHandle, options: tierkv_predictor_options) throws(TierKVError) {
        let expected = UInt64(MemoryLayout<tierkv_predictor_options>.size)
        guard options.struct_size == expected else {
            throw .invalid("options->struct_size is \(options.struct_size); set it to sizeof(tierkv_predictor_options) = \(expected) (start from TIERKV_PREDICTOR_OPTIONS_INIT)")
        }
        guard options.reserved == 0 else { throw .invalid("options->reserved is \(options.reserved); set it to 0") }
        let weights = [
            ("speculative_weight", options.speculative_weight), ("query_weight", options.query_weight),
            ("history_weight", options.history_weight),
        ]
        if let (name, bad) = weights.first(where: { !($0.1 >= 0) || !$0.1.isFinite }) {
            throw .invalid("options->\(name) is \(bad); weights are finite and ≥ 0")
        }
        guard weights.contains(where: { $0.1 > 0 }) else {
            throw .invalid("options->speculative_weight, query_weight and history_weight are all 0; give at least one part a weight (TIERKV_PREDICTOR_OPTIONS_INIT has 0.5, 0.3, 0.2)")
        }
        guard options.scale.isFinite else { throw .invalid("options->scale is \(options.scale); pass a positive scale or 0 for 1/sqrt(head_dim)") }
        queryPartsUsed = (options.speculative_weight > 0, options.query_weight > 0)
        var bound: QuestBoundPredictor?
        if queryPartsUsed.speculated || queryPartsUsed.query {
            guard let summaries = owner.hierarchy.summaries else {
                throw .invalid("options->speculative_weight (\(options.speculative_weight)) and query_weight (\(options.query_weight)) score queries on key summaries, which this hierarchy does not keep; open it with \"key_summaries\": \"from-keys\", or set both to 0 for history alone")
            }
            bound = QuestBoundPredictor(
                summaries: summaries, tokensPerBlock: owner.hierarchy.configuration.layout.tokensPerBlock,
                scale: options.scale > 0 ? options.scale : nil,
                scoring: try summaryScoring(options.scoring, hasSketches: summaries.shape.sketchBits > 0))
        } else if options.scoring != 0 || options.scale != 0 {
            throw .invalid("options->scale (\(options.scale)) and scoring (\(options.scoring)) apply to the query parts, which have weight 0; set both to 0")
        }
        do {
            history = try AttentionHistoryPredictor(
                decay: options.history_decay, recencyWeight: options.recency_weight, recencyWindowBlocks: options.recency_window_blocks)
        } catch {
            throw .invalid("options: \(error.message) (history_decay, recency_weight, recency_window_blocks; TIERKV_PREDICTOR_OPTIONS_INIT has 0.9, 0.2, 8)")
        }
        board = HintBoard()
        let adaptation = options.adapt_top_k == 0
            ? nil : CombinedPredictor.Adaptation(topK: Int(options.adapt_top_k), rate: options.adapt_rate, memory: options.adapt_memory)
        do {
            combined = try CombinedPredictor(
                [
                    (HintedPart("speculative", bound, board, \.speculated), options.speculative_weight),
                    (HintedPart("query", bound, board, \.query), options.query_weight),
                    (history, options.history_weight),
                ], adaptation: adaptation)
        } catch {
            throw .invalid("options: \(error.message) (adapt_rate, adapt_memory; TIERKV_PREDICTOR_OPTIONS_INIT has 100, 0.9)")
        }
        self.owner = owner
    }

    /// Per candidate, whether the parts that will score it can: the hierarchy holds the block,
    /// and a summary of it when a query part scores this prediction. With `missingIsError`, a
    /// block that fails this is `NOT_FOUND` naming it.
    func held(_ candidates: PredictionCandidates, _ hints: Hints, missingIsError: Bool) throws(TierKVError) -> [Bool] {
        let scoresQueries = (queryPartsUsed.speculated && hints.speculated != nil) || (queryPartsUsed.query && hints.query != nil)
        if scoresQueries, let summaries = owner.hierarchy.summaries {
            return try summaryFlags(summaries, candidates, missingIsError: missingIsError)
        }
        let held = candidates.keys.map { owner.hierarchy.fastestTier(of: $0) != nil }
        if missingIsError, let index = held.firstIndex(of: false) {
            throw TierKVError(.notFound, "block \(candidates.keys[index]) (keys[\(index)]) is not held by the hierarchy (pass known_out to get mass 0 and a flag instead)")
        }
        return held
    }

    /// The mix's prediction with these hints, nil when no part had anything to go on.
    func predict(_ candidates: PredictionCandidates, _ hints: Hints) throws(TierKVError) -> [Float]? {
        try predicting.withLock { () throws(TierKVError) -> [Float]? in
            board.hints = hints
            defer { board.hints = Hints() }
            return try combined.predictMass(candidates, hint: nil)
        }
    }
}

/// The hints of the prediction in progress (see `PredictorHandle`).
private final class HintBoard: @unchecked Sendable {
    var hints = PredictorHandle.Hints()
}

/// One query part of a `tierkv_predictor`: the bound predictor scoring the hint it is given on
/// the board, nothing (left out of the mix) without one.
private final class HintedPart: BlockPredictor, @unchecked Sendable {
    // @unchecked: the board is read only inside `PredictorHandle.predict`'s lock.
    let name: String
    private let bound: QuestBoundPredictor?
    private let board: HintBoard
    private let pick: KeyPath<PredictorHandle.Hints, QueryHint?>

    init(_ name: String, _ bound: QuestBoundPredictor?, _ board: HintBoard, _ pick: KeyPath<PredictorHandle.Hints, QueryHint?>) {
        self.name = name
        self.bound = bound
        self.board = board
        self.pick = pick
    }

    func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? {
        guard let bound, let query = board.hints[keyPath: pick] else { return nil }
        return try bound.predictMass(candidates, hint: query)
    }
}
