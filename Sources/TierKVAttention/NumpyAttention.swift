import TierKVCore

/// Decode attention on NumPy arrays: what `tierkv attend` runs, so users can check the kernel
/// against their framework. Q is `[heads, dim]` or `[batch, heads, dim]` (fp16 or fp32); K and V
/// are `[tokens, kvHeads, dim]` or `[batch, tokens, kvHeads, dim]` of one dtype (fp16 or fp32).
/// K and V are used in place (their rows have the block layout): no copy.
public enum NumpyAttention {
    public struct Result: Sendable {
        /// `[heads, dim]` or `[batch, heads, dim]` float32.
        public var output: NumpyArray
        /// Log-sum-exp per head, natural log: `[heads]` or `[batch, heads]` float32.
        public var logSumExp: NumpyArray
    }

    /// Tokens per view over the K/V arrays (any size works; this keeps splits balanced).
    static let tokensPerView = 256

    /// - Parameters: `names` are used in error messages (the files the arrays came from).
    public static func attend(
        query: NumpyArray, keys: NumpyArray, values: NumpyArray, scale: Float?, attention: CPUAttention,
        names: (query: String, keys: String, values: String) = ("Q", "K", "V")
    ) throws(TierKVError) -> Result {
        let batched = query.shape.count == 3
        guard query.shape.count == 2 || batched else {
            throw .invalid("\(names.query): expected shape [heads, headDim] or [batch, heads, headDim], found \(query.shape)")
        }
        let expectedKV = batched ? 4 : 3
        guard keys.shape.count == expectedKV else {
            throw .invalid(
                "\(names.keys): expected shape \(batched ? "[batch, tokens, kvHeads, headDim]" : "[tokens, kvHeads, headDim]") to match \(names.query) \(query.shape), found \(keys.shape)")
        }
        guard values.shape == keys.shape else {
            throw .invalid("\(names.values): shape \(values.shape) differs from \(names.keys) shape \(keys.shape)")
        }
        guard values.elementType == keys.elementType else {
            throw .invalid("\(names.values) is \(values.elementType.rawValue) but \(names.keys) is \(keys.elementType.rawValue); K and V must share a dtype")
        }
        let batch = batched ? query.shape[0] : 1
        if batched, keys.shape[0] != batch {
            throw .invalid("\(names.keys) has batch \(keys.shape[0]) but \(names.query) has batch \(batch)")
        }
        let heads = query.shape[query.shape.count - 2]
        let dim = query.shape[query.shape.count - 1]
        let tokens = keys.shape[keys.shape.count - 3]
        let kvHeads = keys.shape[keys.shape.count - 2]
        guard keys.shape.last == dim else {
            throw .invalid("\(names.keys) head dim \(keys.shape.last!) differs from \(names.query) head dim \(dim)")
        }
        let shape: AttentionShape
        do {
            shape = try AttentionShape(queryHeads: heads, kvHeads: kvHeads, headDim: dim, dtype: keys.elementType.dtype, scale: scale)
        } catch {
            throw .invalid("\(names.query) \(query.shape) with \(names.keys) \(keys.shape): \(error.message)")
        }
        let queryFloats = query.floats()
        var output = [Float](repeating: 0, count: batch * heads * dim)
        var maxima = [Float](repeating: 0, count: batch * heads)
        var sums = [Float](repeating: 0, count: batch * heads)
        let rowBytes = kvHeads * dim * keys.elementType.byteSize
        let viewsPerSequence = (tokens + tokensPerView - 1) / tokensPerView
        try keys.bytes.withUnsafeBufferPointer { (keyBytes) throws(TierKVError) in
            try values.bytes.withUnsafeBufferPointer { (valueBytes) throws(TierKVError) in
                var views: [KVBlockView] = []
                for sequence in 0..<batch {
                    for view in 0..<viewsPerSequence {
                        let offset = (sequence * tokens + view * tokensPerView) * rowBytes
                        views.append(KVBlockView(
                            keys: UnsafeRawPointer(keyBytes.baseAddress! + offset), values: UnsafeRawPointer(valueBytes.baseAddress! + offset),
                            tokenCount: min(tokensPerView, tokens - view * tokensPerView)))
                    }
                }
                try views.withUnsafeBufferPointer { (viewBuffer) throws(TierKVError) in
                    try queryFloats.withUnsafeBufferPointer { (q) throws(TierKVError) in
                        try output.withUnsafeMutableBufferPointer { (o) throws(TierKVError) in
                            try maxima.withUnsafeMutableBufferPointer { (m) throws(TierKVError) in
                                try sums.withUnsafeMutableBufferPointer { (l) throws(TierKVError) in
                                    let sequences = (0..<batch).map { index in
                                        AttentionSequence(
                                            query: q.baseAddress! + index * heads * dim,
                                            blocks: UnsafeBufferPointer(rebasing: viewBuffer[(index * viewsPerSequence)..<((index + 1) * viewsPerSequence)]),
                                            output: o.baseAddress! + index * heads * dim, maxima: m.baseAddress! + index * heads,
                                            sums: l.baseAddress! + index * heads)
                                    }
                                    try attention.attend(shape, batch: sequences)
                                }
                            }
                        }
                    }
                }
            }
        }
        let lse = zip(maxima, sums).map { m, l in l > 0 ? m + Float(log(Double(l))) : -.infinity }
        return Result(
            output: NumpyArray(shape: batched ? [batch, heads, dim] : [heads, dim], float32: output),
            logSumExp: NumpyArray(shape: batched ? [batch, heads] : [heads], float32: lse))
    }
}

#if canImport(Glibc)
import Glibc
#endif
