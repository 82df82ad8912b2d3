import ArgumentParser
import Foundation
import TierKV
import TierKVSimulator

#if canImport(Glibc)
import Glibc
#endif

extension SimulateCommand {
    /// The long-decode workload through the real hierarchy in virtual time.
    func runDecode(trace: TierKVTrace?) throws {
        guard workload == "long-decode" else {
            throw CommandFailure("--workload \(workload) is not known; use long-decode, or --trace FILE for request traces")
        }
        if let speculationError, let trace, trace.speculatedQueries.contains(where: { $0.contains { $0 != nil } }) {
            throw CommandFailure("--speculation-error \(speculationError) models the generator's speculated queries; this trace records its own (spec_query)")
        }
        let base = try decodeConfiguration()
        var runs: [(label: String, configuration: DecodeSimulationConfiguration)] = [(base.policyName, base)]
        for (index, dimension) in sweep.enumerated() {
            let parts = dimension.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[1].isEmpty else {
                throw CommandFailure("--sweep \(dimension): expected NAME=V,V,... (policy, capacity, prefetch, lookahead, in-flight, prefetch-in-flight, budget, staging, stage-ahead, coverage, scoring, cpu-attention, prefill-placement)")
            }
            let values = parts[1].split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            var expanded: [(label: String, configuration: DecodeSimulationConfiguration)] = []
            for run in runs {
                for value in values {
                    var configuration = run.configuration
                    let label: String
                    switch parts[0] {
                    case "policy":
                        guard let kind = EvictionPolicyKind(parsing: value) else {
                            throw CommandFailure("--sweep policy: \(value) is not one of: \(EvictionPolicyKind.parsingHelp)")
                        }
                        configuration.policy = kind
                        label = configuration.policyName
                    case "capacity":
                        try applySize(value, option: "--sweep capacity", fraction: &configuration.hotFraction, bytes: &configuration.hotBytes)
                        label = "hot \(value)"
                    case "prefetch":
                        configuration.prefetch.kind = try prefetchKind(value, option: "--sweep prefetch")
                        label = "prefetch \(value)"
                    case "lookahead":
                        guard let layers = Int(value), layers >= 0 else { throw CommandFailure("--sweep lookahead: \(value) is not a layer count ≥ 0") }
                        configuration.prefetch.lookaheadLayers = layers
                        label = "lookahead \(value)"
                    case "in-flight":
                        configuration.bytesInFlightPerLink = try inFlightBytes(value, option: "--sweep in-flight")
                        label = "in flight \(value)"
                    case "prefetch-in-flight":
                        configuration.prefetchBytesInFlightPerLink = try inFlightBytes(value, option: "--sweep prefetch-in-flight")
                        label = "prefetch in flight \(value)"
                    case "budget":
                        configuration.prefetch.budgetBlocks = try budgetBlocks(value, option: "--sweep budget", configuration: configuration)
                        label = "budget \(value)"
                    case "staging":
                        configuration.prefetch.stagingBudgetBlocks = try budgetBlocks(value, option: "--sweep staging", configuration: configuration)
                        label = "staging \(value)"
                    case "coverage":
                        guard let share = Double(value), share > 0, share <= 1 else {
                            throw CommandFailure("--sweep coverage: \(value) is not a share in (0, 1]")
                        }
                        configuration.prefetch.coverage = share
                        label = "coverage \(value)"
                    case "stage-ahead":
                        guard let layers = Int(value), layers >= 0 else { throw CommandFailure("--sweep stage-ahead: \(value) is not a layer count ≥ 0") }
                        configuration.prefetch.stageAheadLayers = layers
                        label = "stage-ahead \(value)"
                    case "cpu-attention":
                        configuration.cpuAttention = try onOff(value, option: "--sweep cpu-attention")
                        label = "cpu attention \(value)"
                    case "prefill-placement":
                        configuration.prefillPlacement = try onOff(value, option: "--sweep prefill-placement")
                        label = "prefill placement \(value)"
                    case "scoring":
                        guard let scoring = SummaryScoring(rawValue: value) else {
                            throw CommandFailure("--sweep scoring: \(value) is not one of \(SummaryScoring.allCases.map(\.rawValue).joined(separator: ", "))")
                        }
                        configuration.prefetch.scoring = scoring
                        try applySketchOptions(scoring: scoring, to: &configuration)
                        label = "scoring \(value)"
                    default:
                        throw CommandFailure("--sweep \(parts[0]) is not supported; use policy, capacity, prefetch, lookahead, in-flight, prefetch-in-flight, budget, staging, stage-ahead, coverage, scoring, cpu-attention or prefill-placement")
                    }
                    expanded.append((index == 0 ? label : run.label + ", " + label, configuration))
                }
            }
            runs = expanded
        }
        var results: [(label: String, result: DecodeSimulationResult)] = []
        for (index, run) in runs.enumerated() {
            let prefix = runs.count > 1 ? "[\(index + 1)/\(runs.count) \(run.label)] " : ""
            let bar = ProgressBar(prefix: prefix + "decoding")
            let result: DecodeSimulationResult
            do {
                result = try DecodeSimulation.run(run.configuration, trace: trace) { done, total in bar.update(done, of: total) }
            } catch { throw CommandFailure(error) }
            bar.finish()
            results.append((run.label, result))
        }
        let first = results[0].result
        if let csv {
            do { try first.timelineCSV.write(toFile: csv, atomically: true, encoding: .utf8) } catch {
                throw CommandFailure("cannot write --csv \(csv): \(error.localizedDescription)")
            }
        }
        if let report {
            let html = SimulationReport.html(results: results)
            do { try html.write(toFile: report, atomically: true, encoding: .utf8) } catch {
                throw CommandFailure("cannot write --report \(report): \(error.localizedDescription)")
            }
        }
        if json {
            var object = first.json
            if results.count > 1, case .object(var members) = object {
                members.append(("runs", .array(results.map { label, result in
                    guard case .object(var fields) = result.json else { return result.json }
                    fields.insert(("label", .string(label)), at: 0)
                    return .object(fields)
                })))
                object = .object(members)
            }
            Output.printJSON(object)
            return
        }
        Output.printTable("tierkv simulate: \(first.model) \(first.workload) on \(first.hardware) (virtual time, real hierarchy, emulated accelerator)", first.tableRows)
        if results.count > 1 {
            print("")
            Output.printTable("sweep", results.map { label, result in
                var line = String(format: "hot hit %.1f%% (oracle %.1f%%)   stall %.3f s   %.1f tokens/s   h2d %@   nvme read %@",
                    result.hotHitRate * 100, result.oracleHotHitRate * 100, result.stallSeconds, result.tokensPerSecond,
                    formatBytes(result.bytesMoved["h2d"] ?? 0), formatBytes(result.bytesMoved["nvme_read"] ?? 0))
                if let prefetch = result.prefetch, prefetch.settings.kind != .none, prefetch.statistics.issuedBlocks == 0 {
                    line += "   prefetch issued nothing (lookahead \(prefetch.settings.lookaheadLayers))"
                } else if let prefetch = result.prefetch, prefetch.settings.kind != .none {
                    let statistics = prefetch.statistics
                    line += String(format: "   prefetch precision %.2f recall %.2f timely %.2f wasted %@",
                        statistics.precision, statistics.recall, statistics.timeliness, formatBytes(prefetch.wastedBytes))
                }
                if result.cpuAttention { line += "   cpu blocks \(result.cpuAttentionBlocks)" }
                return (label, line)
            })
        }
        if let csv { print("  timeline: \(csv)") }
        if let report { print("  report: \(report)") }
    }

    private func decodeConfiguration() throws -> DecodeSimulationConfiguration {
        var configuration = DecodeSimulationConfiguration()
        do {
            configuration.model = try ModelPreset.named(model)
            configuration.hardware = try HardwarePreset.named(hardware)
        } catch { throw CommandFailure(error) }
        guard let kind = EvictionPolicyKind(parsing: policy) else {
            throw CommandFailure("--policy \(policy) is not one of: \(EvictionPolicyKind.parsingHelp)")
        }
        configuration.policy = kind
        if let warmPolicy {
            guard let warmKind = EvictionPolicyKind(parsing: warmPolicy) else {
                throw CommandFailure("--warm-policy \(warmPolicy) is not one of: \(EvictionPolicyKind.parsingHelp)")
            }
            configuration.warmPolicy = warmKind
        }
        configuration.workload.contextTokens = context
        configuration.workload.decodeSteps = steps
        configuration.workload.sequences = sequences
        configuration.workload.seed = seed
        configuration.attentionCoverage = coverage
        configuration.cacheDirectory = cacheDir
        configuration.realIO = realIO
        try applySize(hot, option: "--hot", fraction: &configuration.hotFraction, bytes: &configuration.hotBytes)
        try applySize(warm, option: "--warm", fraction: &configuration.warmFraction, bytes: &configuration.warmBytes)
        if let cold { configuration.coldBytes = try parseByteCount(cold, option: "--cold") }
        if let inFlight { configuration.bytesInFlightPerLink = try inFlightBytes(inFlight, option: "--in-flight") }
        if let prefetchInFlight {
            configuration.prefetchBytesInFlightPerLink = try inFlightBytes(prefetchInFlight, option: "--prefetch-in-flight")
        }
        if let config { try applyConfigFile(config, to: &configuration) }
        if let h2dGbps { configuration.hardware.hostToDevice.bytesPerSecond = try gigabytes(h2dGbps, "--h2d-gbps") }
        if let d2hGbps { configuration.hardware.deviceToHost.bytesPerSecond = try gigabytes(d2hGbps, "--d2h-gbps") }
        if let nvmeReadGbps { configuration.hardware.nvmeRead.bytesPerSecond = try gigabytes(nvmeReadGbps, "--nvme-read-gbps") }
        if let nvmeWriteGbps { configuration.hardware.nvmeWrite.bytesPerSecond = try gigabytes(nvmeWriteGbps, "--nvme-write-gbps") }
        if let efficiency { configuration.computeEfficiency = efficiency }
        configuration.prefetch.kind = try prefetchKind(prefetch, option: "--prefetch")
        guard lookahead >= 0 else { throw CommandFailure("--lookahead \(lookahead): expected a number of layers ≥ 0") }
        configuration.prefetch.lookaheadLayers = lookahead
        guard stageAhead >= 0 else { throw CommandFailure("--stage-ahead \(stageAhead): expected a number of layers ≥ 0 (0: off)") }
        configuration.prefetch.stageAheadLayers = stageAhead
        if let prefetchBudget {
            configuration.prefetch.budgetBlocks = try budgetBlocks(prefetchBudget, option: "--prefetch-budget", configuration: configuration)
        }
        if let prefetchStaging {
            configuration.prefetch.stagingBudgetBlocks = try budgetBlocks(prefetchStaging, option: "--prefetch-staging", configuration: configuration)
        }
        guard let scoring = SummaryScoring(rawValue: prefetchScoring) else {
            throw CommandFailure("--prefetch-scoring \(prefetchScoring): expected one of \(SummaryScoring.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        configuration.prefetch.scoring = scoring
        try applySketchOptions(scoring: scoring, to: &configuration)
        guard prefetchCoverage > 0, prefetchCoverage <= 1 else {
            throw CommandFailure("--prefetch-coverage \(prefetchCoverage): expected a share of a layer's predicted attention in (0, 1], e.g. 0.95")
        }
        configuration.prefetch.coverage = prefetchCoverage
        if let prefetchWeights {
            let weights = prefetchWeights.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
            guard weights.count == 3, let speculative = weights[0], let bound = weights[1], let history = weights[2],
                speculative >= 0, bound >= 0, history >= 0, speculative + bound + history > 0
            else {
                throw CommandFailure("--prefetch-weights \(prefetchWeights): expected three weights ≥ 0 (speculative,bound,history), not all 0, e.g. 0.5,0.3,0.2")
            }
            configuration.prefetch.combinedWeights = (speculative, bound, history)
        }
        switch prefetchAdapt.lowercased() {
        case "off": configuration.prefetch.adaptationRate = nil
        case "on": configuration.prefetch.adaptationRate = 100
        default:
            guard let rate = Float(prefetchAdapt), rate >= 0, rate.isFinite else {
                throw CommandFailure("--prefetch-adapt \(prefetchAdapt): expected on, off or a rate ≥ 0, e.g. 100")
            }
            configuration.prefetch.adaptationRate = rate
        }
        configuration.cpuAttention = try onOff(cpuAttention, option: "--cpu-attention")
        configuration.prefillPlacement = try onOff(prefillPlacement, option: "--prefill-placement")
        if let cpuAttentionGbps { configuration.cpuAttentionBytesPerSecond = try gigabytes(cpuAttentionGbps, "--cpu-attention-gbps") }
        if let speculationError {
            guard speculationError >= 0, speculationError.isFinite else {
                throw CommandFailure("--speculation-error \(speculationError): expected a relative error ≥ 0, e.g. 0.3")
            }
            configuration.prefetch.speculationError = speculationError
        }
        if let approximateSkip {
            guard approximateSkip > 0, approximateSkip < 1 else {
                throw CommandFailure("--approximate-skip \(approximateSkip): expected a share of a layer's attention in (0, 1), e.g. 0.001")
            }
            configuration.skipBelowMass = Float(approximateSkip)
        }
        return configuration
    }

    private func prefetchKind(_ text: String, option: String) throws -> PrefetchKind {
        guard let kind = PrefetchKind(rawValue: text.lowercased()) else {
            throw CommandFailure("\(option) \(text) is not one of: " + PrefetchKind.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return kind
    }

    /// `--prefetch-sketch-bits` and `--prefetch-sketch-shortlist`, which apply to sketch scoring
    /// alone: checked against the scoring of each run (a sweep can change it).
    private func applySketchOptions(scoring: SummaryScoring, to configuration: inout DecodeSimulationConfiguration) throws {
        if let prefetchSketchBits {
            guard scoring == .sketch else {
                throw CommandFailure("--prefetch-sketch-bits \(prefetchSketchBits) applies to --prefetch-scoring sketch; the scoring is \(scoring.rawValue)")
            }
            guard [1, 2, 4].contains(prefetchSketchBits) else {
                throw CommandFailure("--prefetch-sketch-bits \(prefetchSketchBits): expected 1, 2 or 4 bits per key element")
            }
            configuration.prefetch.sketchBits = prefetchSketchBits
        }
        if let prefetchSketchShortlist {
            guard scoring == .sketch else {
                throw CommandFailure("--prefetch-sketch-shortlist \(prefetchSketchShortlist) applies to --prefetch-scoring sketch; the scoring is \(scoring.rawValue)")
            }
            guard prefetchSketchShortlist >= 1 else {
                throw CommandFailure("--prefetch-sketch-shortlist \(prefetchSketchShortlist): expected a number of blocks ≥ 1")
            }
            configuration.prefetch.sketchShortlist = prefetchSketchShortlist
        }
    }

    private func onOff(_ text: String, option: String) throws -> Bool {
        switch text.lowercased() {
        case "on": return true
        case "off": return false
        default: throw CommandFailure("\(option) \(text): expected on or off")
        }
    }

    /// `64` → blocks; `8MiB` → that many bytes of the model's blocks (at least 1 block).
    private func inFlightBytes(_ text: String, option: String) throws -> Int {
        let bytes = try parseByteCount(text, option: option)
        guard bytes > 0 else { throw CommandFailure("\(option) \(text): expected a size above zero, such as 4MiB") }
        return bytes
    }

    private func budgetBlocks(_ text: String, option: String, configuration: DecodeSimulationConfiguration) throws -> Int {
        if let blocks = Int(text) {
            guard blocks >= 0 else { throw CommandFailure("\(option) \(text): expected a block count ≥ 0 or a size like 8MiB") }
            return blocks
        }
        let bytes = try parseByteCount(text, option: option)
        let blockBytes: Int
        do { blockBytes = try configuration.model.layout(tokensPerBlock: configuration.workload.tokensPerBlock, dtype: configuration.kvDType).blockByteCount } catch {
            throw CommandFailure(error)
        }
        return max(1, bytes / blockBytes)
    }

    private func gigabytes(_ value: Double, _ option: String) throws -> Double {
        guard value > 0, value.isFinite else { throw CommandFailure("\(option) \(value): expected a positive number of GB/s") }
        return value * 1e9
    }

    /// `10%` → a fraction; `2GiB` → bytes.
    func applySize(_ text: String, option: String, fraction: inout Double, bytes: inout Int?) throws {
        if text.hasSuffix("%") {
            guard let percent = Double(text.dropLast()), percent > 0, percent <= 100 else {
                throw CommandFailure("\(option) \(text): expected a share in (0%, 100%] or a size like 2GiB")
            }
            fraction = percent / 100
            bytes = nil
        } else {
            bytes = try parseByteCount(text, option: option)
        }
    }

    /// Overrides from a JSON file; unknown keys are an error (a typo must not be ignored).
    private func applyConfigFile(_ path: String, to configuration: inout DecodeSimulationConfiguration) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw CommandFailure("--config \(path): cannot read the file") }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw CommandFailure("--config \(path): not a JSON object")
        }
        for (key, raw) in object.sorted(by: { $0.key < $1.key }) {
            guard let value = (raw as? NSNumber)?.doubleValue, value > 0, value.isFinite else {
                throw CommandFailure("--config \(path): \(key) must be a positive number, found \(raw)")
            }
            switch key {
            case "h2d_gbps": configuration.hardware.hostToDevice.bytesPerSecond = value * 1e9
            case "d2h_gbps": configuration.hardware.deviceToHost.bytesPerSecond = value * 1e9
            case "nvme_read_gbps": configuration.hardware.nvmeRead.bytesPerSecond = value * 1e9
            case "nvme_write_gbps": configuration.hardware.nvmeWrite.bytesPerSecond = value * 1e9
            case "h2d_latency_us":
                configuration.hardware.hostToDevice.latencySeconds = value * 1e-6
                configuration.hardware.deviceToHost.latencySeconds = value * 1e-6
            case "nvme_read_latency_us": configuration.hardware.nvmeRead.latencySeconds = value * 1e-6
            case "nvme_write_latency_us": configuration.hardware.nvmeWrite.latencySeconds = value * 1e-6
            case "gpu_tflops": configuration.hardware.gpu.flopsPerSecond = value * 1e12
            case "hbm_gbps": configuration.hardware.gpu.memoryBytesPerSecond = value * 1e9
            case "efficiency":
                guard value <= 1 else { throw CommandFailure("--config \(path): efficiency must be in (0, 1], found \(value)") }
                configuration.computeEfficiency = value
            default:
                throw CommandFailure("--config \(path): unknown key '\(key)'; known: h2d_gbps, d2h_gbps, nvme_read_gbps, nvme_write_gbps, h2d_latency_us, nvme_read_latency_us, nvme_write_latency_us, gpu_tflops, hbm_gbps, efficiency")
            }
        }
    }
}

/// A progress bar on stderr: redrawn in place on a terminal, a line every 10% otherwise.
final class ProgressBar {
    private let prefix: String
    private let isTerminal = isatty(STDERR_FILENO) != 0
    private var lastDecile = -1
    private var drawn = false

    init(prefix: String) { self.prefix = prefix }

    func update(_ done: Int, of total: Int) {
        let fraction = total > 0 ? Double(done) / Double(total) : 1
        if isTerminal {
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            Output.printError("\r\(prefix) [\(bar)] \(done)/\(total)", newline: false)
            drawn = true
        } else {
            let decile = Int(fraction * 10)
            if decile > lastDecile {
                lastDecile = decile
                Output.printError("\(prefix) \(done)/\(total)")
            }
        }
    }

    func finish() {
        if drawn { Output.printError("") }
    }
}
