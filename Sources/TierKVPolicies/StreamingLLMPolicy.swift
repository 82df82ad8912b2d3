/// StreamingLLM (Xiao et al., "Efficient streaming language models with attention sinks",
/// ICLR'24): the first `sinks` blocks of every sequence (the attention sinks) and the
/// `recentWindow` most recently inserted blocks stay; everything else leaves oldest first.
/// When only sinks and window blocks remain, there is no victim: the tier is full.
public final class StreamingLLMPolicy: EvictionPolicy {
    private var order = IntrusiveList()
    private var positions: [Int32] = []
    private var insertionOf: [UInt64] = []
    private var insertions: UInt64 = 0
    public let sinks: Int
    public let recentWindow: Int

    public init(sinks: Int, recentWindow: Int) {
        self.sinks = max(0, sinks)
        self.recentWindow = max(0, recentWindow)
    }

    public var name: String { "streamingllm" }
    public var count: Int { order.count }

    public func insert(_ id: Int32, context: PolicyBlockContext) {
        guard !order.contains(id) else { return }
        let index = Int(id)
        if index >= positions.count {
            let grown = max(index + 1, positions.count * 2, 64)
            positions.append(contentsOf: repeatElement(-1, count: grown - positions.count))
            insertionOf.append(contentsOf: repeatElement(0, count: grown - insertionOf.count))
        }
        insertions += 1
        positions[index] = context.position
        insertionOf[index] = insertions
        order.pushFront(id)
    }

    public func access(_ id: Int32) {}
    public func remove(_ id: Int32) { order.remove(id) }

    /// Whether the policy keeps `id` whatever the pressure.
    public func isProtected(_ id: Int32) -> Bool {
        let position = positions[Int(id)]
        if position >= 0, position < sinks { return true }
        return insertionOf[Int(id)] + UInt64(recentWindow) > insertions
    }

    public func victim(where isEvictable: (Int32) -> Bool) -> Int32? {
        var candidate = order.tail
        while candidate >= 0 {
            if !isProtected(candidate), isEvictable(candidate) { return candidate }
            candidate = order.towardsHead(from: candidate)
        }
        return nil
    }
}
