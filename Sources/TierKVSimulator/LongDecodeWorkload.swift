import Dispatch
import Foundation

/// The knobs of the long-decode workload generator. Defaults give a 16K-token context decoding
/// 128 tokens; see `LongDecodeWorkload` for what each one shapes.
public struct LongDecodeParameters: Sendable, Equatable, Codable {
    /// Sequences decoding together (a batch); each has its own context and vectors.
    public var sequences = 1
    public var contextTokens = 16384
    public var decodeSteps = 128
    public var tokensPerBlock = 16
    /// Vectors per layer: `vectorHeads` KV heads of `vectorDimension` each. They carry the
    /// attention pattern; the model preset's real sizes price the bytes and the compute.
    public var vectorHeads = 2
    public var vectorDimension = 64
    /// Attention sinks: the first tokens, which every query attends.
    public var sinkTokens = 4
    public var sinkLogit: Float = 12
    /// Locality: keys follow a slow random walk whose correlation decays as exp(−Δ/window);
    /// the query follows the walk's current point, with this logit for a perfectly aligned key.
    public var localWindowTokens: Float = 256
    public var localLogit: Float = 8
    /// Heavy hitters: the context is cut into segments of `topicSegmentTokens`, each about one of
    /// `topics` topics; `heavyHitterFraction` of its tokens carry the topic strongly. The query
    /// attends `activeTopics` topics at a time, and each step one of them changes with
    /// probability `topicSwitchProbability` (a slow drift).
    public var topics = 16
    public var topicSegmentTokens = 512
    public var heavyHitterFraction: Float = 0.03
    public var heavyLogit: Float = 9
    public var activeTopics = 2
    public var topicSwitchProbability: Float = 0.05
    /// Needle retrievals: with this probability per (step, layer) the query retrieves one random
    /// token far back (beyond 4 windows) for `needleSteps` steps, with this logit.
    public var needleProbability: Float = 0.02
    public var needleSteps = 4
    public var needleLogit: Float = 14
    /// Per-dimension Gaussian noise on keys and queries (relative to unit directions).
    public var noise: Float = 0.25
    public var seed: UInt64 = 1

    public init() {}

    public var totalTokens: Int { contextTokens + decodeSteps }
    public var totalBlocksPerLayer: Int { (totalTokens + tokensPerBlock - 1) / tokensPerBlock }
}

/// A long-context decode with real vectors: keys and queries drawn so that attention, computed
/// exactly as softmax(q·k/√d), has the structure seen in real models (StreamingLLM's sinks, a
/// local window, H2O's heavy hitters whose topics drift, and needle retrievals far back).
///
/// Per (sequence, layer, KV head), with its own seeded directions in d dimensions:
/// - a sink direction s; key of a sink token = (√d·sinkLogit / |q_s|)·s, and every query has
///   a unit component along s, so a sink's logit is ≈ `sinkLogit`;
/// - a walk w_p (unit, w_{p+1} ∝ ρ·w_p + √(1−ρ²)·z, ρ = exp(−1/window)): every key has
///   √d·localLogit·w_p and the query at position P has w_P, so the logit of a key Δ back is
///   ≈ localLogit·ρ^Δ;
/// - topic directions u_1…u_T: a heavy-hitter token of a segment about topic j adds
///   √d·heavyLogit·u_j; the query adds the sum of its active topics' u;
/// - a needle retrieval adds (√d·needleLogit/|k_n|)·k̂_n to the query for the retrieved token n,
///   so that token's logit gains ≈ needleLogit;
/// - noise: uniform with standard deviation `noise` per dimension on keys, Gaussian with
///   `noise`/√d on queries.
/// Queries attend with GQA group 1 (one query head per simulated KV head); the block's mass is
/// the mean over heads of the softmax weights of its tokens, so a layer's masses sum to 1.
public final class LongDecodeWorkload: AttentionSource, @unchecked Sendable {
    // @unchecked: mutated only by `step`/`appendToken` on one thread; scoring reads it from
    // concurrent workers that each write only their own output row.
    public let parameters: LongDecodeParameters
    public let layers: Int
    private let heads: Int
    private let dimension: Int
    /// Draws needle retrievals (per sequence × layer); streams have their own generators.
    private var generator: SplitMix64
    /// Per stream (sequence × layer × head): keys, token-major, `dimension` floats each.
    private var keys: [[Float]]
    private var streams: [Stream]
    private var needles: [Needle?]  // per (sequence × layer)
    public private(set) var tokenCount: Int
    public var sequences: Int { parameters.sequences }
    public var tokensPerBlock: Int { parameters.tokensPerBlock }
    public var contextTokens: Int { parameters.contextTokens }
    public var decodeSteps: Int { parameters.decodeSteps }
    public var sinkTokens: Int { parameters.sinkTokens }
    public var vectorHeads: Int { parameters.vectorHeads }
    public var vectorDimension: Int { parameters.vectorDimension }
    public var vectorGroupSize: Int { 1 }

    private struct Stream {
        var generator: SplitMix64
        var sink: [Float]
        var walk: [Float]
        var topics: [[Float]]
        var segmentTopic: [Int]
        var active: [Int]
    }

    private struct Needle {
        var token: Int
        var remaining: Int
    }

    public init(parameters: LongDecodeParameters, layers: Int) {
        self.parameters = parameters
        self.layers = layers
        heads = parameters.vectorHeads
        dimension = parameters.vectorDimension
        generator = SplitMix64(seed: parameters.seed)
        let streamCount = parameters.sequences * layers * heads
        keys = Array(repeating: [], count: streamCount)
        streams = []
        needles = Array(repeating: nil, count: parameters.sequences * layers)
        tokenCount = 0
        let segments = (parameters.totalTokens + parameters.topicSegmentTokens - 1) / parameters.topicSegmentTokens
        for index in 0..<streamCount {
            // Each stream draws from its own generator: streams can be generated in parallel and
            // the result does not depend on the thread count.
            var own = SplitMix64(seed: parameters.seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index + 1))
            let topics = (0..<parameters.topics).map { _ in Self.randomUnit(dimension, &own) }
            let active = Array((0..<parameters.topics).shuffledDeterministically(&own).prefix(parameters.activeTopics))
            let segmentTopic = (0..<segments).map { _ in Int(own.next() % UInt64(parameters.topics)) }
            let sink = Self.randomUnit(dimension, &own)
            let walk = Self.randomUnit(dimension, &own)
            streams.append(Stream(generator: own, sink: sink, walk: walk, topics: topics, segmentTopic: segmentTopic, active: active))
        }
        let context = parameters.contextTokens
        keys.withUnsafeMutableBufferPointer { keys in
            streams.withUnsafeMutableBufferPointer { streams in
                let keys = UnsafeSendable(keys), streams = UnsafeSendable(streams)
                DispatchQueue.concurrentPerform(iterations: streamCount) { index in
                    keys.value[index].reserveCapacity(parameters.totalTokens * parameters.vectorDimension)
                    for position in 0..<context {
                        Self.appendKey(position: position, stream: &streams.value[index], keys: &keys.value[index], parameters)
                    }
                }
            }
        }
        tokenCount = context
    }

    /// Adds the next token's keys on every stream (what a decode step writes).
    public func appendToken() {
        for index in streams.indices {
            Self.appendKey(position: tokenCount, stream: &streams[index], keys: &keys[index], parameters)
        }
        tokenCount += 1
    }

    /// One token's key on one stream: the walk moves a step, the key points along it, plus a
    /// topic for heavy hitters and noise (uniform with unit variance: cheaper than Gaussian, and
    /// the walk's sum of many steps is Gaussian anyway).
    private static func appendKey(position: Int, stream: inout Stream, keys: inout [Float], _ p: LongDecodeParameters) {
        let dimension = p.vectorDimension
        let scale = Float(dimension).squareRoot()
        let base = keys.count
        keys.append(contentsOf: repeatElement(0, count: dimension))
        if position < p.sinkTokens {
            for d in 0..<dimension { keys[base + d] = scale * p.sinkLogit * stream.sink[d] }
        } else {
            let rho = exp(-1 / p.localWindowTokens)
            // Step of expected squared norm 1: d uniform components of variance 1/d.
            let spread = (1 - rho * rho).squareRoot() * (3 / Float(dimension)).squareRoot()
            var norm: Float = 0
            for d in 0..<dimension {
                let value = rho * stream.walk[d] + spread * (2 * stream.generator.nextFloat() - 1)
                stream.walk[d] = value
                norm += value * value
            }
            let inverse = 1 / norm.squareRoot()
            for d in 0..<dimension {
                stream.walk[d] *= inverse
                keys[base + d] = scale * p.localLogit * stream.walk[d]
            }
            if stream.generator.nextFloat() < p.heavyHitterFraction {
                let topic = stream.segmentTopic[position / p.topicSegmentTokens]
                for d in 0..<dimension { keys[base + d] += scale * p.heavyLogit * stream.topics[topic][d] }
            }
        }
        let amplitude = p.noise * Float(3).squareRoot()
        for d in 0..<dimension { keys[base + d] += amplitude * (2 * stream.generator.nextFloat() - 1) }
    }

    /// The queries of the step at the current position and the exact attention they produce.
    /// Drifts the active topics and starts or continues needle retrievals first.
    public func step() -> StepAttention {
        let p = parameters
        let scale = Float(dimension).squareRoot()
        var queries = [[Float]](repeating: [], count: streams.count)
        for sequence in 0..<p.sequences {
            for layer in 0..<layers {
                let needleIndex = sequence * layers + layer
                if var needle = needles[needleIndex] {
                    needle.remaining -= 1
                    needles[needleIndex] = needle.remaining > 0 ? needle : nil
                } else if generator.nextFloat() < p.needleProbability {
                    let farthest = tokenCount - 4 * Int(p.localWindowTokens)
                    if farthest > p.sinkTokens {
                        let token = p.sinkTokens + Int(generator.next() % UInt64(farthest - p.sinkTokens))
                        needles[needleIndex] = Needle(token: token, remaining: p.needleSteps)
                    }
                }
                for head in 0..<heads {
                    let index = streamIndex(sequence, layer, head)
                    if streams[index].generator.nextFloat() < p.topicSwitchProbability, !streams[index].active.isEmpty {
                        let slot = Int(streams[index].generator.next() % UInt64(streams[index].active.count))
                        streams[index].active[slot] = Int(streams[index].generator.next() % UInt64(p.topics))
                    }
                    var query = streams[index].walk
                    for d in 0..<dimension { query[d] += streams[index].sink[d] }
                    for topic in streams[index].active {
                        for d in 0..<dimension { query[d] += streams[index].topics[topic][d] }
                    }
                    if let needle = needles[needleIndex] {
                        let key = Array(keys[index][(needle.token * dimension)..<((needle.token + 1) * dimension)])
                        let unit = normalised(key)
                        // Aligned with the needle's key, scaled so its logit gains ≈ needleLogit.
                        let norm = key.reduce(0) { $0 + $1 * $1 }.squareRoot()
                        for d in 0..<dimension { query[d] += scale * p.needleLogit / norm * unit[d] }
                    }
                    for d in 0..<dimension { query[d] += p.noise / scale * streams[index].generator.nextGaussian() }
                    queries[index] = query
                }
            }
        }
        let finalQueries = queries
        let mass = blockMasses(finalQueries)
        var result = StepAttention(mass: [], queries: [], tailKeys: [])
        let stored = tokenCount / p.tokensPerBlock
        for sequence in 0..<p.sequences {
            result.mass.append(Array(mass[(sequence * layers)..<((sequence + 1) * layers)]))
            // The tokens after the last complete block.
            result.tailKeys?.append((0..<layers).map { tokenMajorKeys(sequence: sequence, layer: $0, block: stored) })
            result.queries?.append((0..<layers).map { layer in
                (0..<heads).flatMap { finalQueries[streamIndex(sequence, layer, $0)] }
            })
        }
        return result
    }

    /// The attention of the last prompt token, as the prefill computed it (SnapKV's observation
    /// window, one token wide): [sequence][layer][block] masses over the prompt's complete
    /// blocks. Its query is the one the first decode step will start from (the walk's point, the
    /// sink, the active topics) with its own noise, and no needle: the prefill does not know the
    /// retrievals decode will make, nor the topic switches. Reads the state and changes nothing.
    public func prefillAttention() -> [[[Float]]]? {
        let p = parameters
        let scale = Float(dimension).squareRoot()
        var queries = [[Float]](repeating: [], count: streams.count)
        for index in streams.indices {
            // Noise from a generator of its own, so that asking does not move the decode's draws.
            var noise = SplitMix64(seed: p.seed &* 0xD1B5_4A32_D192_ED03 &+ UInt64(index + 1))
            var query = streams[index].walk
            for d in 0..<dimension { query[d] += streams[index].sink[d] }
            for topic in streams[index].active {
                for d in 0..<dimension { query[d] += streams[index].topics[topic][d] }
            }
            for d in 0..<dimension { query[d] += p.noise / scale * noise.nextGaussian() }
            queries[index] = query
        }
        let complete = tokenCount / p.tokensPerBlock
        let mass = blockMasses(queries)
        return (0..<p.sequences).map { sequence in
            (0..<layers).map { layer in Array(mass[sequence * layers + layer].prefix(complete)) }
        }
    }

    /// Per (sequence × layer) row, the mass of every block under `queries` (one per stream):
    /// the softmax of each head over the context, averaged over the heads.
    private func blockMasses(_ queries: [[Float]]) -> [[Float]] {
        let p = parameters
        let scale = Float(dimension).squareRoot()
        let blocks = (tokenCount + p.tokensPerBlock - 1) / p.tokensPerBlock
        let rows = p.sequences * layers
        var mass = [[Float]](repeating: [], count: rows)
        mass.withUnsafeMutableBufferPointer { output in
            let output = UnsafeSendable(output)
            DispatchQueue.concurrentPerform(iterations: rows) { row in
                let sequence = row / layers, layer = row % layers
                var blockMass = [Float](repeating: 0, count: blocks)
                var logits = [Float](repeating: 0, count: tokenCount)
                for head in 0..<heads {
                    let index = streamIndex(sequence, layer, head)
                    score(queries[index], keys: keys[index], into: &logits, scale: 1 / scale)
                    var maximum = -Float.infinity
                    for value in logits { maximum = max(maximum, value) }
                    var sum: Float = 0
                    for token in 0..<tokenCount {
                        let weight = exp(logits[token] - maximum)
                        logits[token] = weight
                        sum += weight
                    }
                    let share = 1 / (sum * Float(heads))
                    for token in 0..<tokenCount { blockMass[token / p.tokensPerBlock] += logits[token] * share }
                }
                output.value[row] = blockMass
            }
        }
        return mass
    }

    /// The key summary of a complete block, `[head][min, max, mean][dim]`.
    public func keySummary(sequence: Int, layer: Int, block: Int) -> [Float]? {
        guard (block + 1) * parameters.tokensPerBlock <= tokenCount else { return nil }
        var summary = [Float](repeating: 0, count: heads * 3 * dimension)
        for head in 0..<heads {
            let rows = keys(sequence: sequence, layer: layer, head: head, block: block)
            let base = head * 3 * dimension
            for d in 0..<dimension {
                summary[base + d] = .infinity
                summary[base + dimension + d] = -.infinity
            }
            var token = rows.startIndex
            while token < rows.endIndex {
                for d in 0..<dimension {
                    let value = rows[token + d]
                    summary[base + d] = min(summary[base + d], value)
                    summary[base + dimension + d] = max(summary[base + dimension + d], value)
                    summary[base + 2 * dimension + d] += value / Float(parameters.tokensPerBlock)
                }
                token += dimension
            }
        }
        return summary
    }

    /// The keys of a complete block, `[token][head][dim]`.
    public func blockKeys(sequence: Int, layer: Int, block: Int) -> [Float]? {
        guard (block + 1) * parameters.tokensPerBlock <= tokenCount else { return nil }
        return tokenMajorKeys(sequence: sequence, layer: layer, block: block)
    }

    /// The keys a block holds so far (all of a complete block), token-major `[token][head][dim]`
    /// as a TierKV block lays them out; the streams keep them head by head.
    private func tokenMajorKeys(sequence: Int, layer: Int, block: Int) -> [Float] {
        let tokens = max(0, min(tokenCount, (block + 1) * parameters.tokensPerBlock) - block * parameters.tokensPerBlock)
        var rows = [Float](repeating: 0, count: tokens * heads * dimension)
        for head in 0..<heads {
            let headKeys = keys(sequence: sequence, layer: layer, head: head, block: block)
            for token in 0..<tokens {
                let from = headKeys.startIndex + token * dimension, to = (token * heads + head) * dimension
                for d in 0..<dimension { rows[to + d] = headKeys[from + d] }
            }
        }
        return rows
    }

    /// Keys of one block for a (sequence, layer, head): `tokens × dimension` floats (for key
    /// summaries and predictors).
    public func keys(sequence: Int, layer: Int, head: Int, block: Int) -> ArraySlice<Float> {
        let index = streamIndex(sequence, layer, head)
        let first = block * parameters.tokensPerBlock
        let last = min(tokenCount, first + parameters.tokensPerBlock)
        return keys[index][(first * dimension)..<(last * dimension)]
    }

    private func streamIndex(_ sequence: Int, _ layer: Int, _ head: Int) -> Int { (sequence * layers + layer) * heads + head }

    private func score(_ query: [Float], keys: [Float], into logits: inout [Float], scale: Float) {
        let count = tokenCount, dimension = self.dimension
        query.withUnsafeBufferPointer { q in
            keys.withUnsafeBufferPointer { k in
                logits.withUnsafeMutableBufferPointer { out in
                    if dimension % 8 == 0 {
                        let lanes = dimension / 8
                        let q8 = UnsafeRawPointer(q.baseAddress!).bindMemory(to: SIMD8<Float>.self, capacity: lanes)
                        let k8 = UnsafeRawPointer(k.baseAddress!).bindMemory(to: SIMD8<Float>.self, capacity: count * lanes)
                        for token in 0..<count {
                            var accumulator = SIMD8<Float>()
                            let row = k8 + token * lanes
                            for lane in 0..<lanes { accumulator += q8[lane] * row[lane] }
                            let half = accumulator.lowHalf + accumulator.highHalf
                            let quarter = half.lowHalf + half.highHalf
                            out[token] = (quarter[0] + quarter[1]) * scale
                        }
                    } else {
                        for token in 0..<count {
                            var sum: Float = 0
                            for d in 0..<dimension { sum += q[d] * k[token * dimension + d] }
                            out[token] = sum * scale
                        }
                    }
                }
            }
        }
    }

    private static func randomUnit(_ dimension: Int, _ generator: inout SplitMix64) -> [Float] {
        normalised((0..<dimension).map { _ in generator.nextGaussian() })
    }
}

private func normalised(_ vector: [Float]) -> [Float] {
    let norm = vector.reduce(0) { $0 + $1 * $1 }.squareRoot()
    return norm > 0 ? vector.map { $0 / norm } : vector
}

/// Carries a buffer into `concurrentPerform` workers that write disjoint elements.
struct UnsafeSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and the same sequence on every platform.
public struct SplitMix64: Sendable {
    private var state: UInt64
    private var spare: Float?

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func nextFloat() -> Float { Float(next() >> 40) / Float(1 << 24) }

    /// Standard normal (Box–Muller, both values used).
    public mutating func nextGaussian() -> Float {
        if let value = spare {
            spare = nil
            return value
        }
        let u1 = max(Float(next() >> 40) / Float(1 << 24), 1e-7)
        let u2 = Float(next() >> 40) / Float(1 << 24)
        let radius = (-2 * log(u1)).squareRoot()
        spare = radius * sin(2 * .pi * u2)
        return radius * cos(2 * .pi * u2)
    }
}

extension Range where Bound == Int {
    /// Fisher–Yates with the given generator (the standard library's shuffle takes any RNG, but
    /// its algorithm is not promised to stay the same across releases).
    func shuffledDeterministically(_ generator: inout SplitMix64) -> [Int] {
        var values = Array(self)
        guard values.count > 1 else { return values }
        for index in stride(from: values.count - 1, to: 0, by: -1) {
            values.swapAt(index, Int(generator.next() % UInt64(index + 1)))
        }
        return values
    }
}
