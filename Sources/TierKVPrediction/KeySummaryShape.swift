import TierKVAttentionKernels
import TierKVCore

/// The shape of one block's key summary: per KV head, the element-wise minimum, maximum and mean
/// of the block's keys, stored as fp16 (minima rounded down and maxima up, so bounds stay bounds);
/// optionally a key sketch: every key of the block quantised to `sketchBits` bits per element
/// between the block's per-channel minimum and maximum (KIVI's per-channel key quantisation, with
/// the summary's min and max as the scales), so a block can be scored token by token.
public struct KeySummaryShape: Sendable, Hashable {
    public let kvHeads: Int
    public let headDim: Int
    /// Query heads per KV head (GQA); a predictor's query holds `kvHeads × groupSize` heads.
    public let groupSize: Int
    /// Bits per key element of the sketch: 0 (no sketch), 1, 2 or 4.
    public let sketchBits: Int
    /// Tokens per block, which sizes the sketch (the summary does not depend on it).
    public let tokensPerBlock: Int

    /// - Throws: `.invalidArgument` naming the bad value (head dims must be multiples of 8, the
    ///   scoring kernel's lane width).
    public init(kvHeads: Int, headDim: Int, groupSize: Int = 1, sketchBits: Int = 0, tokensPerBlock: Int = 16) throws(TierKVError) {
        guard kvHeads >= 1, kvHeads <= KVLayout.maximumHeads else { throw .invalid("kvHeads is \(kvHeads); expected 1...\(KVLayout.maximumHeads)") }
        guard headDim >= 8, headDim <= KVLayout.maximumHeadDim, headDim % 8 == 0 else {
            throw .invalid("head dim \(headDim) cannot be summarised; expected a multiple of 8 in 8...\(KVLayout.maximumHeadDim)")
        }
        guard groupSize >= 1 else { throw .invalid("group size is \(groupSize); expected at least 1") }
        guard [0, 1, 2, 4].contains(sketchBits) else { throw .invalid("key sketch bits is \(sketchBits); expected 0 (none), 1, 2 or 4") }
        guard tokensPerBlock >= 1, tokensPerBlock <= KVLayout.maximumTokensPerBlock else {
            throw .invalid("tokens per block is \(tokensPerBlock); expected 1...\(KVLayout.maximumTokensPerBlock)")
        }
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.groupSize = groupSize
        self.sketchBits = sketchBits
        self.tokensPerBlock = tokensPerBlock
    }

    /// The summary shape of a layout's blocks, with a key sketch of `sketchBits` bits.
    public init(layout: KVLayout, sketchBits: Int = 0) throws(TierKVError) {
        try self.init(
            kvHeads: layout.kvHeads, headDim: layout.headDim, groupSize: layout.groupSize, sketchBits: sketchBits,
            tokensPerBlock: layout.tokensPerBlock)
    }

    public var queryHeads: Int { kvHeads * groupSize }
    /// fp32 values of a summary as `KeySummaryKernel` writes it: `[head][min, max, mean][dim]`.
    public var valueCount: Int { kvHeads * 3 * headDim }
    /// Bytes one block's summary takes in host memory (fp16). Llama-3-8B (8 × 128): 6 KiB per
    /// 64 KiB block of 16 tokens, 9.4% of the block.
    public var byteCount: Int { valueCount * 2 }
    /// Bytes of one block's key sketch (`KeySketchKernel`'s layout: `sketchBits` per element,
    /// tokens rounded up to a multiple of 8). Llama-3-8B at 2 bits: 4 KiB per 64 KiB block (6.3%),
    /// so summary and sketch together are 15.6% of the block.
    public var sketchByteCount: Int {
        KeySketchKernel.byteCount(tokensPerBlock: tokensPerBlock, kvHeads: kvHeads, headDim: headDim, bits: sketchBits)
    }
    /// fp32 values of a query hint.
    public var queryValueCount: Int { queryHeads * headDim }
}
