import Dispatch
import Foundation
import TierKV

/// What `DecodeSimulation` runs: a model and machine, the long-decode workload, the policy and
/// the tier sizes.
public struct DecodeSimulationConfiguration: Sendable {
    public var model: ModelPreset = .llama3_1_8B
    public var hardware: HardwarePreset = .h100SXMGen4NVMe
    public var workload = LongDecodeParameters()
    public var policy: EvictionPolicyKind = .lru
    /// The warm (and cold) tiers' policy when it differs from the hot tier's `policy`: a policy
    /// built for hot (layer-cyclic) need not suit warm, which sees what hot lets go.
    public var warmPolicy: EvictionPolicyKind?
    /// `policy`, with the warm tiers' policy after it where that differs ("layered, warm lru").
    public var policyName: String {
        guard let warmPolicy, warmPolicy != policy else { return policy.name }
        return "\(policy.name), warm \(warmPolicy.name)"
    }
    /// Tier sizes as fractions of the workload's KV bytes (all layers, all blocks written by the
    /// end of the run), unless given in bytes. The cold tier holds the rest: every block, so a
    /// block leaving warm always has room for its durable copy.
    public var hotFraction = 0.10
    public var warmFraction = 0.30
    public var hotBytes: Int?
    public var warmBytes: Int?
    public var coldBytes: Int?
    /// A layer needs the smallest set of blocks holding this share of its attention mass (exact
    /// attention over the context is 1). Sinks and the newest block are always needed.
    public var attentionCoverage = 0.95
    public var computeEfficiency = 1.0
    public var kvDType: DType = .fp16
    /// Modelled bytes each link may have in flight (the scheduler's bound).
    public var bytesInFlightPerLink = 256 << 20
    /// Of them, modelled bytes of prefetches (`HierarchyConfiguration.maximumPrefetchBytesInFlightPerLink`).
    public var prefetchBytesInFlightPerLink = 4 << 20
    /// The cold tier's file goes in a fresh directory made under this one and removed after (by
    /// default under `/dev/shm`, `$TMPDIR` or `/tmp`).
    public var cacheDirectory: String?
    /// Real I/O: full-size blocks in the real warm arena and a real cold file under
    /// `cacheDirectory` (required), and the NVMe links timed by the real reads and writes
    /// (measured wall time) instead of the drive's model. Host↔device stays modelled.
    public var realIO = false
    /// Speculative prefetch (`--prefetch`, `--lookahead`, `--prefetch-budget`).
    public var prefetch = PrefetchSettings()
    /// CPU attention over warm blocks: needed blocks not in hot are attended where they sit in
    /// host memory when the cost model says that finishes the layer sooner than fetching them.
    public var cpuAttention = false
    /// The CPU attention rate, bytes of K/V per second; nil: the preset's host memory bandwidth ×
    /// 0.76 (the kernel's measured share of it, docs/measurements.md) × 0.5 (half the socket's
    /// bandwidth left to attention beside the engine's own threads).
    public var cpuAttentionBytesPerSecond: Double?
    /// Approximate mode: needed blocks whose predicted mass (Quest bound with the layer's own
    /// query) is below this share are skipped; nil (the default) is exact attention.
    public var skipBelowMass: Float?
    /// After the prefill, place the prompt's blocks by the attention its last token paid them
    /// (`Hierarchy.placeAfterPrefill`, SnapKV's observation): the blocks covering
    /// `attentionCoverage` of each layer's mass go to warm (read back from cold where the
    /// prefill's later layers pushed them), up to half the warm tier, and the history predictor
    /// starts from that attention. Off: the tiers hold what the prefill wrote last.
    public var prefillPlacement = false

    public init() {}

    /// The CPU attention rate in use.
    public var resolvedCPUAttentionBytesPerSecond: Double {
        cpuAttentionBytesPerSecond ?? hardware.hostMemoryBytesPerSecond * 0.76 * 0.5
    }
}

/// One decode step of the timeline.
public struct DecodeStepRecord: Sendable, Equatable {
    public var step: Int
    /// Virtual seconds at the end of the step.
    public var time: Double
    public var stallSeconds: Double
    public var computeSeconds: Double
    public var neededBlocks: Int
    public var hotHits: Int
    public var warmHits: Int
    public var coldHits: Int
    /// Needed blocks attended on CPU threads where they sat in warm, and skipped (approximate mode).
    public var cpuBlocks: Int = 0
    public var skippedBlocks: Int = 0
    /// Modelled bytes moved per link during the step.
    public var bytes: [String: Double]
    /// Fraction of the step each link was busy.
    public var utilisation: [String: Double]
}

public struct TierCounts: Sendable, Equatable {
    public var hits = 0
    public var misses = 0
    public var hitRate: Double { hits + misses == 0 ? 0 : Double(hits) / Double(hits + misses) }
}

/// What a decode simulation measured (decode phase only; the prefill that fills the tiers is
/// not counted).
public struct DecodeSimulationResult: Sendable {
    /// `long-decode` or `trace:tierkv`.
    public var workload: String
    /// NVMe times measured on real I/O (`--real-io`) rather than modelled.
    public var realIO: Bool
    public var model: String
    public var hardware: String
    public var policy: String
    public var parameters: LongDecodeParameters
    public var attentionCoverage: Double
    /// Capacities in blocks, and the modelled bytes of one block (one layer, 16 tokens, K and V).
    public var capacityBlocks: [Tier: Int]
    public var blockBytes: Int
    public var totalBlocks: Int
    public var tiers: [Tier: TierCounts]
    public var bytesMoved: [String: Double]
    public var linkBusySeconds: [String: Double]
    public var stallSeconds: Double
    /// Stall of layers that waited only for blocks already in warm (host→device copies), and of
    /// layers that waited for at least one block from cold (NVMe reads first).
    public var stallFromWarmSeconds: Double
    public var stallFromColdSeconds: Double
    /// Stall storing new blocks: the warm tier was full and the store waited for a demotion.
    public var stallFromStoresSeconds: Double
    /// Demand stall per layer index, summed over the steps (stores excluded): where in the step
    /// the waiting happens. Layer 0 standing out would mean the step boundary (its blocks are
    /// predicted from the previous token); an even spread means every layer's own misses.
    public var stallByLayerSeconds: [Double] = []
    /// Blocks each layer needed per sequence and step: the mean and the most in one step.
    /// A layer whose need swings far above its mean (attention spreading out) outgrows what stayed
    /// in hot, and no eviction order keeps blocks it did not need last step.
    public var neededBlocksByLayer: [(mean: Double, most: Int)] = []
    public var computeSeconds: Double
    public var decodeSeconds: Double
    public var generatedTokens: Int
    public var tokensPerSecond: Double { decodeSeconds > 0 ? Double(generatedTokens) / decodeSeconds : 0 }
    /// With every block in hot: compute only.
    public var computeBoundTokensPerSecond: Double { computeSeconds > 0 ? Double(generatedTokens) / computeSeconds : 0 }
    /// Bélády's MIN over the same sequence of hot-tier accesses, at the hot capacity, with the
    /// stores as free insertions (as the hierarchy admits stored blocks to hot).
    public var oracleHotHitRate: Double
    public var blockAccesses: Int
    public var timeline: [DecodeStepRecord]
    public var wallSeconds: Double
    public var droppedBlocks: Int
    public var corruptions: Int
    /// Residency-table metadata per block plus the generator's vectors per block.
    public var metadataBytesPerBlock: Int
    public var vectorBytesPerBlock: Int
    /// Prefetch and predictor quality (nil without prefetch or prediction).
    public var prefetch: PrefetchReport?
    /// Key-summary bytes per block for the model's real shape (fp16 min/max/mean per KV head,
    /// and the key sketch with `sketch` scoring).
    public var summaryBytesPerBlock: Int
    public var cpuAttention: Bool
    public var cpuAttentionBytesPerSecond: Double
    /// Needed blocks attended on CPU, fetched to hot on demand (not already there), skipped.
    public var cpuAttentionBlocks: Int
    public var demandFetchedBlocks: Int
    public var skippedBlocks: Int
    /// Attention mass the skipped blocks really held, summed over layers and steps, ÷ (layers × steps × sequences).
    public var skippedMassPerLayer: Double
    /// What the placement after the prefill did (nil when off).
    public var prefillPlacement: PrefillPlacementReport? = nil
}

/// `--prefill-placement`: blocks placed in warm after the prefill, and the NVMe reads that cost
/// before decode started (they overlap the prefill's compute, which the simulation does not time).
public struct PrefillPlacementReport: Sendable, Equatable {
    public var chosenBlocks: Int
    public var fromColdBlocks: Int
    /// Modelled bytes read from NVMe, and the virtual seconds from the placement to its last arrival.
    public var readBytes: Double
    public var seconds: Double
}

/// The long-decode simulation: the real `Hierarchy` (emulated accelerator for hot, a real warm
/// arena, a real cold block file on io_uring) on a `VirtualClock` whose links are the hardware
/// preset's models. Blocks are small stand-ins (the model's layer count, one 8-wide head), and
/// the clock scales their bytes to the model's block size, so a 2 GiB cache simulates in
/// megabytes while every decision (placement, eviction, priorities, pins) is the library's own.
///
/// Per decode step: the workload computes each layer's attention exactly; layer by layer the
/// engine asks for the layer's needed blocks in hot (`makeResident`, demand), waits (stall, in
/// virtual time), computes (the roofline time), reports the attention mass, releases. Every
/// `tokensPerBlock` steps the newest block of every layer is stored.
public enum DecodeSimulation {
    /// - Parameter trace: attention recorded from a real model instead of the generator; its
    ///   context, steps and block size replace the configuration's workload.
    public static func run(
        _ configuration: DecodeSimulationConfiguration, trace: TierKVTrace? = nil, progress: ((Int, Int) -> Void)? = nil
    ) throws(TierKVError) -> DecodeSimulationResult {
        let wallStart = DispatchTime.now().uptimeNanoseconds
        var parameters = configuration.workload
        if let trace {
            trace.rewind()
            parameters.sequences = 1
            parameters.contextTokens = trace.contextTokens
            parameters.decodeSteps = trace.decodeSteps
            parameters.tokensPerBlock = trace.tokensPerBlock
            parameters.sinkTokens = trace.sinkTokens
        }
        try validate(configuration)
        let model = configuration.model
        let layers = model.layers
        if let trace, trace.layers != layers {
            throw TierKVError.invalid("the trace has \(trace.layers) layers but the model \(model.name) has \(layers); pass the recorded model's preset with --model")
        }
        let modelLayout = try model.layout(tokensPerBlock: parameters.tokensPerBlock, dtype: configuration.kvDType)
        if configuration.realIO, configuration.cacheDirectory == nil {
            throw TierKVError.invalid("real I/O needs a cache directory on the drive to measure (--cache-dir)")
        }
        let standIn = configuration.realIO
            ? modelLayout : try KVLayout(layers: layers, kvHeads: 1, queryHeads: 1, headDim: 8, tokensPerBlock: parameters.tokensPerBlock)
        let byteScale = Double(modelLayout.blockByteCount) / Double(standIn.blockByteCount)
        let fullBlocksPerLayer = parameters.totalTokens / parameters.tokensPerBlock
        let totalBlocks = parameters.sequences * layers * fullBlocksPerLayer
        let blockBytes = modelLayout.blockByteCount
        func blocks(_ bytes: Int?, _ fraction: Double) -> Int {
            if let bytes { return max(1, bytes / blockBytes) }
            return max(1, Int((Double(totalBlocks) * fraction).rounded()))
        }
        let capacity: [Tier: Int] = [
            .hot: blocks(configuration.hotBytes, configuration.hotFraction),
            .warm: blocks(configuration.warmBytes, configuration.warmFraction),
            .cold: configuration.coldBytes.map { max(1, $0 / blockBytes) } ?? totalBlocks,
        ]

        let clock = VirtualClock(
            links: configuration.hardware.links, byteScale: byteScale,
            measuredLinks: configuration.realIO ? ["nvme_read", "nvme_write"] : [])
        // A fresh directory per run (inside --cache-dir when given), removed after: a run never
        // starts from blocks an earlier run left behind.
        let temporary = try makeTemporaryDirectory(under: configuration.cacheDirectory)
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        var hierarchyConfiguration = HierarchyConfiguration(
            layout: standIn, namespace: "tierkv-simulate", hotCapacityBlocks: capacity[.hot]!,
            warmCapacityBlocks: capacity[.warm]!, coldCapacityBlocks: capacity[.cold]!,
            cacheDirectory: temporary + "/cache", policy: configuration.policy,
            accelerator: .emulated(.instant))
        if let warmPolicy = configuration.warmPolicy {
            hierarchyConfiguration.warmPolicy = warmPolicy
            hierarchyConfiguration.coldPolicy = warmPolicy
        }
        hierarchyConfiguration.coldAdmission = .always
        hierarchyConfiguration.clock = clock
        // Stand-in files may sit on tmpfs; a real-I/O run wants O_DIRECT and says so if it cannot.
        hierarchyConfiguration.coldAllowsBufferedFallback = !configuration.realIO
        hierarchyConfiguration.maximumBytesInFlightPerLink = max(
            standIn.blockByteCount, Int(Double(configuration.bytesInFlightPerLink) / byteScale))
        hierarchyConfiguration.maximumPrefetchBytesInFlightPerLink = max(1, Int(Double(configuration.prefetchBytesInFlightPerLink) / byteScale))
        let workload: any AttentionSource = trace ?? LongDecodeWorkload(parameters: parameters, layers: layers)
        // Prediction scores the workload's own vectors (the generator's, or the recorded model's
        // queries and key summaries): the hierarchy keeps their summaries, passed with each store.
        guard configuration.prefetch.stageAheadLayers == 0 || configuration.prefetch.kind != .none else {
            throw .invalid("stage-ahead needs a predictor to rank the blocks it stages; pick one with --prefetch")
        }
        let predicts = configuration.prefetch.kind != .none || configuration.skipBelowMass != nil
        let sketchBits = configuration.prefetch.scoring == .sketch ? configuration.prefetch.sketchBits : 0
        if predicts {
            hierarchyConfiguration.keySummaries = .provided(
                try KeySummaryShape(
                    kvHeads: workload.vectorHeads, headDim: workload.vectorDimension, groupSize: workload.vectorGroupSize,
                    sketchBits: sketchBits,
                    tokensPerBlock: parameters.tokensPerBlock))
        }
        hierarchyConfiguration.persistsKeySummaries = false  // the cache directory is temporary
        let hierarchy = try Hierarchy(hierarchyConfiguration)

        // Token ids per sequence: random, distinct per sequence, fixed by the seed.
        var tokenGenerator = SplitMix64(seed: parameters.seed ^ 0x7469_6572_6B76)
        let tokens = (0..<parameters.sequences).map { _ in
            (0..<parameters.totalTokens).map { _ in UInt32(truncatingIfNeeded: tokenGenerator.next()) }
        }
        // keys[sequence][layer][block]
        let keys = tokens.map { sequenceTokens in (0..<layers).map { hierarchy.blockKeys(tokens: sequenceTokens, layer: $0) } }
        // The stand-in bytes of a block: its key's hash, repeated (the cold tier checksums them).
        let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: standIn.blockByteCount, alignment: 64)
        defer { payload.deallocate() }
        // The oracle's sequence: every store (the hierarchy admits new blocks to hot, so MIN
        // may keep them too; not counted) and every needed block (counted).
        var oracleEvents: [Int32] = [], oracleCounted: [Bool] = []
        func store(sequence: Int, layer: Int, block: Int) throws(TierKVError) {
            oracleEvents.append(Int32((sequence * layers + layer) * fullBlocksPerLayer + block))
            oracleCounted.append(false)
            let key = keys[sequence][layer][block]
            withUnsafeBytes(of: key.prefixHash) { hash in
                for index in payload.indices { payload[index] = hash[index % hash.count] ^ UInt8(truncatingIfNeeded: index) }
            }
            var summary: [Float]? = nil, blockKeys: [Float]? = nil
            if predicts, sketchBits > 0 {
                guard let known = workload.blockKeys(sequence: sequence, layer: layer, block: block) else {
                    throw TierKVError.invalid("no keys for layer \(layer) block \(block): sketch scoring (the default) makes its sketches from the keys: record the trace with tools/record-tierkv-trace, which writes keys_fp16, or score the summaries alone with --prefetch-scoring bound+moment")
                }
                blockKeys = known
            } else if predicts {
                guard let known = workload.keySummary(sequence: sequence, layer: layer, block: block) else {
                    throw TierKVError.invalid("no key summary for layer \(layer) block \(block): prediction needs one per block (a recorded trace carries them in its block lines)")
                }
                summary = known
            }
            _ = try summary.withUnsafeOptionalBuffer { (summary) throws(TierKVError) in
                try blockKeys.withUnsafeOptionalBuffer { (blockKeys) throws(TierKVError) in
                    try hierarchy.store(
                        key, position: block, bytes: UnsafeRawBufferPointer(payload), sequence: SequenceID(UInt64(sequence + 1)),
                        keySummary: summary, keys: blockKeys)
                }
            }
        }

        // Prefill: every layer writes the context's full blocks.
        let contextBlocks = parameters.contextTokens / parameters.tokensPerBlock
        for layer in 0..<layers {
            for sequence in 0..<parameters.sequences {
                for block in 0..<contextBlocks { try store(sequence: sequence, layer: layer, block: block) }
            }
        }
        hierarchy.waitUntilIdle()
        let prefill = configuration.prefillPlacement ? try placeAfterPrefill(
            workload, hierarchy: hierarchy, clock: clock, keys: keys, contextBlocks: contextBlocks,
            coverage: configuration.attentionCoverage, blockLimit: capacity[.warm]! / 2) : nil

        let compute = DecodeComputeModel(
            model: model, gpu: configuration.hardware.gpu, kvBytesPerElement: Double(configuration.kvDType.byteSize),
            efficiency: configuration.computeEfficiency)
        let startStatistics = hierarchy.statistics
        var lastLinks = clock.linkStatistics
        let startLinks = lastLinks
        let decodeStart = clock.seconds
        var timeline: [DecodeStepRecord] = []
        var accesses: [Int32] = []
        var stall = 0.0, stallFromWarm = 0.0, stallFromCold = 0.0, stallFromStores = 0.0, computeTotal = 0.0
        var stallByLayer = [Double](repeating: 0, count: layers)
        var neededByLayer = [(total: Int, most: Int)](repeating: (0, 0), count: layers)
        var lastNeeded = [[[Int]]](repeating: [[Int]](repeating: [], count: layers), count: parameters.sequences)
        let links = configuration.hardware
        let planner = try AttentionPlacementPlanner(
            hostToDeviceBytesPerSecond: links.hostToDevice.bytesPerSecond, coldReadBytesPerSecond: links.nvmeRead.bytesPerSecond,
            cpuAttentionBytesPerSecond: configuration.cpuAttention ? configuration.resolvedCPUAttentionBytesPerSecond : nil,
            skipBelowMass: configuration.skipBelowMass)
        let topK = max(1, capacity[.hot]! / (layers * parameters.sequences))
        let prefetch = predicts
            ? try SimulatedPrefetch(
                settings: configuration.prefetch, hierarchy: hierarchy, layers: layers, sequences: parameters.sequences, topK: topK,
                sinkBlocks: (parameters.sinkTokens + parameters.tokensPerBlock - 1) / parameters.tokensPerBlock, seed: parameters.seed,
                // The prefetcher plans in the hierarchy's (stand-in) bytes.
                hostToDeviceBytesPerSecond: links.hostToDevice.bytesPerSecond / byteScale,
                coldReadBytesPerSecond: links.nvmeRead.bytesPerSecond / byteScale)
            : nil
        if let prefill, let prefetch {
            for (sequence, perLayer) in prefill.attention.enumerated() {
                for (layer, mass) in perLayer.enumerated() {
                    try prefetch.observePrefill(layer: layer, keys: Array(keys[sequence][layer][0..<mass.count]), mass: mass)
                }
            }
        }
        var cpuBlocksTotal = 0, demandFetched = 0, skippedTotal = 0, skippedMass = 0.0
        for step in 0..<parameters.decodeSteps {
            let attention = workload.step()
            let stepStart = clock.seconds
            var record = DecodeStepRecord(
                step: step, time: 0, stallSeconds: 0, computeSeconds: 0, neededBlocks: 0, hotHits: 0, warmHits: 0,
                coldHits: 0, bytes: [:], utilisation: [:])
            let storedBlocks = workload.tokenCount / parameters.tokensPerBlock
            let layerSeconds = compute.layerSeconds(batch: parameters.sequences, contextTokens: workload.tokenCount)
            for layer in 0..<layers {
                var attended: [BlockKey] = [], mass: [Float] = []
                var dropped: [BlockKey] = []
                var fromCold = false
                var toHot: [BlockKey] = [], elsewhere: [(key: BlockKey, source: AttentionPlacementPlanner.Source, predicted: Float, mass: Float)] = []
                var attendedBySequence: [(keys: [BlockKey], mass: [Float])] = []
                for sequence in 0..<parameters.sequences {
                    let layerMass = attention.mass[sequence][layer]
                    let blocks = neededBlocks(layerMass, coverage: configuration.attentionCoverage,
                        sinks: parameters.sinkTokens, tokensPerBlock: parameters.tokensPerBlock, stored: storedBlocks)
                    // Blocks attended last step and skipped now got no attention this step: the
                    // engine reports 0 for them (what it can know), so TOVA sees them go cold.
                    var now = Set(blocks)
                    for block in lastNeeded[sequence][layer] where !now.contains(block) { dropped.append(keys[sequence][layer][block]) }
                    lastNeeded[sequence][layer] = blocks
                    now.removeAll()
                    let layerKeys = Array(keys[sequence][layer][0..<min(storedBlocks, fullBlocksPerLayer)])
                    let neededKeys = blocks.map { keys[sequence][layer][$0] }
                    try prefetch?.layerStarts(
                        step: step, layer: layer, sequence: sequence, attention: attention, keys: layerKeys, mass: layerMass,
                        needed: Set(neededKeys))
                    let predicted = configuration.skipBelowMass == nil
                        ? [:] : try prefetch?.exactBound(layer: layer, sequence: sequence, attention: attention, keys: layerKeys) ?? [:]
                    attendedBySequence.append((neededKeys, blocks.map { layerMass[$0] }))
                    neededByLayer[layer].total += neededKeys.count
                    neededByLayer[layer].most = max(neededByLayer[layer].most, neededKeys.count)
                    for (block, key) in zip(blocks, neededKeys) {
                        attended.append(key)
                        mass.append(layerMass[block])
                        let id = Int32((sequence * layers + layer) * fullBlocksPerLayer + block)
                        accesses.append(id)
                        oracleEvents.append(id)
                        oracleCounted.append(true)
                        switch hierarchy.fastestTier(of: key) {
                        case .hot:
                            record.hotHits += 1
                            toHot.append(key)
                        case .warm:
                            record.warmHits += 1
                            elsewhere.append((key, .warm, predicted[key] ?? 1, layerMass[block]))
                        case .cold:
                            record.coldHits += 1
                            fromCold = true
                            elsewhere.append((key, .cold, predicted[key] ?? 1, layerMass[block]))
                        case nil:
                            toHot.append(key)  // arriving: the request waits for it
                        }
                    }
                }
                // Fetch, attend on CPU or skip each needed block that is not in hot.
                let plan = planner.plan(blocks: elsewhere.map { ($0.source, $0.predicted) }, blockByteCount: blockBytes, gpuSeconds: layerSeconds)
                var onCPU: [BlockKey] = []
                for (block, decision) in zip(elsewhere, plan.decisions) {
                    switch decision {
                    case .fetch: toHot.append(block.key)
                    case .attendOnCPU: onCPU.append(block.key)
                    case .skip:
                        skippedMass += Double(block.mass)
                        record.skippedBlocks += 1
                    }
                }
                // A layer whose needed blocks outnumber the hot tier attends the overflow on CPU
                // (fetched blocks of least predicted mass first) when CPU attention is on.
                var fetchedDemand = plan.fetched
                if toHot.count > capacity[.hot]!, configuration.cpuAttention {
                    let overflow = zip(elsewhere, plan.decisions).filter { $0.1 == .fetch }.map(\.0)
                        .sorted { $0.predicted < $1.predicted }.prefix(toHot.count - capacity[.hot]!).map(\.key)
                    let moved = Set(overflow)
                    toHot.removeAll { moved.contains($0) }
                    onCPU += overflow
                    fetchedDemand -= overflow.count
                }
                demandFetched += fetchedDemand
                record.cpuBlocks += onCPU.count
                record.neededBlocks += attended.count
                if toHot.count > capacity[.hot]! {
                    throw TierKVError(.capacityExceeded, """
                        step \(step) layer \(layer) needs \(toHot.count) blocks in hot at once but the hot tier holds \(capacity[.hot]!): \
                        enlarge the hot tier (--hot), lower --coverage, or attend the overflow on CPU (--cpu-attention on)
                        """)
                }
                prefetch?.yieldHot(needed: toHot.count, capacity: capacity[.hot]!)
                let requested = clock.seconds
                let hotRequest = toHot.isEmpty ? nil : try hierarchy.makeResident(toHot, in: .hot, priority: .demand)
                let warmRequest = onCPU.isEmpty ? nil : try hierarchy.makeResident(onCPU, in: .warm, priority: .demand)
                // While this layer runs, the prefetcher fetches for the layer `lookahead` ahead (and
                // stages cold blocks for the one `stage-ahead` ahead).
                try prefetch?.issue(
                    step: step, layer: layer, attention: attention,
                    keysOf: { sequence, layer in Array(keys[sequence][layer][0..<min(storedBlocks, fullBlocksPerLayer)]) },
                    layerSeconds: layerSeconds, lastStep: parameters.decodeSteps - 1,
                    demandPinned: toHot.count, hotCapacity: capacity[.hot]!, warmCapacity: capacity[.warm]!)
                let requests = [hotRequest, warmRequest].compactMap { $0 }
                guard clock.run(until: { requests.allSatisfy(\.isReady) }) else {
                    throw TierKVError(.simulation, "step \(step) layer \(layer): the needed blocks never arrived and nothing is in flight")
                }
                for request in requests {
                    if let failure = request.failures.first {
                        throw TierKVError(.simulation, "step \(step) layer \(layer): block \(failure.key) could not be brought to \(request.tier): \(failure.value)")
                    }
                    guard request.missingKeys.isEmpty else {
                        throw TierKVError(.simulation, "step \(step) layer \(layer): \(request.missingKeys.count) stored blocks are missing")
                    }
                }
                // The GPU computes once its blocks are in hot; CPU threads attend theirs once they
                // are in warm; the layer ends when both have (merging partials is negligible).
                func ready(_ request: ResidencyRequest?) -> Double { request?.readyNanoseconds.map { Double($0) / 1e9 } ?? requested }
                let cpuSeconds = Double(onCPU.count * blockBytes) / configuration.resolvedCPUAttentionBytesPerSecond
                let end = max(ready(hotRequest) + layerSeconds, ready(warmRequest) + cpuSeconds)
                if end > clock.seconds { clock.advance(bySeconds: end - clock.seconds) }
                let waited = max(0, end - requested - layerSeconds)
                record.stallSeconds += waited
                if fromCold { stallFromCold += waited } else { stallFromWarm += waited }
                stallByLayer[layer] += waited
                record.computeSeconds += layerSeconds
                try hierarchy.reportAttention(attended + dropped, mass: mass + Array(repeating: 0, count: dropped.count))
                for (sequence, seen) in attendedBySequence.enumerated() {
                    try prefetch?.layerFinished(layer: layer, sequence: sequence, attention: attention, attended: seen.keys, mass: seen.mass)
                }
                for request in requests { hierarchy.release(request) }
            }
            let head = compute.headSeconds(batch: parameters.sequences)
            clock.advance(bySeconds: head)
            record.computeSeconds += head
            workload.appendToken()
            if workload.tokenCount % parameters.tokensPerBlock == 0 {
                let block = workload.tokenCount / parameters.tokensPerBlock - 1
                let storing = clock.seconds
                for layer in 0..<layers {
                    for sequence in 0..<parameters.sequences { try store(sequence: sequence, layer: layer, block: block) }
                }
                // A store returns once its bytes are in a warm slot; a full warm tier makes it
                // wait for a demotion, and the engine with it.
                let waited = clock.seconds - storing
                record.stallSeconds += waited
                stallFromStores += waited
            }
            stall += record.stallSeconds
            computeTotal += record.computeSeconds
            cpuBlocksTotal += record.cpuBlocks
            skippedTotal += record.skippedBlocks
            record.time = clock.seconds - decodeStart
            let links = clock.linkStatistics
            let duration = max(clock.seconds - stepStart, 1e-12)
            for (name, statistics) in links {
                let before = lastLinks[name] ?? VirtualLinkStatistics()
                record.bytes[name] = statistics.bytes - before.bytes
                record.utilisation[name] = min(1, (statistics.busySeconds - before.busySeconds) / duration)
            }
            lastLinks = links
            timeline.append(record)
            progress?(step + 1, parameters.decodeSteps)
        }
        let decodeSeconds = clock.seconds - decodeStart
        prefetch?.finish()
        let prefetchReport = prefetch?.report(byteScale: byteScale)
        let endStatistics = hierarchy.statistics
        let endLinks = clock.linkStatistics
        try hierarchy.close()

        func counts(_ tier: Tier) -> TierCounts {
            let end = endStatistics.tier(tier), start = startStatistics.tier(tier)
            return TierCounts(hits: end.hits - start.hits, misses: end.misses - start.misses)
        }
        var bytesMoved: [String: Double] = [:], busy: [String: Double] = [:]
        for (name, statistics) in endLinks {
            bytesMoved[name] = statistics.bytes - (startLinks[name]?.bytes ?? 0)
            busy[name] = statistics.busySeconds - (startLinks[name]?.busySeconds ?? 0)
        }
        let oracleHits = BeladyOracle.hits(accesses: oracleEvents, counted: oracleCounted, distinct: totalBlocks, capacity: capacity[.hot]!)
        // The summary (and sketch) bytes at the model's real shape.
        let modelSummary = try KeySummaryShape(
            kvHeads: model.kvHeads, headDim: model.headDim, sketchBits: sketchBits, tokensPerBlock: parameters.tokensPerBlock)
        let layerRuns = max(1, parameters.decodeSteps * parameters.sequences)  // runs of each layer, over sequences
        return DecodeSimulationResult(
            workload: trace == nil ? "long-decode" : "trace:tierkv", realIO: configuration.realIO,
            model: model.name, hardware: configuration.hardware.name, policy: configuration.policyName, parameters: parameters,
            attentionCoverage: configuration.attentionCoverage, capacityBlocks: capacity, blockBytes: blockBytes,
            totalBlocks: totalBlocks, tiers: [.hot: counts(.hot), .warm: counts(.warm), .cold: counts(.cold)],
            bytesMoved: bytesMoved, linkBusySeconds: busy, stallSeconds: stall, stallFromWarmSeconds: stallFromWarm,
            stallFromColdSeconds: stallFromCold, stallFromStoresSeconds: stallFromStores, stallByLayerSeconds: stallByLayer,
            neededBlocksByLayer: neededByLayer.map { (Double($0.total) / Double(layerRuns), $0.most) },
            computeSeconds: computeTotal, decodeSeconds: decodeSeconds,
            generatedTokens: parameters.decodeSteps * parameters.sequences,
            oracleHotHitRate: accesses.isEmpty ? 0 : Double(oracleHits) / Double(accesses.count), blockAccesses: accesses.count,
            timeline: timeline, wallSeconds: Double(DispatchTime.now().uptimeNanoseconds - wallStart) / 1e9,
            droppedBlocks: endStatistics.droppedBlocks, corruptions: endStatistics.corruptions,
            metadataBytesPerBlock: Hierarchy.metadataBytesPerBlock(policies: [
                configuration.policy, configuration.warmPolicy ?? configuration.policy, configuration.warmPolicy ?? configuration.policy]),
            vectorBytesPerBlock: trace == nil ? parameters.tokensPerBlock * parameters.vectorHeads * parameters.vectorDimension * MemoryLayout<Float>.size : 0,
            prefetch: prefetchReport, summaryBytesPerBlock: modelSummary.byteCount + modelSummary.sketchByteCount, cpuAttention: configuration.cpuAttention,
            cpuAttentionBytesPerSecond: configuration.resolvedCPUAttentionBytesPerSecond, cpuAttentionBlocks: cpuBlocksTotal,
            demandFetchedBlocks: demandFetched, skippedBlocks: skippedTotal,
            skippedMassPerLayer: skippedMass / Double(layers * parameters.decodeSteps * parameters.sequences),
            prefillPlacement: prefill?.report)
    }

    /// `--prefill-placement`: hands the prefill's attention to `Hierarchy.placeAfterPrefill` and
    /// waits (in virtual time) for the blocks it reads back from cold.
    private static func placeAfterPrefill(
        _ workload: any AttentionSource, hierarchy: Hierarchy, clock: VirtualClock, keys: [[[BlockKey]]], contextBlocks: Int,
        coverage: Double, blockLimit: Int
    ) throws(TierKVError) -> (attention: [[[Float]]], report: PrefillPlacementReport) {
        guard let attention = workload.prefillAttention() else {
            throw TierKVError.invalid("--prefill-placement needs the attention of the prefill's last tokens, which this workload does not have (a tierkv trace needs prefill lines: record it again with tools/record-tierkv-trace)")
        }
        var layers: [(keys: [BlockKey], mass: [Float])] = []
        var trimmed: [[[Float]]] = []
        for (sequence, perLayer) in attention.enumerated() {
            trimmed.append(perLayer.map { Array($0.prefix(contextBlocks)) })
            for (layer, mass) in trimmed[sequence].enumerated() { layers.append((Array(keys[sequence][layer][0..<mass.count]), mass)) }
        }
        let readBefore = clock.linkStatistics["nvme_read"]?.bytes ?? 0
        let start = clock.seconds
        let placement = try hierarchy.placeAfterPrefill(layers, coverage: coverage, blockLimit: blockLimit)
        hierarchy.waitUntilIdle()
        if let request = placement.request {
            if let failure = request.failures.first {
                throw TierKVError(.simulation, "prefill placement: block \(failure.key) could not be read back: \(failure.value)")
            }
            hierarchy.release(request)
        }
        let report = PrefillPlacementReport(
            chosenBlocks: placement.chosen, fromColdBlocks: placement.fromCold,
            readBytes: (clock.linkStatistics["nvme_read"]?.bytes ?? 0) - readBefore, seconds: clock.seconds - start)
        return (trimmed, report)
    }

    /// The blocks a layer needs: by descending mass until `coverage` of it is held, plus the
    /// sink blocks and the newest stored block; only blocks already stored (the partial block
    /// being written lives in the engine's own buffer). Ascending order.
    public static func neededBlocks(_ mass: [Float], coverage: Double, sinks: Int, tokensPerBlock: Int, stored: Int) -> [Int] {
        let count = min(stored, mass.count)
        guard count > 0 else { return [] }
        var chosen = [Bool](repeating: false, count: count)
        let sinkBlocks = min(count, (sinks + tokensPerBlock - 1) / tokensPerBlock)
        for block in 0..<sinkBlocks { chosen[block] = true }
        chosen[count - 1] = true
        if coverage >= 1 {
            chosen = [Bool](repeating: true, count: count)
        } else {
            let order = (0..<mass.count).sorted { mass[$0] != mass[$1] ? mass[$0] > mass[$1] : $0 < $1 }
            var held: Double = 0
            for block in order {
                if held >= coverage { break }
                held += Double(mass[block])
                if block < count { chosen[block] = true }
            }
        }
        return chosen.indices.filter { chosen[$0] }
    }

    private static func validate(_ configuration: DecodeSimulationConfiguration) throws(TierKVError) {
        let p = configuration.workload
        func check(_ ok: Bool, _ message: String) throws(TierKVError) { if !ok { throw .invalid(message) } }
        try check(p.sequences >= 1, "sequences is \(p.sequences); expected at least 1")
        try check(p.contextTokens >= p.tokensPerBlock, "context is \(p.contextTokens) tokens; expected at least one block (\(p.tokensPerBlock))")
        try check(p.decodeSteps >= 1, "decode steps is \(p.decodeSteps); expected at least 1")
        try check(p.vectorHeads >= 1 && p.vectorDimension >= 2, "vector heads \(p.vectorHeads) × dimension \(p.vectorDimension): expected ≥ 1 × ≥ 2")
        try check(configuration.attentionCoverage > 0 && configuration.attentionCoverage <= 1,
            "attention coverage is \(configuration.attentionCoverage); expected 0 < coverage ≤ 1")
        try check(configuration.hotFraction > 0 && configuration.warmFraction > 0, "tier fractions must be positive")
        try check(configuration.computeEfficiency > 0 && configuration.computeEfficiency <= 1,
            "compute efficiency is \(configuration.computeEfficiency); expected 0 < efficiency ≤ 1")
    }

    /// The stand-in cold file's directory: memory-backed `/dev/shm` when there is one (the file
    /// only carries stand-in blocks whose timing the clock models: waiting for a disk's flushes
    /// would only slow the simulation), else `$TMPDIR` or `/tmp`.
    private static func makeTemporaryDirectory(under directory: String?) throws(TierKVError) -> String {
        let base = directory ?? (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp")
        var template = Array((base + "/tierkv-simulate-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TierKVError(.systemCall, "cannot create a directory for the simulation's cold file under \(base)", path: base, errno: errno)
        }
        return String(cString: made)
    }
}

extension TierKVError.Code {
    /// The simulation could not go on (a block never arrived, a transfer failed).
    public static let simulation = TierKVError.Code("simulation")
}

/// Bélády's MIN over a sequence of accesses: a miss inserts the block and, over capacity,
/// evicts the cached block whose next access is farthest away (possibly the one just inserted).
/// Accesses whose `counted` flag is false (stores, which the hierarchy admits to hot) move
/// blocks in like any access but count neither as hit nor miss.
public enum BeladyOracle {
    public static func hits(accesses: [Int32], counted: [Bool]? = nil, distinct: Int, capacity: Int) -> Int {
        let never = Int.max
        var nextUse = [Int](repeating: never, count: accesses.count)
        var lastSeen = [Int](repeating: never, count: distinct)
        for index in stride(from: accesses.count - 1, through: 0, by: -1) {
            let id = Int(accesses[index])
            nextUse[index] = lastSeen[id]
            lastSeen[id] = index
        }
        var heap = IndexedHeap<Int>()
        var present = [Bool](repeating: false, count: distinct)
        var cached = 0, hits = 0
        for (index, id) in accesses.enumerated() {
            heap.set(id, key: nextUse[index] == never ? Int.min : -nextUse[index])
            if present[Int(id)] {
                if counted?[index] ?? true { hits += 1 }
                continue
            }
            present[Int(id)] = true
            cached += 1
            if cached > capacity, let victim = heap.popMinimum() {
                present[Int(victim)] = false
                cached -= 1
            }
        }
        return hits
    }
}

extension Optional where Wrapped == [Float] {
    /// The array's buffer, or nil, for the length of `body`.
    func withUnsafeOptionalBuffer<Result>(_ body: (UnsafeBufferPointer<Float>?) throws(TierKVError) -> Result) throws(TierKVError) -> Result {
        guard let array = self else { return try body(nil) }
        return try array.withUnsafeBufferPointer { (buffer) throws(TierKVError) in try body(buffer) }
    }
}
