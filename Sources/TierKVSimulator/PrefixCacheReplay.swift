import TierKVPolicies

/// The result of replaying a request trace through a prefix cache.
public struct PrefixCacheResult: Sendable, Equatable {
    public var policy: String
    public var capacityBlocks: Int
    /// Σ per request of its leading blocks found cached before it was processed.
    public var prefixHits: Int
    /// Σ per request of its blocks.
    public var blockAccesses: Int
    public var evictions: Int

    public var prefixHitRate: Double { blockAccesses == 0 ? 0 : Double(prefixHits) / Double(blockAccesses) }
}

/// Prefix-cache mode of the simulator, defined so results compare across tools: capacity in
/// blocks; requests in file order; a request's hits are its leading blocks present before it is
/// processed (stopping at the first miss); then each of its blocks in order is touched if
/// present, or inserted and, when over capacity, a victim evicted by the policy.
///
/// The policy is the same `EvictionPolicy` type the hierarchy runs per tier: what is measured
/// here is what the library does.
public enum PrefixCacheReplay {
    public static func run(_ trace: MooncakeTrace, capacityBlocks: Int, policy kind: EvictionPolicyKind) -> PrefixCacheResult {
        let policy = kind.makePolicy()
        var present = [Bool](repeating: false, count: trace.distinctBlocks)
        var cached = 0
        var result = PrefixCacheResult(policy: kind.name, capacityBlocks: capacityBlocks, prefixHits: 0, blockAccesses: 0, evictions: 0)
        let accesses = trace.accesses
        let starts = trace.requestStarts
        for request in 0..<(starts.count - 1) {
            let range = starts[request]..<starts[request + 1]
            var leading = true
            for index in range {
                let id = accesses[index]
                if leading, present[Int(id)] { result.prefixHits += 1 } else { leading = false }
            }
            result.blockAccesses += range.count
            for index in range {
                let id = accesses[index]
                if present[Int(id)] {
                    policy.access(id)
                    continue
                }
                policy.insert(id, context: PolicyBlockContext(position: Int32(index - range.lowerBound), layer: 0))
                present[Int(id)] = true
                cached += 1
                if cached > capacityBlocks, let victim = policy.victim(where: { _ in true }) {
                    policy.remove(victim)
                    present[Int(victim)] = false
                    cached -= 1
                    result.evictions += 1
                }
            }
        }
        return result
    }

    /// Bélády's MIN on the same sequence: on each insertion over capacity, evict the cached
    /// block whose next use (position in the flattened access sequence) is farthest away,
    /// possibly the block just inserted. An upper bound for any online policy.
    public static func runOracle(_ trace: MooncakeTrace, capacityBlocks: Int) -> PrefixCacheResult {
        let accesses = trace.accesses
        let never = Int.max
        // nextUse[i]: the next position after i that accesses the same block.
        var nextUse = [Int](repeating: never, count: accesses.count)
        var lastSeen = [Int](repeating: never, count: trace.distinctBlocks)
        for index in stride(from: accesses.count - 1, through: 0, by: -1) {
            let id = Int(accesses[index])
            nextUse[index] = lastSeen[id]
            lastSeen[id] = index
        }
        // A min-heap on the negated next use is a max-heap on the next use.
        var heap = IndexedHeap<Int>()
        var present = [Bool](repeating: false, count: trace.distinctBlocks)
        var cached = 0
        var result = PrefixCacheResult(policy: "belady", capacityBlocks: capacityBlocks, prefixHits: 0, blockAccesses: 0, evictions: 0)
        let starts = trace.requestStarts
        for request in 0..<(starts.count - 1) {
            let range = starts[request]..<starts[request + 1]
            var leading = true
            for index in range {
                if leading, present[Int(accesses[index])] { result.prefixHits += 1 } else { leading = false }
            }
            result.blockAccesses += range.count
            for index in range {
                let id = accesses[index]
                let key = nextUse[index] == never ? Int.min : -nextUse[index]
                heap.set(id, key: key)
                if present[Int(id)] { continue }
                present[Int(id)] = true
                cached += 1
                if cached > capacityBlocks, let victim = heap.popMinimum() {
                    present[Int(victim)] = false
                    cached -= 1
                    result.evictions += 1
                }
            }
        }
        return result
    }
}
