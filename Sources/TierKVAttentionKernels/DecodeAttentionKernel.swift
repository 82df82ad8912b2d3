import TierKVCore

/// Where one block's keys and values are: `tokenCount` rows of `[kvHeads][headDim]` elements
/// each, K and V at separate addresses (a paged block, or a chunk of a contiguous K/V array).
public struct KVBlockView: @unchecked Sendable {
    // @unchecked: a view of memory the caller keeps alive and unchanged during the call.
    public var keys: UnsafeRawPointer
    public var values: UnsafeRawPointer
    public var tokenCount: Int

    public init(keys: UnsafeRawPointer, values: UnsafeRawPointer, tokenCount: Int) {
        self.keys = keys
        self.values = values
        self.tokenCount = tokenCount
    }
}

/// The SIMD decode-attention kernel: one pass over K and V with an online softmax.
///
/// For the `groupSize` query heads that share KV head `kvHead`, over `blocks`, it writes per
/// query head the normalised partial output `o`, the max logit `m` (natural-log units) and the
/// sum of exponentials `l = Σ exp(sᵢ − m)`. An empty range gives `m = −∞`, `l = 0`, `o = 0`.
/// No allocation; `scratch` must hold `scratchFloatCount(groupSize:headDim:)` floats.
public enum DecodeAttentionKernel {
    /// Tokens scored together before one rescale of the accumulators.
    public static let chunkTokens = 16
    static let log2e: Float = 1.442_695_04
    static let ln2: Float = 0.693_147_18

    public static func scratchFloatCount(groupSize: Int, headDim: Int) -> Int {
        headDim + groupSize * headDim + groupSize * chunkTokens
    }

    /// - Parameters:
    ///   - query: `groupSize × headDim` fp32, the group's query heads in order.
    ///   - scale: softmax scale (usually 1/√headDim).
    ///   - output: `groupSize × headDim` fp32, normalised partial outputs.
    ///   - maxima, sums: `groupSize` each: `m` and `l` per query head.
    public static func partial(
        dtype: DType, query: UnsafePointer<Float>, scale: Float, groupSize: Int, headDim: Int, kvHeads: Int,
        kvHead: Int, blocks: UnsafeBufferPointer<KVBlockView>, output: UnsafeMutablePointer<Float>,
        maxima: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        switch dtype {
        case .fp16:
            run(FP16Elements.self, query, scale, groupSize, headDim, kvHeads, kvHead, blocks, output, maxima, sums, scratch)
        case .bf16:
            run(BF16Elements.self, query, scale, groupSize, headDim, kvHeads, kvHead, blocks, output, maxima, sums, scratch)
        case .fp32:
            run(FP32Elements.self, query, scale, groupSize, headDim, kvHeads, kvHead, blocks, output, maxima, sums, scratch)
        case .fp8E4M3:
            preconditionFailure("fp8 K/V is validated out before reaching the kernel")
        }
    }

    @inline(__always)
    static func run<L: KVElementLoader>(
        _ loader: L.Type, _ query: UnsafePointer<Float>, _ scale: Float, _ groupSize: Int, _ headDim: Int,
        _ kvHeads: Int, _ kvHead: Int, _ blocks: UnsafeBufferPointer<KVBlockView>, _ output: UnsafeMutablePointer<Float>,
        _ maxima: UnsafeMutablePointer<Float>, _ sums: UnsafeMutablePointer<Float>, _ scratch: UnsafeMutablePointer<Float>
    ) {
        let lanes = headDim / 8
        let row = scratch  // one converted K or V row
        let scaledQuery = scratch + headDim  // query × scale × log2(e): scores come out in base 2
        let scores = scaledQuery + groupSize * headDim  // groupSize × chunkTokens
        let factor = scale * log2e
        for index in 0..<(groupSize * headDim) { scaledQuery[index] = query[index] * factor }
        for index in 0..<(groupSize * headDim) { output[index] = 0 }
        for head in 0..<groupSize {
            maxima[head] = -.infinity
            sums[head] = 0
        }
        let rowBytes = kvHeads * headDim * L.elementByteCount
        let headOffset = kvHead * headDim * L.elementByteCount
        let rowVector = UnsafeMutableRawPointer(row)

        for block in blocks {
            var start = 0
            while start < block.tokenCount {
                let count = min(chunkTokens, block.tokenCount - start)
                // Scores: convert each K row once, dot it with every query head of the group.
                for token in 0..<count {
                    let keys = block.keys + (start + token) * rowBytes + headOffset
                    for lane in 0..<lanes {
                        rowVector.storeBytes(of: L.load8(keys, lane * 8), toByteOffset: lane * 32, as: SIMD8<Float>.self)
                    }
                    for head in 0..<groupSize {
                        let q = UnsafeRawPointer(scaledQuery + head * headDim)
                        var accumulator = SIMD8<Float>(repeating: 0)
                        for lane in 0..<lanes {
                            let k = UnsafeRawPointer(rowVector).load(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                            accumulator.addProduct(q.loadUnaligned(fromByteOffset: lane * 32, as: SIMD8<Float>.self), k)
                        }
                        scores[head * chunkTokens + token] = accumulator.horizontalSum
                    }
                }
                // Online softmax: new max per head, rescale what was accumulated, weights 2^(s-m).
                for head in 0..<groupSize {
                    let headScores = scores + head * chunkTokens
                    var chunkMax = -Float.infinity
                    for token in 0..<count { chunkMax = max(chunkMax, headScores[token]) }
                    let previous = maxima[head]
                    let current = max(previous, chunkMax)
                    if current > previous {
                        let alpha = previous == -.infinity ? 0 : exp2(SIMD8<Float>(repeating: previous - current))[0]
                        sums[head] *= alpha
                        let accumulator = UnsafeMutableRawPointer(output + head * headDim)
                        for lane in 0..<lanes {
                            let value = accumulator.load(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                            accumulator.storeBytes(of: value * alpha, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                        }
                        maxima[head] = current
                    }
                    var total: Float = 0
                    var token = 0
                    while token < count {
                        var values = SIMD8<Float>(repeating: -.infinity)
                        for lane in 0..<min(8, count - token) { values[lane] = headScores[token + lane] }
                        let weights = exp2(values - SIMD8(repeating: current))
                        for lane in 0..<min(8, count - token) { headScores[token + lane] = weights[lane] }
                        total += weights.horizontalSum
                        token += 8
                    }
                    sums[head] += total
                }
                // Values: convert each V row once, add weight × row to every head's accumulator.
                for token in 0..<count {
                    let values = block.values + (start + token) * rowBytes + headOffset
                    for lane in 0..<lanes {
                        rowVector.storeBytes(of: L.load8(values, lane * 8), toByteOffset: lane * 32, as: SIMD8<Float>.self)
                    }
                    for head in 0..<groupSize {
                        let weight = SIMD8<Float>(repeating: scores[head * chunkTokens + token])
                        let accumulator = UnsafeMutableRawPointer(output + head * headDim)
                        for lane in 0..<lanes {
                            var value = accumulator.load(fromByteOffset: lane * 32, as: SIMD8<Float>.self)
                            value.addProduct(weight, UnsafeRawPointer(rowVector).load(fromByteOffset: lane * 32, as: SIMD8<Float>.self))
                            accumulator.storeBytes(of: value, toByteOffset: lane * 32, as: SIMD8<Float>.self)
                        }
                    }
                }
                start += count
            }
        }
        for head in 0..<groupSize {
            let sum = sums[head]
            let inverse: Float = sum > 0 ? 1 / sum : 0
            for index in 0..<headDim { output[head * headDim + index] *= inverse }
            if maxima[head] != -.infinity { maxima[head] *= ln2 }
        }
    }
}
