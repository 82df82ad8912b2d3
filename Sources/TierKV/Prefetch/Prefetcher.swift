import TierKVCore
import TierKVPrediction
import TierKVTransfer

/// Turns a predictor's scores into prefetches to the hot tier: the best-scored blocks of a coming
/// layer first, under a budget per layer and the time left before the layer runs (the links'
/// rates say how many blocks can arrive in time), at prefetch priority so demand fetches go
/// first. When the layer runs, `settle` compares the prediction with what the layer attended,
/// records precision, recall, timeliness and wasted bytes, and cancels what has not started.
///
/// Thread-safe: statistics behind a lock; tickets are independent.
public final class Prefetcher: @unchecked Sendable {
    // @unchecked: `statisticsState` is behind its lock; the rest is immutable.
    public struct Configuration: Sendable {
        /// The best-scored blocks of a layer made resident in hot.
        public var budgetBlocks: Int
        /// The best-scored blocks of a layer staged from cold into warm (the NVMe read is the slow
        /// hop; warm→hot is fast), counting those sent to hot. 0: no staging.
        public var stagingBudgetBlocks: Int
        /// The rates the time budget is planned with (measured by `tierkv bench`, or a model's).
        public var hostToDeviceBytesPerSecond: Double
        public var coldReadBytesPerSecond: Double
        /// Stop at the block where the best-ranked predicted masses add up to this share of the
        /// prediction's total (1: fill the budgets). A layer whose attention is concentrated then
        /// moves only the few blocks that carry it instead of padding its budget with blocks
        /// predicted to matter little, which cost link time and evict what other layers need.
        public var coverage: Double

        public init(
            budgetBlocks: Int, stagingBudgetBlocks: Int = 0, hostToDeviceBytesPerSecond: Double, coldReadBytesPerSecond: Double,
            coverage: Double = 1
        ) {
            self.budgetBlocks = budgetBlocks
            self.stagingBudgetBlocks = stagingBudgetBlocks
            self.hostToDeviceBytesPerSecond = hostToDeviceBytesPerSecond
            self.coldReadBytesPerSecond = coldReadBytesPerSecond
            self.coverage = coverage
        }

        /// - Throws: `.invalidArgument` for a negative budget, a coverage outside (0, 1] or
        ///   non-positive rates.
        public func validate() throws(TierKVError) {
            guard budgetBlocks >= 0, stagingBudgetBlocks >= 0 else {
                throw .invalid("prefetch budgets are \(budgetBlocks) (hot) and \(stagingBudgetBlocks) (staging) blocks; expected ≥ 0")
            }
            guard coverage > 0, coverage <= 1 else {
                throw .invalid("prefetch coverage is \(coverage); expected a share in (0, 1]")
            }
            guard hostToDeviceBytesPerSecond > 0, coldReadBytesPerSecond > 0 else {
                throw .invalid("prefetch link rates must be positive (host→device \(hostToDeviceBytesPerSecond) B/s, cold read \(coldReadBytesPerSecond) B/s)")
            }
        }
    }

    public let hierarchy: Hierarchy
    public let predictor: any BlockPredictor
    public let configuration: Configuration
    private let statisticsState = Locked(PrefetchStatistics())

    /// - Throws: `.invalidArgument` for a negative budget or non-positive rates.
    public init(hierarchy: Hierarchy, predictor: any BlockPredictor, configuration: Configuration) throws(TierKVError) {
        try configuration.validate()
        self.hierarchy = hierarchy
        self.predictor = predictor
        self.configuration = configuration
    }

    public var statistics: PrefetchStatistics { statisticsState.withLock { $0 } }

    /// Predicts `candidates` and makes the `budgetBlocks` best-scored of them resident in hot:
    /// those already there are pinned (so the arrivals cannot evict them), the others fetched in
    /// score order while each is expected to arrive within `secondsUntilNeeded` (queued behind the
    /// ones before it on the links). Below them, the best-scored blocks down to
    /// `stagingBudgetBlocks` that sit in cold are read into warm. Blocks predicted at zero mass,
    /// and those ranked after the blocks that cover `coverage` of the predicted mass, are left alone.
    /// - Parameters:
    ///   - hotBlockLimit: the most blocks this prefetch may pin in hot (the room the engine's own
    ///     demand leaves); the budget's blocks beyond it are only staged when cold. A prefetch
    ///     must never pin the slots a demand arrival needs.
    ///   - stagedBlockLimit: the most blocks this prefetch may stage into warm (each holds a warm
    ///     slot until settled), for the same reason in the warm tier.
    public func prefetch(
        _ candidates: PredictionCandidates, hint: QueryHint?, secondsUntilNeeded: Double, hotBlockLimit: Int? = nil,
        stagedBlockLimit: Int? = nil
    ) throws(TierKVError) -> PrefetchTicket {
        try prefetch(
            candidates, predicted: try predictor.predictMass(candidates, hint: hint), secondsUntilNeeded: secondsUntilNeeded,
            hotBlockLimit: hotBlockLimit, stagedBlockLimit: stagedBlockLimit)
    }

    /// `prefetch(_:hint:...)` from masses the caller predicted (one per candidate, nil when it
    /// had nothing to go on), under `budget` instead of the prefetcher's configuration when given:
    /// how an engine that predicts per call, with budgets it sets per layer, uses the prefetcher
    /// (the C ABI's `tierkv_prefetch`). Statistics accumulate here all the same.
    /// - Throws: `.invalidArgument` when `predicted` does not hold one mass per candidate, or
    ///   `budget` is invalid; the errors of `makeResident`.
    public func prefetch(
        _ candidates: PredictionCandidates, predicted: [Float]?, secondsUntilNeeded: Double, hotBlockLimit: Int? = nil,
        stagedBlockLimit: Int? = nil, budget: Configuration? = nil
    ) throws(TierKVError) -> PrefetchTicket {
        if let predicted, predicted.count != candidates.keys.count {
            throw .invalid("prefetch got \(predicted.count) predicted masses for \(candidates.keys.count) candidates")
        }
        try budget?.validate()
        let configuration = budget ?? self.configuration
        let stagingLimit = max(0, stagedBlockLimit ?? Int.max)
        let hotBudget = max(0, min(configuration.budgetBlocks, hotBlockLimit ?? configuration.budgetBlocks))
        var chosen: [BlockKey] = [], fromCold: [Bool] = [], resident: [BlockKey] = [], staged: [BlockKey] = []
        if let predicted {
            let bytes = Double(hierarchy.blockByteCount)
            let copySeconds = bytes / configuration.hostToDeviceBytesPerSecond
            let readSeconds = bytes / configuration.coldReadBytesPerSecond
            var copies = 0.0, reads = 0.0
            var stagingReads = 0.0
            let ranked = PredictionQuality.topK(predicted, k: max(configuration.budgetBlocks, configuration.stagingBudgetBlocks))
            // Blocks ranked once the ones before them cover `coverage` of the predicted mass are left.
            let enough = configuration.coverage >= 1 ? Double.infinity : configuration.coverage * predicted.reduce(0.0) { $0 + Double($1) }
            var covered = 0.0
            for (rank, index) in ranked.enumerated() {
                guard predicted[index] > 0, covered < enough else { break }
                covered += Double(predicted[index])
                let key = candidates.keys[index]
                guard let tier = hierarchy.fastestTier(of: key) else { continue }
                if rank >= configuration.budgetBlocks || resident.count + chosen.count >= hotBudget {
                    // Staging: only the NVMe read, which must finish in time.
                    guard tier == .cold, staged.count < stagingLimit, stagingReads + reads + readSeconds <= secondsUntilNeeded else { continue }
                    stagingReads += readSeconds
                    staged.append(key)
                    continue
                }
                if tier == .hot {
                    resident.append(key)
                    continue
                }
                let isCold = tier == .cold
                let arrival = isCold ? max(copies + copySeconds, reads + readSeconds + copySeconds) : copies + copySeconds
                guard arrival <= secondsUntilNeeded else { continue }
                copies = arrival
                if isCold { reads += readSeconds }
                chosen.append(key)
                fromCold.append(isCold)
            }
        }
        let request = chosen.isEmpty && resident.isEmpty ? nil : try hierarchy.makeResident(resident + chosen, in: .hot, priority: .prefetch)
        let staging = staged.isEmpty ? nil : try hierarchy.makeResident(staged, in: .warm, priority: .prefetch)
        statisticsState.withLock { statistics in
            statistics.predictions += 1
            if predicted == nil { statistics.predictionsWithoutBasis += 1 }
            statistics.issuedBlocks += chosen.count + staged.count
        }
        return PrefetchTicket(
            candidates: candidates, predicted: predicted, fetched: chosen, fetchedFromCold: fromCold, staged: staged,
            pinnedInHot: resident.count + chosen.count, request: request, staging: staging)
    }

    /// Settles a ticket when its layer runs, before the layer's own demand request: what it
    /// fetched is compared with `actualMass` (the attention the layer computed, per candidate) and
    /// `needed` (the blocks the layer uses); the ticket's pins are released and its moves that
    /// have not started are withdrawn.
    /// - Parameter topK: k of the top-k the prediction is judged against (the hot budget of a layer).
    public func settle(_ ticket: PrefetchTicket, actualMass: [Float], needed: Set<BlockKey>, topK: Int) throws(TierKVError) {
        guard actualMass.count == ticket.candidates.keys.count else {
            throw .invalid("settle got \(actualMass.count) masses for \(ticket.candidates.keys.count) candidates")
        }
        let truth = Set(PredictionQuality.topK(actualMass, k: topK).map { ticket.candidates.keys[$0] })
        let inHot = Set(ticket.candidates.keys.filter { hierarchy.fastestTier(of: $0) == .hot })
        let inWarm = Set(ticket.staged.filter { hierarchy.fastestTier(of: $0) == .warm })
        let withdrawn = Set([ticket.request, ticket.staging].compactMap { $0 }.flatMap { hierarchy.cancelReturningWithdrawn($0) })
        let bytes = Double(hierarchy.blockByteCount)
        statisticsState.withLock { statistics in
            statistics.settled += 1
            statistics.topKBlocks += truth.count
            statistics.topKResidentInTime += truth.count { inHot.contains($0) }
            for (key, isCold) in zip(ticket.fetched, ticket.fetchedFromCold) {
                if withdrawn.contains(key) {
                    statistics.withdrawnBlocks += 1
                    continue
                }
                statistics.fetchedBlocks += 1
                if truth.contains(key) { statistics.fetchedInTopK += 1 }
                if inHot.contains(key) { statistics.arrivedInTime += 1 }
                if needed.contains(key) {
                    statistics.fetchedAndUsed += 1
                } else {
                    statistics.wastedBlocks += 1
                    statistics.wastedBytes += bytes * (isCold ? 2 : 1)
                }
            }
            for key in ticket.staged {
                if withdrawn.contains(key) {
                    statistics.withdrawnBlocks += 1
                    continue
                }
                statistics.stagedBlocks += 1
                if truth.contains(key) { statistics.fetchedInTopK += 1 }
                if inWarm.contains(key) || inHot.contains(key) { statistics.arrivedInTime += 1 }
                if needed.contains(key) {
                    statistics.fetchedAndUsed += 1
                } else {
                    statistics.wastedBlocks += 1
                    statistics.wastedBytes += bytes
                }
            }
        }
    }

    /// Releases a ticket whose layer will not run (the sequence ended), or whose pins the demand
    /// needs: its queued moves are withdrawn.
    public func abandon(_ ticket: PrefetchTicket) {
        statisticsState.withLock { $0.abandoned += 1 }
        for request in [ticket.request, ticket.staging].compactMap({ $0 }) { hierarchy.cancel(request) }
    }
}

/// The prefetches issued for one coming layer, settled when that layer runs.
public final class PrefetchTicket: @unchecked Sendable {
    // @unchecked: immutable after init.
    public let candidates: PredictionCandidates
    /// The predicted mass per candidate (nil when the predictor had nothing to go on).
    public let predicted: [Float]?
    /// Blocks sent to hot, best first, and whether each had to be read from cold first.
    public let fetched: [BlockKey]
    public let fetchedFromCold: [Bool]
    /// Blocks read from cold into warm (staged), best first.
    public let staged: [BlockKey]
    /// Hot slots the ticket pins until settled (blocks already there and those fetched).
    public let pinnedInHot: Int
    let request: ResidencyRequest?
    let staging: ResidencyRequest?

    /// Waits until the ticket's moves have landed (or failed, or were withdrawn).
    public func wait() {
        request?.wait()
        staging?.wait()
    }

    /// `wait()` with a limit; false when something is still moving after `seconds`.
    public func wait(seconds: Double) -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        for request in [request, staging].compactMap({ $0 }) {
            let left = deadline - ContinuousClock.now
            let remaining = Double(left.components.seconds) + Double(left.components.attoseconds) * 1e-18
            if !request.wait(seconds: max(0, remaining)) { return false }
        }
        return true
    }

    init(
        candidates: PredictionCandidates, predicted: [Float]?, fetched: [BlockKey], fetchedFromCold: [Bool], staged: [BlockKey],
        pinnedInHot: Int, request: ResidencyRequest?, staging: ResidencyRequest?
    ) {
        self.pinnedInHot = pinnedInHot
        self.candidates = candidates
        self.predicted = predicted
        self.fetched = fetched
        self.fetchedFromCold = fetchedFromCold
        self.staged = staged
        self.request = request
        self.staging = staging
    }
}

/// What the prefetcher did and how good it was, summed over settled tickets.
public struct PrefetchStatistics: Sendable, Equatable {
    public var predictions = 0
    /// Predictions the predictor could not make (no hint, no history yet).
    public var predictionsWithoutBasis = 0
    public var settled = 0
    /// Tickets released unsettled (the demand needed their hot slots, or the run ended).
    public var abandoned = 0
    public var issuedBlocks = 0
    /// Issued but withdrawn before their move started (never cost bandwidth).
    public var withdrawnBlocks = 0
    /// Issued to hot and moved (or moving) at settle time.
    public var fetchedBlocks = 0
    /// Issued for staging (cold→warm) and read (or being read) at settle time.
    public var stagedBlocks = 0
    public var fetchedInTopK = 0
    public var arrivedInTime = 0
    public var fetchedAndUsed = 0
    public var wastedBlocks = 0
    /// Link bytes spent on blocks the layer did not use (a cold block counts its read and its copy).
    public var wastedBytes = 0.0
    public var topKBlocks = 0
    /// True top-k blocks in hot when their layer ran, by prefetch or already there.
    public var topKResidentInTime = 0

    public init() {}

    /// Fetched and staged blocks that were among the layer's true top-k.
    public var precision: Double { movedBlocks == 0 ? 0 : Double(fetchedInTopK) / Double(movedBlocks) }
    public var movedBlocks: Int { fetchedBlocks + stagedBlocks }
    /// True top-k blocks resident in hot in time.
    public var recall: Double { topKBlocks == 0 ? 0 : Double(topKResidentInTime) / Double(topKBlocks) }
    /// Fetched (staged) blocks that had arrived in hot (warm) when their layer ran.
    public var timeliness: Double { movedBlocks == 0 ? 0 : Double(arrivedInTime) / Double(movedBlocks) }
}
