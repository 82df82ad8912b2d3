import Foundation
import Testing
import TierKVTestSupport

@Suite struct SimulateCommandTests {
    @Test func traceReplayReportsPolicyAndOracleAndSweeps() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/trace.jsonl"
        // Two conversations that keep re-sending their growing prefix, plus one-off requests.
        var lines: [String] = []
        for turn in 1...6 {
            lines.append("{\"timestamp\": \(turn), \"input_length\": \(512 * turn), \"output_length\": 10, \"hash_ids\": \(Array(0..<turn))}")
            lines.append("{\"timestamp\": \(turn), \"input_length\": 1024, \"output_length\": 10, \"hash_ids\": [\(1000 + 2 * turn), \(1001 + 2 * turn)]}")
            lines.append("{\"timestamp\": \(turn), \"input_length\": \(512 * turn), \"output_length\": 10, \"hash_ids\": \(Array(100..<(100 + turn)))}")
        }
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let report = try CLI.json(["simulate", "--trace", path, "--capacity-blocks", "8", "--json"])
        #expect(report["workload"] as? String == "trace:mooncake")
        #expect(report["policy"] as? String == "lru")
        let rate = try #require(report["prefix_hit_rate"] as? Double)
        let oracle = try #require(report["oracle_hit_rate"] as? Double)
        #expect(rate > 0 && oracle >= rate)
        let sweep = try CLI.json(["simulate", "--trace", path, "--sweep", "capacity=2,8,64", "--json"])
        let runs = try #require(sweep["runs"] as? [[String: Any]])
        let rates = runs.compactMap { $0["prefix_hit_rate"] as? Double }
        #expect(rates.count == 3 && rates == rates.sorted())
        // With room for every block, every re-sent block hits: 15 + 15 of 21 + 21 + 12 accesses.
        #expect(abs(rates[2] - 30.0 / 54.0) < 1e-9)
    }

    @Test func badInputIsRefusedWithTheReason() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/bad.jsonl"
        try "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n{\"timestamp\": 0}".write(toFile: path, atomically: true, encoding: .utf8)
        let bad = try CLI.run(["simulate", "--trace", path, "--capacity-blocks", "4"])
        #expect(bad.status != 0 && bad.stderr.contains("bad.jsonl:2"))
        let policy = try CLI.run(["simulate", "--trace", path, "--capacity-blocks", "4", "--policy", "mru"])
        #expect(policy.status != 0 && policy.stderr.contains("mru"))
        let noWorkload = try CLI.run(["simulate"])
        #expect(noWorkload.status != 0 && noWorkload.stderr.contains("not built yet"))
    }
}
