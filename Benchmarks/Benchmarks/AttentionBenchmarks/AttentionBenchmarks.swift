import Benchmark
import TierKV

/// The CPU attention hot paths: the decode kernel over a paged fp16 cache (Llama-3-8B layer
/// shape, 32k context, 128 MiB of K/V), the key summaries of its blocks and the merge of split
/// partials.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(3))

    let shape = try! AttentionShape(queryHeads: 32, kvHeads: 8, headDim: 128, dtype: .fp16)
    let tokens = 32_768
    let tokensPerBlock = 16
    let halfBlock = tokensPerBlock * shape.kvHeads * shape.headDim * 2
    let blockCount = tokens / tokensPerBlock
    let storage = UnsafeMutableRawPointer.allocate(byteCount: blockCount * 2 * halfBlock, alignment: 4096)
    let halves = storage.bindMemory(to: Float16.self, capacity: blockCount * halfBlock)
    for index in 0..<(blockCount * halfBlock) { halves[index] = Float16(Float((index &* 7919) % 2000) / 1000 - 1) }
    let blocks = (0..<blockCount).map { KVBlockView(keys: storage + $0 * 2 * halfBlock, values: storage + $0 * 2 * halfBlock + halfBlock, tokenCount: tokensPerBlock) }
    let query = (0..<(shape.queryHeads * shape.headDim)).map { Float(($0 % 17) - 8) / 8 }
    let attention = try! CPUAttention()
    let output = UnsafeMutablePointer<Float>.allocate(capacity: shape.queryHeads * shape.headDim)
    let maxima = UnsafeMutablePointer<Float>.allocate(capacity: shape.queryHeads)
    let sums = UnsafeMutablePointer<Float>.allocate(capacity: shape.queryHeads)

    Benchmark("decode attention fp16 32q/8kv d128, 32k context (128 MiB K/V)") { benchmark in
        query.withUnsafeBufferPointer { q in
            blocks.withUnsafeBufferPointer { b in
                for _ in benchmark.scaledIterations {
                    try? attention.attend(shape, query: q.baseAddress!, blocks: b, output: output, maxima: maxima, sums: sums)
                    blackHole(output[0])
                }
            }
        }
    }

    let summaries = UnsafeMutablePointer<Float>.allocate(capacity: blockCount * shape.kvHeads * 3 * shape.headDim)
    Benchmark("key summaries of 2048 blocks (64 MiB of fp16 K), batch call") { benchmark in
        blocks.withUnsafeBufferPointer { b in
            for _ in benchmark.scaledIterations {
                attention.keySummaries(shape, blocks: b, into: summaries)
                blackHole(summaries[0])
            }
        }
    }

    var parts: [AttentionPartial] = []
    for part in 0..<16 {
        let output: [Float] = (0..<(32 * 128)).map { index in Float((index + part) % 13) / 13 }
        let maxima: [Float] = (0..<32).map { head in Float((head * part) % 7) }
        let sums: [Float] = (0..<32).map { head in Float(head + part + 1) }
        parts.append(AttentionPartial(heads: 32, headDim: 128, output: output, maxima: maxima, sums: sums))
    }
    Benchmark("merge 16 partials of 32 heads x 128") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(AttentionPartial.merge(parts)) }
    }
}
