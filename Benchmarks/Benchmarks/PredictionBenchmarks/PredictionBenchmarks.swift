import Benchmark
import TierKV

/// The prediction hot path, run for every layer of every decode step: scoring every candidate
/// block's key summary against a query hint (Llama-3-8B layer shape: 8 KV heads of 128, groups
/// of 4 query heads, 1,024 blocks = a 16k-token context), and turning the scores into the
/// predicted mass the prefetcher ranks.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(3))

    let layout = try! KVLayout(layers: 1, kvHeads: 8, queryHeads: 32, headDim: 128, tokensPerBlock: 16, dtype: .fp16)
    let table = try! BlockSummaryTable(shape: KeySummaryShape(layout: layout))
    let sketched = try! BlockSummaryTable(shape: KeySummaryShape(layout: layout, sketchBits: 2))
    let blockCount = 1024
    var state: UInt64 = 1
    var keys = [Float16](repeating: 0, count: layout.tokensPerBlock * layout.kvHeads * layout.headDim)
    var blockKeys: [BlockKey] = []
    for block in 0..<blockCount {
        for index in keys.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            keys[index] = Float16(Float(Int(state >> 40) % 2000) / 1000 - 1)
        }
        let key = BlockKey(prefixHash: PrefixHash(high: 0, low: UInt64(block + 1)), layer: 0)
        try! keys.withUnsafeBytes { try table.insert(key, keys: $0.baseAddress!, dtype: .fp16, tokenCount: layout.tokensPerBlock) }
        try! keys.withUnsafeBytes { try sketched.insert(key, keys: $0.baseAddress!, dtype: .fp16, tokenCount: layout.tokensPerBlock) }
        blockKeys.append(key)
    }
    let query = (0..<(layout.queryHeads * layout.headDim)).map { Float(($0 % 17) - 8) / 8 }
    let scale = 1 / Float(layout.headDim).squareRoot()

    Benchmark("Quest bound scores of 1024 blocks (8 KV heads x 128, groups of 4)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! table.scores(.bound, query: query, keys: blockKeys)) }
    }
    Benchmark("moment scores of 1024 blocks") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! table.scores(.moment(scale: scale), query: query, keys: blockKeys)) }
    }
    let predictor = QuestBoundPredictor(summaries: table, tokensPerBlock: layout.tokensPerBlock, scoring: .boundAndMoment)
    let candidates = PredictionCandidates(layer: 0, keys: blockKeys, positions: Array(0..<blockCount), newestPosition: blockCount - 1)
    let hint = QueryHint(query)
    Benchmark("bound+moment predicted mass of 1024 blocks") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! predictor.predictMass(candidates, hint: hint)) }
    }
    // Combining predictors, per layer and step: the parts' masses mixed, and with adaptation the
    // layer's attention scored against each part's top-k (k = 103, Llama-3-8B's hot budget per
    // layer at 10% of a 32k context) once the layer ran. The fixed mix isolates that cost.
    let history = try! AttentionHistoryPredictor()
    let observed = (0..<blockCount).map { Float(($0 &* 7919) % 1000 + 1) / 500_500 }
    try! history.observe(layer: 0, keys: blockKeys, mass: observed)
    let fixedMix = try! CombinedPredictor([(predictor, 0.5), (history, 0.5)])
    let adaptiveMix = try! CombinedPredictor([(predictor, 0.5), (history, 0.5)], adaptation: .init(topK: 103))
    Benchmark("combined (bound+moment, history) of 1024 blocks, fixed weights: predict") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! fixedMix.predictMass(candidates, hint: hint)) }
    }
    Benchmark("combined (bound+moment, history) of 1024 blocks, adaptive: predict and observe") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(try! adaptiveMix.predictMass(candidates, hint: hint))
            try! adaptiveMix.observe(layer: 0, keys: blockKeys, mass: observed)
        }
    }
    // Key sketches (2 bits): the token-by-token score reads 4 KiB of codes per block where the
    // summaries are 6 KiB, and does headDim FMAs per token and query head.
    Benchmark("2-bit sketch scores of 1024 blocks (32 query heads)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! sketched.scores(.sketch(scale: scale), query: query, keys: blockKeys)) }
    }
    let sketchPredictor = QuestBoundPredictor(summaries: sketched, tokensPerBlock: layout.tokensPerBlock, scoring: .sketch)
    Benchmark("sketch predicted mass of 1024 blocks") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! sketchPredictor.predictMass(candidates, hint: hint)) }
    }
    // The store path: summary and 2-bit sketch of one 16-token fp16 block (8 KV heads × 128).
    let storeKey = BlockKey(prefixHash: PrefixHash(high: 1, low: 1), layer: 0)
    Benchmark("summary + 2-bit sketch of one block (insert)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for _ in benchmark.scaledIterations {
            try! keys.withUnsafeBytes { try sketched.insert(storeKey, keys: $0.baseAddress!, dtype: .fp16, tokenCount: layout.tokensPerBlock) }
        }
    }
}
