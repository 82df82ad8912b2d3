/// Least frequently used with aging: a heap on (access count, last access tick), so ties go to
/// the least recent. Every `agingInterval` accesses (default: 8 × the blocks tracked, so aging
/// costs O(1) amortised) every count is halved, and a block that was popular long ago fades.
public final class LFUPolicy: EvictionPolicy {
    private struct Key: Comparable {
        var frequency: UInt32
        var tick: UInt64
        static func < (a: Key, b: Key) -> Bool { (a.frequency, a.tick) < (b.frequency, b.tick) }
    }

    private var heap = IndexedHeap<Key>()
    private var tick: UInt64 = 0
    private var accessesSinceAging = 0
    private let agingInterval: Int

    /// - Parameter agingInterval: accesses between halvings; 0 picks 8 × the tracked blocks.
    public init(agingInterval: Int = 0) { self.agingInterval = max(0, agingInterval) }
    public var name: String { "lfu" }
    public var count: Int { heap.count }

    public func insert(_ id: Int32, context: PolicyBlockContext) {
        tick += 1
        heap.set(id, key: Key(frequency: 1, tick: tick))
    }

    public func access(_ id: Int32) {
        guard let key = heap.key(of: id) else { return }
        tick += 1
        heap.set(id, key: Key(frequency: key.frequency &+ 1, tick: tick))
        accessesSinceAging += 1
        if accessesSinceAging >= (agingInterval > 0 ? agingInterval : max(64, 8 * heap.count)) {
            accessesSinceAging = 0
            heap.transformKeys { Key(frequency: $0.frequency / 2, tick: $0.tick) }
        }
    }

    public func remove(_ id: Int32) { heap.remove(id) }

    public func victim(where isEvictable: (Int32) -> Bool) -> Int32? { heap.firstMinimum(where: isEvictable) }
}
