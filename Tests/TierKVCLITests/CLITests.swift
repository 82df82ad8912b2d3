import Foundation
import Testing
import TierKVCore

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
