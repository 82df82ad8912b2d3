import Foundation
import TierKVCore

/// Where a decode simulation's attention comes from: the generator or a recorded trace.
public protocol AttentionSource: AnyObject {
    var layers: Int { get }
    var sequences: Int { get }
    var tokensPerBlock: Int { get }
    var contextTokens: Int { get }
    var decodeSteps: Int { get }
    var sinkTokens: Int { get }
    /// Tokens of context now (grows by one per `appendToken`).
    var tokenCount: Int { get }
    /// KV heads and head dim of the queries and key summaries (the vectors the predictors see).
    var vectorHeads: Int { get }
    var vectorDimension: Int { get }
    /// Query heads per KV head in the queries (1: one query per KV head).
    var vectorGroupSize: Int { get }
    /// The attention of the step at the current position: [sequence][layer][block] masses.
    func step() -> StepAttention
    func appendToken()
    /// A complete block's key summary, `[head][min, max, mean][dim]` fp32, or nil when unknown.
    func keySummary(sequence: Int, layer: Int, block: Int) -> [Float]?
    /// A complete block's keys, fp32 `[token][head][dim]`, or nil when the source has none (the
    /// key sketches are made from them).
    func blockKeys(sequence: Int, layer: Int, block: Int) -> [Float]?
    /// The attention the prefill's last prompt tokens paid the prompt's blocks,
    /// [sequence][layer][block] (entries past the complete blocks are ignored), or nil when the
    /// source does not have it (what `--prefill-placement` places by).
    func prefillAttention() -> [[[Float]]]?
}

extension AttentionSource {
    public func prefillAttention() -> [[[Float]]]? { nil }
}

/// Attention of one decode step: per sequence, per layer, the mass of each block, and the query
/// that produced it.
public struct StepAttention: Sendable {
    /// [sequence][layer][block]
    public var mass: [[[Float]]]
    /// [sequence][layer] → `vectorHeads × vectorGroupSize × vectorDimension` fp32 (post-RoPE, the
    /// query heads of KV head h at h·groupSize..<(h+1)·groupSize), or
    /// nil when the source has none.
    public var queries: [[[Float]?]]?
    /// [sequence][layer] → the query speculated for the layer from the previous layer's input
    /// (InfiniGen), when the source recorded one.
    public var speculatedQueries: [[[Float]?]]?
    /// [sequence][layer] → the keys attended that no stored block holds yet (the partly filled
    /// block up to the current token), fp32 `[token][head][dim]`, when the source has them.
    public var tailKeys: [[[Float]?]]?

    public init(
        mass: [[[Float]]], queries: [[[Float]?]]? = nil, speculatedQueries: [[[Float]?]]? = nil, tailKeys: [[[Float]?]]? = nil
    ) {
        self.mass = mass
        self.queries = queries
        self.speculatedQueries = speculatedQueries
        self.tailKeys = tailKeys
    }
}

/// A per-step, per-layer attention trace recorded from a real model (`tools/record-tierkv-trace`),
/// replayed by `tierkv simulate --trace FILE --trace-format tierkv`.
///
/// Format, version 1: JSON lines. The first line is the header:
///
///     {"format": "tierkv-trace", "version": 1, "model": "Llama-3.2-1B", "layers": 16,
///      "kv_heads": 8, "head_dim": 64, "tokens_per_block": 16, "context_tokens": 1024,
///      "decode_steps": 64, "sink_tokens": 4}
///
/// then, for each decode step in order and each layer in order, a step line:
///
///     {"type": "step", "step": 0, "layer": 0, "position": 1024, "mass": [0.41, 0.002, ...],
///      "query": [[...head_dim floats...], ... kv_heads rows], "spec_query": [[...]]}
///
/// `position` is the index of the token being decoded (`context_tokens + step`); `mass` holds
/// the attention weight of each 16-token block of tokens 0...position (so ⌈(position+1)/16⌉
/// entries), averaged over the layer's query heads: non-negative, summing to 1 (± 0.01).
/// `query` (optional, for predictors) is the post-RoPE query: one row per query head when the
/// header has `query_heads` (the heads of KV head h at rows h·g..<(h+1)·g, g = query_heads /
/// kv_heads), else one per KV head (the mean over its group; older recordings). `spec_query`
/// (optional) is the same query speculated from the previous layer's input with this layer's
/// weights (InfiniGen), for the speculative predictor. `tail_keys_fp16` (optional) holds the keys
/// of the tokens from the last block boundary to `position` inclusive (position mod
/// tokens_per_block + 1 rows), base64 of little-endian fp16 `[token][head][dim]`: the keys the
/// step attends that no complete block holds.
/// Optional block lines carry the key summaries of a block when it is complete:
///
///     {"type": "block", "layer": 0, "block": 63, "key_min": [[...]], "key_max": [[...]],
///      "key_mean": [[...]]}
///
/// each `kv_heads` rows of `head_dim` floats, and optionally the block's keys themselves,
/// `"keys_fp16"`: base64 of `tokens_per_block × kv_heads × head_dim` little-endian fp16,
/// `[token][head][dim]` (what key sketches are made from).
/// Optional prefill lines, one for every layer or none, carry the attention the prompt's last
/// `window` tokens paid its blocks (SnapKV's observation window), what `--prefill-placement`
/// places by:
///
///     {"type": "prefill", "layer": 0, "window": 16, "mass": [0.2, 0.01, ...]}
///
/// `mass` has ⌈context_tokens / tokens_per_block⌉ entries, non-negative, summing to 1 (± 0.01):
/// each block's attention averaged over the window's queries and the layer's query heads. The
/// reader refuses malformed input with the line number and the reason.
public final class TierKVTrace: AttentionSource {
    public struct Header: Sendable, Equatable {
        public var model: String
        public var layers: Int
        public var kvHeads: Int
        /// Query heads in the step lines' queries: `kv_heads` (one per KV head, the group's mean)
        /// in traces without `query_heads`.
        public var queryHeads: Int
        public var headDim: Int
        public var tokensPerBlock: Int
        public var contextTokens: Int
        public var decodeSteps: Int
        public var sinkTokens: Int
    }

    public let header: Header
    /// [step][layer] → masses.
    private let masses: [[[Float]]]
    /// [step][layer] → the query per KV head, when recorded.
    public let queries: [[[[Float]]?]]
    /// [step][layer] → the speculated query per KV head, when recorded.
    public let speculatedQueries: [[[[Float]]?]]
    /// [step][layer] → the tail keys (`tail_keys_fp16`), when recorded.
    private let tailKeys: [[[Float]?]]
    /// [layer][block] → key summary `[head][min, max, mean][dim]`, from the block lines.
    private let summaries: [Int: [Int: [Float]]]
    /// [layer][block] → keys `[token][head][dim]`, from the block lines that carry them.
    private let keys: [Int: [Int: [Float]]]
    /// [layer] → the prefill window's attention per prompt block, from the prefill lines (empty
    /// when the trace has none).
    private let prefill: [[Float]]
    public var blockKeysCount: Int { keys.values.reduce(0) { $0 + $1.count } }
    public var blockSummaryCount: Int { summaries.values.reduce(0) { $0 + $1.count } }
    public private(set) var tokenCount: Int
    private var currentStep = 0

    public var layers: Int { header.layers }
    public var sequences: Int { 1 }
    public var tokensPerBlock: Int { header.tokensPerBlock }
    public var contextTokens: Int { header.contextTokens }
    public var decodeSteps: Int { header.decodeSteps }
    public var sinkTokens: Int { header.sinkTokens }
    public var vectorHeads: Int { header.kvHeads }
    public var vectorDimension: Int { header.headDim }
    public var vectorGroupSize: Int { header.queryHeads / header.kvHeads }

    public static func load(path: String) throws(TierKVError) -> TierKVTrace {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TierKVError(.notFound, "cannot read trace file \(path)", path: path)
        }
        guard let text = String(data: data, encoding: .utf8) else { throw .invalid("trace file \(path) is not UTF-8") }
        return try TierKVTrace(parsing: text, source: path)
    }

    public init(parsing text: String, source: String = "trace") throws(TierKVError) {
        var header: Header?
        var masses: [[[Float]]] = [], queries: [[[[Float]]?]] = [], speculated: [[[[Float]]?]] = [], tails: [[[Float]?]] = []
        var expected = (step: 0, layer: 0)
        var lineNumber = 0
        var summaries: [Int: [Int: [Float]]] = [:], keys: [Int: [Int: [Float]]] = [:], prefill: [Int: [Float]] = [:]
        func fail(_ reason: String) -> TierKVError { .invalid("\(source):\(lineNumber): \(reason)") }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(trimmed.utf8))) as? [String: Any] else {
                throw fail("not a JSON object")
            }
            func integer(_ key: String, minimum: Int = 0) throws(TierKVError) -> Int {
                guard let value = object[key] as? NSNumber, let integer = Int(exactly: value.doubleValue), integer >= minimum else {
                    throw fail("'\(key)' must be an integer ≥ \(minimum), found \(object[key].map { "\($0)" } ?? "nothing")")
                }
                return integer
            }
            guard let known = header else {
                guard object["format"] as? String == "tierkv-trace" else {
                    throw fail("the first line must be the header with \"format\": \"tierkv-trace\"")
                }
                let version = try integer("version", minimum: 1)
                guard version == 1 else { throw fail("version \(version) is not supported (this reader reads version 1)") }
                let kvHeads = try integer("kv_heads", minimum: 1)
                let queryHeads = object["query_heads"] == nil ? kvHeads : try integer("query_heads", minimum: 1)
                guard queryHeads % kvHeads == 0 else {
                    throw fail("query_heads \(queryHeads) is not a multiple of kv_heads \(kvHeads)")
                }
                header = Header(
                    model: object["model"] as? String ?? "unknown", layers: try integer("layers", minimum: 1),
                    kvHeads: kvHeads, queryHeads: queryHeads, headDim: try integer("head_dim", minimum: 1),
                    tokensPerBlock: try integer("tokens_per_block", minimum: 1), contextTokens: try integer("context_tokens", minimum: 1),
                    decodeSteps: try integer("decode_steps", minimum: 1), sinkTokens: (object["sink_tokens"] as? Int) ?? 4)
                continue
            }
            let type = object["type"] as? String ?? "step"
            func matrix(_ key: String, rows count: Int? = nil) throws(TierKVError) -> [[Float]] {
                let count = count ?? known.kvHeads
                let name = count == known.kvHeads ? "kv_heads" : "query_heads"
                guard let rows = object[key] as? [[NSNumber]], rows.count == count,
                    rows.allSatisfy({ $0.count == known.headDim })
                else { throw fail("'\(key)' must be \(count) rows (\(name)) of \(known.headDim) numbers (head_dim)") }
                return rows.map { $0.map { $0.floatValue } }
            }
            /// Base64 little-endian fp16 `[token][head][dim]` rows, widened to fp32.
            func fp16Rows(_ key: String, rows: Int, _ what: String) throws(TierKVError) -> [Float] {
                let byteCount = rows * known.kvHeads * known.headDim * 2
                guard let text = object[key] as? String, let bytes = Data(base64Encoded: text), bytes.count == byteCount else {
                    throw fail("'\(key)' must be base64 of \(byteCount) bytes (\(what) × \(known.kvHeads) kv_heads × \(known.headDim) fp16)")
                }
                return bytes.withUnsafeBytes { raw in
                    (0..<(byteCount / 2)).map { Float(Float16(bitPattern: UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)))) }
                }
            }
            /// `mass`: `count` non-negative numbers summing to 1 ± 0.01.
            func massLine(count: Int, _ what: String) throws(TierKVError) -> [Float] {
                guard let raw = object["mass"] as? [NSNumber] else { throw fail("'mass' must be an array of numbers") }
                guard raw.count == count else { throw fail("'mass' has \(raw.count) entries; \(what) make \(count) blocks of \(known.tokensPerBlock)") }
                let mass = raw.map { $0.floatValue }
                if let bad = mass.firstIndex(where: { !$0.isFinite || $0 < 0 }) { throw fail("mass[\(bad)] is \(mass[bad]); masses are non-negative numbers") }
                let sum = mass.reduce(0, +)
                guard abs(sum - 1) <= 0.01 else { throw fail("masses sum to \(sum); expected 1 ± 0.01 (a softmax averaged over heads)") }
                return mass
            }
            switch type {
            case "prefill":
                let layer = try integer("layer")
                guard layer < known.layers else { throw fail("layer \(layer) is out of range (the header says \(known.layers) layers)") }
                guard prefill[layer] == nil else { throw fail("a second prefill line for layer \(layer)") }
                _ = try integer("window", minimum: 1)
                let blocks = (known.contextTokens + known.tokensPerBlock - 1) / known.tokensPerBlock
                prefill[layer] = try massLine(count: blocks, "the \(known.contextTokens) prompt tokens")
            case "block":
                let layer = try integer("layer")
                guard layer < known.layers else { throw fail("layer \(layer) is out of range (the header says \(known.layers) layers)") }
                let block = try integer("block")
                let low = try matrix("key_min"), high = try matrix("key_max"), mean = try matrix("key_mean")
                for head in 0..<known.kvHeads {
                    if let dim = (0..<known.headDim).first(where: { low[head][$0] > high[head][$0] }) {
                        throw fail("key_min exceeds key_max at head \(head) dim \(dim)")
                    }
                }
                summaries[layer, default: [:]][block] = (0..<known.kvHeads).flatMap { low[$0] + high[$0] + mean[$0] }
                if object["keys_fp16"] != nil {
                    keys[layer, default: [:]][block] = try fp16Rows("keys_fp16", rows: known.tokensPerBlock, "\(known.tokensPerBlock) tokens")
                }
            case "step":
                let step = try integer("step"), layer = try integer("layer"), position = try integer("position")
                guard step == expected.step, layer == expected.layer else {
                    throw fail("expected step \(expected.step) layer \(expected.layer), found step \(step) layer \(layer) (steps and layers must come in order)")
                }
                guard step < known.decodeSteps else { throw fail("step \(step) is beyond the header's \(known.decodeSteps) decode steps") }
                guard position == known.contextTokens + step else {
                    throw fail("position \(position) should be context_tokens + step = \(known.contextTokens + step)")
                }
                let mass = try massLine(count: (position + 1 + known.tokensPerBlock - 1) / known.tokensPerBlock, "tokens 0...\(position)")
                var tail: [Float]? = nil
                if object["tail_keys_fp16"] != nil {
                    let rows = position % known.tokensPerBlock + 1
                    tail = try fp16Rows("tail_keys_fp16", rows: rows, "\(rows) tokens (position mod tokens_per_block + 1)")
                }
                let query = object["query"] == nil ? nil : try matrix("query", rows: known.queryHeads)
                let speculatedQuery = object["spec_query"] == nil ? nil : try matrix("spec_query", rows: known.queryHeads)
                if layer == 0 {
                    masses.append([])
                    queries.append([])
                    speculated.append([])
                    tails.append([])
                }
                tails[step].append(tail)
                masses[step].append(mass)
                queries[step].append(query)
                speculated[step].append(speculatedQuery)
                expected = layer + 1 == known.layers ? (step + 1, 0) : (step, layer + 1)
            default:
                throw fail("unknown line type '\(type)' (expected step, block or prefill)")
            }
        }
        guard let header else { throw .invalid("\(source): empty trace (expected a header line)") }
        guard expected == (header.decodeSteps, 0) else {
            throw .invalid("\(source): truncated: the header promises \(header.decodeSteps) steps × \(header.layers) layers; the file stops before step \(expected.step) layer \(expected.layer)")
        }
        guard prefill.isEmpty || prefill.count == header.layers else {
            let missing = (0..<header.layers).filter { prefill[$0] == nil }
            throw .invalid("\(source): prefill lines for \(prefill.count) of \(header.layers) layers (none for layer \(missing.prefix(8).map(String.init).joined(separator: ", "))\(missing.count > 8 ? ", ..." : "")); a trace has one for every layer or none")
        }
        self.header = header
        self.prefill = prefill.isEmpty ? [] : (0..<header.layers).map { prefill[$0]! }
        self.masses = masses
        self.queries = queries
        self.speculatedQueries = speculated
        self.tailKeys = tails
        self.summaries = summaries
        self.keys = keys
        self.tokenCount = header.contextTokens
    }

    public func step() -> StepAttention {
        let step = min(currentStep, masses.count - 1)
        return StepAttention(
            mass: [masses[step]], queries: [queries[step].map { $0?.flatMap { $0 } }],
            speculatedQueries: [speculatedQueries[step].map { $0?.flatMap { $0 } }], tailKeys: [tailKeys[step]])
    }

    public func keySummary(sequence: Int, layer: Int, block: Int) -> [Float]? { summaries[layer]?[block] }

    public func blockKeys(sequence: Int, layer: Int, block: Int) -> [Float]? { keys[layer]?[block] }

    /// The prefill lines' attention, one sequence; nil when the trace has none.
    public func prefillAttention() -> [[[Float]]]? { prefill.isEmpty ? nil : [prefill] }

    /// Back to the first step (each simulation run replays from the start).
    public func rewind() {
        currentStep = 0
        tokenCount = header.contextTokens
    }

    public func appendToken() {
        currentStep += 1
        tokenCount += 1
    }
}
