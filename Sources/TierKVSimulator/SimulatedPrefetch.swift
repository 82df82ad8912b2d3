import Foundation
import TierKV

/// Which predictor drives prefetch in a simulation.
public enum PrefetchKind: String, Sendable, CaseIterable, Codable {
    case none, bound, speculative, history, combined
    /// Not a predictor: the target layer's exact attention, which only a simulation knows. It
    /// bounds what any predictor can achieve with the same lookahead, budgets and links. Exact
    /// for a layer of the same step; for a layer of the next step (the lookahead wraps) it is
    /// that layer's attention in this step, since the next step's query does not exist yet.
    case oracle
}

/// The oracle's "prediction": the exact mass the simulation hands it just before the prefetch.
final class ExactMassPredictor: BlockPredictor, @unchecked Sendable {
    // @unchecked: set and read on the simulation's thread only.
    var answer: [Float]?
    var name: String { "oracle" }
    func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? { answer }
}

/// Prefetch settings of a decode simulation (`--prefetch`, `--lookahead`, `--prefetch-budget`).
public struct PrefetchSettings: Sendable, Equatable {
    public var kind: PrefetchKind = .none
    /// Layers ahead a prefetch is issued: while layer L computes, the blocks of layer L+d are
    /// fetched (0 predicts a layer only when it starts: no time to fetch anything).
    public var lookaheadLayers = 1
    /// The best-predicted blocks of a layer made resident in hot; nil: a quarter of the layer's
    /// share of the hot tier (the rest holds what the layers need: a larger budget turns the
    /// cyclic walk over layers into LRU thrash).
    public var budgetBlocks: Int?
    /// The best-predicted blocks of a layer staged from cold into warm; nil: the layer's share of
    /// the hot tier.
    public var stagingBudgetBlocks: Int?
    /// Weights of speculative, bound and history in `combined`. With sketch scoring, (0.5, 0.3,
    /// 0.2) is the best of 6 settings on both judges: on the trace recorded from a trained model
    /// every setting that keeps history is within 0.01 recall, and on the generator history is
    /// the weakest part (0.60 against 0.86–0.88). With summary scoring the trace favoured history
    /// (0.3, 0.2, 0.5; docs/measurements.md).
    public var combinedWeights: (speculative: Float, bound: Float, history: Float) = (0.5, 0.3, 0.2)
    /// `combined` learns its weights per layer from the attention each layer then had
    /// (`CombinedPredictor.Adaptation`, k = the hot budget per layer), starting from
    /// `combinedWeights`; nil keeps them fixed (`--prefetch-adapt`). Rate 100 was the best of
    /// 10 / 30 / 100 on the generator (combined recall 0.80 → 0.86, stall 0.171 → 0.157 s) and on
    /// two traces of a trained 12-layer model (0.71 → 0.80 at hot 10%), and equal to fixed
    /// weights on the 4-layer model's trace (docs/measurements.md, session 13).
    public var adaptationRate: Float? = 100
    /// The generator's speculated query for L+d is the true query plus Gaussian noise of this
    /// relative norm per layer of distance: a model of InfiniGen's approximation error (its paper
    /// reports speculated and true attention inputs highly similar, not identical). Recorded
    /// traces carry the real speculated query instead. On a trained 12-layer model the recorded
    /// speculation's relative error was 0.27 mean / 0.18 median from layer L-1's input (so 0.3
    /// is about InfiniGen's) and 0.11 / 0.09 from its residual after attention.
    public var speculationError: Float = 0.3
    /// H2O history: decay per step and the share given to recency.
    public var historyDecay: Float = 0.9
    public var historyRecencyWeight: Float = 0.2
    /// How `bound` and `speculative` score a block (`--prefetch-scoring`): token by token from
    /// 2-bit key sketches. With the layer's exact query its top-k recall is 0.87–0.92 on the
    /// trace recorded from a trained model and 0.98 on the generator, where bound+moment (the
    /// best of the summary scorings) reaches 0.54–0.66 and 0.70; with the hints a prefetcher
    /// has (the previous token's query, a speculated one) 0.58–0.71 and 0.86–0.88 against
    /// 0.48–0.64 and 0.66–0.67. The price: summary and sketch take 15.6% of a block's bytes
    /// (Llama-3-8B) where the summary alone takes 9.4%, and scoring is ~13× the bound's time.
    public var scoring: SummaryScoring = .sketch
    /// Bits per key element of the key sketches `sketch` scoring reads (`--prefetch-sketch-bits`):
    /// 1, 2 or 4. Kept only when the scoring is `sketch`.
    public var sketchBits = 2
    /// With `sketch` scoring, the candidates with the highest Quest bounds scored from their
    /// sketches (`--prefetch-sketch-shortlist`); nil: every candidate.
    public var sketchShortlist: Int?
    /// The prefetcher stops at the blocks covering this share of a layer's predicted mass
    /// (`Prefetcher.Configuration.coverage`; 1 fills the budgets).
    public var coverage = 1.0
    /// Layers ahead of a second, staging-only prefetch (`--stage-ahead`; 0: none). While layer L
    /// runs, the cold blocks predicted for layer L+d are read into warm, up to the staging
    /// budget and what the NVMe can read in d layers' time; nothing is pinned in hot. With d =
    /// the model's layers this stages the same layer of the next step, which has a whole step to
    /// arrive where the lookahead's prefetch has one layer, far too short for NVMe reads.
    public var stageAheadLayers = 0

    public init() {}

    public static func == (a: PrefetchSettings, b: PrefetchSettings) -> Bool {
        a.kind == b.kind && a.lookaheadLayers == b.lookaheadLayers && a.budgetBlocks == b.budgetBlocks
            && a.stagingBudgetBlocks == b.stagingBudgetBlocks
            && a.combinedWeights == b.combinedWeights && a.adaptationRate == b.adaptationRate && a.speculationError == b.speculationError
            && a.historyDecay == b.historyDecay && a.historyRecencyWeight == b.historyRecencyWeight && a.scoring == b.scoring
            && a.sketchBits == b.sketchBits && a.sketchShortlist == b.sketchShortlist && a.coverage == b.coverage && a.stageAheadLayers == b.stageAheadLayers
    }
}

/// Top-k recall and mass coverage of one predictor, averaged over (step, layer, sequence).
public struct PredictorQuality: Sendable, Equatable {
    /// Share of the true top-k blocks in the predicted top-k.
    public var recall = 0.0
    /// Share of the blocks the layer needed (its coverage set, less the always-resident ones) in
    /// the predicted top-k: what decides whether a prefetch spares a stall.
    public var neededRecall = 0.0
    public var massCoverage = 0.0
    public var samples = 0
}

/// What prefetch and placement did in a decode simulation.
public struct PrefetchReport: Sendable {
    public var settings: PrefetchSettings
    public var budgetBlocks: Int
    public var stagingBudgetBlocks: Int
    /// k of the top-k recall: the hot tier's blocks per layer and sequence.
    public var topK: Int
    public var statistics: PrefetchStatistics
    /// What the staging-only prefetch `stageAheadLayers` ahead did (nil when off).
    public var stageAhead: PrefetchStatistics?
    /// Model bytes the staging-only prefetch read for blocks their layer did not use.
    public var stageAheadWastedBytes: Double
    /// Model bytes wasted (the statistics count stand-in bytes).
    public var wastedBytes: Double
    /// By predictor: `bound_exact` (Quest with the layer's own query, lookahead 0), `bound` (the
    /// previous token's query for the layer), `speculative`, `history`, `combined`.
    public var quality: [String: PredictorQuality]
    /// `combined`'s weights at the end (speculative, bound, history), averaged over layers and
    /// normalised: the given ones, or the learned ones with `settings.adaptationRate`.
    public var combinedWeightsUsed: [Double] = []
}

/// The engine's side of prediction in a simulation: keeps the queries the engine would have, makes
/// the hints (speculated queries), drives the library's `Prefetcher`, and measures every
/// predictor against the exact attention.
final class SimulatedPrefetch {
    let settings: PrefetchSettings
    let hierarchy: Hierarchy
    let summaries: BlockSummaryTable
    /// Values of one key row, `[head][dim]` (the tail keys come in such rows).
    private var rowValues: Int { summaries.shape.kvHeads * summaries.shape.headDim }
    let bound: QuestBoundPredictor
    let speculative: SpeculativePredictor
    let history: AttentionHistoryPredictor
    let combined: CombinedPredictor
    let oracle = ExactMassPredictor()
    let prefetcher: Prefetcher?
    /// The staging-only prefetcher for `settings.stageAheadLayers` (no hot budget).
    let stager: Prefetcher?
    let layers: Int
    let sequences: Int
    let topK: Int
    let budgetBlocks: Int
    let stagingBudgetBlocks: Int
    let sinkBlocks: Int
    let seed: UInt64
    /// [sequence][layer]: the newest exact query the engine computed for the layer.
    private var lastQueries: [[[Float]?]]
    /// Tickets by the global layer index (step × layers + layer) of their target, then sequence.
    private var tickets: [Int: [Int: PrefetchTicket]] = [:]
    /// The stager's tickets, keyed the same way.
    private var stagingTickets: [Int: [Int: PrefetchTicket]] = [:]
    private var qualitySums: [String: PredictorQuality] = [:]

    init(
        settings: PrefetchSettings, hierarchy: Hierarchy, layers: Int, sequences: Int, topK: Int, sinkBlocks: Int, seed: UInt64,
        hostToDeviceBytesPerSecond: Double, coldReadBytesPerSecond: Double
    ) throws(TierKVError) {
        guard let summaries = hierarchy.summaries else { throw .invalid("prediction needs the hierarchy's key summaries") }
        guard settings.lookaheadLayers >= 0 else { throw .invalid("lookahead is \(settings.lookaheadLayers) layers; expected ≥ 0") }
        guard settings.lookaheadLayers <= layers else {
            throw .invalid("lookahead is \(settings.lookaheadLayers) layers; the model has \(layers) (at most one step ahead)")
        }
        guard settings.stageAheadLayers >= 0, settings.stageAheadLayers <= layers else {
            throw .invalid("stage-ahead is \(settings.stageAheadLayers) layers; expected 0 (off) to \(layers) (the same layer of the next step)")
        }
        guard settings.speculationError >= 0 else { throw .invalid("speculation error \(settings.speculationError) must be ≥ 0") }
        self.settings = settings
        self.hierarchy = hierarchy
        self.summaries = summaries
        self.layers = layers
        self.sequences = sequences
        self.topK = topK
        self.sinkBlocks = sinkBlocks
        self.seed = seed
        let tokensPerBlock = hierarchy.configuration.layout.tokensPerBlock
        bound = QuestBoundPredictor(
            summaries: summaries, tokensPerBlock: tokensPerBlock, scoring: settings.scoring, sketchShortlist: settings.sketchShortlist)
        speculative = SpeculativePredictor(
            summaries: summaries, tokensPerBlock: tokensPerBlock, scoring: settings.scoring, sketchShortlist: settings.sketchShortlist)
        history = try AttentionHistoryPredictor(decay: settings.historyDecay, recencyWeight: settings.historyRecencyWeight)
        let weights = settings.combinedWeights
        combined = try CombinedPredictor(
            [(speculative, weights.speculative), (bound, weights.bound), (history, weights.history)],
            adaptation: settings.adaptationRate.map { CombinedPredictor.Adaptation(topK: max(1, topK), rate: $0) })
        let budget = settings.budgetBlocks ?? max(1, topK / 4)
        let staging = settings.stagingBudgetBlocks ?? topK
        budgetBlocks = budget
        stagingBudgetBlocks = staging
        let driver: (any BlockPredictor)? = switch settings.kind {
        case .none: nil
        case .bound: bound
        case .speculative: speculative
        case .history: history
        case .combined: combined
        case .oracle: oracle
        }
        if let driver {
            prefetcher = try Prefetcher(hierarchy: hierarchy, predictor: driver, configuration: Prefetcher.Configuration(
                budgetBlocks: budget, stagingBudgetBlocks: staging, hostToDeviceBytesPerSecond: hostToDeviceBytesPerSecond,
                coldReadBytesPerSecond: coldReadBytesPerSecond, coverage: settings.coverage))
        } else {
            prefetcher = nil
        }
        if let driver, settings.stageAheadLayers > 0 {
            stager = try Prefetcher(hierarchy: hierarchy, predictor: driver, configuration: Prefetcher.Configuration(
                budgetBlocks: 0, stagingBudgetBlocks: staging, hostToDeviceBytesPerSecond: hostToDeviceBytesPerSecond,
                coldReadBytesPerSecond: coldReadBytesPerSecond, coverage: settings.coverage))
        } else {
            stager = nil
        }
        lastQueries = Array(repeating: Array(repeating: nil, count: layers), count: sequences)
    }

    /// Candidates of a layer: its stored blocks less the always-resident sinks and newest block.
    func candidates(layer: Int, keys: [BlockKey], tail: [Float]? = nil) -> PredictionCandidates {
        var candidates = PredictionCandidates.excludingAlwaysResident(layer: layer, keys: keys, sinkBlocks: sinkBlocks, recentBlocks: 1).candidates
        candidates.tailKeys = tail ?? []
        return candidates
    }

    /// The tail keys the engine has for `layer` when it predicts: all of them once the layer's
    /// own key for this token exists (`withCurrentToken`), else without the newest row.
    private func tail(_ attention: StepAttention, sequence: Int, layer: Int, withCurrentToken: Bool) -> [Float]? {
        guard let tail = attention.tailKeys?[sequence][layer] else { return nil }
        return withCurrentToken ? tail : Array(tail.dropLast(tail.isEmpty ? 0 : rowValues))
    }

    /// The query speculated for `layer` from `distance` layers back: the recorded one, or the
    /// true query with the modelled error.
    func speculatedQuery(_ attention: StepAttention, step: Int, sequence: Int, layer: Int, distance: Int) -> [Float]? {
        if let recorded = attention.speculatedQueries?[sequence][layer] { return recorded }
        guard attention.speculatedQueries == nil, let exact = attention.queries?[sequence][layer] else { return nil }
        let norm = exact.reduce(0) { $0 + $1 * $1 }.squareRoot()
        let sigma = settings.speculationError * Float(max(1, distance)) * norm / Float(exact.count).squareRoot()
        var generator = SplitMix64(seed: seed ^ UInt64(truncatingIfNeeded: ((step * layers + layer) * sequences + sequence) &* 0x2545_F491))
        return exact.map { $0 + sigma * generator.nextGaussian() }
    }

    /// Settles the prefetches aimed at this layer and scores every predictor against the exact
    /// attention, before the layer's demand request. `mass` is the layer's exact block mass.
    func layerStarts(
        step: Int, layer: Int, sequence: Int, attention: StepAttention, keys: [BlockKey], mass: [Float], needed: Set<BlockKey>
    ) throws(TierKVError) {
        let candidates = candidates(layer: layer, keys: keys, tail: tail(attention, sequence: sequence, layer: layer, withCurrentToken: true))
        let actual = candidates.positions.map { mass[$0] }
        let relevant = candidates.keys.indices.filter { needed.contains(candidates.keys[$0]) }
        let global = step * layers + layer
        if let prefetcher, let ticket = Self.take(&tickets, global, sequence) {
            try prefetcher.settle(ticket, actualMass: Self.actual(ticket.candidates, mass: mass), needed: needed, topK: topK)
        }
        if let stager, let ticket = Self.take(&stagingTickets, global, sequence) {
            try stager.settle(ticket, actualMass: Self.actual(ticket.candidates, mass: mass), needed: needed, topK: topK)
        }
        guard !candidates.keys.isEmpty else { return }
        let exact = attention.queries?[sequence][layer].map(QueryHint.init)
        let previous = lastQueries[sequence][layer].map(QueryHint.init)
        let speculated = speculatedQuery(attention, step: step, sequence: sequence, layer: layer, distance: settings.lookaheadLayers)
        func record(_ name: String, _ predicted: [Float]?) {
            guard let predicted else { return }
            var sum = qualitySums[name, default: PredictorQuality()]
            sum.recall += PredictionQuality.recall(predicted: predicted, actual: actual, k: topK)
            sum.neededRecall += PredictionQuality.recall(predicted: predicted, relevant: relevant, k: topK)
            sum.massCoverage += PredictionQuality.massCoverage(predicted: predicted, actual: actual, k: topK)
            sum.samples += 1
            qualitySums[name] = sum
        }
        record("bound_exact", try bound.predictMass(candidates, hint: exact))
        record("bound", try bound.predictMass(candidates, hint: previous))
        if let speculated { speculative.offer(QueryHint(speculated), forLayer: layer) }
        record("speculative", speculated == nil ? nil : try speculative.predictMass(candidates, hint: nil))
        record("history", try history.predictMass(candidates, hint: nil))
        record("combined", try combined.predictMass(candidates, hint: previous))
    }

    /// Removes and returns the ticket aimed at (`global` layer, `sequence`).
    private static func take(_ tickets: inout [Int: [Int: PrefetchTicket]], _ global: Int, _ sequence: Int) -> PrefetchTicket? {
        guard let ticket = tickets[global]?.removeValue(forKey: sequence) else { return nil }
        if tickets[global]?.isEmpty ?? false { tickets[global] = nil }
        return ticket
    }

    /// A ticket's candidates may be fewer than the layer's blocks now (a block was stored since).
    private static func actual(_ candidates: PredictionCandidates, mass: [Float]) -> [Float] {
        candidates.positions.map { $0 < mass.count ? mass[$0] : 0 }
    }

    /// The predicted mass of `layer`'s candidates with the layer's own query (for skip decisions).
    func exactBound(layer: Int, sequence: Int, attention: StepAttention, keys: [BlockKey]) throws(TierKVError) -> [BlockKey: Float] {
        let candidates = candidates(layer: layer, keys: keys, tail: tail(attention, sequence: sequence, layer: layer, withCurrentToken: true))
        guard let query = attention.queries?[sequence][layer],
            let predicted = try bound.predictMass(candidates, hint: QueryHint(query))
        else { return [:] }
        return Dictionary(uniqueKeysWithValues: zip(candidates.keys, predicted))
    }

    /// After the layer ran: the engine knows its exact query and the mass of the blocks it attended.
    func layerFinished(layer: Int, sequence: Int, attention: StepAttention, attended: [BlockKey], mass: [Float]) throws(TierKVError) {
        if let query = attention.queries?[sequence][layer] { lastQueries[sequence][layer] = query }
        try history.observe(layer: layer, keys: attended, mass: mass)
        try combined.observe(layer: layer, keys: attended, mass: mass)
    }

    /// The prefill's attention (`--prefill-placement`): the history predictor's first step.
    func observePrefill(layer: Int, keys: [BlockKey], mass: [Float]) throws(TierKVError) {
        try history.observe(layer: layer, keys: keys, mass: mass)
    }

    /// `combined`'s weights (speculative, bound, history), each averaged over the layers and
    /// normalised to sum 1: the given ones, or what adaptation learned.
    var meanCombinedWeights: [Double] {
        var sums = [Double](repeating: 0, count: combined.parts.count)
        for layer in 0..<layers {
            let weights = combined.weights(layer: layer)
            let total = weights.reduce(0, +)
            for (index, weight) in weights.enumerated() where total > 0 { sums[index] += Double(weight / total) / Double(layers) }
        }
        return sums
    }

    /// While layer `layer` of `step` runs: prefetch for the layer `lookahead` ahead (in this step
    /// or the next), due in `secondsUntilNeeded`. Lookahead 0 issues nothing: a layer predicted
    /// only when it starts leaves no time to fetch, so its stall is that of no prefetch.
    /// - Parameters:
    ///   - demandPinned: hot blocks the layer now running holds; with the earlier tickets' pins
    ///     they bound what this prefetch may pin (`hotCapacity` minus both).
    func issue(
        step: Int, layer: Int, attention: StepAttention, keysOf: (Int, Int) -> [BlockKey], layerSeconds: Double, lastStep: Int,
        demandPinned: Int, hotCapacity: Int, warmCapacity: Int
    ) throws(TierKVError) {
        // Staged blocks hold warm slots until their layer runs: all tickets together keep to a
        // quarter of the warm tier, so staging never starves the demand (or the CPU attention) of it.
        var warmRoom = warmCapacity / 4 - stagedByTickets
        if let prefetcher, settings.lookaheadLayers > 0 {
            var hotRoom = hotCapacity - demandPinned - pinnedByTickets
            try issue(
                prefetcher, distance: settings.lookaheadLayers, step: step, layer: layer, attention: attention, keysOf: keysOf,
                secondsUntilNeeded: Double(settings.lookaheadLayers) * layerSeconds, lastStep: lastStep, hotRoom: &hotRoom,
                warmRoom: &warmRoom, into: &tickets)
        }
        if let stager {
            var noHotRoom = 0
            try issue(
                stager, distance: settings.stageAheadLayers, step: step, layer: layer, attention: attention, keysOf: keysOf,
                secondsUntilNeeded: Double(settings.stageAheadLayers) * layerSeconds, lastStep: lastStep, hotRoom: &noHotRoom,
                warmRoom: &warmRoom, into: &stagingTickets)
        }
    }

    /// One prefetcher's tickets for the layer `distance` ahead of `layer`, one per sequence.
    private func issue(
        _ prefetcher: Prefetcher, distance: Int, step: Int, layer: Int, attention: StepAttention, keysOf: (Int, Int) -> [BlockKey],
        secondsUntilNeeded: Double, lastStep: Int, hotRoom: inout Int, warmRoom: inout Int,
        into tickets: inout [Int: [Int: PrefetchTicket]]
    ) throws(TierKVError) {
        let target = step * layers + layer + distance
        let targetStep = target / layers, targetLayer = target % layers
        guard targetStep <= lastStep else { return }
        for sequence in 0..<sequences {
            // A layer of this step has not made this token's key yet; for a layer of the next
            // step, this step's whole tail stands in (it lacks that step's token).
            let candidates = candidates(
                layer: targetLayer, keys: keysOf(sequence, targetLayer),
                tail: tail(attention, sequence: sequence, layer: targetLayer, withCurrentToken: targetStep != step))
            guard !candidates.keys.isEmpty else { continue }
            // The freshest exact query of the target layer: the previous token's for a layer
            // still to come in this step, this token's for a layer of the next step.
            let freshest = lastQueries[sequence][targetLayer].map(QueryHint.init)
            // The speculated query exists for a layer of this step (made from this token's hidden
            // state); for the next step's layers the freshest exact query stands in.
            if targetStep == step,
                let speculated = speculatedQuery(attention, step: step, sequence: sequence, layer: targetLayer, distance: distance)
            {
                speculative.offer(QueryHint(speculated), forLayer: targetLayer)
            } else if let freshest {
                speculative.offer(freshest, forLayer: targetLayer)
            }
            if settings.kind == .oracle {
                // This step's mass of the target layer: exact within the step (see PrefetchKind.oracle).
                let mass = attention.mass[sequence][targetLayer]
                oracle.answer = candidates.positions.map { $0 < mass.count ? mass[$0] : 0 }
            }
            let ticket = try prefetcher.prefetch(
                candidates, hint: freshest, secondsUntilNeeded: secondsUntilNeeded, hotBlockLimit: max(0, hotRoom),
                stagedBlockLimit: max(0, warmRoom))
            hotRoom -= ticket.pinnedInHot
            warmRoom -= ticket.staged.count
            tickets[target, default: [:]][sequence] = ticket
        }
    }

    /// Blocks the outstanding tickets of both prefetchers staged into warm.
    private var stagedByTickets: Int {
        [tickets, stagingTickets].reduce(0) { total, map in total + map.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.staged.count } } }
    }

    /// Hot blocks the outstanding prefetch tickets pin.
    private var pinnedByTickets: Int { tickets.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.pinnedInHot } } }

    /// Makes room for a demand of `needed` blocks in a hot tier of `capacity`: the prefetches for
    /// the farthest layers give back their pins until the demand fits (the engine's need now
    /// outranks a guess about later).
    func yieldHot(needed: Int, capacity: Int) {
        guard let prefetcher else { return }
        var pinned = pinnedByTickets
        for target in tickets.keys.sorted(by: >) where needed + pinned > capacity {
            for ticket in tickets.removeValue(forKey: target)?.values ?? [:].values {
                prefetcher.abandon(ticket)
                pinned -= ticket.pinnedInHot
            }
        }
    }

    /// Withdraws what is still queued at the end of the run.
    func finish() {
        for waiting in tickets.values { for ticket in waiting.values { prefetcher?.abandon(ticket) } }
        for waiting in stagingTickets.values { for ticket in waiting.values { stager?.abandon(ticket) } }
        tickets.removeAll()
        stagingTickets.removeAll()
    }

    func report(byteScale: Double) -> PrefetchReport {
        var quality: [String: PredictorQuality] = [:]
        for (name, sum) in qualitySums where sum.samples > 0 {
            quality[name] = PredictorQuality(
                recall: sum.recall / Double(sum.samples), neededRecall: sum.neededRecall / Double(sum.samples),
                massCoverage: sum.massCoverage / Double(sum.samples), samples: sum.samples)
        }
        let statistics = prefetcher?.statistics ?? PrefetchStatistics()
        return PrefetchReport(
            settings: settings, budgetBlocks: budgetBlocks, stagingBudgetBlocks: stagingBudgetBlocks, topK: topK, statistics: statistics,
            stageAhead: stager?.statistics, stageAheadWastedBytes: (stager?.statistics.wastedBytes ?? 0) * byteScale,
            wastedBytes: statistics.wastedBytes * byteScale, quality: quality, combinedWeightsUsed: meanCombinedWeights)
    }
}
