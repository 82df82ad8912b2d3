#if canImport(Glibc)
import Glibc
#endif
import TierKVAccelerator
import TierKVCore
import TierKVHostArena
import TierKVPolicies
import TierKVStorage
import TierKVTransfer

/// A live sequence in the engine (a request); blocks it stores are referenced by it until `drop`.
public struct SequenceID: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "seq\(rawValue)" }
}

/// What `store` did with a block.
public enum StoreOutcome: Sendable, Equatable {
    /// The bytes were copied into the warm tier (and queued for hot when admission says so).
    case stored
    /// A block with this key was already cached (a shared prefix): nothing was copied.
    case alreadyCached
}

/// The longest cached prefix of a token sequence, in blocks (every layer of a block must be
/// present for it to count), per tier: load from hot, load from warm (host→device copy), load
/// from cold (NVMe read first), or recompute what is beyond `cached`.
public struct PrefixLookup: Sendable, Equatable {
    /// Leading blocks whose every layer is in hot.
    public var inHot: Int
    /// Leading blocks whose every layer is in hot or warm.
    public var inHotOrWarm: Int
    /// Leading blocks whose every layer is in some tier.
    public var cached: Int
    /// Blocks asked about.
    public var requested: Int
}

/// What `flush` made durable.
public struct FlushSummary: Sendable, Equatable {
    public var written = 0
    public var failed = 0
}

/// The tiered KV cache an inference engine talks to: one residency table over hot (accelerator),
/// warm (NUMA-pinned host RAM) and cold (NVMe) tiers, with eviction policies per tier, pins,
/// prefix sharing and prioritised movement between tiers.
///
/// Typical use per request: compute keys with `blockKeys(tokens:layer:)`, ask `lookupPrefix` how
/// much is cached, `store` the KV of new blocks, and before each layer `makeResident` its blocks
/// in hot, `wait`, run attention, `release`. `drop(sequence:)` when the request ends.
///
/// Thread-safe: any thread may call any method. One lock guards the residency table and is
/// never held across I/O or a device copy; transfers run on the links' threads.
public final class Hierarchy: @unchecked Sendable {
    // @unchecked: all mutable state is in `state` (a lock); the tiers and links are thread-safe.
    public let configuration: HierarchyConfiguration
    public let accelerator: any Accelerator
    public let hasher: PrefixHasher
    let hotPool: DeviceSlotPool
    let warmArena: HostArena
    let coldStore: BlockStore?
    let hostToDevice: TransferScheduler<AcceleratorLink>
    let deviceToHost: TransferScheduler<AcceleratorLink>
    let coldReads: TransferScheduler<ColdStoreLink>?
    let coldWrites: TransferScheduler<ColdStoreLink>?
    let state: ConditionLocked<HierarchyState>
    let metrics: HierarchyMetrics
    /// Key summaries of every block held (nil when `configuration.keySummaries` is `.off`).
    public let summaries: BlockSummaryTable?
    /// What the open found in the cache directory's summary files, `summaries.tkv` and its
    /// journal `summaries.log` (nil without summaries or without a cold tier). Blocks they did
    /// not cover get theirs from `rebuildKeySummaries`.
    public let keySummaryRestore: KeySummaryRestore?
    /// The cold blocks' summaries on disk (nil without summaries or without a cold tier).
    let keySummaryFile: KeySummaryFile?
    /// Offset of the payload in a warm slot: the cold slot header goes in front, so a warm slot
    /// is written to NVMe as it is.
    let warmPayloadOffset = ColdSlotHeader.byteCount
    let blockByteCount: Int
    /// The staging buffer and stream of the stores from device memory, made on first use.
    let deviceStaging = Locked<DeviceStaging?>(nil)

    /// Opens the tiers: allocates the hot slots on the accelerator, maps the warm arena, opens (or
    /// creates) the cold block file and indexes the blocks it holds, so a restarted engine finds
    /// its cache again.
    /// - Throws: an invalid configuration (naming the field), a cache directory another process
    ///   holds, a backend that cannot be opened, memory that cannot be allocated or locked.
    public init(_ configuration: HierarchyConfiguration) throws(TierKVError) {
        try configuration.validate()
        self.configuration = configuration
        let layout = configuration.layout
        blockByteCount = layout.blockByteCount
        hasher = try PrefixHasher(namespace: configuration.namespace, tokensPerBlock: layout.tokensPerBlock)
        switch configuration.accelerator {
        case .cuda(let ordinal): accelerator = try CUDADriver(ordinal: ordinal)
        case .emulated(let link):
            accelerator = EmulatedAccelerator(memoryByteCount: configuration.hotCapacityBlocks * blockByteCount + (1 << 20), link: link)
        case .custom(let backend): accelerator = backend
        }
        hotPool = try DeviceSlotPool(accelerator: accelerator, slotByteCount: blockByteCount, slotCount: configuration.hotCapacityBlocks)
        let slotByteCount = BlockFile.Geometry.slotByteCount(forPayload: blockByteCount)
        warmArena = try HostArena(HostArena.Configuration(
            slotByteCount: slotByteCount, slotCount: configuration.warmCapacityBlocks, numaNode: configuration.numaNode,
            hugePages: configuration.hugePages, locksMemory: configuration.locksWarmMemory))
        try accelerator.registerHostMemory(warmArena.region)
        switch configuration.keySummaries {
        case .off: summaries = nil
        case .fromStoredKeys:
            guard layout.dtype != .fp8E4M3 else { throw .invalid("key summaries cannot be computed from fp8 keys; pass them with .provided") }
            summaries = try BlockSummaryTable(shape: KeySummaryShape(layout: layout, sketchBits: configuration.keySketchBits))
        case .provided(let shape): summaries = try BlockSummaryTable(shape: shape)
        }
        if let summaries { try Self.checkSummaryMemory(summaries, configuration, warmBytes: warmArena.slotStride * configuration.warmCapacityBlocks) }
        if configuration.coldCapacityBlocks > 0, let directory = configuration.cacheDirectory {
            let store = try BlockStore(
                directory: directory, geometry: BlockFile.Geometry(slotByteCount: slotByteCount, slotCount: configuration.coldCapacityBlocks),
                allowBufferedFallback: configuration.coldAllowsBufferedFallback, faultInjector: configuration.coldFaultInjector)
            coldStore = store
            let summaryFile = configuration.persistsKeySummaries ? summaries.map { KeySummaryFile(table: $0, store: store) } : nil
            keySummaryFile = summaryFile
            coldReads = TransferScheduler(link: ColdStoreLink(store: store, isWrite: false),
                maximumBytesInFlight: configuration.maximumBytesInFlightPerLink, clock: configuration.clock)
            var journal: (@Sendable ([BlockKey]) -> Void)?
            if let summaryFile { journal = { keys in summaryFile.journalWrites(keys) } }
            coldWrites = TransferScheduler(link: ColdStoreLink(store: store, isWrite: true, afterWrite: journal),
                maximumBytesInFlight: configuration.maximumBytesInFlightPerLink, clock: configuration.clock)
        } else {
            coldStore = nil
            keySummaryFile = nil
            coldReads = nil
            coldWrites = nil
        }
        hostToDevice = TransferScheduler(link: try AcceleratorLink(accelerator: accelerator, direction: .hostToDevice),
            maximumBytesInFlight: configuration.maximumBytesInFlightPerLink, clock: configuration.clock)
        deviceToHost = TransferScheduler(link: try AcceleratorLink(accelerator: accelerator, direction: .deviceToHost),
            maximumBytesInFlight: configuration.maximumBytesInFlightPerLink, clock: configuration.clock)
        metrics = HierarchyMetrics(policies: [configuration.hotPolicy.name, configuration.warmPolicy.name, configuration.coldPolicy.name])
        var initial = HierarchyState(
            policies: [configuration.hotPolicy.makePolicy(), configuration.warmPolicy.makePolicy(), configuration.coldPolicy.makePolicy()],
            capacity: [configuration.hotCapacityBlocks, configuration.warmCapacityBlocks, configuration.coldCapacityBlocks])
        initial.statistics.hot.capacityBlocks = configuration.hotCapacityBlocks
        initial.statistics.warm.capacityBlocks = configuration.warmCapacityBlocks
        initial.statistics.cold.capacityBlocks = configuration.coldCapacityBlocks
        if let coldStore {
            initial.statistics.coldIsBuffered = !coldStore.file.isDirect
            // Blocks durable from an earlier run: cache-only (no live sequence) until stored again.
            for key in coldStore.keys.sorted() {
                let id = initial.addRecord(key, position: -1)
                initial.records[Int(id)].flags.insert(.inCold)
                initial.used[Tier.cold.rawValue] += 1
                initial.policies[Tier.cold.rawValue].insert(id, context: PolicyBlockContext(position: -1, layer: Int32(key.layer)))
            }
            initial.statistics.cold.residentBlocks = initial.used[Tier.cold.rawValue]
        }
        keySummaryRestore = keySummaryFile?.open(coldFileIsNew: coldStore?.file.wasCreated ?? true)
        initial.statistics.keySummariesRestored = keySummaryRestore?.restored ?? 0
        state = ConditionLocked(initial)
    }

    deinit {
        try? accelerator.unregisterHostMemory(warmArena.region)
    }

    /// Summaries grow with the blocks held, in host memory, up to one per block of capacity. A
    /// configuration whose full tiers' summaries and warm arena cannot fit in this machine's
    /// memory is refused at open, not left to fail hours later when the cold tier fills.
    static func checkSummaryMemory(_ summaries: BlockSummaryTable, _ configuration: HierarchyConfiguration, warmBytes: Int) throws(TierKVError) {
        let blocks = configuration.hotCapacityBlocks + configuration.warmCapacityBlocks + configuration.coldCapacityBlocks
        let (summaryBytes, overflow) = blocks.multipliedReportingOverflow(by: summaries.recordByteCount)
        let physical = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
        guard physical > 0, overflow || summaryBytes > physical - min(physical, warmBytes) else { return }
        let gib = { (bytes: Int) in "\((Double(bytes) / Double(1 << 30) * 10).rounded() / 10) GiB" }
        throw TierKVError(
            .capacityExceeded,
            "key summaries for \(blocks) blocks (hot + warm + cold capacity) at \(summaries.recordByteCount) bytes each need up to \(overflow ? "more than" : gib(summaryBytes)) of host memory, which with the warm tier's \(gib(warmBytes)) is more than this machine's \(gib(physical)); lower key_sketch_bits, the cold capacity, or turn key_summaries off")
    }

    // MARK: Keys

    /// The keys of `tokens`' full blocks at `layer` (a trailing partial block has no key yet).
    public func blockKeys(tokens: [UInt32], layer: Int) -> [BlockKey] { hasher.blockKeys(tokens, layer: layer) }

    /// The prefix hashes of `tokens`' full blocks (one per block, shared by all layers).
    public func prefixHashes(tokens: [UInt32]) -> [PrefixHash] { hasher.blockHashes(tokens) }

    // MARK: Storing

    /// Stores one block's KV (`layout.blockByteCount` bytes: K then V, as the engine lays them
    /// out) for `sequence`. Returns once the bytes are copied into pinned host memory: the caller
    /// may reuse `bytes` at once. A key the hierarchy already holds is not copied again; the
    /// sequence just references it (prefix sharing).
    /// - Parameters:
    ///   - position: the block's index in its sequence (policies such as StreamingLLM use it).
    ///   - sequence: the sequence that references the block until `drop`; nil stores it as cache only.
    ///   - keySummary: the block's key summary (`[head][min, max, mean][dim]` fp32) when the
    ///     configuration's `keySummaries` is `.provided`; computed here with `.fromStoredKeys`.
    ///   - keys: with `.provided`, instead of `keySummary`: the block's keys in the provided
    ///     shape, fp32 `[token][kvHead][dim]` (up to its `tokensPerBlock` rows), from which the
    ///     summary and the sketch are computed here. Needed when the shape has a key sketch.
    /// - Throws: a wrong byte count; a missing or misshapen summary; `.capacityExceeded` when no
    ///   tier can take the block because every block is pinned or referenced and dropping is not
    ///   allowed; `.closed`.
    @discardableResult
    public func store(
        _ key: BlockKey, position: Int, bytes: UnsafeRawBufferPointer, sequence: SequenceID? = nil,
        keySummary: UnsafeBufferPointer<Float>? = nil, keys: UnsafeBufferPointer<Float>? = nil
    ) throws(TierKVError) -> StoreOutcome {
        guard bytes.count == blockByteCount, bytes.baseAddress != nil else {
            throw .invalid("block \(key) has \(bytes.count) bytes; the layout's blocks have \(blockByteCount) (2 × \(configuration.layout.tokensPerBlock) tokens × \(configuration.layout.kvHeads) KV heads × \(configuration.layout.headDim) × \(configuration.layout.dtype.byteSize) bytes)")
        }
        guard Int(key.layer) < configuration.layout.layers else {
            throw .invalid("block \(key) names layer \(key.layer); the layout has \(configuration.layout.layers) layers")
        }
        var keyRows = 0
        if case .provided(let shape) = configuration.keySummaries, let keys {
            let rowValues = shape.kvHeads * shape.headDim
            keyRows = keys.count / rowValues
            guard keys.count % rowValues == 0, keyRows >= 1, keyRows <= shape.tokensPerBlock else {
                throw .invalid("block \(key) has \(keys.count) key values; expected 1...\(shape.tokensPerBlock) rows of \(rowValues) (\(shape.kvHeads) KV heads × \(shape.headDim))")
            }
        } else if keys != nil {
            throw .invalid("block \(key) was passed its keys; a hierarchy takes keys only with keySummaries .provided (this one computes its summaries from the stored blocks, or keeps none)")
        } else if case .provided(let shape) = configuration.keySummaries, shape.sketchBits > 0 {
            throw .invalid("block \(key) needs its keys (fp32 [token][KV head][dim]): the provided summary shape keeps \(shape.sketchBits)-bit key sketches, which are made from the keys")
        } else if case .provided(let shape) = configuration.keySummaries, keySummary?.count != shape.valueCount {
            throw .invalid("block \(key) needs its key summary (\(shape.valueCount) values: \(shape.kvHeads) KV heads × 3 × \(shape.headDim)); the hierarchy was configured with provided summaries; found \(keySummary.map { "\($0.count)" } ?? "none")")
        }
        let reservation = try reserveForStore(key, position: Int32(clamping: position), sequence: sequence)
        guard let (id, slot) = reservation else { return .alreadyCached }
        if let summaries {
            if let keys {
                try summaries.insert(key, keys: UnsafeRawPointer(keys.baseAddress!), dtype: .fp32, tokenCount: keyRows)
            } else if let keySummary {
                try summaries.insert(key, summary: keySummary)
            } else {
                try summaries.insert(key, keys: bytes.baseAddress!, dtype: configuration.layout.dtype, tokenCount: configuration.layout.tokensPerBlock)
            }
        }
        memcpy(warmPayload(ofSlot: slot).baseAddress!, bytes.baseAddress!, blockByteCount)
        commitStore(id)
        return .stored
    }

    /// Stores one block whose KV is in accelerator memory (`layout.blockByteCount` bytes at
    /// `deviceAddress`, e.g. a slot of the engine's paged cache). The bytes are copied to a
    /// registered staging buffer on the hierarchy's own stream and then stored as `store` does;
    /// returns once they are in host memory, so the engine may overwrite the device memory then.
    /// Calls are serialised on the one staging buffer: engines that already hold the bytes on the
    /// host should use `store`.
    /// - Throws: what `store` throws; a device copy error (an address outside device memory).
    @discardableResult
    public func store(
        _ key: BlockKey, position: Int, deviceAddress: DeviceAddress, sequence: SequenceID? = nil,
        keySummary: UnsafeBufferPointer<Float>? = nil, keys: UnsafeBufferPointer<Float>? = nil
    ) throws(TierKVError) -> StoreOutcome {
        try withDeviceStaging { (staging) throws(TierKVError) -> StoreOutcome in
            try staging.stream.copyToHost(from: deviceAddress, to: staging.bytes.baseAddress!, byteCount: blockByteCount)
            try staging.stream.synchronize()
            return try store(
                key, position: position, bytes: UnsafeRawBufferPointer(rebasing: staging.bytes[0..<blockByteCount]),
                sequence: sequence, keySummary: keySummary, keys: keys)
        }
    }

    /// One block of `store(deviceBlocks:sequence:)`.
    public struct DeviceBlock: Sendable, Hashable {
        public var key: BlockKey
        /// The block's index in its sequence.
        public var position: Int
        /// `layout.blockByteCount` bytes of K then V in accelerator memory.
        public var deviceAddress: DeviceAddress

        public init(key: BlockKey, position: Int, deviceAddress: DeviceAddress) {
            self.key = key
            self.position = position
            self.deviceAddress = deviceAddress
        }
    }

    /// Stores many blocks that are in accelerator memory, e.g. a layer's slots of the engine's
    /// paged cache after a prefill. They are copied to host memory in batches of
    /// `deviceStagingBlockCount` blocks, each one submission (`cuMemcpyBatchAsync` where the
    /// driver has it) and one wait, instead of one copy and one wait per block as
    /// `store(_:position:deviceAddress:)` does; then each is stored as `store` does. Returns once
    /// every block is in host memory, so the engine may overwrite the device memory then. Keys
    /// already cached are still copied (look them up first to skip them); their outcome is
    /// `.alreadyCached`.
    /// - Returns: one outcome per block, in order.
    /// - Throws: a block naming a layer the layout does not have, checked for every block before
    ///   anything is copied; a device copy error (an address outside device memory) for a batch,
    ///   or what `store` throws for a block, naming that block's index. Blocks before the batch or
    ///   block named are stored; `TierKVError.message` says how many.
    public func store(deviceBlocks: [DeviceBlock], sequence: SequenceID? = nil) throws(TierKVError) -> [StoreOutcome] {
        var outcomes: [StoreOutcome] = []
        try store(deviceBlocks: deviceBlocks, sequence: sequence, outcomes: &outcomes)
        return outcomes
    }

    /// `store(deviceBlocks:sequence:)` appending each block's outcome to `outcomes` as it is
    /// stored, so that after an error `outcomes` holds those of the blocks that were.
    public func store(
        deviceBlocks: [DeviceBlock], sequence: SequenceID? = nil, outcomes: inout [StoreOutcome]
    ) throws(TierKVError) {
        let layers = configuration.layout.layers
        if let bad = deviceBlocks.firstIndex(where: { Int($0.key.layer) >= layers }) {
            throw .invalid("block \(bad) (\(deviceBlocks[bad].key)) names layer \(deviceBlocks[bad].key.layer); the layout has \(layers) layers; nothing was stored")
        }
        guard !deviceBlocks.isEmpty else { return }
        let alreadyDone = outcomes.count
        try withDeviceStaging { (staging) throws(TierKVError) -> Void in
            outcomes.reserveCapacity(alreadyDone + deviceBlocks.count)
            var first = 0
            while first < deviceBlocks.count {
                let batch = deviceBlocks[first..<min(first + staging.blockCount, deviceBlocks.count)]
                let copies = batch.indices.map { index in
                    DeviceCopy(host: staging.bytes.baseAddress! + (index - first) * blockByteCount,
                        device: deviceBlocks[index].deviceAddress, byteCount: blockByteCount)
                }
                do throws(TierKVError) {
                    try staging.stream.copyToHost(copies)
                    try staging.stream.synchronize()
                } catch {
                    // Copies enqueued before the failing one still land in the staging buffer:
                    // wait for them, so none writes into it after this call returns.
                    try? staging.stream.synchronize()
                    var error = error
                    error.message = "copying blocks \(first)…\(batch.endIndex - 1) from the device: \(error.message); \(Self.storedSoFar(first))"
                    throw error
                }
                for index in batch.indices {
                    let block = deviceBlocks[index]
                    let bytes = UnsafeRawBufferPointer(start: staging.bytes.baseAddress! + (index - first) * blockByteCount, count: blockByteCount)
                    do throws(TierKVError) {
                        outcomes.append(try store(block.key, position: block.position, bytes: bytes, sequence: sequence))
                    } catch {
                        var error = error
                        error.message = "storing block \(index) (\(block.key)): \(error.message); \(Self.storedSoFar(index))"
                        throw error
                    }
                }
                first = batch.endIndex
            }
        }
    }

    private static func storedSoFar(_ count: Int) -> String {
        count == 0 ? "no block was stored" : count == 1 ? "block 0 was stored" : "blocks 0…\(count - 1) were stored"
    }

    /// Blocks the device staging buffer holds: 64, or fewer where 64 blocks would pass 8 MiB.
    public var deviceStagingBlockCount: Int { max(1, min(64, (8 << 20) / blockByteCount)) }

    private func withDeviceStaging<T>(_ body: (DeviceStaging) throws(TierKVError) -> T) throws(TierKVError) -> T {
        try deviceStaging.withLock { (staging) throws(TierKVError) -> T in
            if let staging { return try body(staging) }
            let made = try DeviceStaging(accelerator: accelerator, blockByteCount: blockByteCount, blockCount: deviceStagingBlockCount)
            staging = made
            return try body(made)
        }
    }

    /// Stores every full block of `tokens` at `layer` from `kv(blockIndex)`, returning the keys.
    @discardableResult
    public func storeSequence(
        tokens: [UInt32], layer: Int, sequence: SequenceID?, kv: (Int) -> UnsafeRawBufferPointer
    ) throws(TierKVError) -> [BlockKey] {
        let keys = blockKeys(tokens: tokens, layer: layer)
        for (index, key) in keys.enumerated() { try store(key, position: index, bytes: kv(index), sequence: sequence) }
        return keys
    }

    // MARK: Lookup

    /// The longest prefix of `prefixHashes` (from `prefixHashes(tokens:)`) cached per tier.
    public func lookupPrefix(_ prefixHashes: [PrefixHash]) -> PrefixLookup {
        let layers = configuration.layout.layers
        return state.withLock { state in
            var lookup = PrefixLookup(inHot: 0, inHotOrWarm: 0, cached: 0, requested: prefixHashes.count)
            var hotRun = true, warmRun = true
            for hash in prefixHashes {
                var allHot = true, allWarm = true, allCached = true
                for layer in 0..<layers {
                    guard let id = state.index[BlockKey(prefixHash: hash, layer: UInt32(layer))] else {
                        allCached = false
                        break
                    }
                    let flags = state.records[Int(id)].flags
                    if !flags.contains(.inHot) { allHot = false }
                    if flags.isDisjoint(with: [.inHot, .inWarm]) { allWarm = false }
                    if flags.isDisjoint(with: [.inHot, .inWarm, .inCold]) { allCached = false; break }
                }
                guard allCached else { break }
                lookup.cached += 1
                warmRun = warmRun && allWarm
                hotRun = hotRun && allHot
                if warmRun { lookup.inHotOrWarm += 1 }
                if hotRun { lookup.inHot += 1 }
            }
            return lookup
        }
    }

    /// The longest cached prefix of `tokens`.
    public func lookupPrefix(tokens: [UInt32]) -> PrefixLookup { lookupPrefix(prefixHashes(tokens: tokens)) }

    /// Whether the hierarchy holds a copy of `key`, and the fastest tier holding it.
    public func fastestTier(of key: BlockKey) -> Tier? {
        state.withLock { state in
            guard let id = state.index[key] else { return nil }
            let flags = state.records[Int(id)].flags
            if flags.contains(.inHot) { return .hot }
            if flags.contains(.inWarm) { return .warm }
            if flags.contains(.inCold) { return .cold }
            return nil
        }
    }

    // MARK: Residency

    /// Makes `keys` resident in `tier` (hot for GPU attention, warm for CPU attention) and pins
    /// them until `release`. Returns at once; blocks move on the links in the background, demand
    /// fetches ahead of prefetches and write-backs. Keys the hierarchy lacks are listed in the
    /// request's `missingKeys`.
    /// - Throws: duplicate keys, a cold tier as target, or `.closed`.
    public func makeResident(
        _ keys: [BlockKey], in tier: Tier = .hot, priority: TransferPriority = .demand
    ) throws(TierKVError) -> ResidencyRequest {
        guard tier != .cold else { throw .invalid("blocks are made resident in the hot or warm tier, not cold") }
        let request = try state.withLock { (state) throws(TierKVError) -> ResidencyRequest in
            guard !state.isClosed else { throw TierKVError(.closed, "the hierarchy is closed") }
            let ids = try resolveDistinct(keys, &state)
            // Blocks already where they are wanted arrive at once: the request starts with their slots.
            let resident: BlockRecord.Flags = tier == .hot ? .inHot : .inWarm
            let slots = ids.map { id -> Int32 in
                guard let id else { return -1 }
                let record = state.records[Int(id)]
                guard record.flags.contains(resident) else { return -1 }
                return tier == .hot ? record.hotSlot : record.warmSlot
            }
            let request = ResidencyRequest(
                keys: keys, ids: ids, slots: slots, tier: tier, isDemand: priority == .demand, hierarchy: self,
                nanoseconds: configuration.clock.nanoseconds())
            admit(request, priority: priority, &state)
            pump(&state)
            return request
        }
        drainActions()
        return request
    }

    /// The live block id of each key (nil where the hierarchy lacks it); throws when a key comes
    /// twice. Found keys are checked by stamping their records, so the check costs no hashing.
    private func resolveDistinct(_ keys: [BlockKey], _ state: inout HierarchyState) throws(TierKVError) -> [Int32?] {
        state.admissionStamp &+= 1
        if state.admissionStamp == 0 {
            // Wrapped: clear every stamp so that none can equal a new one by age.
            for id in state.records.indices { state.records[id].admissionStamp = 0 }
            state.admissionStamp = 1
        }
        let stamp = state.admissionStamp
        var ids: [Int32?] = []
        ids.reserveCapacity(keys.count)
        var missing = 0
        for key in keys {
            guard let id = state.index[key], state.records[Int(id)].flags.contains(.live) else {
                ids.append(nil)
                missing += 1
                continue
            }
            guard state.records[Int(id)].admissionStamp != stamp else {
                throw .invalid("makeResident was given the same key more than once (\(key))")
            }
            state.records[Int(id)].admissionStamp = stamp
            ids.append(id)
        }
        if missing > 1 {
            var seen = Set<BlockKey>(minimumCapacity: missing)
            for (key, id) in zip(keys, ids) where id == nil {
                guard seen.insert(key).inserted else { throw .invalid("makeResident was given the same key more than once (\(key))") }
            }
        }
        return ids
    }

    /// Unpins the blocks of `request`; they stay resident until a policy evicts them. Releasing
    /// twice is harmless.
    public func release(_ request: ResidencyRequest) {
        guard request.markReleased() else { return }
        state.withLock { state in
            unpin(request, &state)
            pump(&state)
        }
        state.broadcast()
        drainActions()
    }

    /// Releases `request` and withdraws the moves it queued that have not started and that no
    /// other request or pin still wants: what a prefetcher does when a prediction loses its
    /// reason. Moves already on a link finish (their bandwidth is spent); their blocks simply
    /// stay where they land. Returns how many blocks' queued moves were withdrawn.
    @discardableResult
    public func cancel(_ request: ResidencyRequest) -> Int { cancelReturningWithdrawn(request).count }

    /// `cancel`, returning the keys whose queued moves were withdrawn.
    public func cancelReturningWithdrawn(_ request: ResidencyRequest) -> [BlockKey] {
        guard request.markReleased() else { return [] }
        let withdrawn = state.withLock { state -> [BlockKey] in
            unpin(request, &state)
            let withdrawn = withdrawQueuedMoves(request, &state)
            pump(&state)
            return withdrawn
        }
        state.broadcast()
        drainActions()
        return withdrawn
    }

    /// Copies a block's bytes out of whatever tier holds it (bringing it to warm if needed).
    /// - Throws: `.notFound` when the hierarchy does not hold it, `.corruption` or an I/O error
    ///   when its only copy cannot be read back.
    public func read(_ key: BlockKey, into destination: UnsafeMutableRawBufferPointer) throws(TierKVError) {
        guard destination.count >= blockByteCount else {
            throw .invalid("destination has \(destination.count) bytes; a block has \(blockByteCount)")
        }
        let request = try makeResident([key], in: .warm)
        defer { release(request) }
        request.wait()
        if !request.missingKeys.isEmpty { throw TierKVError(.notFound, "block \(key) is not cached") }
        guard let bytes = request.hostBytes(at: 0) else {
            throw TierKVError(.corruption, "block \(key) could not be read back: \(request.failures[key] ?? "unknown")")
        }
        destination.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: blockByteCount)
    }

    // MARK: Feedback and lifetime

    /// Reports the attention mass each block received in the last step (summed over its query
    /// heads), for attention-aware policies (H2O, TOVA). Unknown keys are ignored.
    public func reportAttention(_ keys: [BlockKey], mass: [Float]) throws(TierKVError) {
        guard keys.count == mass.count else { throw .invalid("reportAttention got \(keys.count) keys and \(mass.count) masses") }
        state.withLock { state in
            for (key, value) in zip(keys, mass) {
                guard let id = state.index[key] else { continue }
                for policy in state.policies { policy.reportAttention(id, mass: value) }
            }
        }
    }

    /// Ends `sequence`: its blocks lose its reference. Blocks other sequences share stay
    /// referenced; the rest stay cached (evictable, droppable) for future prefix hits.
    public func drop(sequence: SequenceID) {
        state.withLock { state in
            guard let blocks = state.sequences.removeValue(forKey: sequence.rawValue) else { return }
            for key in blocks.keys {
                guard let id = state.index[key] else { continue }
                if state.records[Int(id)].references == 0 {
                    state.statistics.referenceUnderflows += 1
                } else {
                    state.records[Int(id)].references -= 1
                }
            }
            state.statistics.liveSequences = state.sequences.count
            pump(&state)
        }
        state.broadcast()
        drainActions()
    }

    /// Makes every block durable in the cold tier (ignoring the admission filter), waits for the
    /// writes, and checkpoints the cold index so a restart opens fast.
    @discardableResult
    public func flush() throws(TierKVError) -> FlushSummary {
        guard let coldStore else { return FlushSummary() }
        let start = state.withLock { state in enqueueFlush(&state) }
        drainActions()
        // Done when no block is still marked for this flush (each ends written, failed or dropped).
        let summary = state.waitingWithLock(makingProgress: configuration.clock.advanceToNextEvent) { state -> ConditionLocked<HierarchyState>.Step<FlushSummary> in
            let pending = state.records.contains { $0.flags.contains(.live) && $0.flags.contains(.queuedFlush) }
            return pending ? .wait : .done(FlushSummary(written: state.flushWritten - start.written, failed: state.flushFailed - start.failed))
        }
        try coldStore.checkpoint()
        try persistKeySummaries()
        return summary
    }

    /// Writes `summaries.tkv` (the key summaries of the cold tier's blocks, see `KeySummaryFile`)
    /// unless nothing it would hold changed since the last write. The blocks are durable before
    /// this runs: a failure here loses no block, only the summaries a restart would find.
    func persistKeySummaries() throws(TierKVError) {
        guard let keySummaryFile else { return }
        do throws(TierKVError) {
            try keySummaryFile.save()
        } catch {
            throw TierKVError(
                error.code, "the blocks are durable, but their key summaries could not be saved (a restart restores what the journal holds; rebuildKeySummaries reads the rest from the blocks): \(error.message)",
                operation: error.operation, path: error.path, errno: error.errno)
        }
    }

    /// Waits for transfers in flight, optionally flushes, and closes. Later calls throw `.closed`.
    public func close(flushing: Bool = false) throws(TierKVError) {
        if state.withLock({ $0.isClosed }) { return }
        if flushing { try flush() }
        state.waitingWithLock(makingProgress: configuration.clock.advanceToNextEvent) { state -> ConditionLocked<HierarchyState>.Step<Void> in
            guard state.inFlight.isEmpty, !state.isDraining, !state.isCheckpointing else { return .wait }
            state.isClosed = true
            // Moves still queued (waiting for a slot) will never start: their waiters fail now
            // rather than wait for ever.
            for id in Set(state.hotWaiters.keys).union(state.warmWaiters.keys) {
                failWaiters(id, reason: "the hierarchy was closed before the block arrived", &state)
            }
            return .done(())
        }
        defer {
            keySummaryFile?.closeJournal()
            coldStore?.file.releaseDirectoryLock()
        }
        try coldStore?.checkpoint()
        try persistKeySummaries()
    }

    /// Waits until no movement is in flight or ready to start: every store has landed where it
    /// goes, demotions and write-backs have finished. Useful before inspecting placement (tests,
    /// the simulator between phases); an engine never needs it.
    public func waitUntilIdle() {
        state.waitingWithLock(makingProgress: configuration.clock.advanceToNextEvent) { state -> ConditionLocked<HierarchyState>.Step<Void> in
            state.inFlight.isEmpty && state.actions.isEmpty && !state.isDraining ? .done(()) : .wait
        }
    }

    // MARK: Observation

    /// Counters and occupancy now.
    public var statistics: HierarchyStatistics {
        state.withLock { state in
            var statistics = state.statistics
            statistics.summarizedBlocks = summaries?.count ?? 0
            for tier in Tier.allCases {
                var pinned = 0
                for record in state.records where record.flags.contains(.live) {
                    if tier == .hot, record.hotPins > 0 { pinned += 1 }
                    if tier == .warm, record.warmPins > 0 { pinned += 1 }
                }
                switch tier {
                case .hot: statistics.hot.pinnedBlocks = pinned
                case .warm: statistics.warm.pinnedBlocks = pinned
                case .cold: break
                }
            }
            return statistics
        }
    }

    /// Residency-table bytes per block: the record, its share of the key index, and the three
    /// policies' metadata (measured from the structures' strides, not a malloc count).
    public static func metadataBytesPerBlock(policies: [EvictionPolicyKind]) -> Int {
        let record = MemoryLayout<BlockRecord>.stride
        // Swift's Dictionary keeps its load factor ≤ 3/4: key + value + a metadata byte per bucket.
        let indexEntry = (MemoryLayout<BlockKey>.stride + MemoryLayout<Int32>.stride + 1) * 4 / 3
        let policyBytes = policies.reduce(0) { $0 + $1.metadataBytesPerBlock }
        return record + indexEntry + policyBytes
    }

    /// Every invariant, checked over the whole table now, plus any violation seen while running.
    /// Empty when all hold. Tests call it after every operation.
    public func checkInvariants() -> [String] {
        state.withLock { state in invariantViolations(state) }
    }

    /// The host bytes of a warm slot's payload.
    func warmPayload(ofSlot slot: Int32) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: warmArena.address(ofSlot: Int(slot)) + warmPayloadOffset, count: blockByteCount)
    }
}

/// A registered host buffer of `blockCount` blocks and a stream, for stores from device memory.
final class DeviceStaging: @unchecked Sendable {
    // @unchecked: used only under `Hierarchy.deviceStaging`'s lock.
    let bytes: UnsafeMutableRawBufferPointer
    let blockCount: Int
    let stream: any AcceleratorStream
    let accelerator: any Accelerator

    init(accelerator: any Accelerator, blockByteCount: Int, blockCount: Int) throws(TierKVError) {
        let byteCount = blockByteCount * blockCount
        self.blockCount = blockCount
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, 4096, byteCount) == 0, let pointer else {
            throw TierKVError(.systemCall, "cannot allocate a \(byteCount)-byte staging buffer", operation: "posix_memalign")
        }
        bytes = UnsafeMutableRawBufferPointer(start: pointer, count: byteCount)
        self.accelerator = accelerator
        do {
            try accelerator.registerHostMemory(bytes)
        } catch {
            free(pointer)
            throw error
        }
        do {
            stream = try accelerator.makeStream()
        } catch {
            try? accelerator.unregisterHostMemory(bytes)
            free(pointer)
            throw error
        }
    }

    deinit {
        try? stream.synchronize()  // nothing may land in the buffer once it is freed
        try? accelerator.unregisterHostMemory(bytes)
        free(bytes.baseAddress)
    }
}
