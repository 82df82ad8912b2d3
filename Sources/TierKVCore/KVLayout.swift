/// The shape of a model's KV cache as TierKV stores it.
///
/// A block is `tokensPerBlock` consecutive tokens of one layer, K then V, for every KV head:
/// `2 × tokensPerBlock × kvHeads × headDim × dtype.byteSize` bytes. Within K (and within V)
/// the order is `[token][kvHead][dim]`, the order vLLM's and SGLang's paged pools use.
public struct KVLayout: Hashable, Sendable, Codable {
    public var layers: Int
    public var kvHeads: Int
    public var queryHeads: Int
    public var headDim: Int
    public var tokensPerBlock: Int
    public var dtype: DType

    /// Limits that catch unit mistakes (bytes given as tokens, and so on) without excluding
    /// any published model: the largest today have ~128 layers, 128 query heads, head dim 256.
    public static let maximumLayers = 1024
    public static let maximumHeads = 4096
    public static let maximumHeadDim = 1024
    public static let maximumTokensPerBlock = 65536

    /// Creates a layout and validates it.
    /// - Throws: `TierKVError` (`.invalidArgument`) naming the field, the value and the accepted range.
    public init(
        layers: Int, kvHeads: Int, queryHeads: Int, headDim: Int, tokensPerBlock: Int = 16, dtype: DType = .fp16
    ) throws(TierKVError) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.queryHeads = queryHeads
        self.headDim = headDim
        self.tokensPerBlock = tokensPerBlock
        self.dtype = dtype
        try validate()
    }

    /// Checks every field; layouts decoded from JSON should be validated before use.
    public func validate() throws(TierKVError) {
        try Self.check("layers", layers, maximum: Self.maximumLayers)
        try Self.check("kvHeads", kvHeads, maximum: Self.maximumHeads)
        try Self.check("queryHeads", queryHeads, maximum: Self.maximumHeads)
        try Self.check("headDim", headDim, maximum: Self.maximumHeadDim)
        try Self.check("tokensPerBlock", tokensPerBlock, maximum: Self.maximumTokensPerBlock)
        if queryHeads % kvHeads != 0 {
            throw .invalid(
                "queryHeads (\(queryHeads)) must be a multiple of kvHeads (\(kvHeads)) for grouped-query attention")
        }
    }

    private static func check(_ name: String, _ value: Int, maximum: Int) throws(TierKVError) {
        guard value >= 1, value <= maximum else {
            throw .invalid("\(name) is \(value); expected 1...\(maximum)")
        }
    }

    /// Query heads that share one KV head (1 for MHA, `queryHeads` for MQA).
    public var groupSize: Int { queryHeads / kvHeads }

    /// Bytes of K (or of V) for one token of one layer.
    public var tokenByteCountPerTensor: Int { kvHeads * headDim * dtype.byteSize }

    /// Bytes of one block: K and V for `tokensPerBlock` tokens of one layer.
    public var blockByteCount: Int { 2 * tokensPerBlock * tokenByteCountPerTensor }

    /// Bytes of KV cache for one token across all layers.
    public var tokenByteCount: Int { 2 * layers * tokenByteCountPerTensor }

    /// Blocks (per layer) needed for `tokenCount` tokens, the last possibly partial.
    public func blockCount(forTokens tokenCount: Int) -> Int {
        (tokenCount + tokensPerBlock - 1) / tokensPerBlock
    }
}
