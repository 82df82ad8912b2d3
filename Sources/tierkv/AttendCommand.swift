import ArgumentParser
import TierKV

struct AttendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attend",
        abstract: "Run TierKV's CPU decode-attention kernel on NumPy .npy files.",
        discussion: """
            Q: [heads, dim] or [batch, heads, dim]; K and V: [tokens, kvHeads, dim] or \
            [batch, tokens, kvHeads, dim]; float16 or float32. Writes O (float32, Q's shape) and, with \
            --lse, the natural-log log-sum-exp per head, so results can be merged with other partials.
            """
    )

    @Option(help: "Query .npy file.")
    var q: String
    @Option(help: "Keys .npy file.")
    var k: String
    @Option(help: "Values .npy file.")
    var v: String
    @Option(help: "Output .npy file (float32).")
    var out: String
    @Option(help: "Also write the log-sum-exp per head (float32 .npy).")
    var lse: String?
    @Option(help: "Softmax scale (default 1/sqrt(headDim)).")
    var scale: Float?
    @Option(help: "Worker threads (default: every online CPU).")
    var threads: Int?
    @Flag(help: "Print one JSON object (shapes and timing) on stdout.")
    var json = false

    private func execute() throws(TierKVError) -> (NumpyAttention.Result, Double) {
        let query = try NumpyArray.read(q)
        let keys = try NumpyArray.read(k)
        let values = try NumpyArray.read(v)
        let attention = try CPUAttention(threadCount: threads)
        let start = AttentionBenchmark.monotonicSeconds()
        let result = try NumpyAttention.attend(
            query: query, keys: keys, values: values, scale: scale, attention: attention, names: (q, k, v))
        let seconds = AttentionBenchmark.monotonicSeconds() - start
        try result.output.write(to: out)
        if let lse { try result.logSumExp.write(to: lse) }
        return (result, seconds)
    }

    func run() throws {
        let result: NumpyAttention.Result
        let seconds: Double
        do { (result, seconds) = try execute() } catch { throw CommandFailure(error) }
        if json {
            Output.printJSON(.object([
                ("output", .string(out)), ("output_shape", .array(result.output.shape.map { .int($0) })),
                ("lse", .optional(lse)), ("seconds", .number(seconds)),
            ]))
        } else {
            Output.printError("wrote \(out) \(result.output.shape)\(lse.map { " and \($0)" } ?? "") in \(String((seconds * 1e5).rounded() / 100)) ms")
        }
    }
}
