import Foundation
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

    /// Base64 of fp16 values, as the recorder writes keys.
    static func fp16Base64(_ values: [Float]) -> String {
        values.map { Float16($0) }.withUnsafeBytes { Data($0).base64EncodedString() }
    }

    /// A trace with every query head (2 per KV head), the blocks' keys and each step's tail keys:
    /// what sketch scoring needs. Block b's keys point along dim b % 8; the query of step s
    /// along dim s % 6 + 1 for head 0 (a block that is always a candidate) and dim 0 (the sink)
    /// for head 1, and the attention follows head 0.
    static func sketchTrace(steps: Int = 12) -> String {
        let dims = 8, block = 16, context = 128
        var lines = [#"{"format": "tierkv-trace", "version": 1, "layers": 4, "kv_heads": 1, "query_heads": 2, "head_dim": 8, "tokens_per_block": 16, "context_tokens": 128, "decode_steps": \#(steps), "sink_tokens": 4}"#]
        func keys(ofBlock number: Int) -> [Float] {
            (0..<block).flatMap { token in (0..<dims).map { $0 == number % dims ? 4 + Float(token) / 16 : 0 } }
        }
        func blockLine(layer: Int, number: Int) -> String {
            let rows = keys(ofBlock: number)
            let column = { (dim: Int) in (0..<block).map { rows[$0 * dims + dim] } }
            let low = (0..<dims).map { column($0).min()! }, high = (0..<dims).map { column($0).max()! }
            let mean = (0..<dims).map { column($0).reduce(0, +) / Float(block) }
            return #"{"type": "block", "layer": \#(layer), "block": \#(number), "key_min": [\#(low)], "key_max": [\#(high)], "key_mean": [\#(mean)], "keys_fp16": "\#(fp16Base64(rows))"}"#
        }
        for layer in 0..<4 { for number in 0..<(context / block) { lines.append(blockLine(layer: layer, number: number)) } }
        for step in 0..<steps {
            let position = context + step
            let blocks = position / block + 1
            var mass = [Double](repeating: 0, count: blocks)
            mass[0] = 0.4
            mass[blocks - 1] = 0.2
            mass[step % 6 + 1] += 0.4
            let query0 = (0..<dims).map { $0 == step % 6 + 1 ? Float(1) : 0 }, query1 = (0..<dims).map { $0 == 0 ? Float(1) : 0 }
            let tail = [Float](repeating: 0.5, count: (position % block + 1) * dims)
            for layer in 0..<4 {
                lines.append(#"{"type": "step", "step": \#(step), "layer": \#(layer), "position": \#(position), "mass": \#(mass), "query": [\#(query0), \#(query1)], "tail_keys_fp16": "\#(fp16Base64(tail))"}"#)
            }
        }
        return lines.joined(separator: "\n")
    }

    @Test func readsEveryQueryHeadTheBlocksKeysAndTheTailKeys() throws {
        let trace = try TierKVTrace(parsing: Self.sketchTrace(), source: "s.jsonl")
        #expect(trace.vectorGroupSize == 2 && trace.header.queryHeads == 2 && trace.blockKeysCount == 32)
        let keys = try #require(trace.blockKeys(sequence: 0, layer: 1, block: 3))
        #expect(keys.count == 16 * 8 && keys[3] == 4 && keys[15 * 8 + 3] == 4 + 15.0 / 16 && keys[2] == 0)
        let attention = trace.step()
        #expect(attention.queries?[0][0]?.count == 16)
        // Position 128 starts a block: the tail is that one token.
        #expect(attention.tailKeys?[0][2]?.count == 8)

        // Sketch scoring replays it, with the keys; its exact-query ranking finds the block the
        // attention follows.
        var configuration = DecodeSimulationTests.configuration()
        configuration.hotFraction = 0.2
        configuration.prefetch.kind = .bound
        configuration.prefetch.lookaheadLayers = 1
        configuration.prefetch.scoring = .sketch
        let result = try DecodeSimulation.run(configuration, trace: trace)
        let exact = try #require(result.prefetch?.quality["bound_exact"])
        #expect(exact.recall > 0.9, "\(exact)")
        // The model preset's real shape (8 KV heads of 128) prices the summary and the 2-bit sketch.
        #expect(result.summaryBytesPerBlock == 3 * 8 * 128 * 2 + 8 * 16 * 128 * 2 / 8)
    }

    @Test func sketchTracesWithBadKeysOrHeadsAreRefused() throws {
        let good = Self.sketchTrace().split(separator: "\n").map(String.init)
        let shortKeys = good[1].replacing(#/"keys_fp16": "[^"]*"/#, with: #""keys_fp16": "\#(Self.fp16Base64([1, 2]))""#)
        let cases: [([String], String)] = [
            ([good[0]] + [shortKeys] + good.dropFirst(2), "s.jsonl:2: 'keys_fp16' must be base64 of 256 bytes"),
            ([good[0].replacingOccurrences(of: #""query_heads": 2"#, with: #""query_heads": 3"#)] + good.dropFirst(),
             "'query' must be 3 rows (query_heads)"),
            ([good[0].replacingOccurrences(of: #""kv_heads": 1"#, with: #""kv_heads": 2"#).replacingOccurrences(of: #""query_heads": 2"#, with: #""query_heads": 3"#)]
                + good.dropFirst(), "query_heads 3 is not a multiple of kv_heads 2"),
            ([good[0].replacingOccurrences(of: #""query_heads": 2"#, with: #""query_heads": 1"#)] + good.dropFirst(), "'query' must be 1 rows (kv_heads)"),
        ]
        for (lines, needle) in cases {
            let error = failure { _ = try TierKVTrace(parsing: lines.joined(separator: "\n"), source: "s.jsonl") }
            #expect(error?.message.contains(needle) == true, "expected '\(needle)', got \(error?.message ?? "no error")")
        }
        // A trace without the blocks' keys reads, but sketch scoring (the default) says what it lacks.
        let keyless = try TierKVTrace(parsing: Self.sketchTrace().replacing(#/, "keys_fp16": "[^"]*"/#, with: ""), source: "s.jsonl")
        #expect(keyless.blockKeysCount == 0)
        var configuration = DecodeSimulationTests.configuration()
        configuration.prefetch.kind = .bound
        let error = failure { _ = try DecodeSimulation.run(configuration, trace: keyless) }
        #expect(error?.message.contains("keys_fp16") == true && error?.message.contains("--prefetch-scoring bound+moment") == true)
        configuration.prefetch.scoring = .boundAndMoment
        #expect(try DecodeSimulation.run(configuration, trace: keyless).prefetch?.quality["bound_exact"] != nil)
    }

    /// Prefill lines: every layer's window attention on the sink and the blocks decode moves
    /// over (3...12), as `stepLines` attends them.
    static func prefillLines(layers: Int = 4) -> [String] {
        (0..<layers).map { layer in
            var mass = [Double](repeating: 0, count: 16)
            mass[0] = 0.5
            for block in 3...12 { mass[block] = 0.05 }
            return #"{"type": "prefill", "layer": \#(layer), "window": 16, "mass": \#(mass)}"#
        }
    }

    @Test func prefillLinesPlaceTheBlocksDecodeAttendsFirst() throws {
        let plainTrace = try TierKVTrace(parsing: ([Self.header] + Self.stepLines()).joined(separator: "\n"))
        #expect(plainTrace.prefillAttention() == nil)
        let trace = try TierKVTrace(parsing: ([Self.header] + Self.prefillLines() + Self.stepLines()).joined(separator: "\n"))
        let attention = try #require(trace.prefillAttention())
        #expect(attention.count == 1 && attention[0].count == 4 && attention[0].allSatisfy { $0.count == 16 && $0[3] == 0.05 })

        var configuration = DecodeSimulationTests.configuration()
        configuration.hotFraction = 0.05
        let plain = try DecodeSimulation.run(configuration, trace: trace)
        configuration.prefillPlacement = true
        let placed = try DecodeSimulation.run(configuration, trace: trace)
        let report = try #require(placed.prefillPlacement)
        #expect(report.chosenBlocks > 0 && report.fromColdBlocks > 0, "\(report)")
        let coldHits = { (result: DecodeSimulationResult) in result.timeline.reduce(0) { $0 + $1.coldHits } }
        #expect(coldHits(placed) < coldHits(plain), "cold hits \(coldHits(placed)) against \(coldHits(plain))")
        #expect(placed.stallSeconds < plain.stallSeconds)

        // Without prefill lines the run is refused, naming what is missing.
        let error = failure { _ = try DecodeSimulation.run(configuration, trace: plainTrace) }
        #expect(error?.message.contains("prefill lines") == true, "\(error?.message ?? "no error")")
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
            ([Self.header] + Self.prefillLines().dropLast() + good, "prefill lines for 3 of 4 layers (none for layer 3)"),
            ([Self.header] + Self.prefillLines() + [Self.prefillLines()[1]] + good, "t.jsonl:6: a second prefill line for layer 1"),
            ([Self.header, Self.prefillLines()[0].replacingOccurrences(of: "0.5,", with: "0.5, 0.0,")] + good, "t.jsonl:2: 'mass' has 17 entries; the 256 prompt tokens make 16 blocks"),
            ([Self.header, Self.prefillLines()[0].replacingOccurrences(of: #""window": 16"#, with: #""window": 0"#)] + good, "'window' must be an integer ≥ 1"),
            ([Self.header, Self.prefillLines()[0].replacingOccurrences(of: #""layer": 0"#, with: #""layer": 4"#)] + good, "layer 4 is out of range"),
        ]
        for (lines, needle) in cases {
            let error = failure { _ = try TierKVTrace(parsing: lines.joined(separator: "\n"), source: "t.jsonl") }
            #expect(error?.message.contains(needle) == true, "expected '\(needle)', got \(error?.message ?? "no error")")
        }
    }
}
