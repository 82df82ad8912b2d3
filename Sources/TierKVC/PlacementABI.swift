import CTierKVABI
import TierKV

// Placement: for one layer, fetch to hot, attend on CPU, or skip each block it needs, from the
// cost model the simulator uses (`AttentionPlacementPlanner`).

@c @implementation public func tierkv_plan_layer(
    _ handle: OpaquePointer?, _ keys: UnsafePointer<tierkv_block_key>?, _ keyCount: Int, _ mass: UnsafePointer<Float>?,
    _ options: UnsafePointer<tierkv_placement_options>?, _ decisionsOut: UnsafeMutablePointer<Int32>?,
    _ estimatedSecondsOut: UnsafeMutablePointer<Double>?
) -> tierkv_status {
    abiCall("tierkv_plan_layer") { () throws(TierKVError) in
        let owner = try HandleRegistry.lookup(handle, as: HierarchyHandle.self, "hierarchy")
        let options = try required(options, "options").pointee
        guard options.struct_size == UInt64(MemoryLayout<tierkv_placement_options>.size) else {
            throw .invalid("options->struct_size is \(options.struct_size); set it to sizeof(tierkv_placement_options) = \(MemoryLayout<tierkv_placement_options>.size)")
        }
        guard options.reserved == 0 else { throw .invalid("options->reserved is \(options.reserved); set it to 0") }
        for (name, rate) in [("host_to_device_bytes_per_s", options.host_to_device_bytes_per_s), ("cold_read_bytes_per_s", options.cold_read_bytes_per_s)]
        where !(rate > 0 && rate.isFinite) {
            throw .invalid("options->\(name) is \(rate); expected the link's rate in bytes per second (> 0)")
        }
        guard options.skip_below_mass >= 0, options.skip_below_mass < 1 else {
            throw .invalid("options->skip_below_mass is \(options.skip_below_mass); expected a share of the layer's mass in [0, 1), 0 to never skip")
        }
        guard options.cpu_attention_bytes_per_s >= 0 else {
            throw .invalid("options->cpu_attention_bytes_per_s is \(options.cpu_attention_bytes_per_s); expected > 0, or 0 for CPU attention off")
        }
        guard options.gpu_seconds >= 0, options.gpu_seconds.isFinite else {
            throw .invalid("options->gpu_seconds is \(options.gpu_seconds); expected a finite time ≥ 0")
        }
        let skipping = options.skip_below_mass != 0
        let planner = try AttentionPlacementPlanner(
            hostToDeviceBytesPerSecond: options.host_to_device_bytes_per_s, coldReadBytesPerSecond: options.cold_read_bytes_per_s,
            cpuAttentionBytesPerSecond: options.cpu_attention_bytes_per_s > 0 ? options.cpu_attention_bytes_per_s : nil,
            skipBelowMass: skipping ? options.skip_below_mass : nil)
        let keys = try blockKeys(keys, count: keyCount, "keys")
        if skipping, mass == nil { throw .invalid("mass is NULL; skipping below \(options.skip_below_mass) needs each block's mass") }
        let masses = mass == nil ? nil : try buffer(mass, count: keyCount, "mass")
        if let masses, let bad = masses.firstIndex(where: { !$0.isFinite || $0 < 0 }) {
            throw .invalid("mass[\(bad)] is \(masses[bad]); attention masses are finite and ≥ 0")
        }
        let decisions = try mutableBuffer(decisionsOut, count: keyCount, "decisions_out")

        // Blocks in hot need no decision; the rest go to the planner from where they are.
        var planned: [(index: Int, block: (source: AttentionPlacementPlanner.Source, mass: Float))] = []
        for (index, key) in keys.enumerated() {
            switch owner.hierarchy.fastestTier(of: key) {
            case .hot: decisions[index] = TIERKV_PLACE_IN_HOT
            case .warm: planned.append((index, (.warm, masses?[index] ?? 1)))
            case .cold: planned.append((index, (.cold, masses?[index] ?? 1)))
            case nil: decisions[index] = TIERKV_PLACE_MISSING
            }
        }
        // Hot can take what is neither pinned nor already holding this layer's blocks.
        let hot = owner.hierarchy.statistics.hot
        let inHot = decisions.count { $0 == TIERKV_PLACE_IN_HOT }
        let plan = planner.plan(
            blocks: planned.map(\.block), blockByteCount: owner.hierarchy.configuration.layout.blockByteCount,
            gpuSeconds: options.gpu_seconds, fetchLimit: max(0, hot.capacityBlocks - hot.pinnedBlocks - inHot))
        for (entry, decision) in zip(planned, plan.decisions) {
            switch decision {
            case .fetch: decisions[entry.index] = TIERKV_PLACE_FETCH
            case .attendOnCPU: decisions[entry.index] = TIERKV_PLACE_CPU
            case .skip: decisions[entry.index] = TIERKV_PLACE_SKIP
            }
        }
        estimatedSecondsOut?.pointee = plan.estimatedSeconds
    }
}
