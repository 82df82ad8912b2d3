/// Decode visits the layers in order, step after step, so a tier sees a cyclic reference pattern:
/// a block the layer now running has used is next wanted a whole step later, after every other
/// layer's. LRU evicts the least recently used, which on a cycle larger than the tier is the
/// block wanted soonest. This policy evicts by when each block's layer next runs (Bélády's rule
/// with the layer order as the forecast):
/// 1. stale blocks first, oldest first: those their layer did not use in its latest run (a topic
///    the attention left, a needle already retrieved), whose next use nobody can foretell;
/// 2. then the running layer's blocks it has already used in this run (next wanted a step later);
/// 3. then by layer, the one that ran last first, back to the layer that runs next; least
///    recently used first within a layer;
/// 4. last, the running layer's blocks it has not used yet in this run (wanted now).
/// Only demand lookups say which layer runs (`demandAccess`); a prefetch's lookups and inserts
/// for a coming layer mark those blocks as used in their layer's latest run.
///
/// O(1) per access and insert; a victim search looks at each layer's least recently used end.
public final class LayerCyclicPolicy: EvictionPolicy {
    // One doubly linked list per layer over shared arrays (an id is in at most one list).
    private var next: [Int32] = []
    private var previous: [Int32] = []
    private var layerOf: [Int32] = []
    /// The run of its layer in which the block was last used; -1: not tracked.
    private var runOf: [Int64] = []
    private var lastUse: [UInt64] = []
    private var heads: [Int32] = []
    private var tails: [Int32] = []
    /// Per layer, how many runs it has started.
    private var runs: [Int64] = []
    private var running: Int32 = -1
    private var clock: UInt64 = 0
    public private(set) var count = 0

    public init() {}
    public var name: String { "layered" }

    public func insert(_ id: Int32, context: PolicyBlockContext) {
        let layer = max(0, context.layer)
        reserve(id, layer: layer)
        if isTracked(id) { unlink(id) }
        layerOf[Int(id)] = layer
        touch(id)
    }

    public func access(_ id: Int32) {
        guard isTracked(id) else { return }
        unlink(id)
        touch(id)
    }

    public func demandAccess(_ id: Int32) {
        guard isTracked(id) else { return }
        let layer = layerOf[Int(id)]
        if layer != running {
            running = layer
            runs[Int(layer)] += 1
        }
        access(id)
    }

    public func remove(_ id: Int32) {
        guard isTracked(id) else { return }
        unlink(id)
        runOf[Int(id)] = -1
    }

    public func victim(where isEvictable: (Int32) -> Bool) -> Int32? {
        let layers = heads.count
        guard layers > 0 else { return nil }
        // 1. The oldest stale block: at the least recently used end of each layer's list.
        var best: Int32 = -1
        for layer in 0..<layers {
            var id = tails[layer]
            while id >= 0, isStale(id) {
                if isEvictable(id) {
                    if best < 0 || lastUse[Int(id)] < lastUse[Int(best)] { best = id }
                    break
                }
                id = previous[Int(id)]
            }
        }
        if best >= 0 { return best }
        let current = running >= 0 ? Int(running) : layers - 1
        // 2. The running layer's blocks it has used in this run, most recent first.
        var id = heads[current]
        while id >= 0, runOf[Int(id)] == runs[current] {
            if isEvictable(id) { return id }
            id = next[Int(id)]
        }
        // 3. By layer, the one that ran last first; 4. the running layer's pending blocks.
        for back in 1...layers {
            let layer = (current - back % layers + layers) % layers
            var id = tails[layer]
            while id >= 0 {
                if isEvictable(id) { return id }
                id = previous[Int(id)]
            }
        }
        return nil
    }

    /// Not used in its layer's latest run: for the running layer, neither in this run nor in the
    /// one before (its blocks still to come were used then).
    private func isStale(_ id: Int32) -> Bool {
        let layer = Int(layerOf[Int(id)])
        let latest = runs[layer] - (layer == Int(running) ? 1 : 0)
        return runOf[Int(id)] < latest
    }

    private func isTracked(_ id: Int32) -> Bool { Int(id) < runOf.count && runOf[Int(id)] >= 0 }

    /// Marks the block used now (in its layer's latest run) and links it at its list's head.
    private func touch(_ id: Int32) {
        let index = Int(id), layer = Int(layerOf[index])
        clock &+= 1
        lastUse[index] = clock
        runOf[index] = runs[layer]
        previous[index] = -1
        next[index] = heads[layer]
        if heads[layer] >= 0 { previous[Int(heads[layer])] = id } else { tails[layer] = id }
        heads[layer] = id
        count += 1
    }

    private func unlink(_ id: Int32) {
        let index = Int(id), layer = Int(layerOf[index])
        let before = previous[index], after = next[index]
        if before >= 0 { next[Int(before)] = after } else { heads[layer] = after }
        if after >= 0 { previous[Int(after)] = before } else { tails[layer] = before }
        count -= 1
    }

    private func reserve(_ id: Int32, layer: Int32) {
        let needed = Int(id) + 1
        if needed > next.count {
            let grown = max(needed, next.count * 2, 64)
            next.append(contentsOf: repeatElement(-1, count: grown - next.count))
            previous.append(contentsOf: repeatElement(-1, count: grown - previous.count))
            layerOf.append(contentsOf: repeatElement(0, count: grown - layerOf.count))
            runOf.append(contentsOf: repeatElement(-1, count: grown - runOf.count))
            lastUse.append(contentsOf: repeatElement(0, count: grown - lastUse.count))
        }
        if Int(layer) >= heads.count {
            let added = Int(layer) + 1 - heads.count
            heads.append(contentsOf: repeatElement(-1, count: added))
            tails.append(contentsOf: repeatElement(-1, count: added))
            runs.append(contentsOf: repeatElement(0, count: added))
        }
    }
}
