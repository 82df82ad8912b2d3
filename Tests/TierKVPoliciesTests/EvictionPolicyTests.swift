import Testing
import TierKVPolicies

private func context(_ position: Int32) -> PolicyBlockContext { PolicyBlockContext(position: position, layer: 0) }

/// Evicts until `count` victims are found (removing each), with nothing pinned.
private func evictions(_ policy: any EvictionPolicy, _ count: Int, pinned: Set<Int32> = []) -> [Int32] {
    var out: [Int32] = []
    for _ in 0..<count {
        guard let victim = policy.victim(where: { !pinned.contains($0) }) else { break }
        policy.remove(victim)
        out.append(victim)
    }
    return out
}

@Suite struct EvictionPolicyTests {
    @Test func lruEvictsTheLeastRecentlyUsedAndSkipsPinned() {
        let policy = LRUPolicy()
        for id in Int32(0)..<5 { policy.insert(id, context: context(id)) }
        policy.access(0)
        policy.access(2)
        #expect(evictions(policy, 2, pinned: [1]) == [3, 4])
        #expect(evictions(policy, 3) == [1, 0, 2])
        #expect(policy.count == 0)
    }

    @Test func lfuEvictsTheLeastFrequentAndAgingLetsOldFavouritesGo() {
        let policy = LFUPolicy(agingInterval: 1_000_000)
        for id in Int32(0)..<3 { policy.insert(id, context: context(id)) }
        for _ in 0..<5 { policy.access(0) }
        policy.access(1)
        #expect(evictions(policy, 1) == [2])
        // With aging every 4 accesses, block 0's early popularity halves away while 1 keeps being used.
        let aging = LFUPolicy(agingInterval: 4)
        aging.insert(0, context: context(0))
        aging.insert(1, context: context(1))
        for _ in 0..<8 { aging.access(0) }
        for _ in 0..<40 { aging.access(1); aging.access(1); aging.access(0) }
        for _ in 0..<40 { aging.access(1) }
        #expect(evictions(aging, 1) == [0])
    }

    @Test func s3fifoEvictsOneHitWondersBeforeReusedBlocks() {
        let policy = S3FIFOPolicy(smallFraction: 0.1)
        // Blocks 0..9 are reused; 100..109 are seen once.
        for id in Int32(0)..<10 { policy.insert(id, context: context(id)) }
        for id in Int32(0)..<10 { policy.access(id) }
        for id in Int32(100)..<110 { policy.insert(id, context: context(id)) }
        let victims = evictions(policy, 10)
        #expect(Set(victims) == Set(Int32(100)..<110))
        // A ghost hit goes straight to main: evicted 100 comes back and outlives fresh one-hit wonders.
        policy.insert(100, context: context(0))
        for id in Int32(200)..<203 { policy.insert(id, context: context(id)) }
        #expect(!evictions(policy, 3).contains(100))
    }

    @Test(arguments: [AttentionScorePolicy.Mode.accumulated, .latest])
    func attentionPoliciesEvictTheLowestMassOutsideTheWindow(mode: AttentionScorePolicy.Mode) {
        let policy = AttentionScorePolicy(mode: mode, recentWindow: 2)
        for id in Int32(0)..<6 { policy.insert(id, context: context(id)) }
        // Step 1: block 1 is heavy, block 3 light. Step 2 reverses it (TOVA follows, H2O remembers).
        for (id, mass) in [(0, 0.2), (1, 0.9), (2, 0.5), (3, 0.1)] as [(Int32, Float)] { policy.reportAttention(id, mass: mass) }
        for (id, mass) in [(0, 0.2), (1, 0.0), (2, 0.5), (3, 0.8)] as [(Int32, Float)] { policy.reportAttention(id, mass: mass) }
        let first = evictions(policy, 1)
        #expect(first == (mode == .accumulated ? [0] : [1]))
        // Blocks 4 and 5 (the window) are never chosen, even with zero mass.
        let rest = evictions(policy, 10)
        #expect(!rest.contains(4) && !rest.contains(5))
        #expect(policy.count == 2)
    }

    /// A block demoted and brought back keeps the mass it earned; a block that no longer exists
    /// (its id reused) starts from nothing.
    @Test func attentionScoresSurviveLeavingTheTierButNotForget() {
        let policy = AttentionScorePolicy(mode: .accumulated, recentWindow: 0)
        for id in Int32(0)..<3 { policy.insert(id, context: context(id)) }
        policy.reportAttention(0, mass: 0.9)
        policy.reportAttention(1, mass: 0.5)
        policy.remove(0)
        policy.reportAttention(0, mass: 0.1)  // reported while in another tier
        policy.insert(0, context: context(0))
        #expect(evictions(policy, 3) == [2, 1, 0])
        for id in Int32(0)..<3 { policy.insert(id, context: context(id)) }
        policy.forget(0)
        policy.insert(0, context: context(0))
        policy.reportAttention(2, mass: 0.01)
        #expect(evictions(policy, 1) == [0], "a reused id starts at zero mass")
    }

    @Test func streamingLLMKeepsSinksAndTheRecentWindow() {
        let policy = StreamingLLMPolicy(sinks: 2, recentWindow: 3)
        for id in Int32(0)..<10 { policy.insert(id, context: context(id)) }
        #expect(evictions(policy, 20) == [2, 3, 4, 5, 6])
        #expect(policy.count == 5)
    }

    @Test func layeredEvictsStaleBlocksThenByWhenTheirLayerNextRuns() {
        // 3 layers × 4 blocks; id = layer × 4 + i. Step 1 uses every block; step 2 uses blocks
        // 0–2 of each layer (block 3 of each layer goes stale) and is now running layer 1,
        // having used block 4 so far.
        let policy = LayerCyclicPolicy()
        func layered(_ id: Int32) -> PolicyBlockContext { PolicyBlockContext(position: id % 4, layer: id / 4) }
        for id in Int32(0)..<12 { policy.insert(id, context: layered(id)) }
        for id in Int32(0)..<12 { policy.demandAccess(id) }
        for id: Int32 in [0, 1, 2, 4] { policy.demandAccess(id) }
        // Stale first, oldest first: 3 (layer 0 left it behind); layer 2's block 11 and layer 1's
        // block 7 were used in their latest runs (step 1), so they are not stale yet.
        #expect(evictions(policy, 1) == [3])
        // Then layer 1's block already used in this run (4); then layer 0, which ran last (least
        // recently used first); then layer 2 (it runs next); last, layer 1's pending blocks.
        #expect(evictions(policy, 11, pinned: []) == [4, 0, 1, 2, 8, 9, 10, 11, 5, 6, 7])
        #expect(policy.count == 0)
        // A prefetch's lookup does not say which layer runs: it only refreshes the block.
        let prefetched = LayerCyclicPolicy()
        for id in Int32(0)..<8 { prefetched.insert(id, context: layered(id)) }
        for id in Int32(0)..<4 { prefetched.demandAccess(id) }  // layer 0 runs
        prefetched.access(5)  // layer 1's block 5 prefetched
        // Layer 0's used blocks go first (a step away), then layer 1 least recently used first.
        #expect(evictions(prefetched, 8, pinned: [0]) == [3, 2, 1, 4, 6, 7, 5])
    }

    @Test func onACycleLargerThanTheTierLayeredKeepsHitsWhereLRUHasNone() {
        // 8 layers × 10 blocks reused every step, a tier of 60: LRU evicts what comes next.
        func hits(_ policy: any EvictionPolicy) -> Int {
            var resident = Set<Int32>(), hits = 0
            for _ in 0..<20 {
                for id in Int32(0)..<80 {
                    if resident.contains(id) {
                        hits += 1
                        policy.demandAccess(id)
                        continue
                    }
                    if resident.count == 60, let victim = policy.victim(where: { _ in true }) {
                        policy.remove(victim)
                        resident.remove(victim)
                    }
                    policy.insert(id, context: PolicyBlockContext(position: id % 10, layer: id / 10))
                    resident.insert(id)
                }
            }
            return hits
        }
        #expect(hits(LRUPolicy()) == 0)
        // At most 60 of each step's 80 accesses can hit (19 steps after the first: 1,140);
        // layered gets 926, evicting the layer that ran last instead of the one that runs next.
        let layered = hits(LayerCyclicPolicy())
        #expect(layered >= 800, "layered hits \(layered)")
    }

    @Test func kindsParseAndBuildTheirPolicies() {
        for kind in EvictionPolicyKind.all {
            #expect(EvictionPolicyKind(parsing: kind.name) == kind)
            #expect(kind.makePolicy().name == kind.name)
            // H2O and TOVA are the largest: heap entry and key, insertion number, kept score.
            #expect(kind.metadataBytesPerBlock > 0 && kind.metadataBytesPerBlock <= 52)
        }
        #expect(EvictionPolicyKind(parsing: "streamingllm:1:8") == .streamingLLM(sinks: 1, recentWindow: 8))
        #expect(EvictionPolicyKind(parsing: "s3fifo:2") == nil)
        #expect(EvictionPolicyKind(parsing: "mru") == nil)
    }

    @Test func indexedHeapOrdersUpdatesAndRemovals() {
        var heap = IndexedHeap<Int>()
        var generator = SplitMix(seed: 7)
        var reference: [Int32: Int] = [:]
        for step in 0..<2000 {
            let id = Int32(generator.next() % 64)
            if generator.next() % 4 == 0 {
                heap.remove(id)
                reference[id] = nil
            } else {
                let key = Int(generator.next() % 1000)
                heap.set(id, key: key)
                reference[id] = key
            }
            if step % 50 == 0, let minimum = heap.minimum {
                #expect(reference[minimum] == reference.values.min())
            }
        }
        var popped: [Int] = []
        while let id = heap.popMinimum() { popped.append(reference[id]!) }
        #expect(popped == popped.sorted())
        #expect(popped.count == reference.count)
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
