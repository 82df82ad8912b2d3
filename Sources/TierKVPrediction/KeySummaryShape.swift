import TierKVCore

/// The shape of one block's key summary: per KV head, the element-wise minimum, maximum and mean
/// of the block's keys, stored as fp16 (minima rounded down and maxima up, so bounds stay bounds).
public struct KeySummaryShape: Sendable, Hashable {
    public let kvHeads: Int
    public let headDim: Int
    /// Query heads per KV head (GQA); a predictor's query holds `kvHeads × groupSize` heads.
    public let groupSize: Int

    /// - Throws: `.invalidArgument` naming the bad value (head dims must be multiples of 8, the
    ///   scoring kernel's lane width).
    public init(kvHeads: Int, headDim: Int, groupSize: Int = 1) throws(TierKVError) {
        guard kvHeads >= 1, kvHeads <= KVLayout.maximumHeads else { throw .invalid("kvHeads is \(kvHeads); expected 1...\(KVLayout.maximumHeads)") }
        guard headDim >= 8, headDim <= KVLayout.maximumHeadDim, headDim % 8 == 0 else {
            throw .invalid("head dim \(headDim) cannot be summarised; expected a multiple of 8 in 8...\(KVLayout.maximumHeadDim)")
        }
        guard groupSize >= 1 else { throw .invalid("group size is \(groupSize); expected at least 1") }
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.groupSize = groupSize
    }

    /// The summary shape of a layout's blocks.
    public init(layout: KVLayout) throws(TierKVError) {
        try self.init(kvHeads: layout.kvHeads, headDim: layout.headDim, groupSize: layout.groupSize)
    }

    public var queryHeads: Int { kvHeads * groupSize }
    /// fp32 values of a summary as `KeySummaryKernel` writes it: `[head][min, max, mean][dim]`.
    public var valueCount: Int { kvHeads * 3 * headDim }
    /// Bytes one block's summary takes in host memory (fp16). Llama-3-8B (8 × 128): 6 KiB per
    /// 64 KiB block of 16 tokens, 9.4% of the block.
    public var byteCount: Int { valueCount * 2 }
    /// fp32 values of a query hint.
    public var queryValueCount: Int { queryHeads * headDim }
}
