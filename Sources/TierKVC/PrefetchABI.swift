import CTierKVABI
import TierKV

// The prefetch half of tierkv.h: predicted masses turned into moves under a budget, settled
// against the attention the layer computed.

@c @implementation public func tierkv_prefetch(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ tokenCounts: UnsafePointer<Int32>?,
    _ residentKeys: UnsafePointer<tierkv_block_key>?, _ residentCount: Int, _ tailKeys: UnsafePointer<Float>?, _ tailTokens: Int,
    _ query: UnsafePointer<Float>?, _ queryCount: Int, _ options: UnsafePointer<tierkv_prefetch_options>?,
    _ out: UnsafeMutablePointer<OpaquePointer?>?, _ fetchedOut: UnsafeMutablePointer<UInt64>?, _ stagedOut: UnsafeMutablePointer<UInt64>?,
    _ unknownOut: UnsafeMutablePointer<UInt64>?
) -> tierkv_status {
    abiCall("tierkv_prefetch") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let out = try required(out, "out")
        out.pointee = nil
        let plan = try PrefetchPlan(try required(options, "options").pointee)
        let prediction = try PredictionInputs(
            owner, keys, keyCount, tokenCounts, residentKeys, residentCount, tailKeys, tailTokens, query, queryCount, plan.scale,
            plan.scoring, missingIsError: false)
        let ticket = try owner.prefetcher(prediction.predictor).prefetch(
            prediction.candidates, predicted: try prediction.predict(), secondsUntilNeeded: plan.secondsUntilNeeded, budget: plan.budget)
        plan.hand(ticket, from: owner, to: out, fetchedOut, stagedOut)
        unknownOut?.pointee = UInt64(prediction.held.count { !$0 })
    }
}

@c @implementation public func tierkv_prefetch_mass(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ mass: UnsafePointer<Float>?,
    _ options: UnsafePointer<tierkv_prefetch_options>?, _ out: UnsafeMutablePointer<OpaquePointer?>?,
    _ fetchedOut: UnsafeMutablePointer<UInt64>?, _ stagedOut: UnsafeMutablePointer<UInt64>?, _ unknownOut: UnsafeMutablePointer<UInt64>?
) -> tierkv_status {
    abiCall("tierkv_prefetch_mass") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let out = try required(out, "out")
        out.pointee = nil
        let plan = try PrefetchPlan(try required(options, "options").pointee)
        guard plan.scale == 0, plan.scoring == 0 else {
            throw .invalid("options->scale (\(plan.scale)) and options->scoring (\(plan.scoring)) apply to a query; with masses given set both to 0")
        }
        let candidates = try blockKeys(keys, count: keyCount, "keys")
        if let first = candidates.first, let index = candidates.firstIndex(where: { $0.layer != first.layer }) {
            throw .invalid("keys[\(index)] is at layer \(candidates[index].layer) but keys[0] is at layer \(first.layer); one call prefetches one layer")
        }
        let masses = try buffer(mass, count: keyCount, "mass")
        if let bad = masses.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw .invalid("mass[\(bad)] is \(masses[bad]); predicted masses are finite and ≥ 0")
        }
        let prediction = PredictionCandidates(
            layer: Int(candidates.first?.layer ?? 0), keys: candidates, positions: Array(candidates.indices),
            newestPosition: max(0, candidates.count - 1))
        let ticket = try owner.prefetcher(GivenMassPredictor()).prefetch(
            prediction, predicted: Array(masses), secondsUntilNeeded: plan.secondsUntilNeeded, budget: plan.budget)
        plan.hand(ticket, from: owner, to: out, fetchedOut, stagedOut)
        unknownOut?.pointee = UInt64(candidates.count { owner.hierarchy.fastestTier(of: $0) == nil })
    }
}

/// A `tierkv_prefetch_options` checked and turned into the prefetcher's budget.
private struct PrefetchPlan {
    let budget: Prefetcher.Configuration
    let secondsUntilNeeded: Double
    let scale: Float
    let scoring: Int32

    init(_ options: tierkv_prefetch_options) throws(TierKVError) {
        guard options.struct_size == UInt64(MemoryLayout<tierkv_prefetch_options>.size) else {
            throw .invalid("options->struct_size is \(options.struct_size); set it to sizeof(tierkv_prefetch_options) = \(MemoryLayout<tierkv_prefetch_options>.size)")
        }
        guard options.reserved == 0 else { throw .invalid("options->reserved is \(options.reserved); set it to 0") }
        let deadline = options.seconds_until_needed > 0 && options.seconds_until_needed.isFinite
        if options.seconds_until_needed.isNaN { throw .invalid("options->seconds_until_needed is NaN") }
        if deadline, !(options.host_to_device_bytes_per_s > 0) || !(options.cold_read_bytes_per_s > 0) {
            throw .invalid("a deadline (seconds_until_needed \(options.seconds_until_needed)) is planned with the link rates; options->host_to_device_bytes_per_s is \(options.host_to_device_bytes_per_s) and cold_read_bytes_per_s \(options.cold_read_bytes_per_s), expected both > 0")
        }
        guard options.coverage.isFinite, options.coverage >= 0, options.coverage <= 1 else {
            throw .invalid("options->coverage is \(options.coverage); expected a share in (0, 1], or 0 for 1")
        }
        budget = Prefetcher.Configuration(
            budgetBlocks: Int(options.budget_blocks), stagingBudgetBlocks: Int(options.staging_blocks),
            hostToDeviceBytesPerSecond: deadline ? options.host_to_device_bytes_per_s : 1,
            coldReadBytesPerSecond: deadline ? options.cold_read_bytes_per_s : 1, coverage: options.coverage == 0 ? 1 : Double(options.coverage))
        secondsUntilNeeded = deadline ? options.seconds_until_needed : .infinity
        scale = options.scale
        scoring = options.scoring
    }

    /// Registers `ticket` as a handle the caller owns and reports what it moved.
    func hand(
        _ ticket: PrefetchTicket, from owner: HierarchyHandle, to out: UnsafeMutablePointer<OpaquePointer?>,
        _ fetchedOut: UnsafeMutablePointer<UInt64>?, _ stagedOut: UnsafeMutablePointer<UInt64>?
    ) {
        let ticketHandle = PrefetchTicketHandle(ticket: ticket, owner: owner, budgetBlocks: budget.budgetBlocks)
        let pointer = HandleRegistry.register(ticketHandle)
        owner.openTickets.withLock { $0[UInt(bitPattern: pointer)] = ticketHandle }
        out.pointee = pointer
        fetchedOut?.pointee = UInt64(ticket.fetched.count)
        stagedOut?.pointee = UInt64(ticket.staged.count)
    }
}

/// The prefetcher's predictor when the engine passes its own masses (`tierkv_prefetch_mass`):
/// never asked, since those calls hand the masses in.
private final class GivenMassPredictor: BlockPredictor {
    var name: String { "engine" }
    func predictMass(_ candidates: PredictionCandidates, hint: QueryHint?) throws(TierKVError) -> [Float]? { nil }
}

@c @implementation public func tierkv_prefetch_wait(_ handle: OpaquePointer?, _ timeoutSeconds: Double) -> tierkv_status {
    abiCall("tierkv_prefetch_wait") { () throws(TierKVError) in
        let ticket = try HandleRegistry.lookup(handle, as: PrefetchTicketHandle.self, "prefetch ticket").ticket
        guard !timeoutSeconds.isNaN else { throw .invalid("timeout_seconds is NaN") }
        if timeoutSeconds < 0 || timeoutSeconds.isInfinite {
            ticket.wait()
        } else if !ticket.wait(seconds: min(timeoutSeconds, 1e9)) {
            throw TierKVError(.timeout, "the prefetch's moves had not landed within \(timeoutSeconds) s")
        }
    }
}

@c @implementation public func tierkv_prefetch_settle(
    _ handle: OpaquePointer?, _ actualMass: UnsafePointer<Float>?, _ needed: UnsafePointer<Int32>?, _ topK: Int
) -> tierkv_status {
    abiCall("tierkv_prefetch_settle") { () throws(TierKVError) in
        let ticketHandle = try HandleRegistry.lookup(handle, as: PrefetchTicketHandle.self, "prefetch ticket")
        let ticket = ticketHandle.ticket
        let count = ticket.candidates.keys.count
        let mass = try buffer(actualMass, count: count, "actual_mass")
        if let bad = mass.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw .invalid("actual_mass[\(bad)] is \(mass[bad]); attention masses are finite and ≥ 0")
        }
        guard topK >= 0 else { throw .invalid("top_k \(UInt(bitPattern: topK)) is too large") }
        let k = topK == 0 ? ticketHandle.budgetBlocks : topK
        let masses = Array(mass)
        let neededKeys: Set<BlockKey>
        if needed != nil {
            let flags = try buffer(needed, count: count, "needed")
            neededKeys = Set(flags.indices.filter { flags[$0] != 0 }.map { ticket.candidates.keys[$0] })
        } else {
            neededKeys = Set(PredictionQuality.topK(masses, k: k).map { ticket.candidates.keys[$0] })
        }
        // Removed only once the arguments are good, so a bad call can be retried.
        let removed = try HandleRegistry.remove(handle, as: PrefetchTicketHandle.self, "prefetch ticket")
        removed.owner.openTickets.withLock { $0[UInt(bitPattern: handle)] = nil }
        try removed.owner.prefetcher(nil).settle(ticket, actualMass: masses, needed: neededKeys, topK: k)
    }
}

@c @implementation public func tierkv_prefetch_abandon(_ handle: OpaquePointer?) -> tierkv_status {
    abiCall("tierkv_prefetch_abandon") { () throws(TierKVError) in
        let removed = try HandleRegistry.remove(handle, as: PrefetchTicketHandle.self, "prefetch ticket")
        removed.owner.openTickets.withLock { $0[UInt(bitPattern: handle)] = nil }
        try removed.owner.prefetcher(nil).abandon(removed.ticket)
    }
}

@c @implementation public func tierkv_get_prefetch_stats(_ handle: OpaquePointer?, _ out: UnsafeMutablePointer<tierkv_prefetch_stats>?) -> tierkv_status {
    abiCall("tierkv_get_prefetch_stats") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let out = try required(out, "out")
        let expected = UInt64(MemoryLayout<tierkv_prefetch_stats>.size)
        guard out.pointee.struct_size == expected else {
            throw .invalid("out->struct_size is \(out.pointee.struct_size); set it to sizeof(tierkv_prefetch_stats) = \(expected)")
        }
        let statistics = owner.prefetchStatistics
        var result = tierkv_prefetch_stats()
        result.struct_size = expected
        result.predictions = UInt64(statistics.predictions)
        result.settled = UInt64(statistics.settled)
        result.abandoned = UInt64(statistics.abandoned)
        result.fetched_blocks = UInt64(statistics.fetchedBlocks)
        result.staged_blocks = UInt64(statistics.stagedBlocks)
        result.withdrawn_blocks = UInt64(statistics.withdrawnBlocks)
        result.wasted_blocks = UInt64(statistics.wastedBlocks)
        result.top_k_blocks = UInt64(statistics.topKBlocks)
        result.top_k_resident_in_time = UInt64(statistics.topKResidentInTime)
        result.wasted_bytes = statistics.wastedBytes
        result.precision = statistics.precision
        result.recall = statistics.recall
        result.timeliness = statistics.timeliness
        out.pointee = result
    }
}

/// A `tierkv_prefetch_ticket`.
final class PrefetchTicketHandle: @unchecked Sendable {
    // @unchecked: immutable after init; `PrefetchTicket` is immutable.
    let ticket: PrefetchTicket
    let owner: HierarchyHandle
    let budgetBlocks: Int

    init(ticket: PrefetchTicket, owner: HierarchyHandle, budgetBlocks: Int) {
        self.ticket = ticket
        self.owner = owner
        self.budgetBlocks = budgetBlocks
    }
}
