import TierKVCore

/// For one layer, where each needed block that is not in hot gets its attention computed: fetched
/// to hot for the GPU, attended on CPU threads where it sits in host memory, or skipped (only in
/// approximate mode, below a mass threshold). A cost model from the links' and the CPU's measured
/// rates, greedy in arrival order: each block goes where it makes the layer finish sooner, the
/// layer finishing at max(last fetch + GPU compute, last CPU block).
public struct AttentionPlacementPlanner: Sendable {
    public var hostToDeviceBytesPerSecond: Double
    public var coldReadBytesPerSecond: Double
    /// CPU decode-attention rate over warm K/V (`tierkv bench attention`); nil: CPU attention off.
    public var cpuAttentionBytesPerSecond: Double?
    /// Approximate mode: blocks predicted below this share of the layer's mass are skipped;
    /// nil (the default) never skips.
    public var skipBelowMass: Float?

    public init(
        hostToDeviceBytesPerSecond: Double, coldReadBytesPerSecond: Double, cpuAttentionBytesPerSecond: Double? = nil,
        skipBelowMass: Float? = nil
    ) throws(TierKVError) {
        guard hostToDeviceBytesPerSecond > 0, coldReadBytesPerSecond > 0 else {
            throw .invalid("link rates must be positive (host→device \(hostToDeviceBytesPerSecond) B/s, cold read \(coldReadBytesPerSecond) B/s)")
        }
        if let rate = cpuAttentionBytesPerSecond, !(rate > 0) { throw .invalid("CPU attention rate \(rate) B/s must be positive") }
        if let threshold = skipBelowMass, !(threshold >= 0 && threshold < 1) {
            throw .invalid("skip threshold \(threshold) must be in 0..<1 (a share of the layer's attention mass)")
        }
        self.hostToDeviceBytesPerSecond = hostToDeviceBytesPerSecond
        self.coldReadBytesPerSecond = coldReadBytesPerSecond
        self.cpuAttentionBytesPerSecond = cpuAttentionBytesPerSecond
        self.skipBelowMass = skipBelowMass
    }

    /// Where a needed block is, seen from the hot tier.
    public enum Source: Sendable { case warm, cold }

    public enum Decision: Sendable, Equatable {
        case fetch, attendOnCPU, skip
    }

    public struct Plan: Sendable, Equatable {
        public var decisions: [Decision]
        /// The model's estimate of when the layer finishes, from the plan's start.
        public var estimatedSeconds: Double
        public var fetched: Int { decisions.count { $0 == .fetch } }
        public var attendedOnCPU: Int { decisions.count { $0 == .attendOnCPU } }
        public var skipped: Int { decisions.count { $0 == .skip } }
    }

    /// - Parameters:
    ///   - blocks: the needed blocks not in hot, with their predicted (or reported) mass.
    ///   - gpuSeconds: the layer's GPU time once its blocks are in hot.
    ///   - fetchLimit: the most blocks hot can take for this layer (its free and evictable
    ///     slots); once it is reached the rest go to the CPU when CPU attention is on. Nil: no limit.
    public func plan(blocks: [(source: Source, mass: Float)], blockByteCount: Int, gpuSeconds: Double, fetchLimit: Int? = nil) -> Plan {
        let bytes = Double(blockByteCount)
        let fetchSeconds = bytes / hostToDeviceBytesPerSecond
        let readSeconds = bytes / coldReadBytesPerSecond
        let cpuSeconds = cpuAttentionBytesPerSecond.map { bytes / $0 }
        var decisions = [Decision](repeating: .fetch, count: blocks.count)
        // Warm blocks are ready now; cold ones arrive in warm one after another on the NVMe link.
        var ready = [Double](repeating: 0, count: blocks.count)
        var coldReads = 0.0
        var order: [Int] = []
        for (index, block) in blocks.enumerated() {
            if let threshold = skipBelowMass, block.mass < threshold {
                decisions[index] = .skip
                continue
            }
            if block.source == .cold {
                coldReads += readSeconds
                ready[index] = coldReads
            }
            order.append(index)
        }
        order.sort { ready[$0] < ready[$1] }
        var linkFree = 0.0, cpuFree = 0.0
        var fetches = 0
        for index in order {
            let fetchDone = max(ready[index], linkFree) + fetchSeconds
            guard let cpuSeconds else {
                linkFree = fetchDone
                continue
            }
            let cpuDone = max(ready[index], cpuFree) + cpuSeconds
            let finishIfFetched = max(fetchDone + gpuSeconds, cpuFree)
            let finishIfCPU = max(linkFree + gpuSeconds, cpuDone)
            if finishIfCPU < finishIfFetched || fetches >= (fetchLimit ?? .max) {
                decisions[index] = .attendOnCPU
                cpuFree = cpuDone
            } else {
                linkFree = fetchDone
                fetches += 1
            }
        }
        return Plan(decisions: decisions, estimatedSeconds: max(linkFree + gpuSeconds, cpuFree))
    }
}
