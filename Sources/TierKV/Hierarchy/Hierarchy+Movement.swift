import TierKVAccelerator
import TierKVCore
import TierKVPolicies
import TierKVStorage
import TierKVTransfer

/// A transfer decided under the lock and started after it is released.
enum MovementAction {
    case hostToDevice(ids: [Int32], copies: [DeviceCopy], priority: TransferPriority)
    case deviceToHost(ids: [Int32], copies: [DeviceCopy], priority: TransferPriority)
    case coldRead(ids: [Int32], batch: ColdBatch, priority: TransferPriority)
    case coldWrite(ids: [Int32], batch: ColdBatch, priority: TransferPriority)
}

/// Link numbers for the in-flight set.
enum LinkIndex {
    static let hostToDevice = 0, deviceToHost = 1, coldRead = 2, coldWrite = 3
}

/// Most I/O demotions in flight per tier: enough to keep a link busy, few enough that demand
/// fetches are not queued behind a storm of write-backs.
private let maximumDemotionsInFlight = 64

extension Hierarchy {
    typealias Flags = BlockRecord.Flags

    // MARK: Requests

    /// Pins the request's blocks and queues what must move. Lock held.
    func admit(_ request: ResidencyRequest, priority: TransferPriority, _ state: inout HierarchyState) {
        let isDemand = priority == .demand
        for maybeID in request.ids {
            guard let id = maybeID else {
                if isDemand {
                    state.statistics.hot.misses += 1
                    state.statistics.warm.misses += 1
                    state.statistics.cold.misses += 1
                    metrics.recordLookup(tier: nil)
                } else {
                    state.statistics.prefetchLookups += 1
                }
                continue
            }
            var record = state.records[Int(id)]
            record.seenCount &+= record.seenCount == .max ? 0 : 1
            let flags = record.flags
            // Where the block is served from, for hit accounting (demand only: a prefetch is a
            // guess, and its lookups would dilute the hit rate the engine sees).
            let source: Tier? = flags.contains(.inHot) ? .hot : flags.contains(.inWarm) ? .warm : flags.contains(.inCold) ? .cold : nil
            if isDemand {
                countLookup(from: source, target: request.tier, &state)
            } else {
                state.statistics.prefetchLookups += 1
                if flags.contains(request.tier == .hot ? .inHot : .inWarm) { state.statistics.prefetchLookupsAlreadyResident += 1 }
            }
            if let source {
                if isDemand { state.policies[source.rawValue].demandAccess(id) } else { state.policies[source.rawValue].access(id) }
                // The warm copy of a block the engine uses from hot is in use too: without this
                // warm's policy sees only the fetches, takes a block hot serves every step for an
                // idle one, and lets it go to cold, where it is when hot evicts it.
                if isDemand, source == .hot, flags.contains(.inWarm) { state.policies[Tier.warm.rawValue].demandAccess(id) }
            }
            // A block already resident counts as arrived from the request's creation.
            switch request.tier {
            case .hot:
                record.hotPins += 1
                state.records[Int(id)] = record
                if !flags.contains(.inHot) {
                    state.hotWaiters[id, default: []].append(request)
                    queueForHot(id, isDemand: isDemand, &state)
                }
            case .warm, .cold:
                record.warmPins += 1
                state.records[Int(id)] = record
                if !flags.contains(.inWarm) {
                    state.warmWaiters[id, default: []].append(request)
                    queueForWarm(id, isDemand: isDemand, &state)
                }
            }
        }
    }

    private func countLookup(from source: Tier?, target: Tier, _ state: inout HierarchyState) {
        metrics.recordLookup(tier: source)
        switch source {
        case .hot:
            state.statistics.hot.hits += 1
        case .warm:
            if target == .hot { state.statistics.hot.misses += 1 }
            state.statistics.warm.hits += 1
        case .cold:
            if target == .hot { state.statistics.hot.misses += 1 }
            state.statistics.warm.misses += 1
            state.statistics.cold.hits += 1
        case nil:
            // In flight into a tier (a store or fetch another request started): counted where it lands.
            break
        }
    }

    /// Queues a warm→hot copy for `id` unless one is queued or running; first brings it to warm.
    func queueForHot(_ id: Int32, isDemand: Bool, _ state: inout HierarchyState) {
        let flags = state.records[Int(id)].flags
        guard !flags.contains(.inHot), !flags.contains(.loadingHot) else { return }
        if flags.contains(.queuedHot) {
            // Queued by a prefetch: a demand for it goes ahead of the other prefetches (the later
            // entry of the two finds the flag cleared and is skipped).
            if isDemand { state.wantHot.push(id, isDemand: true) }
            return
        }
        if flags.contains(.inWarm) {
            state.records[Int(id)].flags.insert(.queuedHot)
            state.wantHot.push(id, isDemand: isDemand)
        } else {
            // Arrival in warm re-queues it for hot (it has hot waiters or pins).
            queueForWarm(id, isDemand: isDemand, &state)
        }
    }

    func queueForWarm(_ id: Int32, isDemand: Bool, _ state: inout HierarchyState) {
        let flags = state.records[Int(id)].flags
        guard !flags.contains(.inWarm), flags.isDisjoint(with: [.loadingWarm, .loadingWarmFromHot]) else { return }
        if flags.contains(.queuedWarm) {
            if isDemand { state.wantWarm.push(id, isDemand: true) }
            return
        }
        state.records[Int(id)].flags.insert(.queuedWarm)
        state.wantWarm.push(id, isDemand: isDemand)
    }

    func unpin(_ request: ResidencyRequest, _ state: inout HierarchyState) {
        let isHot = request.tier == .hot
        for (key, maybeID) in zip(request.keys, request.ids) {
            guard let id = maybeID, state.records[Int(id)].flags.contains(.live), state.records[Int(id)].key == key else { continue }
            if isHot {
                if state.records[Int(id)].hotPins > 0 { state.records[Int(id)].hotPins -= 1 }
            } else {
                if state.records[Int(id)].warmPins > 0 { state.records[Int(id)].warmPins -= 1 }
            }
        }
        // Only blocks that were not resident at admission ever had this request as a waiter.
        for index in request.waitedIndexes {
            guard let id = request.ids[index], state.records[Int(id)].key == request.keys[index] else { continue }
            if isHot {
                state.hotWaiters[id]?.removeAll { $0 === request }
                if state.hotWaiters[id]?.isEmpty ?? false { state.hotWaiters[id] = nil }
            } else {
                state.warmWaiters[id]?.removeAll { $0 === request }
                if state.warmWaiters[id]?.isEmpty ?? false { state.warmWaiters[id] = nil }
            }
        }
    }

    /// Clears the queued (not started) moves of `request`'s blocks that nothing else wants:
    /// no pin, no waiter, no flush. Their queue entries are skipped when reached. Lock held.
    func withdrawQueuedMoves(_ request: ResidencyRequest, _ state: inout HierarchyState) -> [BlockKey] {
        var withdrawn: [BlockKey] = []
        for (key, maybeID) in zip(request.keys, request.ids) {
            guard let id = maybeID else { continue }
            let record = state.records[Int(id)]
            guard record.flags.contains(.live), record.key == key else { continue }
            let isWantedInHot = record.hotPins > 0 || state.hotWaiters[id] != nil
            let isWantedInWarm = record.warmPins > 0 || state.warmWaiters[id] != nil || record.flags.contains(.queuedFlush)
            var isWithdrawn = false
            if record.flags.contains(.queuedHot), !isWantedInHot {
                state.records[Int(id)].flags.remove(.queuedHot)
                isWithdrawn = true
            }
            if record.flags.contains(.queuedWarm), !isWantedInHot, !isWantedInWarm {
                state.records[Int(id)].flags.remove(.queuedWarm)
                isWithdrawn = true
            }
            if isWithdrawn { withdrawn.append(key) }
        }
        return withdrawn
    }

    // MARK: Stores

    /// Finds or reserves a warm slot for a new block, waiting for demotions when the tier is full.
    /// Returns nil when the key is already cached (then it only gains a reference).
    func reserveForStore(_ key: BlockKey, position: Int32, sequence: SequenceID?) throws(TierKVError) -> (Int32, Int32)? {
        while true {
            let outcome = try state.withLock { (state) throws(TierKVError) -> StoreStep in
                guard !state.isClosed else { throw TierKVError(.closed, "the hierarchy is closed") }
                if let id = state.index[key] {
                    addReference(id, key: key, sequence: sequence, &state)
                    var record = state.records[Int(id)]
                    record.seenCount &+= record.seenCount == .max ? 0 : 1
                    state.records[Int(id)] = record
                    state.statistics.sharedStores += 1
                    if record.flags.contains(.inHot) { state.policies[Tier.hot.rawValue].access(id) }
                    if record.flags.contains(.inWarm) { state.policies[Tier.warm.rawValue].access(id) }
                    return .cached
                }
                if let slot = takeSlot(.warm, urgent: true, &state) {
                    let id = state.addRecord(key, position: position)
                    state.records[Int(id)].warmSlot = slot
                    state.records[Int(id)].flags.insert(.loadingWarm)
                    state.records[Int(id)].seenCount = 1
                    addReference(id, key: key, sequence: sequence, &state)
                    return .reserved(id, slot)
                }
                if state.demoting[Tier.warm.rawValue] > 0 || state.demoting[Tier.hot.rawValue] > 0 || !state.inFlight.isEmpty {
                    return .retry(state.generation)
                }
                throw TierKVError(.capacityExceeded, """
                    no tier can take block \(key): the warm tier's \(state.capacity[1]) blocks are all pinned, in use \
                    or referenced and cannot be demoted (cold tier \(state.capacity[2]) blocks, \
                    \(configuration.allowsDroppingReferencedBlocks ? "dropping allowed" : "dropping referenced blocks not allowed")); \
                    release requests, drop sequences or enlarge the tiers
                    """)
            }
            drainActions()
            switch outcome {
            case .cached: return nil
            case .reserved(let id, let slot): return (id, slot)
            case .retry(let generation):
                state.waitingWithLock(makingProgress: configuration.clock.advanceToNextEvent) { state -> ConditionLocked<HierarchyState>.Step<Void> in
                    state.generation != generation ? .done(()) : .wait
                }
            }
        }
    }

    enum StoreStep {
        case cached
        case reserved(Int32, Int32)
        case retry(UInt64)
    }

    private func addReference(_ id: Int32, key: BlockKey, sequence: SequenceID?, _ state: inout HierarchyState) {
        guard let sequence else { return }
        // A sequence references a block once, however often the engine stores it. (Mutated in
        // place: copying a long sequence's list on every store made stores O(n).)
        guard state.sequences[sequence.rawValue, default: SequenceBlocks()].insert(key) else { return }
        state.records[Int(id)].references += 1
        state.statistics.liveSequences = state.sequences.count
    }

    /// The bytes are in the warm slot: the block becomes resident there.
    func commitStore(_ id: Int32) {
        state.withLock { state in
            state.records[Int(id)].flags.remove(.loadingWarm)
            state.statistics.storedBlocks += 1
            metrics.storedBlocks.increment()
            arriveInWarm(id, &state)
            if configuration.admitsNewBlocksToHot { queueForHot(id, isDemand: false, &state) }
            finishMovement(&state)
        }
        state.broadcast()
        drainActions()
    }

    // MARK: Flush

    func enqueueFlush(_ state: inout HierarchyState) -> (written: Int, failed: Int) {
        let start = (written: state.flushWritten, failed: state.flushFailed)
        for id in 0..<Int32(state.records.count) {
            let flags = state.records[Int(id)].flags
            guard flags.contains(.live), !flags.contains(.inCold), flags.isDisjoint(with: [.writingCold, .queuedFlush]),
                !flags.isDisjoint(with: [.inHot, .inWarm, .loadingWarm, .loadingWarmFromHot])
            else { continue }
            state.records[Int(id)].flags.insert(.queuedFlush)
            state.records[Int(id)].flags.remove(.coldWriteFailed)
            if flags.contains(.inWarm) {
                state.wantFlush.append(id)
            } else if flags.contains(.inHot) {
                queueForWarm(id, isDemand: false, &state)
            }
        }
        pump(&state)
        return start
    }

    // MARK: The pump

    /// Starts every movement that can start now: arrivals in warm and hot, flush writes, and
    /// demotions down to the low watermark. Lock held; transfers go to `state.actions`.
    func pump(_ state: inout HierarchyState) {
        startWarmArrivals(&state)
        startHotArrivals(&state)
        startFlushWrites(&state)
        failArrivalsThatCannotProceed(&state)
        for tier in [Tier.hot, .warm] {
            let high = Int((Double(state.capacity[tier.rawValue]) * configuration.highWatermark).rounded(.down))
            let low = Int((Double(state.capacity[tier.rawValue]) * configuration.lowWatermark).rounded(.down))
            guard state.used[tier.rawValue] > high else { continue }
            var attempts = state.used[tier.rawValue] - low
            while attempts > 0, state.used[tier.rawValue] - state.demoting[tier.rawValue] > low,
                state.demoting[tier.rawValue] < maximumDemotionsInFlight
            {
                attempts -= 1
                if evictOne(tier, urgent: false, &state) == .none { break }
            }
        }
    }

    /// With nothing in flight or queued to start, an arrival that still finds no slot never will
    /// (every slot is pinned or holds a block that cannot move down): its requests fail with the
    /// reason instead of waiting forever. Releasing requests or larger tiers fix it.
    private func failArrivalsThatCannotProceed(_ state: inout HierarchyState) {
        guard state.inFlight.isEmpty, state.actions.isEmpty else { return }
        while let next = state.wantWarm.first {
            state.wantWarm.removeFirst()
            failStuckArrival(next.id, tier: .warm, &state)
        }
        while let next = state.wantHot.first {
            state.wantHot.removeFirst()
            failStuckArrival(next.id, tier: .hot, &state)
        }
    }

    private func failStuckArrival(_ id: Int32, tier: Tier, _ state: inout HierarchyState) {
        if state.records[Int(id)].flags.contains(.queuedFlush) { state.flushFailed += 1 }
        state.records[Int(id)].flags.subtract([.queuedHot, .queuedWarm, .queuedFlush])
        let capacity = state.capacity[tier.rawValue]
        let flag: BlockRecord.Flags = tier == .hot ? .inHot : .inWarm
        var pinned = 0, resident = 0
        for record in state.records where record.flags.contains(.live) && record.flags.contains(flag) {
            resident += 1
            if (tier == .hot ? record.hotPins : record.warmPins) > 0 { pinned += 1 }
        }
        let reason = "the \(tier) tier has no slot it can free: of its \(capacity) slots \(resident) hold blocks, \(pinned) of them pinned, the rest unable to move down; release requests or enlarge the tier"
        failWaiters(id, reason: reason, &state)
    }

    /// Whether one more prefetch-priority block may start on `link` (host→device or cold read),
    /// with `adding` more already chosen in this pass: the link's prefetch bytes started and not
    /// completed stay within `maximumPrefetchBytesInFlightPerLink`. The rest wait in the
    /// hierarchy's queue, where a demand for one of them puts it first and a withdrawn prefetch
    /// costs nothing; once started on the link, a demand transfer would queue behind them all.
    private func prefetchFits(_ link: Int, adding: Int, _ state: HierarchyState) -> Bool {
        let blocks = state.prefetchBlocksInFlight[link] + adding
        return blocks == 0 || (blocks + 1) * blockByteCount <= configuration.maximumPrefetchBytesInFlightPerLink
    }

    private func startWarmArrivals(_ state: inout HierarchyState) {
        var reads: [Int32] = [], readsDemand = false, prefetchReads = 0
        var copies: [Int32] = [], copiesDemand = false
        while let (id, isDemand) = state.wantWarm.first {
            var flags = state.records[Int(id)].flags
            guard flags.contains(.live), flags.contains(.queuedWarm) else {
                state.wantWarm.removeFirst()
                continue
            }
            let fromHot = flags.contains(.inHot) && !flags.contains(.loadingHot)
            if flags.contains(.inWarm) || (!fromHot && !flags.contains(.inCold)) {
                state.wantWarm.removeFirst()
                state.records[Int(id)].flags.remove(.queuedWarm)
                if !flags.contains(.inWarm) { failWaiters(id, reason: "block has no readable copy", &state) }
                continue
            }
            if !isDemand, !fromHot, !prefetchFits(LinkIndex.coldRead, adding: prefetchReads, state) { break }
            guard let slot = takeSlot(.warm, urgent: isDemand, &state) else { break }
            state.wantWarm.removeFirst()
            flags = state.records[Int(id)].flags
            flags.remove(.queuedWarm)
            flags.insert(fromHot ? .loadingWarmFromHot : .loadingWarm)
            state.records[Int(id)].flags = flags
            state.records[Int(id)].warmSlot = slot
            if fromHot {
                copies.append(id)
                copiesDemand = copiesDemand || isDemand
            } else {
                reads.append(id)
                if !isDemand { prefetchReads += 1 }
                readsDemand = readsDemand || isDemand
            }
        }
        if !reads.isEmpty {
            if !readsDemand { state.prefetchBlocksInFlight[LinkIndex.coldRead] += reads.count }
            enqueueColdRead(reads, priority: readsDemand ? .demand : .prefetch, &state)
        }
        if !copies.isEmpty { enqueueDeviceToHost(copies, priority: copiesDemand ? .demand : .prefetch, &state) }
    }

    private func startHotArrivals(_ state: inout HierarchyState) {
        var started: [Int32] = [], anyDemand = false, prefetchCopies = 0
        while let (id, isDemand) = state.wantHot.first {
            let flags = state.records[Int(id)].flags
            guard flags.contains(.live), flags.contains(.queuedHot) else {
                state.wantHot.removeFirst()
                continue
            }
            if flags.contains(.inHot) || !flags.contains(.inWarm) {
                state.wantHot.removeFirst()
                state.records[Int(id)].flags.remove(.queuedHot)
                if !flags.contains(.inHot) { queueForHot(id, isDemand: isDemand, &state) }
                continue
            }
            if !isDemand, !prefetchFits(LinkIndex.hostToDevice, adding: prefetchCopies, state) { break }
            guard let slot = takeSlot(.hot, urgent: isDemand, &state) else { break }
            state.wantHot.removeFirst()
            if !isDemand { prefetchCopies += 1 }
            state.records[Int(id)].flags.remove(.queuedHot)
            state.records[Int(id)].flags.insert(.loadingHot)
            state.records[Int(id)].hotSlot = slot
            started.append(id)
            anyDemand = anyDemand || isDemand
        }
        guard !started.isEmpty else { return }
        for id in started { markInFlight(id, LinkIndex.hostToDevice, &state) }
        if !anyDemand { state.prefetchBlocksInFlight[LinkIndex.hostToDevice] += started.count }
        let copies = started.map { id in
            DeviceCopy(host: warmPayload(ofSlot: state.records[Int(id)].warmSlot).baseAddress!,
                device: hotPool.address(ofSlot: Int(state.records[Int(id)].hotSlot)), byteCount: blockByteCount)
        }
        state.actions.append(.hostToDevice(ids: started, copies: copies, priority: anyDemand ? .demand : .prefetch))
    }

    private func startFlushWrites(_ state: inout HierarchyState) {
        guard !state.wantFlush.isEmpty else { return }
        var writes: [Int32] = []
        var remaining: [Int32] = []
        for id in state.wantFlush {
            let flags = state.records[Int(id)].flags
            guard flags.contains(.live), flags.contains(.queuedFlush) else { continue }
            if flags.contains(.inCold) || flags.contains(.writingCold) {
                state.records[Int(id)].flags.remove(.queuedFlush)
                state.flushWritten += 1
                continue
            }
            guard flags.contains(.inWarm) else {
                state.records[Int(id)].flags.remove(.queuedFlush)
                state.flushFailed += 1
                continue
            }
            if state.used[Tier.cold.rawValue] >= state.capacity[Tier.cold.rawValue], !evictCold(&state) {
                remaining.append(id)
                continue
            }
            state.used[Tier.cold.rawValue] += 1
            state.records[Int(id)].flags.insert(.writingCold)
            writes.append(id)
        }
        // Blocks that found no cold slot fail the flush rather than wait forever.
        for id in remaining {
            state.records[Int(id)].flags.remove(.queuedFlush)
            state.flushFailed += 1
        }
        state.wantFlush.removeAll()
        if !writes.isEmpty { enqueueColdWrite(writes, priority: .writeBack, &state) }
    }

    // MARK: Slots and eviction

    enum EvictionStep { case freed, started, none }

    /// A free slot in `tier`, evicting when the tier is full. Nil when none is free yet (an I/O
    /// demotion may have been started; the pump runs again when it completes).
    func takeSlot(_ tier: Tier, urgent: Bool, _ state: inout HierarchyState) -> Int32? {
        let t = tier.rawValue
        var attempts = 0
        while state.used[t] >= state.capacity[t] {
            attempts += 1
            guard attempts <= 8, state.demoting[t] < maximumDemotionsInFlight else { return nil }
            switch evictOne(tier, urgent: urgent, &state) {
            case .freed: continue
            case .started, .none: return nil
            }
        }
        let slot: Int?
        switch tier {
        case .hot: slot = hotPool.allocateSlot()
        case .warm: slot = warmArena.allocateSlot()
        case .cold: slot = nil
        }
        guard let slot else {
            state.violations.append("\(tier) tier used \(state.used[t]) of \(state.capacity[t]) but its allocator had no slot")
            return nil
        }
        state.used[t] += 1
        return Int32(slot)
    }

    func isEvictableFromHot(_ record: BlockRecord) -> Bool {
        record.flags.contains(.inHot) && record.hotPins == 0
            && record.flags.isDisjoint(with: [.loadingHot, .loadingWarmFromHot])
    }

    func isEvictableFromWarm(_ record: BlockRecord) -> Bool {
        let flags = record.flags
        guard flags.contains(.inWarm), record.warmPins == 0, flags.isDisjoint(with: [.loadingHot, .writingCold, .queuedHot, .queuedFlush]) else {
            return false
        }
        // Waiting to go up to hot (pinned for hot, not there yet): its warm copy is the source.
        if record.hotPins > 0, !flags.contains(.inHot) { return false }
        if hasCopyBesidesWarm(record) { return true }
        if isDroppable(record) { return true }
        return coldStore != nil && !flags.contains(.coldWriteFailed)
    }

    func isEvictableFromCold(_ record: BlockRecord) -> Bool {
        let flags = record.flags
        guard flags.contains(.inCold), flags.isDisjoint(with: [.loadingWarm, .writingCold]) else { return false }
        return record.copyCount > 1 || isDroppable(record)
    }

    /// Evicts one block from `tier` by its policy: frees the copy at once when another copy
    /// exists (or the block may be dropped), else starts the copy down.
    func evictOne(_ tier: Tier, urgent: Bool, _ state: inout HierarchyState) -> EvictionStep {
        let policy = state.policies[tier.rawValue]
        switch tier {
        case .hot:
            guard let id = policy.victim(where: { isEvictableFromHot(state.records[Int($0)]) }) else { return .none }
            let record = state.records[Int(id)]
            if record.flags.contains(.inWarm) || (configuration.warmTierIsInclusive && record.flags.contains(.inCold)) {
                freeHotCopy(id, &state)
                return .freed
            }
            guard let slot = takeSlot(.warm, urgent: urgent, &state) else {
                // No warm room for the copy down: a durable or cache-only block may just leave hot.
                // (Re-read: making warm room may have evicted this block's cold copy.)
                let current = state.records[Int(id)]
                guard current.flags.contains(.inCold) || isDroppable(current) else { return .none }
                freeHotCopy(id, &state)
                return .freed
            }
            state.records[Int(id)].flags.formUnion([.loadingWarmFromHot, .evictingHot])
            state.records[Int(id)].warmSlot = slot
            state.demoting[Tier.hot.rawValue] += 1
            enqueueDeviceToHost([id], priority: urgent ? .demand : .writeBack, &state)
            return .started
        case .warm:
            guard let id = policy.victim(where: { isEvictableFromWarm(state.records[Int($0)]) }) else { return .none }
            let record = state.records[Int(id)]
            if hasCopyBesidesWarm(record) {
                freeWarmCopy(id, &state)
                return .freed
            }
            let droppable = isDroppable(record)
            if droppable, !isAdmittedToCold(record) {
                if coldStore != nil { state.statistics.coldAdmissionRejections += 1 }
                freeWarmCopy(id, &state)
                return .freed
            }
            guard coldStore != nil, !record.flags.contains(.coldWriteFailed) else {
                freeWarmCopy(id, &state)  // droppable (the predicate let it through)
                return .freed
            }
            if state.used[Tier.cold.rawValue] >= state.capacity[Tier.cold.rawValue], !evictCold(&state) {
                guard droppable else { return .none }
                freeWarmCopy(id, &state)
                return .freed
            }
            state.used[Tier.cold.rawValue] += 1
            state.records[Int(id)].flags.formUnion([.writingCold, .evictingWarm])
            state.demoting[Tier.warm.rawValue] += 1
            enqueueColdWrite([id], priority: urgent ? .demand : .writeBack, &state)
            return .started
        case .cold:
            return evictCold(&state) ? .freed : .none
        }
    }

    /// Whether freeing the warm copy leaves a copy that needs no warm slot later: durable in cold,
    /// or in hot when the warm tier is exclusive. (With an inclusive warm tier a hot copy does
    /// not count: hot evictions then never need a warm slot, which keeps a full warm tier from
    /// blocking hot.)
    func hasCopyBesidesWarm(_ record: BlockRecord) -> Bool {
        record.flags.contains(.inCold) || (!configuration.warmTierIsInclusive && record.flags.contains(.inHot))
    }

    /// Whether the block's last copy may be freed: no live sequence needs it, or dropping is allowed.
    func isDroppable(_ record: BlockRecord) -> Bool {
        record.references == 0 || configuration.allowsDroppingReferencedBlocks
    }

    private func isAdmittedToCold(_ record: BlockRecord) -> Bool {
        switch configuration.coldAdmission {
        case .always: return true
        case .seenTwice: return record.seenCount >= 2
        case .custom(let decide):
            return decide(ColdAdmissionCandidate(key: record.key, seenCount: Int(record.seenCount),
                referenceCount: Int(record.references), position: Int(record.position)))
        }
    }

    /// Frees one cold slot by the cold policy. False when every cold block is needed.
    func evictCold(_ state: inout HierarchyState) -> Bool {
        guard let coldStore else { return false }
        let policy = state.policies[Tier.cold.rawValue]
        guard let id = policy.victim(where: { isEvictableFromCold(state.records[Int($0)]) }) else {
            return false
        }
        coldStore.remove(state.records[Int(id)].key)
        state.records[Int(id)].flags.remove(.inCold)
        state.used[Tier.cold.rawValue] -= 1
        state.policies[Tier.cold.rawValue].remove(id)
        state.statistics.cold.evictions += 1
        metrics.evictions[Tier.cold.rawValue].increment()
        removeIfCopyless(id, &state)
        return true
    }

    func freeHotCopy(_ id: Int32, _ state: inout HierarchyState) {
        let record = state.records[Int(id)]
        if record.hotPins > 0 { state.violations.append("pinned block \(record.key) left the hot tier") }
        checkLastCopy(record, &state)
        try? hotPool.freeSlot(Int(record.hotSlot))
        state.records[Int(id)].hotSlot = -1
        state.records[Int(id)].flags.remove(.inHot)
        state.used[Tier.hot.rawValue] -= 1
        state.policies[Tier.hot.rawValue].remove(id)
        state.statistics.hot.evictions += 1
        state.statistics.hot.residentBlocks -= 1
        metrics.evictions[Tier.hot.rawValue].increment()
        removeIfCopyless(id, &state)
    }

    func freeWarmCopy(_ id: Int32, _ state: inout HierarchyState, isEviction: Bool = true) {
        let record = state.records[Int(id)]
        if record.warmPins > 0 { state.violations.append("pinned block \(record.key) left the warm tier") }
        checkLastCopy(record, &state)
        try? warmArena.freeSlot(Int(record.warmSlot))
        state.records[Int(id)].warmSlot = -1
        state.records[Int(id)].flags.remove(.inWarm)
        state.used[Tier.warm.rawValue] -= 1
        state.policies[Tier.warm.rawValue].remove(id)
        state.statistics.warm.residentBlocks -= 1
        if isEviction {
            state.statistics.warm.evictions += 1
            metrics.evictions[Tier.warm.rawValue].increment()
        }
        removeIfCopyless(id, &state)
    }

    /// Freeing the only copy is a drop: allowed for blocks no sequence references, or when the
    /// configuration allows it; anything else is an invariant violation.
    private func checkLastCopy(_ record: BlockRecord, _ state: inout HierarchyState) {
        guard record.copyCount == 1 else { return }
        if !isDroppable(record) {
            state.violations.append("the last copy of referenced block \(record.key) was freed")
        }
    }

    /// Removes a block left with no copy and nothing arriving: a drop.
    func removeIfCopyless(_ id: Int32, _ state: inout HierarchyState) {
        let record = state.records[Int(id)]
        guard record.flags.contains(.live), !record.hasCopy,
            record.flags.isDisjoint(with: [.loadingHot, .loadingWarm, .loadingWarmFromHot])
        else { return }
        state.statistics.droppedBlocks += 1
        if record.flags.contains(.queuedFlush) { state.flushFailed += 1 }
        metrics.drops.increment()
        if record.references > 0 { state.statistics.droppedReferencedBlocks += 1 }
        failWaiters(id, reason: "block was dropped", &state)
        summaries?.remove(state.records[Int(id)].key)
        state.removeRecord(id)
    }

    // MARK: Enqueueing transfers

    func markInFlight(_ id: Int32, _ link: Int, _ state: inout HierarchyState) {
        let (inserted, _) = state.inFlight.insert(HierarchyState.flightKey(id, link))
        if !inserted { state.violations.append("two transfers of block \(state.records[Int(id)].key) in flight on link \(link)") }
    }

    private func enqueueDeviceToHost(_ ids: [Int32], priority: TransferPriority, _ state: inout HierarchyState) {
        for id in ids { markInFlight(id, LinkIndex.deviceToHost, &state) }
        let copies = ids.map { id in
            DeviceCopy(host: warmPayload(ofSlot: state.records[Int(id)].warmSlot).baseAddress!,
                device: hotPool.address(ofSlot: Int(state.records[Int(id)].hotSlot)), byteCount: blockByteCount)
        }
        state.actions.append(.deviceToHost(ids: ids, copies: copies, priority: priority))
    }

    private func enqueueColdRead(_ ids: [Int32], priority: TransferPriority, _ state: inout HierarchyState) {
        for id in ids { markInFlight(id, LinkIndex.coldRead, &state) }
        let batch = ColdBatch(isWrite: false, keys: ids.map { state.records[Int($0)].key },
            buffers: ids.map { UInt(bitPattern: warmArena.address(ofSlot: Int(state.records[Int($0)].warmSlot))) },
            payloadByteCount: blockByteCount, results: ColdBatchResults())
        state.actions.append(.coldRead(ids: ids, batch: batch, priority: priority))
    }

    private func enqueueColdWrite(_ ids: [Int32], priority: TransferPriority, _ state: inout HierarchyState) {
        for id in ids { markInFlight(id, LinkIndex.coldWrite, &state) }
        let batch = ColdBatch(isWrite: true, keys: ids.map { state.records[Int($0)].key },
            buffers: ids.map { UInt(bitPattern: warmArena.address(ofSlot: Int(state.records[Int($0)].warmSlot))) },
            payloadByteCount: blockByteCount, results: ColdBatchResults())
        state.actions.append(.coldWrite(ids: ids, batch: batch, priority: priority))
    }

    // MARK: Running transfers

    /// Starts the queued transfers. One thread drains at a time; others leave their actions to it,
    /// so a link that completes synchronously never recurses without bound.
    func drainActions() {
        while true {
            let actions: [MovementAction]? = state.withLock { state in
                guard !state.isDraining, !state.actions.isEmpty else { return nil }
                state.isDraining = true
                defer { state.actions.removeAll(keepingCapacity: true) }
                return state.actions
            }
            guard let actions else { return }
            for action in actions { start(action) }
            let more = state.withLock { state in
                state.isDraining = false
                return !state.actions.isEmpty
            }
            if !more {
                state.broadcast()  // `close` waits for the drain to end
                return
            }
        }
    }

    private func start(_ action: MovementAction) {
        let submitted = configuration.clock.nanoseconds()
        let latency: @Sendable (Int) -> Void = { [self] link in
            let now = configuration.clock.nanoseconds()
            metrics.transferLatency[link].recordNanoseconds(Int64(clamping: now &- submitted))
        }
        switch action {
        case .hostToDevice(let ids, let copies, let priority):
            hostToDevice.submit(copies, priority: priority) { [self] outcome in
                latency(LinkIndex.hostToDevice)
                if priority != .demand { state.withLock { $0.prefetchBlocksInFlight[LinkIndex.hostToDevice] -= ids.count } }
                finishHostToDevice(ids, outcome)
            }
        case .deviceToHost(let ids, let copies, let priority):
            deviceToHost.submit(copies, priority: priority) { [self] outcome in
                latency(LinkIndex.deviceToHost)
                finishDeviceToHost(ids, outcome)
            }
        case .coldRead(let ids, let batch, let priority):
            coldReads!.submit(batch, priority: priority) { [self] outcome in
                latency(LinkIndex.coldRead)
                if priority != .demand { state.withLock { $0.prefetchBlocksInFlight[LinkIndex.coldRead] -= ids.count } }
                finishColdRead(ids, batch, outcome)
            }
        case .coldWrite(let ids, let batch, let priority):
            coldWrites!.submit(batch, priority: priority) { [self] outcome in
                latency(LinkIndex.coldWrite)
                finishColdWrite(ids, batch, outcome)
            }
        }
    }

    /// After any completion: count it, start what it unblocked, wake waiting stores.
    func finishMovement(_ state: inout HierarchyState) {
        state.generation &+= 1
        pump(&state)
        #if DEBUG
        // The whole-table check costs O(blocks): after every movement while the table is small
        // (up to 128 records: the invariant tests), then on a stride that keeps it O(128) per
        // movement amortised, so a debug build still simulates thousands of blocks.
        let stride = UInt64(max(1, state.records.count / 128))
        if state.generation % stride == 0 {
            let violations = invariantViolations(state)
            assert(violations.isEmpty, "hierarchy invariants: \(violations)")
        }
        #endif
    }

    /// Checkpoints the cold index once `coldCheckpointInterval` writes have landed since the last
    /// one, on the completing link's thread and outside the hierarchy's lock (`close` waits for it).
    private func checkpointColdIndexIfDue() {
        let interval = configuration.coldCheckpointInterval
        guard interval > 0, let coldStore else { return }
        let due = state.withLock { state -> Bool in
            guard !state.isClosed, !state.isCheckpointing, state.coldWritesSinceCheckpoint >= interval else { return false }
            state.isCheckpointing = true
            state.coldWritesSinceCheckpoint = 0
            return true
        }
        guard due else { return }
        let succeeded = (try? coldStore.checkpoint()) != nil
        state.withLock { state in
            state.isCheckpointing = false
            if succeeded { state.statistics.coldCheckpoints += 1 } else { state.statistics.coldCheckpointFailures += 1 }
        }
        state.broadcast()
    }

    private func completing(_ body: (inout HierarchyState) -> Void) {
        state.withLock { state in
            body(&state)
            finishMovement(&state)
        }
        state.broadcast()
        drainActions()
    }

    private func failure(_ outcome: TransferOutcome) -> String? {
        switch outcome {
        case .completed: nil
        case .cancelled: "transfer cancelled"
        case .failed(let error): error.message
        }
    }

    func finishHostToDevice(_ ids: [Int32], _ outcome: TransferOutcome) {
        let problem = failure(outcome)
        completing { state in
            let now = configuration.clock.nanoseconds()
            for id in ids {
                state.inFlight.remove(HierarchyState.flightKey(id, LinkIndex.hostToDevice))
                state.records[Int(id)].flags.remove(.loadingHot)
                if let problem {
                    state.statistics.failedTransfers += 1
                    try? hotPool.freeSlot(Int(state.records[Int(id)].hotSlot))
                    state.records[Int(id)].hotSlot = -1
                    state.used[Tier.hot.rawValue] -= 1
                    for request in state.hotWaiters.removeValue(forKey: id) ?? [] {
                        request.failed(id, reason: "host→device copy failed: \(problem)", nanoseconds: now)
                    }
                    continue
                }
                state.statistics.hostToDeviceBytes += blockByteCount
                metrics.linkBytes[LinkIndex.hostToDevice].increment(by: blockByteCount)
                arriveInHot(id, now: now, &state)
                let record = state.records[Int(id)]
                if !configuration.warmTierIsInclusive, record.flags.contains(.inWarm), record.warmPins == 0,
                    record.flags.isDisjoint(with: [.writingCold, .queuedFlush])
                {
                    freeWarmCopy(id, &state, isEviction: false)
                }
            }
        }
    }

    func finishDeviceToHost(_ ids: [Int32], _ outcome: TransferOutcome) {
        let problem = failure(outcome)
        completing { state in
            let now = configuration.clock.nanoseconds()
            for id in ids {
                state.inFlight.remove(HierarchyState.flightKey(id, LinkIndex.deviceToHost))
                let wasEviction = state.records[Int(id)].flags.contains(.evictingHot)
                state.records[Int(id)].flags.subtract([.loadingWarmFromHot, .evictingHot])
                if wasEviction { state.demoting[Tier.hot.rawValue] -= 1 }
                if let problem {
                    state.statistics.failedTransfers += 1
                    try? warmArena.freeSlot(Int(state.records[Int(id)].warmSlot))
                    state.records[Int(id)].warmSlot = -1
                    state.used[Tier.warm.rawValue] -= 1
                    failWarmWaiters(id, reason: "device→host copy failed: \(problem)", now: now, &state)
                    continue
                }
                state.statistics.deviceToHostBytes += blockByteCount
                metrics.linkBytes[LinkIndex.deviceToHost].increment(by: blockByteCount)
                arriveInWarm(id, &state)
                if wasEviction, isEvictableFromHot(state.records[Int(id)]) { freeHotCopy(id, &state) }
            }
        }
    }

    func finishColdRead(_ ids: [Int32], _ batch: ColdBatch, _ outcome: TransferOutcome) {
        let problem = failure(outcome)
        let results = batch.results.reads.withLock { $0 }
        completing { state in
            let now = configuration.clock.nanoseconds()
            for (position, id) in ids.enumerated() {
                state.inFlight.remove(HierarchyState.flightKey(id, LinkIndex.coldRead))
                state.records[Int(id)].flags.remove(.loadingWarm)
                let result: BlockStore.ReadResult = problem.map { .ioError(reason: $0) } ?? (position < results.count ? results[position] : .miss)
                if case .hit = result {
                    state.statistics.nvmeReadBytes += blockByteCount
                    metrics.linkBytes[LinkIndex.coldRead].increment(by: blockByteCount)
                    arriveInWarm(id, &state)
                    continue
                }
                try? warmArena.freeSlot(Int(state.records[Int(id)].warmSlot))
                state.records[Int(id)].warmSlot = -1
                state.used[Tier.warm.rawValue] -= 1
                let reason: String
                switch result {
                case .corrupt(let why):
                    // The store dropped the slot: this copy is gone, counted, never returned.
                    reason = "cold copy is corrupt: \(why)"
                    state.statistics.corruptions += 1
                    metrics.corruptions.increment()
                    state.records[Int(id)].flags.remove(.inCold)
                    state.used[Tier.cold.rawValue] -= 1
                    state.policies[Tier.cold.rawValue].remove(id)
                case .ioError(let why):
                    reason = "cold read failed: \(why)"
                    state.statistics.coldReadFailures += 1
                default:
                    reason = "cold copy is missing"
                    state.records[Int(id)].flags.remove(.inCold)
                    state.used[Tier.cold.rawValue] -= 1
                    state.policies[Tier.cold.rawValue].remove(id)
                }
                failWarmWaiters(id, reason: reason, now: now, &state)
                for request in state.hotWaiters.removeValue(forKey: id) ?? [] { request.failed(id, reason: reason, nanoseconds: now) }
                removeIfCopyless(id, &state)
            }
        }
    }

    func finishColdWrite(_ ids: [Int32], _ batch: ColdBatch, _ outcome: TransferOutcome) {
        let problem = failure(outcome)
        let results = batch.results.writes.withLock { $0 }
        completing { state in
            for (position, id) in ids.enumerated() {
                state.inFlight.remove(HierarchyState.flightKey(id, LinkIndex.coldWrite))
                var flags = state.records[Int(id)].flags
                let wasEviction = flags.contains(.evictingWarm)
                let wasFlush = flags.contains(.queuedFlush)
                flags.subtract([.writingCold, .evictingWarm, .queuedFlush])
                state.records[Int(id)].flags = flags
                if wasEviction { state.demoting[Tier.warm.rawValue] -= 1 }
                var succeeded = problem == nil
                if succeeded, position < results.count, case .failed = results[position] { succeeded = false }
                if !succeeded {
                    state.used[Tier.cold.rawValue] -= 1
                    state.records[Int(id)].flags.insert(.coldWriteFailed)
                    state.statistics.coldWriteFailures += 1
                    if wasFlush { state.flushFailed += 1 }
                    continue
                }
                if wasFlush { state.flushWritten += 1 }
                state.coldWritesSinceCheckpoint += 1
                state.statistics.nvmeWriteBytes += blockByteCount
                metrics.linkBytes[LinkIndex.coldWrite].increment(by: blockByteCount)
                state.records[Int(id)].flags.insert(.inCold)
                state.statistics.cold.insertions += 1
                state.statistics.cold.residentBlocks = state.used[Tier.cold.rawValue]
                state.policies[Tier.cold.rawValue].insert(id, context: context(of: state.records[Int(id)]))
                if wasEviction, isEvictableFromWarm(state.records[Int(id)]) { freeWarmCopy(id, &state) }
            }
        }
        checkpointColdIndexIfDue()
    }

    // MARK: Arrivals

    func context(of record: BlockRecord) -> PolicyBlockContext {
        PolicyBlockContext(position: record.position, layer: Int32(record.key.layer))
    }

    func arriveInWarm(_ id: Int32, _ state: inout HierarchyState) {
        let now = configuration.clock.nanoseconds()
        state.records[Int(id)].flags.insert(.inWarm)
        let record = state.records[Int(id)]
        rebuildSummaryIfMissing(record)
        state.policies[Tier.warm.rawValue].insert(id, context: context(of: record))
        state.statistics.warm.insertions += 1
        state.statistics.warm.residentBlocks += 1
        state.statistics.warm.peakResidentBlocks = max(state.statistics.warm.peakResidentBlocks, state.statistics.warm.residentBlocks)
        for request in state.warmWaiters.removeValue(forKey: id) ?? [] {
            request.arrived(id, slot: record.warmSlot, nanoseconds: now)
        }
        if record.hotPins > 0 || state.hotWaiters[id] != nil {
            // A prefetch that came from cold goes on to hot as a prefetch; any demand waiter makes it demand.
            let isDemand = state.hotWaiters[id]?.contains { $0.isDemand } ?? true
            queueForHot(id, isDemand: isDemand, &state)
        }
        if record.flags.contains(.queuedFlush) { state.wantFlush.append(id) }
    }

    /// Blocks found in cold at open (an earlier run's) have no key summary: computed from the
    /// keys when the block first comes back to warm (`.fromStoredKeys` only; with `.provided` the
    /// engine stores it again with its summary). Half a block is read, under the lock, once.
    private func rebuildSummaryIfMissing(_ record: BlockRecord) {
        guard let summaries, case .fromStoredKeys = configuration.keySummaries, !summaries.contains(record.key) else { return }
        let layout = configuration.layout
        try? summaries.insert(
            record.key, keys: UnsafeRawPointer(warmPayload(ofSlot: record.warmSlot).baseAddress!), dtype: layout.dtype,
            tokenCount: layout.tokensPerBlock)
    }

    private func arriveInHot(_ id: Int32, now: UInt64, _ state: inout HierarchyState) {
        state.records[Int(id)].flags.insert(.inHot)
        let record = state.records[Int(id)]
        state.policies[Tier.hot.rawValue].insert(id, context: context(of: record))
        state.statistics.hot.insertions += 1
        state.statistics.hot.residentBlocks += 1
        state.statistics.hot.peakResidentBlocks = max(state.statistics.hot.peakResidentBlocks, state.statistics.hot.residentBlocks)
        for request in state.hotWaiters.removeValue(forKey: id) ?? [] {
            request.arrived(id, slot: record.hotSlot, nanoseconds: now)
        }
    }

    private func failWarmWaiters(_ id: Int32, reason: String, now: UInt64, _ state: inout HierarchyState) {
        for request in state.warmWaiters.removeValue(forKey: id) ?? [] { request.failed(id, reason: reason, nanoseconds: now) }
    }

    func failWaiters(_ id: Int32, reason: String, _ state: inout HierarchyState) {
        let now = configuration.clock.nanoseconds()
        failWarmWaiters(id, reason: reason, now: now, &state)
        for request in state.hotWaiters.removeValue(forKey: id) ?? [] { request.failed(id, reason: reason, nanoseconds: now) }
    }

    // MARK: Invariants

    func invariantViolations(_ state: HierarchyState) -> [String] {
        var problems = state.violations
        var hotSlots = 0, warmSlots = 0, coldSlots = 0, live = 0
        for record in state.records where record.flags.contains(.live) {
            live += 1
            if record.hotSlot >= 0 { hotSlots += 1 }
            if record.warmSlot >= 0 { warmSlots += 1 }
            if !record.flags.isDisjoint(with: [.inCold, .writingCold]) { coldSlots += 1 }
            if record.flags.contains(.inHot) != (record.hotSlot >= 0 && !record.flags.contains(.loadingHot)) {
                problems.append("block \(record.key): hot flag and hot slot disagree")
            }
            if !record.hasCopy, record.flags.isDisjoint(with: [.loadingWarm, .loadingWarmFromHot, .loadingHot]) {
                problems.append("block \(record.key) is in the table with no copy")
            }
        }
        for tier in Tier.allCases where state.used[tier.rawValue] > state.capacity[tier.rawValue] {
            problems.append("\(tier) tier holds \(state.used[tier.rawValue]) blocks, over its capacity \(state.capacity[tier.rawValue])")
        }
        if hotSlots != state.used[0] { problems.append("hot slots held \(hotSlots) ≠ counted \(state.used[0])") }
        if warmSlots != state.used[1] { problems.append("warm slots held \(warmSlots) ≠ counted \(state.used[1])") }
        if coldSlots != state.used[2] { problems.append("cold blocks \(coldSlots) ≠ counted \(state.used[2])") }
        if live != state.index.count { problems.append("\(live) live records but \(state.index.count) keys indexed") }
        if state.statistics.referenceUnderflows > 0 { problems.append("\(state.statistics.referenceUnderflows) reference underflows") }
        return problems
    }
}
