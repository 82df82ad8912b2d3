/// The result of attention over part of the context, for every query head: the normalised
/// output `o`, the max logit `m` and the sum of exponentials `l = Σ exp(sᵢ − m)`, all in natural
/// log units, so parts computed anywhere (other CPU splits, the GPU) merge exactly:
///
///     m = max(m₁, m₂);  l = l₁·e^(m₁−m) + l₂·e^(m₂−m);  o = (o₁·l₁·e^(m₁−m) + o₂·l₂·e^(m₂−m)) / l
///
/// An empty part has `m = −∞`, `l = 0`, `o = 0` and leaves any merge unchanged.
public struct AttentionPartial: Sendable, Equatable {
    public var heads: Int
    public var headDim: Int
    /// `heads × headDim`, row-major.
    public var output: [Float]
    public var maxima: [Float]
    public var sums: [Float]

    public init(heads: Int, headDim: Int, output: [Float], maxima: [Float], sums: [Float]) {
        precondition(output.count == heads * headDim && maxima.count == heads && sums.count == heads)
        self.heads = heads
        self.headDim = headDim
        self.output = output
        self.maxima = maxima
        self.sums = sums
    }

    /// The neutral element of `merge`.
    public static func empty(heads: Int, headDim: Int) -> AttentionPartial {
        AttentionPartial(
            heads: heads, headDim: headDim, output: Array(repeating: 0, count: heads * headDim),
            maxima: Array(repeating: -.infinity, count: heads), sums: Array(repeating: 0, count: heads))
    }

    /// Log-sum-exp per head, `m + ln l` (−∞ for an empty part): the one number FlashAttention
    /// and FlashInfer keep instead of `m` and `l`.
    public var logSumExp: [Float] {
        zip(maxima, sums).map { m, l in l > 0 ? m + Float(log(Double(l))) : -.infinity }
    }

    /// Merges any number of partials of the same shape (associative and commutative up to
    /// rounding; empty parts are ignored). Accumulates in fp64.
    public static func merge(_ parts: [AttentionPartial]) -> AttentionPartial {
        guard let first = parts.first else { preconditionFailure("merge of no partials has no shape") }
        var merged = empty(heads: first.heads, headDim: first.headDim)
        var accumulator = [Double](repeating: 0, count: first.headDim)  // one head at a time
        for head in 0..<first.heads {
            var maximum = -Float.infinity
            for part in parts {
                precondition(part.heads == first.heads && part.headDim == first.headDim, "partials of different shapes")
                if part.sums[head] > 0 { maximum = max(maximum, part.maxima[head]) }
            }
            guard maximum > -.infinity else { continue }
            var sum = 0.0
            for index in 0..<first.headDim { accumulator[index] = 0 }
            for part in parts where part.sums[head] > 0 {
                let weight = Double(part.sums[head]) * exp(Double(part.maxima[head] - maximum))
                sum += weight
                for index in 0..<first.headDim {
                    accumulator[index] += weight * Double(part.output[head * first.headDim + index])
                }
            }
            merged.maxima[head] = maximum
            merged.sums[head] = Float(sum)
            for index in 0..<first.headDim { merged.output[head * first.headDim + index] = Float(accumulator[index] / sum) }
        }
        return merged
    }
}

#if canImport(Glibc)
import Glibc
#endif
