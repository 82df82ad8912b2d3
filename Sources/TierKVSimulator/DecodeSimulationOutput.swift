import Foundation
import TierKV

/// The links in report order, with the names the contract uses.
public let simulatedLinks: [(name: String, label: String)] = [
    ("h2d", "h2d"), ("d2h", "d2h"), ("nvme_read", "nvme_read"), ("nvme_write", "nvme_write"),
]

extension DecodeSimulationResult {
    public var hotHitRate: Double { tiers[.hot]?.hitRate ?? 0 }

    /// The `--json` object (DESIGN §6 and the simulator contract).
    public var json: JSONValue {
        func tier(_ tier: Tier) -> JSONValue {
            let counts = tiers[tier] ?? TierCounts()
            return .object([
                ("hits", .integer(Int64(counts.hits))), ("misses", .integer(Int64(counts.misses))),
                ("hit_rate", .number(counts.hitRate)), ("capacity_blocks", .integer(Int64(capacityBlocks[tier] ?? 0))),
            ])
        }
        return .object([
            ("workload", .string(workload)),
            ("model", .string(model)),
            ("hardware", .string(hardware)),
            ("real_io", .bool(realIO)),
            ("policy", .string(policy)),
            ("oracle_hit_rate", .number(oracleHotHitRate)),
            ("hot_hit_rate", .number(hotHitRate)),
            ("tiers", .object([("hot", tier(.hot)), ("warm", tier(.warm)), ("cold", tier(.cold))])),
            ("bytes_moved", .object(simulatedLinks.map { ($0.label, .integer(Int64(bytesMoved[$0.name] ?? 0))) })),
            ("stall_seconds", .number(stallSeconds)),
            ("stall_split", .object([
                ("warm_to_hot", .number(stallFromWarmSeconds)), ("cold_to_hot", .number(stallFromColdSeconds)),
                ("stores", .number(stallFromStoresSeconds)),
            ])),
            ("stall_by_layer", .array(stallByLayerSeconds.map { .number($0) })),
            ("needed_blocks_by_layer", .object([
                ("mean", .array(neededBlocksByLayer.map { .number($0.mean) })),
                ("most", .array(neededBlocksByLayer.map { .integer(Int64($0.most)) })),
            ])),
            ("compute_seconds", .number(computeSeconds)),
            ("decode_seconds", .number(decodeSeconds)),
            ("tokens_per_s", .number(tokensPerSecond)),
            ("compute_bound_tokens_per_s", .number(computeBoundTokensPerSecond)),
            ("prefetch", prefetchJSON),
            ("cpu_attention", .bool(cpuAttention)),
            ("cpu_attention_gbps", .number(cpuAttentionBytesPerSecond / 1e9)),
            ("cpu_attention_blocks", .integer(Int64(cpuAttentionBlocks))),
            ("demand_fetched_blocks", .integer(Int64(demandFetchedBlocks))),
            ("skipped_blocks", .integer(Int64(skippedBlocks))),
            ("skipped_mass_per_layer", .number(skippedMassPerLayer)),
            ("prefill_placement", prefillPlacement.map { placement in
                .object([
                    ("chosen_blocks", .integer(Int64(placement.chosenBlocks))),
                    ("from_cold_blocks", .integer(Int64(placement.fromColdBlocks))),
                    ("nvme_read_bytes", .integer(Int64(placement.readBytes))),
                    ("seconds", .number(placement.seconds)),
                ])
            } ?? .null),
            ("summary_bytes_per_block", .integer(Int64(summaryBytesPerBlock))),
            ("block_bytes", .integer(Int64(blockBytes))),
            ("total_blocks", .integer(Int64(totalBlocks))),
            ("block_accesses", .integer(Int64(blockAccesses))),
            ("context_tokens", .integer(Int64(parameters.contextTokens))),
            ("decode_steps", .integer(Int64(parameters.decodeSteps))),
            ("sequences", .integer(Int64(parameters.sequences))),
            ("attention_coverage", .number(attentionCoverage)),
            ("seed", .unsigned(parameters.seed)),
            ("dropped_blocks", .integer(Int64(droppedBlocks))),
            ("corruptions", .integer(Int64(corruptions))),
            ("metadata_bytes_per_block", .integer(Int64(metadataBytesPerBlock))),
            ("vector_bytes_per_block", .integer(Int64(vectorBytesPerBlock))),
            ("wall_seconds", .number(wallSeconds)),
            ("accesses_per_wall_second", .number(wallSeconds > 0 ? Double(blockAccesses) / wallSeconds : 0)),
        ])
    }

    /// `prefetch.*`: the predictor, its settings, what the prefetcher did and how every predictor
    /// ranked against the exact attention.
    var prefetchJSON: JSONValue {
        guard let prefetch else { return .object([("mode", .string("none")), ("precision", .null), ("recall", .null)]) }
        let statistics = prefetch.statistics
        let fetched = statistics.movedBlocks > 0
        return .object([
            ("mode", .string(prefetch.settings.kind.rawValue)),
            ("lookahead_layers", .integer(Int64(prefetch.settings.lookaheadLayers))),
            ("scoring", .string(prefetch.settings.scoring.rawValue)),
            ("sketch_bits", prefetch.settings.scoring == .sketch ? .integer(Int64(prefetch.settings.sketchBits)) : .null),
            ("sketch_shortlist", prefetch.settings.scoring == .sketch ? prefetch.settings.sketchShortlist.map { .integer(Int64($0)) } ?? .null : .null),
            ("combined_weights", .object([
                ("speculative", .number((Double(prefetch.settings.combinedWeights.speculative) * 1e6).rounded() / 1e6)),
                ("bound", .number((Double(prefetch.settings.combinedWeights.bound) * 1e6).rounded() / 1e6)),
                ("history", .number((Double(prefetch.settings.combinedWeights.history) * 1e6).rounded() / 1e6)),
            ])),
            ("adaptation_rate", prefetch.settings.adaptationRate.map { .number(Double($0)) } ?? .null),
            ("combined_weights_used", .object(zip(["speculative", "bound", "history"], prefetch.combinedWeightsUsed).map {
                ($0, .number(($1 * 1e4).rounded() / 1e4))
            })),
            ("budget_blocks", .integer(Int64(prefetch.budgetBlocks))),
            ("staging_budget_blocks", .integer(Int64(prefetch.stagingBudgetBlocks))),
            ("coverage", .number(prefetch.settings.coverage)),
            ("top_k", .integer(Int64(prefetch.topK))),
            ("precision", fetched ? .number(statistics.precision) : .null),
            ("recall", prefetch.settings.kind == .none ? .null : .number(statistics.recall)),
            ("timeliness", fetched ? .number(statistics.timeliness) : .null),
            ("wasted_bytes", .integer(Int64(prefetch.wastedBytes))),
            ("issued_blocks", .integer(Int64(statistics.issuedBlocks))),
            ("fetched_blocks", .integer(Int64(statistics.fetchedBlocks))),
            ("staged_blocks", .integer(Int64(statistics.stagedBlocks))),
            ("withdrawn_blocks", .integer(Int64(statistics.withdrawnBlocks))),
            ("used_blocks", .integer(Int64(statistics.fetchedAndUsed))),
            ("stage_ahead_layers", .integer(Int64(prefetch.settings.stageAheadLayers))),
            ("stage_ahead", prefetch.stageAhead.map { staging in
                .object([
                    ("staged_blocks", .integer(Int64(staging.stagedBlocks))),
                    ("used_blocks", .integer(Int64(staging.fetchedAndUsed))),
                    ("withdrawn_blocks", .integer(Int64(staging.withdrawnBlocks))),
                    ("timeliness", staging.movedBlocks > 0 ? .number(staging.timeliness) : .null),
                    ("precision", staging.movedBlocks > 0 ? .number(staging.precision) : .null),
                    ("wasted_bytes", .integer(Int64(prefetch.stageAheadWastedBytes))),
                ])
            } ?? .null),
            ("predictors", .object(prefetch.quality.sorted { $0.key < $1.key }.map { name, quality in
                (name, .object([("recall", .number(quality.recall)), ("needed_recall", .number(quality.neededRecall)),
                    ("mass_coverage", .number(quality.massCoverage)),
                    ("samples", .integer(Int64(quality.samples)))]))
            })),
        ])
    }

    /// The summary table, one (label, value) row each.
    public var tableRows: [(String, String)] {
        func percent(_ value: Double) -> String { String(format: "%.1f%%", value * 100) }
        func tierRow(_ tier: Tier) -> (String, String) {
            let counts = tiers[tier] ?? TierCounts()
            let capacity = capacityBlocks[tier] ?? 0
            return ("\(tier) tier", "\(counts.hits) hits, \(counts.misses) misses (\(percent(counts.hitRate)))   capacity \(capacity) blocks = \(formatBytes(Double(capacity * blockBytes)))")
        }
        var rows: [(String, String)] = [
            ("workload", "\(workload): \(parameters.sequences) × \(parameters.contextTokens) tokens of context, \(parameters.decodeSteps) decode steps, seed \(parameters.seed)"),
            ("model / hardware", "\(model) on \(hardware)\(realIO ? " (NVMe timed by real I/O)" : "")   block = \(formatBytes(Double(blockBytes))) (\(parameters.tokensPerBlock) tokens, one layer)"),
            ("policy", "\(policy); needed blocks = \(percent(attentionCoverage)) of each layer's attention mass"),
            tierRow(.hot), tierRow(.warm), tierRow(.cold),
            ("hot hit rate", "\(percent(hotHitRate))   Bélády oracle \(percent(oracleHotHitRate)) on the same \(blockAccesses) accesses"),
        ]
        for link in simulatedLinks {
            let busy = linkBusySeconds[link.name] ?? 0
            rows.append(("bytes \(link.label)", "\(formatBytes(bytesMoved[link.name] ?? 0))   busy \(percent(decodeSeconds > 0 ? busy / decodeSeconds : 0))"))
        }
        rows += [
            ("stall", String(format: "%.3f s of %.3f s decode: %.3f s waiting on warm→hot, %.3f s with blocks from cold, %.3f s storing new blocks", stallSeconds, decodeSeconds, stallFromWarmSeconds, stallFromColdSeconds, stallFromStoresSeconds)),
            ("tokens/s", String(format: "%.1f projected (%.1f if every block were in hot)", tokensPerSecond, computeBoundTokensPerSecond)),
        ]
        if let layerRow { rows.append(("layers", layerRow)) }
        if let prefetch {
            let statistics = prefetch.statistics
            if prefetch.settings.kind != .none {
                rows.append(("prefetch", String(format: "%@, lookahead %d layers, budget %d hot + %d staged blocks/layer: %d fetched, %d staged (%d withdrawn before moving), precision %.2f, recall %.2f (top-%d), timely %.2f, wasted %@",
                    prefetch.settings.kind.rawValue, prefetch.settings.lookaheadLayers, prefetch.budgetBlocks, prefetch.stagingBudgetBlocks,
                    statistics.fetchedBlocks, statistics.stagedBlocks,
                    statistics.withdrawnBlocks, statistics.precision, statistics.recall, prefetch.topK, statistics.timeliness, formatBytes(prefetch.wastedBytes))))
            }
            let order = ["bound_exact", "bound", "speculative", "history", "combined"]
            let quality = order.compactMap { name in
                prefetch.quality[name].map { String(format: "%@ %.2f/%.2f/%.2f", name, $0.recall, $0.neededRecall, $0.massCoverage) }
            }
            if !quality.isEmpty {
                rows.append(("predictors", "top-\(prefetch.topK) recall / needed-block recall / mass coverage: " + quality.joined(separator: ", ")))
            }
            if prefetch.settings.kind == .combined, prefetch.combinedWeightsUsed.count == 3 {
                let used = prefetch.combinedWeightsUsed
                rows.append(("combined weights", String(format: "speculative %.2f, bound %.2f, history %.2f (%@)", used[0], used[1], used[2],
                    prefetch.settings.adaptationRate.map { String(format: "learned per layer, rate %g; mean over layers", Double($0)) } ?? "fixed")))
            }
        }
        if let placement = prefillPlacement {
            rows.append(("prefill placement", String(format: "%d blocks placed by the prefill's attention, %d read back from cold (%@ in %.3f s, before decode)",
                placement.chosenBlocks, placement.fromColdBlocks, formatBytes(placement.readBytes), placement.seconds)))
        }
        if cpuAttention || skippedBlocks > 0 {
            rows.append(("placement", String(format: "%d needed blocks attended on CPU (%.0f GB/s), %d fetched on demand, %d skipped (%.4f of a layer's mass lost on average)",
                cpuAttentionBlocks, cpuAttentionBytesPerSecond / 1e9, demandFetchedBlocks, skippedBlocks, skippedMassPerLayer)))
        }
        rows += [
            ("simulator", String(format: "%.1f s wall, %.0f block accesses/s; %d B residency metadata + %d B of vectors per block", wallSeconds, wallSeconds > 0 ? Double(blockAccesses) / wallSeconds : 0, metadataBytesPerBlock, vectorBytesPerBlock)),
        ]
        if droppedBlocks > 0 || corruptions > 0 { rows.append(("integrity", "\(droppedBlocks) dropped, \(corruptions) corrupt")) }
        return rows
    }

    /// The `--csv` timeline: one row per decode step.
    public var timelineCSV: String {
        var lines = ["step,time_s,stall_s,compute_s,needed_blocks,hot_hits,warm_hits,cold_hits,"
            + simulatedLinks.map { "\($0.label)_bytes" }.joined(separator: ",") + ","
            + simulatedLinks.map { "\($0.label)_utilisation" }.joined(separator: ",")]
        for record in timeline {
            var fields = [String(record.step), String(format: "%.9f", record.time), String(format: "%.9f", record.stallSeconds),
                String(format: "%.9f", record.computeSeconds), String(record.neededBlocks), String(record.hotHits),
                String(record.warmHits), String(record.coldHits)]
            fields += simulatedLinks.map { String(format: "%.0f", record.bytes[$0.name] ?? 0) }
            fields += simulatedLinks.map { String(format: "%.4f", record.utilisation[$0.name] ?? 0) }
            lines.append(fields.joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The layers that stalled most and the spread of what layers need, for the summary table.
    private var layerRow: String? {
        guard !stallByLayerSeconds.isEmpty, stallSeconds > 0, !neededBlocksByLayer.isEmpty else { return nil }
        let worst = stallByLayerSeconds.enumerated().sorted { $0.element > $1.element }.prefix(3)
            .map { String(format: "%d (%.1f ms)", $0.offset, $0.element * 1e3) }.joined(separator: ", ")
        let means = neededBlocksByLayer.map(\.mean)
        return String(format: "most stall in layers %@; blocks needed per layer and step: mean %.0f–%.0f, most %d",
            worst, means.min() ?? 0, means.max() ?? 0, neededBlocksByLayer.map(\.most).max() ?? 0)
    }
}

/// Modelled bytes (a Double: scaled stand-in bytes) in `ByteCount`'s binary units.
public func formatBytes(_ bytes: Double) -> String {
    ByteCount(UInt64(max(0, bytes.rounded()))).description
}
