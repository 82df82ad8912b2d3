import Testing
import TierKV
@testable import TierKVSimulator

@Suite struct TierKVTraceTests {
    static let header = #"{"format": "tierkv-trace", "version": 1, "model": "test", "layers": 4, "kv_heads": 1, "head_dim": 2, "tokens_per_block": 16, "context_tokens": 256, "decode_steps": 20, "sink_tokens": 4}"#

    /// Per step: half the mass on the sink block, 0.3 on the newest (partial) block, 0.2 on a
    /// block that moves (3...12) — what a recorded model's attention might look like.
    static func stepLines(steps: Int = 20, layers: Int = 4) -> [String] {
        var lines: [String] = []
        for step in 0..<steps {
            let position = 256 + step
            let blocks = (position + 1 + 15) / 16
            for layer in 0..<layers {
                var mass = [Double](repeating: 0, count: blocks)
                mass[0] = 0.5
                mass[blocks - 1] += 0.3
                mass[step % 10 + 3] += 0.2
                let query = layer == 0 ? #", "query": [[0.5, -1.0]]"# : ""
                lines.append(#"{"type": "step", "step": \#(step), "layer": \#(layer), "position": \#(position), "mass": \#(mass)\#(query)}"#)
            }
            if (position + 1) % 16 == 0 {
                lines.append(#"{"type": "block", "layer": 0, "block": \#((position + 1) / 16 - 1), "key_min": [[0, 0]], "key_max": [[1, 1]], "key_mean": [[0.5, 0.5]]}"#)
            }
        }
        return lines
    }

    @Test func replaysRecordedAttentionThroughTheHierarchy() throws {
        let trace = try TierKVTrace(parsing: ([Self.header] + Self.stepLines()).joined(separator: "\n"), source: "t.jsonl")
        #expect(trace.header.layers == 4 && trace.decodeSteps == 20 && trace.blockSummaryCount == 1)
        #expect(trace.queries[0][0] == [[0.5, -1.0]] && trace.queries[0][1] == nil)
        var configuration = DecodeSimulationTests.configuration()
        configuration.hotFraction = 0.05
        let result = try DecodeSimulation.run(configuration, trace: trace)
        #expect(result.workload == "trace:tierkv")
        #expect(result.parameters.contextTokens == 256 && result.parameters.decodeSteps == 20)
        // Each layer needs the sink, the moving block and the newest stored block.
        #expect(result.timeline.allSatisfy { $0.neededBlocks == 12 })
        #expect(result.blockAccesses == 20 * 12)
        #expect(result.oracleHotHitRate >= result.hotHitRate)
        // A second run replays from the start.
        let again = try DecodeSimulation.run(configuration, trace: trace)
        #expect(again.timeline == result.timeline)
    }

    @Test func aModelWithOtherLayersIsRefused() throws {
        let trace = try TierKVTrace(parsing: ([Self.header] + Self.stepLines()).joined(separator: "\n"))
        var configuration = DecodeSimulationConfiguration()
        configuration.model = .llama3_1_8B
        let error = failure { _ = try DecodeSimulation.run(configuration, trace: trace) }
        #expect(error?.message.contains("4 layers") == true)
    }

    @Test func malformedTracesAreRefusedWithTheLineAndReason() {
        let good = Self.stepLines()
        let cases: [([String], String)] = [
            ([], "empty trace"),
            ([#"{"format": "other"}"#] + good, "t.jsonl:1: the first line must be the header"),
            ([Self.header.replacingOccurrences(of: #""version": 1"#, with: #""version": 2"#)] + good, "version 2 is not supported"),
            ([Self.header, "not json"] + good, "t.jsonl:2: not a JSON object"),
            ([Self.header] + [good[1]] + good, "t.jsonl:2: expected step 0 layer 0, found step 0 layer 1"),
            ([Self.header] + [good[0].replacingOccurrences(of: "0.5,", with: "0.5, 0.0,")] + good.dropFirst(), "t.jsonl:2: 'mass' has 18 entries"),
            ([Self.header] + [good[0].replacingOccurrences(of: "0.5,", with: "0.9,")] + good.dropFirst(), "sum to"),
            ([Self.header] + [good[0].replacingOccurrences(of: "0.5,", with: "-0.5,")] + good.dropFirst(), "non-negative"),
            ([Self.header] + [good[0].replacingOccurrences(of: #""position": 256"#, with: #""position": 9"#)] + good.dropFirst(), "position 9"),
            ([Self.header] + [good[0].replacingOccurrences(of: "[[0.5, -1.0]]", with: "[[0.5]]")] + good.dropFirst(), "'query' must be 1 rows"),
            ([Self.header] + good.dropLast(3), "truncated"),
            ([Self.header, #"{"type": "weights"}"#] + good, "unknown line type 'weights'"),
        ]
        for (lines, needle) in cases {
            let error = failure { _ = try TierKVTrace(parsing: lines.joined(separator: "\n"), source: "t.jsonl") }
            #expect(error?.message.contains(needle) == true, "expected '\(needle)', got \(error?.message ?? "no error")")
        }
    }
}
