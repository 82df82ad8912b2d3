import ArgumentParser
import TierKV

#if canImport(Glibc)
import Glibc
#endif

struct BenchStorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "Cold-tier throughput through the real block store: real blocks with headers and checksums.",
        discussion: """
            A write run leaves a valid cache directory (even if killed) that `tierkv store fsck` checks. \
            --queue-depth I/Os stay in flight; writes are flushed and acknowledged in groups of \
            --queue-depth. Latency is submit-to-acknowledge (writes) or submit-to-verified (reads).
            """
    )

    @Option(help: "Cache directory (created if missing).")
    var dir: String
    @Option(help: "Size of the block file (e.g. 1GiB).")
    var size: String = "1GiB"
    @Option(help: "Slot size: header + payload, a multiple of 4 KiB (e.g. 128KiB).")
    var blockSize: String = "128KiB"
    @Option(help: "Blocks in flight per batch.")
    var queueDepth: Int = 32
    @Option(help: "read, write, randread or randwrite.")
    var rw: String = "randread"
    @Option(help: "Measured seconds.")
    var seconds: Double = 10
    @Flag(help: "Do not fdatasync after each write batch (raw device path, not durable acknowledgement).")
    var noSync = false
    @Option(help: "Append the index of every acknowledged block to this file (used by the crash test).")
    var ackLog: String?
    @Flag(help: "Where the filesystem refuses O_DIRECT (tmpfs), open the block file buffered and say so (JSON o_direct false) instead of failing. Buffered figures measure the page cache, not the device.")
    var fallbackBuffered = false
    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        guard let mode = StorageBenchmark.Mode(rawValue: rw) else {
            throw CommandFailure("--rw \(rw) is not one of read, write, randread, randwrite")
        }
        let fileBytes = try parseByteCount(size, option: "--size")
        let blockBytes = try parseByteCount(blockSize, option: "--block-size")
        let log = AcknowledgementLog(path: ackLog)
        let benchmark = StorageBenchmark(
            directory: dir, fileByteCount: fileBytes, blockByteCount: blockBytes, queueDepth: queueDepth, mode: mode,
            seconds: seconds, syncsWrites: !noSync, allowsBufferedFallback: fallbackBuffered, onAcknowledged: { log.append($0) })
        Output.printError("bench storage: \(mode.rawValue), \(ByteCount(UInt64(blockBytes))) blocks, QD \(queueDepth), \(ByteCount(UInt64(fileBytes))) in \(dir)")
        let result: StorageBenchmark.Result
        do {
            result = try benchmark.run(progress: { Output.printError("  " + $0) })
        } catch {
            var failure = error
            if error.code == .unsupported, error.message.contains("O_DIRECT"), !fallbackBuffered {
                failure.message += " (here: --fallback-buffered)"
            }
            throw CommandFailure(failure)
        }
        if !result.isDirect {
            Output.printError("note: \(dir) does not support O_DIRECT; the block file was opened buffered (--fallback-buffered): these figures measure the page cache, not the device")
        }
        if json {
            Output.printJSON(result.json)
        } else {
            Output.printTable(nil, [
                ("rw", result.mode.rawValue), ("block size", ByteCount(UInt64(result.blockByteCount)).description),
                ("queue depth", "\(result.queueDepth)"), ("MiB/s", String(Int(result.mibPerSecond))), ("IOPS", String(Int(result.iops))),
                ("latency p50/p99/p99.9 µs", "\(Int(result.latencyMicroseconds.p50)) / \(Int(result.latencyMicroseconds.p99)) / \(Int(result.latencyMicroseconds.p999))"),
            ])
        }
    }
}

/// Appends acknowledged block indices, one per line, to a file (no buffering in this process:
/// a SIGKILL loses nothing already appended).
final class AcknowledgementLog: Sendable {
    let descriptor: Int32

    init(path: String?) {
        descriptor = path.map { open($0, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600) } ?? -1
    }

    func append(_ indices: [Int]) {
        guard descriptor >= 0 else { return }
        var text = indices.map(String.init).joined(separator: "\n") + "\n"
        _ = text.withUTF8 { write(descriptor, $0.baseAddress, $0.count) }
    }

    deinit { if descriptor >= 0 { close(descriptor) } }
}
