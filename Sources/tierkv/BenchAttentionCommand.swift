import ArgumentParser
import TierKV

struct BenchAttentionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "CPU decode attention over a paged KV cache in the NUMA arena, against the memory's read bandwidth.",
        discussion: """
            Reports GB/s of K and V read by the kernel and, in the same run, by a STREAM-like read \
            kernel on the same threads over the same memory; ratio_to_memory is their quotient. \
            tokens_per_s counts KV tokens attended per second for one layer.
            """
    )

    @Option(help: "Context tokens per sequence.")
    var context: Int = 131_072
    @Option(help: "Query heads.")
    var heads: Int = 32
    @Option(help: "KV heads.")
    var kvHeads: Int = 8
    @Option(help: "Head dimension (64, 80, 96, 128, 256).")
    var headDim: Int = 128
    @Option(help: "K/V dtype: fp16, bf16, fp32.")
    var dtype: String = "fp16"
    @Option(help: "Worker threads (default: every online CPU).")
    var threads: Int?
    @Option(help: "Sequences decoded together.")
    var batch: Int = 1
    @Option(help: "Tokens per KV block.")
    var tokensPerBlock: Int = 16
    @Option(help: "Timed iterations (median reported).")
    var iterations: Int = 5
    @Option(help: "NUMA node for the KV arena; the worker threads then run on that node's CPUs (default: no binding).")
    var numaNode: Int?
    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    private func measure() throws(TierKVError) -> (AttentionShape, AttentionBenchmark.Result) {
        let shape = try AttentionShape(queryHeads: heads, kvHeads: kvHeads, headDim: headDim, dtype: try DType(parsing: dtype))
        let threadCount = threads ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        Output.printError("bench attention: context \(context), batch \(batch), \(heads)q/\(kvHeads)kv heads, dim \(headDim), \(shape.dtype), \(threadCount) threads")
        let result = try AttentionBenchmark(
            shape: shape, contextTokens: context, batch: batch, threads: threadCount, tokensPerBlock: tokensPerBlock,
            iterations: iterations, numaNode: numaNode
        ).run(progress: { Output.printError("  " + $0) })
        return (shape, result)
    }

    func run() throws {
        let shape: AttentionShape
        let result: AttentionBenchmark.Result
        do { (shape, result) = try measure() } catch { throw CommandFailure(error) }
        if json {
            Output.printJSON(.object([
                ("context", .int(context)), ("heads", .int(heads)), ("kv_heads", .int(kvHeads)), ("head_dim", .int(headDim)),
                ("dtype", .string(shape.dtype.rawValue)), ("batch", .int(batch)), ("threads", .int(result.threads)),
                ("numa_node", numaNode.map { .int($0) } ?? .null),
                ("kv_bytes", .int(result.kvByteCount)),
                ("gb_per_s", .number(result.attentionGBPerSecond)), ("memory_gb_per_s", .number(result.memoryGBPerSecond)),
                ("ratio_to_memory", .number(result.ratioToMemory)), ("tokens_per_s", .number(result.tokensPerSecond)),
                ("decode_steps_per_s", .number(result.decodeStepsPerSecond)), ("attention_ms", .number(result.attentionSeconds * 1000)),
                ("key_summary_gb_per_s", .number(result.summaryGBPerSecond)),
                ("key_summary_ratio_to_memory", .number(result.summaryGBPerSecond / result.memoryGBPerSecond)),
                ("key_summary_contiguous_gb_per_s", .number(result.contiguousSummaryGBPerSecond)),
                ("key_summary_contiguous_ratio_to_memory", .number(result.contiguousSummaryGBPerSecond / result.memoryGBPerSecond)),
                ("key_summary_fp32_gb_per_s", .number(result.fp32SummaryGBPerSecond)),
                ("key_summary_fp32_ratio_to_memory", .number(result.fp32SummaryGBPerSecond / result.memoryGBPerSecond)),
                ("key_read_gb_per_s", .number(result.keyReadGBPerSecond)),
                ("key_summary_ratio_to_key_read", .number(result.summaryGBPerSecond / result.keyReadGBPerSecond)),
            ]))
        } else {
            Output.printTable(nil, [
                ("KV scanned", ByteCount(UInt64(result.kvByteCount)).description),
                ("attention", "\(Self.format(result.attentionGBPerSecond)) GB/s (\(Self.format(result.attentionSeconds * 1000)) ms per step)"),
                ("memory read (same threads)", "\(Self.format(result.memoryGBPerSecond)) GB/s"),
                ("ratio to memory", Self.format(result.ratioToMemory)),
                ("KV tokens/s (one layer)", Self.format(result.tokensPerSecond)),
                ("key summaries (paged)", "\(Self.format(result.summaryGBPerSecond)) GB/s of K (\(Self.format(result.summaryGBPerSecond / result.memoryGBPerSecond)) of memory)"),
                ("key summaries (contiguous K)", "\(Self.format(result.contiguousSummaryGBPerSecond)) GB/s (\(Self.format(result.contiguousSummaryGBPerSecond / result.memoryGBPerSecond)) of memory)"),
                ("key summaries (paged, fp32 out)", "\(Self.format(result.fp32SummaryGBPerSecond)) GB/s (\(Self.format(result.fp32SummaryGBPerSecond / result.memoryGBPerSecond)) of memory)"),
                ("reading the paged keys alone", "\(Self.format(result.keyReadGBPerSecond)) GB/s (summaries at \(Self.format(result.summaryGBPerSecond / result.keyReadGBPerSecond)) of it)"),
                ("threads", "\(result.threads)"),
            ])
        }
    }

    static func format(_ value: Double) -> String { String((value * 1000).rounded() / 1000) }
}

#if canImport(Glibc)
import Glibc
#endif
