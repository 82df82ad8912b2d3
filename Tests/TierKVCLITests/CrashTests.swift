import Foundation
import Testing
import TierKV
import TierKVTestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct CrashTests {
    /// A child writes blocks continuously (`bench storage --rw randwrite`, logging every block it
    /// was told is durable) and is killed with SIGKILL at a random moment, three times on the same
    /// directory. After each kill, a reopen must serve every acknowledged block byte for byte, and
    /// no slot may return wrong data (a torn, unacknowledged write is at worst a counted corruption).
    @Test func acknowledgedBlocksSurviveSIGKILL() throws {
        let directory = try TemporaryDirectory()
        let cache = directory.path + "/cache"
        let blockBytes = 64 << 10
        let geometry = BlockFile.Geometry(slotByteCount: blockBytes, slotCount: 1024)
        var generator = SeededGenerator(seed: 2026)
        for round in 0..<3 {
            let log = directory.path + "/acks-\(round)"
            let process = Process()
            process.executableURL = CLI.binary
            process.arguments = [
                "bench", "storage", "--dir", cache, "--size", "64MiB", "--block-size", "64KiB", "--queue-depth", "8",
                "--rw", "randwrite", "--seconds", "60", "--ack-log", log,
            ]
            let errors = Pipe()
            process.standardError = errors
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            // Wait until the child has acknowledged something, then a random 50-500 ms more.
            var waited = 0
            while (try? String(contentsOfFile: log, encoding: .utf8))?.isEmpty ?? true, waited < 30_000 {
                usleep(10_000)
                waited += 10
            }
            usleep(UInt32(50_000 + generator.next() % 450_000))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            let childErrors = String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self)
            try #require(process.terminationReason == .uncaughtSignal, "round \(round): the child exited by itself: \(childErrors)")
            try verify(cache: cache, geometry: geometry, acknowledgedLog: log, round: round)
        }
    }

    /// Reopens the cache (and closes it again before returning, releasing its lock).
    func verify(cache: String, geometry: BlockFile.Geometry, acknowledgedLog log: String, round: Int) throws {
        do {

            let acknowledged = Set(try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").compactMap { Int($0) })
            try #require(!acknowledged.isEmpty, "round \(round): no block was acknowledged")
            let store = try BlockStore(directory: cache, geometry: geometry)
            let payload = store.payloadCapacity
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: geometry.slotByteCount, alignment: 4096)
            let expected = UnsafeMutableRawPointer.allocate(byteCount: payload, alignment: 64)
            defer { buffer.deallocate(); expected.deallocate() }
            for index in acknowledged.sorted() {
                let result = store.read([(key: StorageBenchmark.key(index), buffer: buffer)])[0]
                #expect(result == .hit(payloadByteCount: payload), "round \(round): acknowledged block \(index) gave \(result)")
                StorageBenchmark.fillPayload(expected, byteCount: payload, index: index)
                #expect(memcmp(buffer + ColdSlotHeader.byteCount, expected, payload) == 0, "round \(round): block \(index) differs")
            }
            // Every other indexed block either verifies and matches its content, or is reported corrupt.
            for key in store.keys {
                let index = Int(key.prefixHash.low)
                let result = store.read([(key: key, buffer: buffer)])[0]
                if case .hit = result {
                    StorageBenchmark.fillPayload(expected, byteCount: payload, index: index)
                    #expect(memcmp(buffer + ColdSlotHeader.byteCount, expected, payload) == 0, "round \(round): block \(index) served wrong data")
                }
            }
        }
    }
}

/// `bench storage` on a filesystem without O_DIRECT: a clear error, or with `--fallback-buffered`
/// an explicit buffered run that says so (never silent).
@Suite(.serialized) struct BenchStorageFallbackTests {
    @Test(.enabled(if: geteuid() == 0, "needs root to mount a ramfs"))
    func withoutODirectTheBenchFailsOrFallsBackOnlyWhenAsked() throws {
        let directory = try TemporaryDirectory()
        let mountPoint = directory.path + "/ram"
        mkdir(mountPoint, 0o700)
        func shell(_ command: String) throws -> Int32 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", command]
            try process.run()
            process.waitUntilExit()
            return process.terminationStatus
        }
        #expect(try shell("mount -t ramfs ramfs \(mountPoint)") == 0)
        defer { _ = try? shell("umount \(mountPoint)") }
        let arguments = ["bench", "storage", "--dir", mountPoint + "/cache", "--size", "4MiB", "--block-size", "64KiB",
                         "--queue-depth", "4", "--rw", "write", "--seconds", "0.2"]
        let refused = try CLI.run(arguments)
        #expect(refused.status != 0 && refused.stderr.contains("does not support O_DIRECT") && refused.stderr.contains("--fallback-buffered"), "\(refused.stderr)")
        let buffered = try CLI.run(arguments + ["--fallback-buffered", "--json"])
        #expect(buffered.status == 0, "\(buffered.stderr)")
        #expect(buffered.stdout.contains("\"o_direct\": false") || buffered.stdout.contains("\"o_direct\":false"), "\(buffered.stdout)")
        #expect(buffered.stderr.contains("opened buffered (--fallback-buffered)"))
    }
}
