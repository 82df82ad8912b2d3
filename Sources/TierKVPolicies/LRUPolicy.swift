/// Least recently used: one intrusive list, most recent at the head. O(1) per operation; a
/// victim search walks past blocks the caller cannot evict (pinned, in flight).
public final class LRUPolicy: EvictionPolicy {
    private var list = IntrusiveList()

    public init() {}
    public var name: String { "lru" }
    public var count: Int { list.count }

    public func insert(_ id: Int32, context: PolicyBlockContext) {
        if list.contains(id) { list.moveToFront(id) } else { list.pushFront(id) }
    }

    public func access(_ id: Int32) {
        if list.contains(id) { list.moveToFront(id) }
    }

    public func remove(_ id: Int32) { list.remove(id) }

    public func victim(where isEvictable: (Int32) -> Bool) -> Int32? {
        var candidate = list.tail
        while candidate >= 0 {
            if isEvictable(candidate) { return candidate }
            candidate = list.towardsHead(from: candidate)
        }
        return nil
    }
}
