import ArgumentParser
import TierKV
import TierKVAccelerator

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure TierKV's data paths.",
        subcommands: [BenchStorageCommand.self, BenchTransferCommand.self, BenchAttentionCommand.self]
    )
}

struct BenchTransferCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transfer",
        abstract: "Host↔accelerator copy bandwidth from the NUMA host arena, per block size.",
        discussion: """
            Each block size runs two ways on one stream, interleaved pass by pass: one async copy call per block, and \
            --copies-per-batch blocks per submission (cuMemcpyBatchAsync where the driver has it, CUDA 12.8 and later; \
            the output names which). Device slots are a permutation of the host slots, so no copies can be merged. \
            Timed with device events (CUDA) or the modelled clock (emulated).
            """
    )

    @Option(help: "Backend: auto (CUDA if present, else emulated, and says so), cuda, emulated.")
    var device: AcceleratorChoice = .auto

    @Option(help: "CUDA device ordinal.")
    var ordinal: Int = 0

    @Option(parsing: .upToNextOption, help: "Block sizes (default 64KiB 256KiB 1MiB 2MiB 8MiB).")
    var blockSize: [String] = ["64KiB", "256KiB", "1MiB", "2MiB", "8MiB"]

    @Option(help: "Bytes copied per pass (default 1GiB on CUDA, 256MiB emulated).")
    var total: String?

    @Option(help: "Timed passes per direction and size (median reported).")
    var passes: Int = 5

    @Option(help: "Blocks per submission in the batched passes.")
    var copiesPerBatch: Int = 64

    @Option(help: "NUMA node for the host arena (default: the device's node).")
    var numaNode: Int?

    @Flag(help: "Do not mlock the host arena.")
    var noLock = false

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        let accelerator = try device.open(ordinal: ordinal)
        let description = accelerator.deviceDescription
        let sizes = try blockSize.map { try parseByteCount($0, option: "--block-size") }
        let totalBytes = try total.map { try parseByteCount($0, option: "--total") } ?? (description.isEmulated ? 256 << 20 : 1 << 30)
        let node = numaNode ?? NUMATopology.current().nearestNode(acceleratorPCIBusID: description.pciBusID, cacheDirectory: nil)
        Output.printError("bench transfer on \(description.displayName), \(ByteCount(UInt64(totalBytes))) per pass, arena on NUMA node \(node.map(String.init) ?? "any")")
        let benchmark = TransferBenchmark(
            accelerator: accelerator, totalByteCount: totalBytes, blockByteCounts: sizes, passes: passes, numaNode: node,
            locksMemory: !noLock, copiesPerBatch: copiesPerBatch)
        let results: [TransferBenchmark.Result]
        let submission: String
        do {
            submission = try benchmark.batchSubmission()
            Output.printError("batched passes: \(copiesPerBatch) blocks per submission, \(submission)")
            results = try benchmark.run(progress: { Output.printError("  " + $0) })
        } catch { throw CommandFailure(error) }
        let best = results.max(by: { $0.blockByteCount < $1.blockByteCount })!
        if json {
            Output.printJSON(.object([
                ("device", .string(description.name)), ("emulated", .bool(description.isEmulated)),
                ("block_size", .int(best.blockByteCount)), ("h2d_gb_per_s", .number(best.hostToDeviceGBPerSecond)),
                ("d2h_gb_per_s", .number(best.deviceToHostGBPerSecond)), ("total_bytes", .int(best.totalByteCount)),
                ("numa_node", node.map { .int($0) } ?? .null), ("passes", .int(passes)),
                ("batch_submission", .string(submission)), ("copies_per_batch", .int(copiesPerBatch)),
                ("results", .array(results.map { result in
                    .object([
                        ("block_size", .int(result.blockByteCount)), ("h2d_gb_per_s", .number(result.hostToDeviceGBPerSecond)),
                        ("d2h_gb_per_s", .number(result.deviceToHostGBPerSecond)),
                        ("h2d_batched_gb_per_s", .number(result.hostToDeviceBatchedGBPerSecond)),
                        ("d2h_batched_gb_per_s", .number(result.deviceToHostBatchedGBPerSecond)),
                    ])
                })),
            ]))
        } else {
            print("device: \(description.displayName)")
            print("batched: \(copiesPerBatch) blocks per submission, \(submission)")
            print("block size    h2d GB/s   batched    d2h GB/s   batched")
            for result in results {
                let size = ByteCount(UInt64(result.blockByteCount)).description
                let columns = [
                    result.hostToDeviceGBPerSecond, result.hostToDeviceBatchedGBPerSecond, result.deviceToHostGBPerSecond,
                    result.deviceToHostBatchedGBPerSecond,
                ].map { TransferBenchmark.formatted($0).padding(9) }
                print(size.padding(12) + "  " + columns.joined(separator: "  "))
            }
        }
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

extension TransferBenchmark {
    static func formatted(_ value: Double) -> String { String((value * 100).rounded() / 100) }
}
