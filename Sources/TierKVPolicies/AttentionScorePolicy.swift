/// Attention-aware eviction from the mass the engine reports per block: H2O keeps the
/// accumulated mass ("heavy hitters"), TOVA the latest step's. Blocks among the `recentWindow`
/// most recently inserted are never chosen (H2O's local window; the block being written now for
/// TOVA). Ties (e.g. blocks never reported) go to the oldest insertion.
public final class AttentionScorePolicy: EvictionPolicy {
    public enum Mode: Sendable { case accumulated, latest }

    private struct Key: Comparable {
        var score: Float
        var insertion: UInt64
        static func < (a: Key, b: Key) -> Bool { (a.score, a.insertion) < (b.score, b.insertion) }
    }

    private var heap = IndexedHeap<Key>()
    private var insertions: UInt64 = 0
    /// Insertion number per id, apart from the heap so the victim search can read it.
    private var insertionOf: [UInt64] = []
    public let mode: Mode
    public let recentWindow: Int

    public init(mode: Mode, recentWindow: Int) {
        self.mode = mode
        self.recentWindow = max(0, recentWindow)
    }

    public var name: String { mode == .accumulated ? "h2o" : "tova" }
    public var count: Int { heap.count }

    public func insert(_ id: Int32, context: PolicyBlockContext) {
        guard !heap.contains(id) else { return }
        insertions += 1
        if Int(id) >= insertionOf.count {
            insertionOf.append(contentsOf: repeatElement(0, count: max(Int(id) + 1, insertionOf.count * 2, 64) - insertionOf.count))
        }
        insertionOf[Int(id)] = insertions
        heap.set(id, key: Key(score: 0, insertion: insertions))
    }

    public func access(_ id: Int32) {}

    public func reportAttention(_ id: Int32, mass: Float) {
        guard var key = heap.key(of: id), mass.isFinite else { return }
        key.score = mode == .accumulated ? key.score + mass : mass
        heap.set(id, key: key)
    }

    public func remove(_ id: Int32) { heap.remove(id) }

    public func victim(where isEvictable: (Int32) -> Bool) -> Int32? {
        let newestProtected = insertions >= UInt64(recentWindow) ? insertions - UInt64(recentWindow) : 0
        let insertionOf = insertionOf
        return heap.firstMinimum { id in insertionOf[Int(id)] <= newestProtected && isEvictable(id) }
    }
}
