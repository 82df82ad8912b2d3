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
        // Shares of the 24 distinct blocks (6 + 6 + 12), and the default sweep when no capacity is given.
        let shares = try CLI.json(["simulate", "--trace", path, "--sweep", "capacity=25%,100%", "--json"])
        let shareRuns = try #require(shares["runs"] as? [[String: Any]])
        #expect(shareRuns.compactMap { $0["capacity_blocks"] as? Int } == [6, 24])
        #expect(abs((shareRuns[1]["prefix_hit_rate"] as? Double ?? 0) - 30.0 / 54.0) < 1e-9)
        let defaults = try CLI.json(["simulate", "--trace", path, "--json"])
        let defaultRuns = try #require(defaults["runs"] as? [[String: Any]])
        #expect(defaultRuns.compactMap { $0["capacity_blocks"] as? Int } == [1, 1, 1, 2, 6], "1%, 2%, 5%, 10%, 25% of 24")
        let zero = try CLI.run(["simulate", "--trace", path, "--sweep", "capacity=0%"])
        #expect(zero.status != 0 && zero.stderr.contains("not a share in (0%, 100%]"))
    }

    @Test func badInputIsRefusedWithTheReason() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/bad.jsonl"
        try "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": [1]}\n{\"timestamp\": 0}".write(toFile: path, atomically: true, encoding: .utf8)
        let bad = try CLI.run(["simulate", "--trace", path, "--capacity-blocks", "4"])
        #expect(bad.status != 0 && bad.stderr.contains("bad.jsonl:2"))
        let policy = try CLI.run(["simulate", "--trace", path, "--capacity-blocks", "4", "--policy", "mru"])
        #expect(policy.status != 0 && policy.stderr.contains("mru"))
    }

    /// The long-decode workload end to end: contract fields, the CSV timeline, the HTML report.
    @Test func longDecodeReportsTheContractAndWritesTimelineAndReport() throws {
        let directory = try TemporaryDirectory()
        let small = ["simulate", "--context", "512", "--steps", "16"]
        let report = try CLI.json(small + ["--json", "--csv", directory.path + "/t.csv", "--report", directory.path + "/r.html"])
        #expect(report["workload"] as? String == "long-decode")
        #expect(report["policy"] as? String == "lru")
        let tiers = try #require(report["tiers"] as? [String: [String: Any]])
        for tier in ["hot", "warm", "cold"] { #expect(tiers[tier]?["hits"] is Int && tiers[tier]?["misses"] is Int) }
        let bytes = try #require(report["bytes_moved"] as? [String: Any])
        #expect(Set(bytes.keys) == ["h2d", "d2h", "nvme_read", "nvme_write"])
        let oracle = try #require(report["oracle_hit_rate"] as? Double)
        let hot = try #require(report["hot_hit_rate"] as? Double)
        #expect(oracle >= hot && oracle > 0)
        #expect((report["stall_seconds"] as? Double ?? -1) >= 0 && (report["tokens_per_s"] as? Double ?? 0) > 0)
        #expect(report["prefetch"] is [String: Any])
        let layers = try #require(report["stall_by_layer"] as? [Double])
        #expect(layers.count == 32 && layers.allSatisfy { $0 >= 0 })
        let needed = try #require(report["needed_blocks_by_layer"] as? [String: Any])
        let means = try #require(needed["mean"] as? [Double]), most = try #require(needed["most"] as? [Int])
        #expect(means.count == 32 && most.count == 32 && zip(means, most).allSatisfy { Double($1) >= $0 })
        let csv = try String(contentsOfFile: directory.path + "/t.csv", encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 17 && csv[0].hasPrefix("step,time_s,stall_s"))
        let html = try String(contentsOfFile: directory.path + "/r.html", encoding: .utf8)
        #expect(html.contains("<svg") && html.contains("Bélády") && html.contains("Link utilisation"))

        let sweep = try CLI.json(small + ["--json", "--sweep", "policy=lru,tova"])
        let runs = try #require(sweep["runs"] as? [[String: Any]])
        #expect(runs.map { $0["policy"] as? String } == ["lru", "tova"])
        let text = try CLI.run(small)
        #expect(text.status == 0 && text.stdout.contains("hot tier") && text.stdout.contains("tokens/s"))
        #expect(text.stderr.contains("decoding"), "progress on stderr")
    }

    /// Prefetch and CPU attention end to end: the `prefetch.*` contract and a two-dimensional sweep.
    @Test func prefetchReportsItsContractAndSweepsLookaheadByBudget() throws {
        let small = ["simulate", "--context", "512", "--steps", "8", "--json"]
        let report = try CLI.json(small + ["--prefetch", "combined", "--lookahead", "2", "--cpu-attention", "on"])
        let prefetch = try #require(report["prefetch"] as? [String: Any])
        #expect(prefetch["mode"] as? String == "combined" && prefetch["lookahead_layers"] as? Int == 2)
        // The default scoring: 2-bit key sketches of every block, priced in the summary bytes.
        #expect(prefetch["scoring"] as? String == "sketch" && prefetch["sketch_bits"] as? Int == 2)
        #expect(report["summary_bytes_per_block"] as? Int == 6144 + 4096)
        for field in ["precision", "recall", "timeliness"] {
            let value = try #require(prefetch[field] as? Double, "\(field)")
            #expect(value >= 0 && value <= 1)
        }
        #expect(prefetch["wasted_bytes"] is Int)
        let predictors = try #require(prefetch["predictors"] as? [String: [String: Any]])
        #expect(Set(predictors.keys) == ["bound_exact", "bound", "speculative", "history", "combined"])
        #expect(report["cpu_attention"] as? Bool == true && report["cpu_attention_blocks"] is Int)
        let sweep = try CLI.json(small + ["--prefetch", "bound", "--sweep", "lookahead=0,1", "--sweep", "budget=2,8"])
        let runs = try #require(sweep["runs"] as? [[String: Any]])
        #expect(runs.map { $0["label"] as? String } == ["lookahead 0, budget 2", "lookahead 0, budget 8", "lookahead 1, budget 2", "lookahead 1, budget 8"])
        // Lookahead 0 leaves no time to fetch: nothing is issued.
        let first = try #require(runs.first?["prefetch"] as? [String: Any])
        #expect(first["issued_blocks"] as? Int == 0)
        let trace = try CLI.run(["simulate", "--trace", "/nonexistent", "--prefetch", "bound"])
        #expect(trace.status != 0 && trace.stderr.contains("not to mooncake"))
        let placed = try CLI.json(small + ["--prefill-placement", "on"])
        let placement = try #require(placed["prefill_placement"] as? [String: Any])
        #expect((placement["chosen_blocks"] as? Int ?? 0) > 0 && placement["nvme_read_bytes"] is Int && placement["seconds"] is Double)
        #expect(report["prefill_placement"] is NSNull)
        // One block in flight per link serialises every fetch: the stall grows.
        let bounded = try CLI.json(small + ["--prefetch", "combined", "--sweep", "in-flight=64KiB,256MiB"])
        let boundedRuns = try #require(bounded["runs"] as? [[String: Any]])
        #expect(boundedRuns.map { $0["label"] as? String } == ["in flight 64KiB", "in flight 256MiB"])
        let stalls = boundedRuns.compactMap { $0["stall_seconds"] as? Double }
        #expect(stalls.count == 2 && stalls[0] > stalls[1])
        let tiers = try CLI.run(["simulate", "--trace", "/nonexistent", "--warm-policy", "lru"])
        #expect(tiers.status != 0 && tiers.stderr.contains("a mooncake prefix trace has one tier"))
        let links = try CLI.run(["simulate", "--trace", "/nonexistent", "--in-flight", "4MiB"])
        #expect(links.status != 0 && links.stderr.contains("a mooncake prefix trace models no links"))
    }

    @Test func longDecodeRefusesBadOptionsWithTheReason() throws {
        let directory = try TemporaryDirectory()
        let cases: [([String], String)] = [
            (["--hot", "0%"], "--hot"),
            (["--hot", "lots"], "--hot"),
            (["--model", "gpt-9"], "gpt-9"),
            (["--hardware", "tpu"], "tpu"),
            (["--coverage", "2"], "coverage"),
            (["--prefetch", "psychic"], "--prefetch psychic is not one of"),
            (["--prefetch-coverage", "1.5"], "--prefetch-coverage 1.5: expected a share"),
            (["--sweep", "coverage=0"], "--sweep coverage: 0 is not a share"),
            (["--lookahead", "-1"], "--lookahead"),
            (["--cpu-attention", "maybe"], "--cpu-attention maybe"),
            (["--approximate-skip", "2"], "--approximate-skip"),
            (["--prefetch-scoring", "max"], "--prefetch-scoring max: expected one of bound, mean, bound+mean, moment, bound+moment, sketch"),
            (["--prefetch-sketch-bits", "3"], "--prefetch-sketch-bits 3: expected 1, 2 or 4"),
            (["--prefetch-scoring", "bound", "--prefetch-sketch-bits", "4"], "applies to --prefetch-scoring sketch; the scoring is bound"),
            (["--prefetch-sketch-shortlist", "0"], "--prefetch-sketch-shortlist 0: expected a number of blocks"),
            (["--prefetch-weights", "1,2"], "--prefetch-weights 1,2: expected three weights"),
            (["--prefetch-weights", "0,0,0"], "not all 0"),
            (["--prefetch-adapt", "sometimes"], "--prefetch-adapt sometimes: expected on, off or a rate"),
            (["--prefetch-adapt=-3"], "--prefetch-adapt -3"),
            (["--speculation-error=-1"], "--speculation-error -1.0: expected a relative error"),
            (["--sweep", "scoring=max"], "--sweep scoring: max is not one of"),
            (["--model", "/nonexistent/model"], "cannot read the model config /nonexistent/model"),
            (["--prefetch", "bound", "--lookahead", "99"], "lookahead is 99 layers"),
            (["--stage-ahead=-2"], "--stage-ahead -2"),
            (["--stage-ahead", "4"], "stage-ahead needs a predictor"),
            (["--prefetch", "history", "--stage-ahead", "99"], "stage-ahead is 99 layers"),
            (["--sweep", "stage-ahead=x"], "--sweep stage-ahead: x is not a layer count"),
            (["--sweep", "colour=red"], "colour"),
            (["--workload", "chat"], "chat"),
            (["--warm-policy", "fifo"], "--warm-policy fifo is not one of"),
            (["--prefill-placement", "maybe"], "--prefill-placement maybe"),
            (["--sweep", "prefill-placement=sometimes"], "--sweep prefill-placement sometimes"),
            (["--in-flight", "0"], "--in-flight 0: expected a size above zero"),
            (["--in-flight", "plenty"], "--in-flight"),
            (["--sweep", "in-flight=4MiB,0"], "--sweep in-flight 0: expected a size above zero"),
        ]
        for (arguments, needle) in cases {
            let result = try CLI.run(["simulate", "--context", "256", "--steps", "1"] + arguments)
            #expect(result.status != 0 && result.stderr.contains(needle), "\(arguments): \(result.stderr)")
        }
        // A trace that records its own speculated queries refuses the generator's error model.
        let spec = [
            #"{"format": "tierkv-trace", "version": 1, "layers": 2, "kv_heads": 1, "head_dim": 2, "tokens_per_block": 16, "context_tokens": 32, "decode_steps": 1, "sink_tokens": 4}"#,
            #"{"type": "step", "step": 0, "layer": 0, "position": 32, "mass": [0.5, 0.3, 0.2], "query": [[1, 0]]}"#,
            #"{"type": "step", "step": 0, "layer": 1, "position": 32, "mass": [0.5, 0.3, 0.2], "query": [[1, 0]], "spec_query": [[0.9, 0.1]]}"#,
        ].joined(separator: "\n")
        try spec.write(toFile: directory.path + "/spec.jsonl", atomically: true, encoding: .utf8)
        let recorded = try CLI.run(["simulate", "--trace", directory.path + "/spec.jsonl", "--trace-format", "tierkv", "--speculation-error", "0.2"])
        #expect(recorded.status != 0 && recorded.stderr.contains("this trace records its own (spec_query)"), "\(recorded.stderr)")
        let placement = try CLI.run(["simulate", "--trace", directory.path + "/spec.jsonl", "--trace-format", "tierkv", "--prefill-placement", "on"])
        #expect(placement.status != 0 && placement.stderr.contains("spec.jsonl has no prefill lines"), "\(placement.stderr)")
        try "{\"h2d_gbps\": 10, \"pcie\": 5}".write(toFile: directory.path + "/c.json", atomically: true, encoding: .utf8)
        let config = try CLI.run(["simulate", "--context", "256", "--steps", "1", "--config", directory.path + "/c.json"])
        #expect(config.status != 0 && config.stderr.contains("unknown key 'pcie'"))
    }
}
