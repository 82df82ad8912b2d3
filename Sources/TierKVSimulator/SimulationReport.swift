import Foundation

/// `--report FILE.html`: one self-contained page (inline SVG, no scripts, no network) with the
/// summary of each run and charts: hot hit rate over time, link utilisation, stall breakdown,
/// policy vs oracle, and the sweep.
public enum SimulationReport {
    public static func html(results: [(label: String, result: DecodeSimulationResult)]) -> String {
        precondition(!results.isEmpty, "a report needs at least one run")
        let first = results[0].result
        var body = ""
        body += "<h1>tierkv simulate: \(escape(first.model)) long-decode on \(escape(first.hardware))</h1>\n"
        body += "<p class=note>Virtual time over the real TierKV hierarchy (emulated accelerator for hot, real warm arena, real cold file). "
        body += "\(first.parameters.sequences) × \(first.parameters.contextTokens) tokens of context, \(first.parameters.decodeSteps) decode steps, seed \(first.parameters.seed).</p>\n"
        body += "<h2>Summary\(results.count > 1 ? " (\(escape(results[0].label)))" : "")</h2>\n<table>\n"
        for (label, value) in first.tableRows { body += "<tr><th>\(escape(label))</th><td>\(escape(value))</td></tr>\n" }
        body += "</table>\n"

        body += "<h2>Hot-tier hit rate over time</h2>\n"
        body += lineChart(
            series: results.map { label, result in
                (label, result.timeline.map { (Double($0.step), $0.neededBlocks == 0 ? 0 : Double($0.hotHits) / Double($0.neededBlocks)) })
            }, xLabel: "decode step", yLabel: "needed blocks found in hot", yMaximum: 1, percent: true)

        body += "<h2>Link utilisation (\(escape(results[0].label)))</h2>\n"
        body += lineChart(
            series: simulatedLinks.map { link in
                (link.label, first.timeline.map { (Double($0.step), $0.utilisation[link.name] ?? 0) })
            }, xLabel: "decode step", yLabel: "share of the step the link was busy", yMaximum: 1, percent: true)

        body += "<h2>Where decode time goes</h2>\n"
        body += barChart(
            groups: results.map { label, result in
                (label, [("compute", result.computeSeconds), ("stall warm→hot", result.stallFromWarmSeconds),
                    ("stall cold→hot", result.stallFromColdSeconds), ("stall storing", result.stallFromStoresSeconds)])
            }, yLabel: "virtual seconds", stacked: true)

        body += "<h2>Policy vs Bélády oracle (hot tier)</h2>\n"
        body += barChart(
            groups: results.map { label, result in (label, [("policy", result.hotHitRate), ("oracle", result.oracleHotHitRate)]) },
            yLabel: "hot hit rate", stacked: false, percent: true)

        body += prefetchSection(results)

        if results.count > 1 {
            body += "<h2>Sweep: projected tokens/s</h2>\n"
            body += barChart(
                groups: results.map { label, result in (label, [("tokens/s", result.tokensPerSecond), ("compute-bound", result.computeBoundTokensPerSecond)]) },
                yLabel: "tokens/s", stacked: false)
            body += "<table>\n<tr><th>run</th><th>hot hit</th><th>oracle</th><th>stall s</th><th>tokens/s</th><th>h2d</th><th>nvme read</th></tr>\n"
            for (label, result) in results {
                body += String(format: "<tr><td>%@</td><td>%.1f%%</td><td>%.1f%%</td><td>%.3f</td><td>%.1f</td><td>%@</td><td>%@</td></tr>\n",
                    escape(label), result.hotHitRate * 100, result.oracleHotHitRate * 100, result.stallSeconds, result.tokensPerSecond,
                    formatBytes(result.bytesMoved["h2d"] ?? 0), formatBytes(result.bytesMoved["nvme_read"] ?? 0))
            }
            body += "</table>\n"
        }
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>tierkv simulate report</title>
            <style>
            body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
            h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
            table { border-collapse: collapse; font-size: 0.9em; }
            th, td { text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; vertical-align: top; }
            .note { color: #555; }
            svg text { font-size: 11px; fill: #333; }
            </style></head><body>
            \(body)</body></html>

            """
    }

    /// Prefetch runs: stall and wasted bytes against lookahead, one line per (predictor, budget),
    /// where prefetch pays and where it only spends bandwidth; and the predictors' quality.
    static func prefetchSection(_ results: [(label: String, result: DecodeSimulationResult)]) -> String {
        let prefetching = results.filter { ($0.result.prefetch?.settings.kind ?? .none) != .none }
        guard !prefetching.isEmpty else { return "" }
        var body = ""
        var lines: [String: [(Double, Double, Double)]] = [:]  // series → (lookahead, stall, wasted GiB)
        for (_, result) in prefetching {
            let prefetch = result.prefetch!
            let name = "\(prefetch.settings.kind.rawValue), budget \(prefetch.budgetBlocks)+\(prefetch.stagingBudgetBlocks)"
            lines[name, default: []].append((Double(prefetch.settings.lookaheadLayers), result.stallSeconds, prefetch.wastedBytes / Double(1 << 30)))
        }
        let series = lines.sorted { $0.key < $1.key }.map { ($0.key, $0.value.sorted { $0.0 < $1.0 }) }
        if let baseline = results.first(where: { ($0.result.prefetch?.settings.kind ?? PrefetchKind.none) == PrefetchKind.none }) {
            body += "<p class=note>Without prefetch (\(escape(baseline.label))): stall \(String(format: "%.3f", baseline.result.stallSeconds)) s.</p>\n"
        }
        body += "<h2>Prefetch: stall against lookahead</h2>\n"
        body += lineChart(series: series.map { ($0.0, $0.1.map { ($0.0, $0.1) }) }, xLabel: "lookahead (layers)", yLabel: "stall, virtual seconds")
        body += "<h2>Prefetch: bandwidth wasted against lookahead</h2>\n"
        body += lineChart(series: series.map { ($0.0, $0.1.map { ($0.0, $0.2) }) }, xLabel: "lookahead (layers)", yLabel: "GiB moved for blocks not used")
        body += "<table>\n<tr><th>run</th><th>predictor</th><th>lookahead</th><th>budget (hot+staged)</th><th>precision</th><th>recall</th><th>timely</th><th>wasted</th><th>stall s</th><th>tokens/s</th><th>CPU blocks</th></tr>\n"
        for (label, result) in prefetching {
            let prefetch = result.prefetch!, statistics = prefetch.statistics
            body += String(format: "<tr><td>%@</td><td>%@</td><td>%d</td><td>%d+%d</td><td>%.2f</td><td>%.2f</td><td>%.2f</td><td>%@</td><td>%.3f</td><td>%.1f</td><td>%d</td></tr>\n",
                escape(label), prefetch.settings.kind.rawValue, prefetch.settings.lookaheadLayers, prefetch.budgetBlocks, prefetch.stagingBudgetBlocks,
                statistics.precision, statistics.recall, statistics.timeliness, formatBytes(prefetch.wastedBytes), result.stallSeconds,
                result.tokensPerSecond, result.cpuAttentionBlocks)
        }
        body += "</table>\n"
        let quality = prefetching[0].result.prefetch!.quality
        body += "<h2>Predictors against the exact attention (\(escape(prefetching[0].label)), k = \(prefetching[0].result.prefetch!.topK))</h2>\n<table>\n"
        body += "<tr><th>predictor</th><th>top-k recall</th><th>needed-block recall</th><th>mass coverage</th></tr>\n"
        for name in ["bound_exact", "bound", "speculative", "history", "combined"] {
            guard let value = quality[name] else { continue }
            body += String(format: "<tr><td>%@</td><td>%.3f</td><td>%.3f</td><td>%.3f</td></tr>\n", name, value.recall, value.neededRecall, value.massCoverage)
        }
        return body + "</table>\n"
    }

    private static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    private static let width = 860.0, height = 300.0, left = 70.0, right = 150.0, top = 15.0, bottom = 40.0

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    private static func label(_ value: Double, percent: Bool) -> String {
        if percent { return String(format: "%.0f%%", value * 100) }
        if value >= 100 { return String(format: "%.0f", value) }
        if value >= 1 { return String(format: "%.1f", value) }
        return String(format: "%.3g", value)
    }

    private static func axes(yMaximum: Double, yLabel: String, xLabel: String?, percent: Bool) -> String {
        var svg = ""
        let plotHeight = height - top - bottom
        for tick in 0...4 {
            let value = yMaximum * Double(tick) / 4
            let y = top + plotHeight * (1 - Double(tick) / 4)
            svg += String(format: "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#e5e5e5'/>", left, y, width - right, y)
            svg += String(format: "<text x='%.1f' y='%.1f' text-anchor='end'>%@</text>", left - 6, y + 4, label(value, percent: percent))
        }
        svg += String(format: "<text transform='translate(14,%.1f) rotate(-90)' text-anchor='middle'>%@</text>", top + plotHeight / 2, escape(yLabel))
        if let xLabel {
            svg += String(format: "<text x='%.1f' y='%.1f' text-anchor='middle'>%@</text>", (left + width - right) / 2, height - 6, escape(xLabel))
        }
        return svg
    }

    private static func legend(_ names: [String]) -> String {
        var svg = ""
        for (index, name) in names.enumerated() {
            let y = top + 14 + Double(index) * 18
            svg += String(format: "<rect x='%.1f' y='%.1f' width='12' height='12' fill='%@'/>", width - right + 12, y - 10, palette[index % palette.count])
            svg += String(format: "<text x='%.1f' y='%.1f'>%@</text>", width - right + 30, y, escape(name))
        }
        return svg
    }

    /// Lines over a shared x axis.
    static func lineChart(series: [(String, [(Double, Double)])], xLabel: String, yLabel: String, yMaximum: Double? = nil, percent: Bool = false) -> String {
        let xs = series.flatMap { $0.1.map(\.0) }
        let ys = series.flatMap { $0.1.map(\.1) }
        let xMinimum = xs.min() ?? 0, xMaximum = max(xs.max() ?? 1, xMinimum + 1)
        let yTop = yMaximum ?? max(ys.max() ?? 1, 1e-12) * 1.1
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        var svg = String(format: "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' role='img'>", width, height)
        svg += axes(yMaximum: yTop, yLabel: yLabel, xLabel: xLabel, percent: percent)
        for tick in 0...4 {
            let value = xMinimum + (xMaximum - xMinimum) * Double(tick) / 4
            svg += String(format: "<text x='%.1f' y='%.1f' text-anchor='middle'>%.0f</text>", left + plotWidth * Double(tick) / 4, top + plotHeight + 16, value)
        }
        for (index, (_, points)) in series.enumerated() where !points.isEmpty {
            let path = points.map { x, y in
                String(format: "%.1f,%.1f", left + plotWidth * (x - xMinimum) / (xMaximum - xMinimum), top + plotHeight * (1 - min(y, yTop) / yTop))
            }.joined(separator: " ")
            svg += "<polyline fill='none' stroke='\(palette[index % palette.count])' stroke-width='1.5' points='\(path)'/>"
        }
        svg += legend(series.map(\.0))
        return svg + "</svg>\n"
    }

    /// One group of bars per run: side by side, or stacked.
    static func barChart(groups: [(String, [(String, Double)])], yLabel: String, stacked: Bool, percent: Bool = false) -> String {
        let totals = groups.map { group in stacked ? group.1.reduce(0) { $0 + $1.1 } : (group.1.map(\.1).max() ?? 0) }
        let yTop = percent ? 1 : max(totals.max() ?? 1, 1e-12) * 1.1
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        var svg = String(format: "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' role='img'>", width, height)
        svg += axes(yMaximum: yTop, yLabel: yLabel, xLabel: nil, percent: percent)
        let slot = plotWidth / Double(max(groups.count, 1))
        for (groupIndex, (name, bars)) in groups.enumerated() {
            let x0 = left + slot * Double(groupIndex)
            var base = 0.0
            let barWidth = stacked ? slot * 0.5 : slot * 0.7 / Double(max(bars.count, 1))
            for (barIndex, (_, value)) in bars.enumerated() {
                let heightFraction = min(value, yTop) / yTop
                let x = stacked ? x0 + slot * 0.25 : x0 + slot * 0.15 + barWidth * Double(barIndex)
                let y = top + plotHeight * (1 - (stacked ? base + heightFraction : heightFraction))
                svg += String(format: "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='%@'><title>%@</title></rect>",
                    x, y, barWidth, plotHeight * heightFraction, palette[barIndex % palette.count], escape(label(value, percent: percent)))
                if stacked { base += heightFraction }
            }
            svg += String(format: "<text x='%.1f' y='%.1f' text-anchor='middle'>%@</text>", x0 + slot / 2, top + plotHeight + 16, escape(name))
        }
        svg += legend(groups.first?.1.map(\.0) ?? [])
        return svg + "</svg>\n"
    }
}
