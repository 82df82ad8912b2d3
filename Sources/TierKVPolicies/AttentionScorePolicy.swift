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
    /// Score per id whether or not the block is in this tier now: a block that leaves the tier
    /// and comes back keeps what it earned (a tier's policy must not forget a heavy hitter
    /// because it was demoted for a while). Reset by `forget`, when the block itself is gone.
    private var scoreOf: [Float] = []
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
        grow(to: id)
        insertionOf[Int(id)] = insertions
        heap.set(id, key: Key(score: scoreOf[Int(id)], insertion: insertions))
    }

    public func access(_ id: Int32) {}

    public func reportAttention(_ id: Int32, mass: Float) {
        guard mass.isFinite, id >= 0 else { return }
        grow(to: id)
        let score = mode == .accumulated ? scoreOf[Int(id)] + mass : mass
        scoreOf[Int(id)] = score
        guard var key = heap.key(of: id) else { return }
        key.score = score
        heap.set(id, key: key)
    }

    public func remove(_ id: Int32) { heap.remove(id) }

    public func forget(_ id: Int32) {
        heap.remove(id)
        if Int(id) < scoreOf.count { scoreOf[Int(id)] = 0 }
    }

    private func grow(to id: Int32) {
        guard Int(id) >= insertionOf.count else { return }
        let count = max(Int(id) + 1, insertionOf.count * 2, 64)
        insertionOf.append(contentsOf: repeatElement(0, count: count - insertionOf.count))
        scoreOf.append(contentsOf: repeatElement(0, count: count - scoreOf.count))
    }

    public func victim(where isEvictable: (Int32) -> Bool) -> Int32? {
        let newestProtected = insertions >= UInt64(recentWindow) ? insertions - UInt64(recentWindow) : 0
        let insertionOf = insertionOf
        return heap.firstMinimum { id in insertionOf[Int(id)] <= newestProtected && isEvictable(id) }
    }
}
