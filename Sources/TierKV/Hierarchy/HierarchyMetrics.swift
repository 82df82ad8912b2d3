import CoreMetrics

/// The hierarchy's swift-metrics instruments, created once. With no metrics backend bootstrapped
/// they cost a no-op call; bootstrap Prometheus with `TierKVPrometheus` or any backend to export.
///
/// Names: `tierkv_lookups_total{tier=hot|warm|cold|miss}`, `tierkv_evictions_total{tier,policy}`,
/// `tierkv_link_bytes_total{link=h2d|d2h|nvme_read|nvme_write}`, `tierkv_stored_blocks_total`,
/// `tierkv_dropped_blocks_total`, `tierkv_corruptions_total`, `tierkv_transfer_seconds{link}`.
struct HierarchyMetrics: Sendable {
    let lookups: [Counter]
    let evictions: [Counter]
    let linkBytes: [Counter]
    let transferLatency: [Timer]
    let storedBlocks: Counter
    let drops: Counter
    let corruptions: Counter

    static let linkNames = ["h2d", "d2h", "nvme_read", "nvme_write"]
    static let tierNames = ["hot", "warm", "cold"]

    init(policies: [String]) {
        lookups = (Self.tierNames + ["miss"]).map { Counter(label: "tierkv_lookups_total", dimensions: [("tier", $0)]) }
        evictions = zip(Self.tierNames, policies).map { tier, policy in
            Counter(label: "tierkv_evictions_total", dimensions: [("tier", tier), ("policy", policy)])
        }
        linkBytes = Self.linkNames.map { Counter(label: "tierkv_link_bytes_total", dimensions: [("link", $0)]) }
        transferLatency = Self.linkNames.map { Timer(label: "tierkv_transfer_seconds", dimensions: [("link", $0)]) }
        storedBlocks = Counter(label: "tierkv_stored_blocks_total")
        drops = Counter(label: "tierkv_dropped_blocks_total")
        corruptions = Counter(label: "tierkv_corruptions_total")
    }

    func recordLookup(tier: Tier?) { lookups[tier?.rawValue ?? 3].increment() }
}
