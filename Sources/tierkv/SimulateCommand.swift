import ArgumentParser
import Dispatch
import Foundation
import TierKV
import TierKVSimulator

struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "The offload simulator: replay a workload through the real TierKV hierarchy in virtual time.",
        discussion: """
            With no arguments: the long-decode workload (Llama-3.1-8B shape, 16K-token context, 128 \
            decode steps, real vectors; hot = 10% of the KV bytes, warm = 30%, the rest cold; LRU) \
            on an H100 SXM with PCIe Gen5 and a Gen4 NVMe drive. The real Hierarchy runs with an \
            emulated accelerator for hot, a real warm arena and a real cold block file (in a temp \
            directory, or --cache-dir) on a virtual clock whose links are the hardware's models.
            Request traces: --trace FILE --trace-format mooncake replays in prefix-cache mode \
            (capacity in 512-token blocks) beside Bélády's MIN oracle. Attention traces recorded from \
            a real model: --trace FILE --trace-format tierkv --model PRESET replaces the generator.
            """
    )

    // Workload
    @Option(help: "Workload: long-decode.")
    var workload: String = "long-decode"
    @Option(help: "Model preset (\(ModelPreset.all.map(\.name).joined(separator: ", "))).")
    var model: String = "llama-3.1-8b"
    @Option(help: "Hardware preset (\(HardwarePreset.all.map(\.name).joined(separator: ", "))).")
    var hardware: String = "h100-sxm"
    @Option(help: "Context tokens per sequence before decoding.")
    var context: Int = 16384
    @Option(help: "Decode steps (tokens generated per sequence).")
    var steps: Int = 128
    @Option(help: "Sequences decoding together.")
    var sequences: Int = 1
    @Option(help: "Share of each layer's attention mass whose blocks a layer needs (1 = exact attention over every block).")
    var coverage: Double = 0.95
    @Option(help: "Seed of the workload generator.")
    var seed: UInt64 = 1

    // Tiers
    @Option(help: "Hot tier size: bytes (2GiB) or a share of the workload's KV bytes (10%).")
    var hot: String = "10%"
    @Option(help: "Warm tier size: bytes or a share (30%).")
    var warm: String = "30%"
    @Option(help: "Cold tier size in bytes (default: every block).")
    var cold: String?
    @Option(help: "Directory for the cold tier's file (default: a temporary directory, removed after).")
    var cacheDir: String?
    @Flag(help: "Full-size blocks in the real warm arena and a real cold file under --cache-dir; NVMe reads and writes timed by the real I/O instead of the drive's model.")
    var realIO = false

    // Machine overrides
    @Option(help: "A JSON file overriding hardware figures (keys: h2d_gbps, d2h_gbps, nvme_read_gbps, nvme_write_gbps, h2d_latency_us, nvme_read_latency_us, nvme_write_latency_us, gpu_tflops, hbm_gbps, efficiency).")
    var config: String?
    @Option(help: "Host→device link GB/s.")
    var h2dGbps: Double?
    @Option(help: "Device→host link GB/s.")
    var d2hGbps: Double?
    @Option(help: "NVMe read GB/s.")
    var nvmeReadGbps: Double?
    @Option(help: "NVMe write GB/s.")
    var nvmeWriteGbps: Double?
    @Option(help: "Fraction of the compute roofline the GPU reaches (0-1].")
    var efficiency: Double?
    @Option(help: "Modelled bytes each link may have started and not finished, such as 4MiB (default 256MiB). Demand fetches overtake queued prefetches, not started ones: a smaller bound lets them past sooner.")
    var inFlight: String?
    @Option(help: "Of those, modelled bytes of prefetches each link may have started (default 4MiB); more wait in the hierarchy's queue, where a demand goes first.")
    var prefetchInFlight: String?

    @Option(help: "Prefetch predictor: none, bound (Quest's bound with the previous token's query), speculative (InfiniGen-style query speculated for the layer ahead), history (H2O mass with decay and recency), combined, or oracle (the target layer's exact attention, which only a simulation has: the bound on what any predictor can do with the same lookahead, budgets and links).")
    var prefetch: String = "none"
    @Option(help: "Layers ahead a prefetch is issued: while layer L computes, layer L+D's blocks are fetched (0 leaves no time to fetch).")
    var lookahead: Int = 1
    @Option(help: "A second, staging-only prefetch this many layers ahead: the cold blocks predicted for layer L+D are read into warm while layer L computes, nothing pinned in hot (0: off; the model's layer count: the same layer of the next step, a whole step for the NVMe reads).")
    var stageAhead: Int = 0
    @Option(help: "Best-predicted blocks per layer made resident in hot, or a size such as 2MiB (default: a quarter of the layer's share of the hot tier).")
    var prefetchBudget: String?
    @Option(help: "Best-predicted blocks per layer staged from cold into warm, or a size (default: the layer's share of the hot tier).")
    var prefetchStaging: String?
    @Option(help: "Weights of speculative, bound and history in --prefetch combined (default 0.5,0.3,0.2, tuned with sketch scoring on a recorded trace and the generator).")
    var prefetchWeights: String?
    @Option(help: "Let --prefetch combined learn its weights per layer from the attention each layer then had, starting from --prefetch-weights: on (the default, rate 100), off (fixed weights), or a rate (a part whose mass coverage at the hot budget is 0.01 lower gets exp(-0.01 × rate) of the weight).")
    var prefetchAdapt: String = "on"
    @Option(help: "Stop a layer's prefetch at the best-predicted blocks that cover this share of its predicted attention, in (0, 1] (default 1: fill the budgets).")
    var prefetchCoverage: Double = 1
    @Option(help: "How bound and speculative score a block: sketch (default: token by token from a key sketch, every key quantised to --prefetch-sketch-bits per element between the block's per-channel min and max; needs the keys: the generator's, or a trace's keys_fp16), or from the key summary alone: bound (Quest's upper bound), mean (q · the keys' mean), bound+mean (the average of the two), moment (q · mean plus a spread term from the keys' range: a Gaussian estimate of the block's mass), bound+moment (the average of those two).")
    var prefetchScoring: String = "sketch"
    @Option(help: "Bits per key element of the key sketches --prefetch-scoring sketch reads: 1, 2 (default) or 4.")
    var prefetchSketchBits: Int?
    @Option(help: "With sketch scoring, score from the sketches only this many candidates per layer, those with the highest Quest bounds (default: all).")
    var prefetchSketchShortlist: Int?
    @Option(help: "CPU attention over warm blocks: on or off. On, needed blocks not in hot are attended where they sit in host memory when the cost model says that finishes the layer sooner.")
    var cpuAttention: String = "off"
    @Option(help: "CPU attention rate, GB/s of K/V (default: the preset's host memory bandwidth × 0.76, the kernel's measured share of it, × 0.5 left to attention; measure yours with tierkv bench attention).")
    var cpuAttentionGbps: Double?
    @Option(help: "The generator's speculated query for layer L+d: the true query plus Gaussian noise of this norm relative to it, per layer of distance (default 0.3). Measured on a trained 12-layer model: 0.27 mean (0.18 median) when speculating from layer L-1's input (InfiniGen), 0.11 (0.09) from its residual after attention. Not for traces that record spec_query.")
    var speculationError: Float?
    @Option(help: "Approximate mode: skip needed blocks whose predicted share of a layer's attention is below this (e.g. 0.001). Off by default: attention stays exact.")
    var approximateSkip: Double?
    @Option(help: "After the prefill, place the prompt's blocks by the attention its last tokens paid them (SnapKV's observation): those covering the needed share of each layer's mass go to warm, read back from cold where the prefill's later layers pushed them, and the history predictor starts from it: on or off. Long-decode runs and tierkv traces with prefill lines.")
    var prefillPlacement: String = "off"

    // Traces
    @Option(help: "A request trace (JSON lines); switches to prefix-cache mode.")
    var trace: String?
    @Option(help: "Trace format: mooncake (FAST'25 request prefix traces: timestamp, input_length, output_length, hash_ids of 512-token blocks) or tierkv (per-step attention recorded from a model by tools/record-tierkv-trace).")
    var traceFormat: String = "mooncake"
    @Option(help: "Prefix-cache mode: capacity in 512-token blocks (default: a sweep over 1%, 2%, 5%, 10% and 25% of the trace's distinct blocks).")
    var capacityBlocks: Int?
    @Option(help: "Prefix-cache mode: capacity in tokens (divided by 512).")
    var capacityTokens: Int?

    @Option(help: "Eviction policy: \(EvictionPolicyKind.parsingHelp).")
    var policy: String = "lru"
    @Option(help: "Long-decode: the warm and cold tiers' eviction policy, when it should differ from --policy (which then rules hot alone), e.g. --policy layered --warm-policy lru.")
    var warmPolicy: String?
    @Option(help: "Compare in one run: policy=P,P,... or capacity=... (hot sizes for long-decode, e.g. 5%,10%,20%; blocks or shares such as 5% of the distinct blocks for mooncake traces); long-decode also prefetch=K,K, lookahead=0,1,2, in-flight=4MiB,256MiB, prefetch-in-flight=1MiB,16MiB, budget=16,64, staging=0,100, coverage=0.9,1, scoring=S,S, cpu-attention=off,on, prefill-placement=off,on. Repeat to sweep the cross product.")
    var sweep: [String] = []

    // Output
    @Flag(help: "Print one JSON object on stdout.")
    var json = false
    @Option(help: "Write the per-step timeline as CSV (long-decode).")
    var csv: String?
    @Option(help: "Write an HTML report with SVG charts.")
    var report: String?

    func run() throws {
        guard let trace else { return try runDecode(trace: nil) }
        switch traceFormat {
        case "mooncake": try runTrace(trace)
        case "tierkv":
            if !json { Output.printError("reading \(trace)...") }
            let loaded: TierKVTrace
            do { loaded = try TierKVTrace.load(path: trace) } catch { throw CommandFailure(error) }
            guard prefillPlacement.lowercased() == "off" || loaded.prefillAttention() != nil else {
                throw CommandFailure("--prefill-placement needs the attention of the prefill's last tokens; \(trace) has no prefill lines (record it again with tools/record-tierkv-trace)")
            }
            do { try runDecode(trace: loaded) } catch let error as TierKVError { throw CommandFailure(error) }
        default:
            throw CommandFailure("--trace-format \(traceFormat) is not supported; use mooncake (request prefix traces) or tierkv (per-step attention traces)")
        }
    }

    func runTrace(_ trace: String) throws {
        guard prefetch == "none", cpuAttention == "off", approximateSkip == nil, prefillPlacement == "off" else {
            throw CommandFailure("--prefetch, --cpu-attention, --approximate-skip and --prefill-placement apply to long-decode runs and tierkv traces, not to mooncake prefix traces")
        }
        guard warmPolicy == nil else {
            throw CommandFailure("--warm-policy applies to long-decode runs and tierkv traces; a mooncake prefix trace has one tier")
        }
        guard inFlight == nil, prefetchInFlight == nil else {
            throw CommandFailure("--in-flight and --prefetch-in-flight apply to long-decode runs and tierkv traces; a mooncake prefix trace models no links")
        }
        guard sweep.count <= 1 else { throw CommandFailure("mooncake traces sweep one dimension at a time (policy= or capacity=)") }
        let sweep = sweep.first
        guard let basePolicy = EvictionPolicyKind(parsing: policy) else {
            throw CommandFailure("--policy \(policy) is not one of: \(EvictionPolicyKind.parsingHelp)")
        }
        /// A capacity in blocks, or a share of the trace's distinct blocks (known once it is read).
        enum Capacity { case blocks(Int), share(Double) }
        var capacities: [Capacity] = []
        var isDefaultSweep = false
        var policies: [EvictionPolicyKind] = [basePolicy]
        switch (capacityBlocks, capacityTokens) {
        case (let blocks?, nil): capacities = [.blocks(blocks)]
        case (nil, let tokens?): capacities = [.blocks(tokens / MooncakeTrace.tokensPerBlock)]
        case (nil, nil):
            capacities = [0.01, 0.02, 0.05, 0.10, 0.25].map { .share($0) }
            isDefaultSweep = true
        default: throw CommandFailure("give --capacity-blocks or --capacity-tokens, not both")
        }
        if let sweep {
            let parts = sweep.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw CommandFailure("--sweep \(sweep): expected capacity=N,N or policy=P,P") }
            let values = parts[1].split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            switch parts[0] {
            case "capacity":
                isDefaultSweep = false
                capacities = try values.map { value in
                    if value.hasSuffix("%") {
                        guard let percent = Double(value.dropLast()), percent > 0, percent <= 100 else {
                            throw CommandFailure("--sweep capacity: \(value) is not a share in (0%, 100%] of the trace's distinct blocks")
                        }
                        return .share(percent / 100)
                    }
                    guard let number = Int(value), number >= 1 else {
                        throw CommandFailure("--sweep capacity: \(value) is neither a positive block count nor a share such as 5%")
                    }
                    return .blocks(number)
                }
            case "policy":
                policies = try values.map { value in
                    guard let kind = EvictionPolicyKind(parsing: value) else { throw CommandFailure("--sweep policy: \(value) is not one of: \(EvictionPolicyKind.parsingHelp)") }
                    return kind
                }
            default: throw CommandFailure("--sweep \(parts[0]) is not supported; use capacity= or policy=")
            }
        }
        guard capacities.allSatisfy({ if case .blocks(let count) = $0 { count >= 1 } else { true } }) else {
            throw CommandFailure("the capacity must be at least 1 block (--capacity-blocks N, or --capacity-tokens of at least \(MooncakeTrace.tokensPerBlock))")
        }
        if !json { Output.printError("reading \(trace)...") }
        let loaded: MooncakeTrace
        do { loaded = try MooncakeTrace.load(path: trace) } catch { throw CommandFailure(error) }
        let blockCounts = capacities.map { capacity in
            switch capacity {
            case .blocks(let count): count
            case .share(let share): max(1, Int((share * Double(loaded.distinctBlocks)).rounded()))
            }
        }
        if isDefaultSweep && !json {
            Output.printError("no capacity given: sweeping 1%, 2%, 5%, 10% and 25% of the trace's \(loaded.distinctBlocks) distinct blocks (--capacity-blocks N for one size)")
        }

        var rows: [JSONValue] = []
        var table: [(String, String)] = []
        var totalAccesses = 0
        var totalSeconds = 0.0
        for capacity in blockCounts {
            let oracle = PrefixCacheReplay.runOracle(loaded, capacityBlocks: capacity)
            for kind in policies {
                // One replay is ~50 ms on the real trace: time three and keep the fastest, so a
                // scheduler hiccup does not decide the reported speed.
                var result = PrefixCacheReplay.run(loaded, capacityBlocks: capacity, policy: kind)
                var seconds = Double.infinity
                for _ in 0..<3 {
                    let start = DispatchTime.now().uptimeNanoseconds
                    result = PrefixCacheReplay.run(loaded, capacityBlocks: capacity, policy: kind)
                    seconds = min(seconds, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
                }
                totalAccesses += result.blockAccesses
                totalSeconds += seconds
                if !json, blockCounts.count * policies.count > 1 {
                    Output.printError("  capacity \(capacity) \(kind.name): \(String(format: "%.4f", result.prefixHitRate))")
                }
                rows.append(.object([
                    ("policy", .string(kind.name)), ("capacity_blocks", .integer(Int64(capacity))),
                    ("prefix_hit_rate", .number(result.prefixHitRate)), ("oracle_hit_rate", .number(oracle.prefixHitRate)),
                    ("prefix_hits", .integer(Int64(result.prefixHits))), ("block_accesses", .integer(Int64(result.blockAccesses))),
                    ("evictions", .integer(Int64(result.evictions))),
                    ("accesses_per_s", .number(Double(result.blockAccesses) / max(seconds, 1e-9))),
                ]))
                table.append(("\(kind.name) @ \(capacity) blocks",
                    String(format: "prefix hit rate %.4f   oracle %.4f   %.1fM accesses/s", result.prefixHitRate, oracle.prefixHitRate,
                        Double(result.blockAccesses) / max(seconds, 1e-9) / 1e6)))
            }
        }
        // Replay state per distinct block: a presence byte plus the policy's per-id metadata.
        let bytesPerBlock = 1 + policies.map(\.metadataBytesPerBlock).max()!
        let first = rows[0]
        if json {
            var members: [(String, JSONValue)] = [
                ("workload", .string("trace:mooncake")), ("trace", .string(trace)),
                ("requests", .integer(Int64(loaded.requests.count))), ("distinct_blocks", .integer(Int64(loaded.distinctBlocks))),
            ]
            if case .object(let firstMembers) = first { members += firstMembers.filter { ["policy", "capacity_blocks", "prefix_hit_rate", "oracle_hit_rate"].contains($0.0) } }
            members += [
                ("accesses_per_s", .number(Double(totalAccesses) / max(totalSeconds, 1e-9))),
                ("memory_bytes_per_block", .integer(Int64(bytesPerBlock))),
                ("runs", .array(rows)),
            ]
            Output.printJSON(.object(members))
        } else {
            Output.printTable("prefix-cache replay of \(trace): \(loaded.requests.count) requests, \(loaded.accesses.count) block accesses, \(loaded.distinctBlocks) distinct blocks", table)
            print(String(format: "  replay speed: %.1fM block accesses/s on one core; %d bytes of replay state per distinct block",
                Double(totalAccesses) / max(totalSeconds, 1e-9) / 1e6, bytesPerBlock))
        }
    }
}
