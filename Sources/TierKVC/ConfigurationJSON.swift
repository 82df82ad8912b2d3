import TierKV

/// The hierarchy configuration of `tierkv_open`, read from JSON. Every field is checked; an
/// unknown one is an error naming it (a typo must not silently fall back to a default).
struct OpenConfiguration {
    var hierarchy: HierarchyConfiguration
    var cpuThreads: Int?
    var cpuSpinMicroseconds = WorkerPool.defaultSpinMicroseconds

    static let topLevelFields: Set<String> = [
        "layout", "hot_blocks", "warm_blocks", "cold_blocks", "cache_dir", "namespace", "policy", "warm_policy", "accelerator",
        "admit_to_hot", "inclusive_warm", "allow_dropping", "numa_node", "lock_memory", "buffered_fallback",
        "key_summaries", "key_sketch_bits", "cpu_threads", "cpu_spin_us", "prefetch_bytes_in_flight",
    ]
    /// Sketch bits with `"key_summaries": "from-keys"` when the configuration names none.
    static let defaultSketchBits = 2
    static let layoutFields: Set<String> = ["layers", "kv_heads", "query_heads", "head_dim", "tokens_per_block", "dtype"]

    init(json text: String) throws(TierKVError) {
        let root = try JSONValue(parsing: text)
        guard case .object(let members) = root else { throw .invalid("the configuration must be a JSON object") }
        for (name, _) in members where !Self.topLevelFields.contains(name) {
            throw .invalid("unknown configuration field \"\(name)\"; known: \(Self.topLevelFields.sorted().joined(separator: ", "))")
        }
        guard let layoutValue = root["layout"], case .object(let layoutMembers) = layoutValue else {
            throw .invalid("\"layout\" is required: an object with \(Self.layoutFields.sorted().joined(separator: ", "))")
        }
        for (name, _) in layoutMembers where !Self.layoutFields.contains(name) {
            throw .invalid("unknown layout field \"\(name)\"; known: \(Self.layoutFields.sorted().joined(separator: ", "))")
        }
        func integer(_ object: JSONValue, _ name: String, _ path: String, default value: Int? = nil) throws(TierKVError) -> Int {
            guard let field = object[name] else {
                if let value { return value }
                throw .invalid("\"\(path)\" is required (an integer)")
            }
            guard let number = field.integerValue else { throw .invalid("\"\(path)\" must be an integer, found \(field.rendered())") }
            return number
        }
        func string(_ name: String) throws(TierKVError) -> String? {
            guard let field = root[name] else { return nil }
            guard let text = field.stringValue else { throw .invalid("\"\(name)\" must be a string, found \(field.rendered())") }
            return text
        }
        func bool(_ name: String, default value: Bool) throws(TierKVError) -> Bool {
            guard let field = root[name] else { return value }
            guard let flag = field.boolValue else { throw .invalid("\"\(name)\" must be true or false, found \(field.rendered())") }
            return flag
        }
        let layout = try KVLayout(
            layers: try integer(layoutValue, "layers", "layout.layers"), kvHeads: try integer(layoutValue, "kv_heads", "layout.kv_heads"),
            queryHeads: try integer(layoutValue, "query_heads", "layout.query_heads"),
            headDim: try integer(layoutValue, "head_dim", "layout.head_dim"),
            tokensPerBlock: try integer(layoutValue, "tokens_per_block", "layout.tokens_per_block", default: 16),
            dtype: try DType(parsing: layoutValue["dtype"]?.stringValue ?? "fp16"))
        if let dtype = layoutValue["dtype"], dtype.stringValue == nil {
            throw .invalid("\"layout.dtype\" must be a string such as \"fp16\", found \(dtype.rendered())")
        }
        guard let acceleratorName = try string("accelerator") else {
            throw .invalid("\"accelerator\" is required: \"cuda:N\" for GPU N, or \"emulated\" for host memory standing in for a GPU (tests and simulation)")
        }
        let accelerator: AcceleratorBackend
        if acceleratorName == "emulated" {
            accelerator = .emulated(.pcieGen5)
        } else if acceleratorName.hasPrefix("cuda:"), let ordinal = Int(acceleratorName.dropFirst(5)), ordinal >= 0 {
            accelerator = .cuda(ordinal: ordinal)
        } else {
            throw .invalid("\"accelerator\" is \"\(acceleratorName)\"; expected \"cuda:N\" (N ≥ 0) or \"emulated\"")
        }
        var configuration = HierarchyConfiguration(
            layout: layout, namespace: try string("namespace") ?? "default", hotCapacityBlocks: try integer(root, "hot_blocks", "hot_blocks"),
            warmCapacityBlocks: try integer(root, "warm_blocks", "warm_blocks"),
            coldCapacityBlocks: try integer(root, "cold_blocks", "cold_blocks", default: 0), cacheDirectory: try string("cache_dir"),
            accelerator: accelerator)
        if let policyName = try string("policy") {
            guard let policy = EvictionPolicyKind(parsing: policyName) else {
                throw .invalid("\"policy\" is \"\(policyName)\"; expected one of \(EvictionPolicyKind.parsingHelp)")
            }
            configuration.hotPolicy = policy
            configuration.warmPolicy = policy
            configuration.coldPolicy = policy
        }
        if let policyName = try string("warm_policy") {
            guard let policy = EvictionPolicyKind(parsing: policyName) else {
                throw .invalid("\"warm_policy\" is \"\(policyName)\"; expected one of \(EvictionPolicyKind.parsingHelp)")
            }
            configuration.warmPolicy = policy
            configuration.coldPolicy = policy
        }
        configuration.admitsNewBlocksToHot = try bool("admit_to_hot", default: true)
        configuration.warmTierIsInclusive = try bool("inclusive_warm", default: true)
        configuration.allowsDroppingReferencedBlocks = try bool("allow_dropping", default: false)
        configuration.locksWarmMemory = try bool("lock_memory", default: false)
        configuration.coldAllowsBufferedFallback = try bool("buffered_fallback", default: false)
        if root["numa_node"] != nil { configuration.numaNode = try integer(root, "numa_node", "numa_node") }
        switch try string("key_summaries") ?? "off" {
        case "off": configuration.keySummaries = .off
        case "from-keys": configuration.keySummaries = .fromStoredKeys
        case let other: throw .invalid("\"key_summaries\" is \"\(other)\"; expected \"off\" or \"from-keys\"")
        }
        if root["key_sketch_bits"] != nil {
            let bits = try integer(root, "key_sketch_bits", "key_sketch_bits")
            guard case .fromStoredKeys = configuration.keySummaries else {
                throw .invalid("\"key_sketch_bits\" is \(bits) but \"key_summaries\" is not \"from-keys\"; sketches are kept with the summaries")
            }
            guard [0, 1, 2, 4].contains(bits) else { throw .invalid("\"key_sketch_bits\" is \(bits); expected 0 (none), 1, 2 or 4") }
            configuration.keySketchBits = bits
        } else if case .fromStoredKeys = configuration.keySummaries {
            // Sketch scoring is what predicts well (see tierkv_predict_mass); 2 bits cost 4 KiB per
            // Llama-3-8B block beside the 6 KiB summary.
            configuration.keySketchBits = Self.defaultSketchBits
        }
        if root["cpu_threads"] != nil {
            let threads = try integer(root, "cpu_threads", "cpu_threads")
            guard threads >= 1, threads <= 4096 else { throw .invalid("\"cpu_threads\" is \(threads); expected 1–4096") }
            cpuThreads = threads
        }
        if root["cpu_spin_us"] != nil {
            let spin = try integer(root, "cpu_spin_us", "cpu_spin_us")
            guard spin >= 0, spin <= 1_000_000 else { throw .invalid("\"cpu_spin_us\" is \(spin); expected 0–1000000 microseconds") }
            cpuSpinMicroseconds = spin
        }
        if root["prefetch_bytes_in_flight"] != nil {
            let bytes = try integer(root, "prefetch_bytes_in_flight", "prefetch_bytes_in_flight")
            guard bytes > 0 else {
                throw .invalid("\"prefetch_bytes_in_flight\" is \(bytes); expected bytes > 0 (prefetches started per link; one block may always start)")
            }
            configuration.maximumPrefetchBytesInFlightPerLink = bytes
        }
        try configuration.validate()
        hierarchy = configuration
    }
}
