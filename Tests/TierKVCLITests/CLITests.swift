import Foundation
import Testing
import TierKV
import TierKVCore
import TierKVTestSupport

/// Runs the built `tierkv` binary (it sits beside the test bundle in the build directory).
enum CLI {
    static var binary: URL {
        let buildDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        return buildDirectory.appendingPathComponent("tierkv")
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func run(_ arguments: [String]) throws -> Result {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr, as: UTF8.self))
    }

    static func json(_ arguments: [String]) throws -> [String: Any] {
        let result = try run(arguments)
        try #require(result.status == 0, "tierkv \(arguments) failed: \(result.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
        return try #require(object as? [String: Any], "stdout is not one JSON object")
    }
}

@Suite(.serialized) struct CLITests {
    @Test func binaryIsBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: CLI.binary.path), "expected \(CLI.binary.path); run `swift build` first")
    }

    @Test func sameTokensHashIdenticallyInTwoProcessesAndInProcess() throws {
        let tokens = (0..<100).map { String(($0 &* 7919) % 128_256) }.joined(separator: ",")
        let arguments = ["hash", "--namespace", "tenant-x", "--tokens-per-block", "16", "--tokens", tokens, "--json"]
        let first = try CLI.json(arguments)
        let second = try CLI.json(arguments)
        let firstHashes = try #require(first["block_hashes"] as? [String])
        #expect(firstHashes.count == 6)
        #expect(firstHashes == second["block_hashes"] as? [String])
        let inProcess = try PrefixHasher(namespace: "tenant-x", tokensPerBlock: 16)
            .blockHashes((0..<100).map { UInt32(($0 &* 7919) % 128_256) }).map(\.description)
        #expect(firstHashes == inProcess)
        let otherTenant = try CLI.json(["hash", "--namespace", "tenant-y", "--tokens", tokens, "--json"])
        #expect((otherTenant["block_hashes"] as? [String])?.first != firstHashes.first)
    }

    @Test func hashRejectsBadTokensWithAMessage() throws {
        let result = try CLI.run(["hash", "--tokens", "1,2,banana"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("banana"))
    }

    @Test func doctorJSONHasTheContractFields() throws {
        let report = try CLI.json(["doctor", "--json", "--cache-dir", NSTemporaryDirectory()])
        let ioRing = try #require(report["io_uring"] as? [String: Any])
        #expect(ioRing["supported"] is Bool)
        let numa = try #require(report["numa"] as? [String: Any])
        #expect((numa["nodes"] as? Int).map { $0 >= 1 } == true)
        let cuda = try #require(report["cuda"] as? [String: Any])
        #expect(cuda["available"] is Bool)
        let cpu = try #require(report["cpu"] as? [String: Any])
        #expect(cpu["f16c"] is Bool)
        #expect(report.keys.contains("memlock_bytes"))
        let direct = try #require(report["o_direct"] as? [String: Any])
        #expect(direct["supported"] is Bool)
    }

    @Test func doctorRejectsAMissingCacheDirectory() throws {
        let result = try CLI.run(["doctor", "--cache-dir", "/nonexistent-tierkv"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("/nonexistent-tierkv"))
    }

    @Test func doctorHumanOutputNamesEverySection() throws {
        let result = try CLI.run(["doctor"])
        #expect(result.status == 0)
        for section in ["CPU", "io_uring", "O_DIRECT", "NUMA", "Huge pages", "Memory locking", "CUDA"] {
            #expect(result.stdout.contains(section))
        }
    }
}

@Suite(.serialized) struct AttendAndBenchCLITests {
    @Test func attendWritesOutputAndExplainsBadShapes() throws {
        let directory = try TemporaryDirectory()
        func save(_ name: String, _ shape: [Int], seed: UInt64) throws {
            var generator = SeededGenerator(seed: seed)
            let count = shape.reduce(1, *)
            try NumpyFile.write(directory.path + "/\(name).npy", shape: shape, values: (0..<count).map { _ in generator.normal() })
        }
        try save("q", [8, 64], seed: 1)
        try save("k", [40, 2, 64], seed: 2)
        try save("v", [40, 2, 64], seed: 3)
        try save("bad", [40, 3, 64], seed: 4)
        let ok = try CLI.run(["attend", "--q", directory.path + "/q.npy", "--k", directory.path + "/k.npy", "--v", directory.path + "/v.npy",
                              "--out", directory.path + "/o.npy", "--lse", directory.path + "/lse.npy", "--json"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(FileManager.default.fileExists(atPath: directory.path + "/o.npy"))
        let bad = try CLI.run(["attend", "--q", directory.path + "/q.npy", "--k", directory.path + "/k.npy", "--v", directory.path + "/bad.npy",
                               "--out", directory.path + "/o2.npy"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("bad.npy"))
        #expect(bad.stderr.contains("[40, 3, 64]"))
    }

    @Test func benchTransferOnTheEmulatedDeviceSaysSo() throws {
        let report = try CLI.json(["bench", "transfer", "--device", "emulated", "--total", "8MiB", "--passes", "1", "--block-size", "64KiB", "1MiB", "--json"])
        #expect(report["emulated"] as? Bool == true)
        #expect((report["h2d_gb_per_s"] as? Double).map { $0 > 0 } == true)
        #expect((report["results"] as? [Any])?.count == 2)
        #expect(report["batch_submission"] as? String == "one call per copy")
        let rows = report["results"] as? [[String: Any]] ?? []
        #expect(rows.allSatisfy { ($0["h2d_batched_gb_per_s"] as? Double).map { $0 > 0 } == true })
    }

    @Test func benchAttentionReportsTheContractFields() throws {
        let report = try CLI.json(["bench", "attention", "--context", "4096", "--heads", "8", "--kv-heads", "2", "--iterations", "1", "--json"])
        for field in [
            "gb_per_s", "memory_gb_per_s", "ratio_to_memory", "tokens_per_s", "threads",
            "key_summary_gb_per_s", "key_summary_ratio_to_memory", "key_read_gb_per_s", "key_summary_ratio_to_key_read",
        ] {
            #expect(report[field] != nil, "missing \(field)")
        }
        #expect(report["numa_node"] is NSNull)
        // Bound to node 0 (every Linux machine has it): the arena there, the workers on its CPUs.
        let bound = try CLI.json(["bench", "attention", "--context", "1024", "--heads", "8", "--kv-heads", "2", "--iterations", "1", "--numa-node", "0", "--json"])
        #expect(bound["numa_node"] as? Int == 0)
        let missing = try CLI.run(["bench", "attention", "--context", "1024", "--iterations", "1", "--numa-node", "99"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("NUMA node 99 does not exist"), "\(missing.stderr)")
    }
}

/// Writes a float32 .npy file (version 1.0) for CLI tests.
enum NumpyFile {
    static func write(_ path: String, shape: [Int], values: [Float]) throws {
        let shapeText = "(" + shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? ",)" : ")")
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shapeText), }"
        header += String(repeating: " ", count: (64 - (10 + header.utf8.count + 1) % 64) % 64) + "\n"
        var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)])
        data.append(contentsOf: Array(header.utf8))
        values.withUnsafeBytes { data.append(contentsOf: $0) }
        try data.write(to: URL(fileURLWithPath: path))
    }
}

@Suite struct StoreFsckCLITests {
    /// `tierkv store fsck` checks the blocks and, beside them, the key-summary files a reopen
    /// would restore from; a summary problem is reported without failing the check.
    @Test func fsckReportsBlocksAndKeySummaries() throws {
        let directory = try TemporaryDirectory()
        let cache = directory.path + "/cache"
        let layout = try KVLayout(layers: 1, kvHeads: 1, queryHeads: 2, headDim: 64, tokensPerBlock: 16, dtype: .fp16)
        var configuration = HierarchyConfiguration(
            layout: layout, hotCapacityBlocks: 2, warmCapacityBlocks: 3, coldCapacityBlocks: 16, cacheDirectory: cache,
            accelerator: .emulated(.instant))
        configuration.coldAdmission = .always
        configuration.keySummaries = .fromStoredKeys
        let hierarchy = try Hierarchy(configuration)
        var generator = SeededGenerator(seed: 7)
        for index in 0..<6 {
            let key = BlockKey(prefixHash: PrefixHash(high: 0, low: UInt64(index) + 1), layer: 0)
            let bytes = (0..<layout.blockByteCount / 2).flatMap { _ -> [UInt8] in
                let bits = Float16(generator.normal()).bitPattern
                return [UInt8(truncatingIfNeeded: bits), UInt8(bits >> 8)]
            }
            _ = try bytes.withUnsafeBytes { try hierarchy.store(key, position: index, bytes: $0, sequence: nil) }
        }
        try hierarchy.close(flushing: true)

        let report = try CLI.json(["store", "fsck", cache, "--json"])
        #expect(report["recovered"] as? Int == 6 && report["corrupt"] as? Int == 0)
        let summaries = try #require(report["key_summaries"] as? [String: Any])
        #expect(summaries["cold_blocks"] as? Int == 6 && summaries["covered"] as? Int == 6 && summaries["not_covered"] as? Int == 0)
        let snapshot = try #require(summaries["snapshot"] as? [String: Any])
        #expect(snapshot["current"] as? Int == 6 && snapshot["present"] as? Bool == true && snapshot["problem"] is NSNull)

        // A snapshot cut short: named, the blocks still check clean, the exit status stays 0.
        let path = cache + "/summaries.tkv"
        let bytes = try BinaryFile.read(path)
        try BinaryFile.write(Array(bytes.dropLast(8)), to: path)
        let human = try CLI.run(["store", "fsck", cache])
        #expect(human.status == 0, "\(human.stderr)")
        #expect(human.stdout.contains("cold blocks summarised") && human.stdout.contains("6 of 6"))
        #expect(human.stderr.contains("summaries.tkv ends after 6 entries, before its end record"))
    }
}
