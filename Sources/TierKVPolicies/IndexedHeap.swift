/// A binary min-heap of ids ordered by a per-id key, with O(log n) update and removal of any id.
public struct IndexedHeap<Key: Comparable> {
    private var heap: [Int32] = []
    private var keys: [Key?] = []
    private var positions: [Int32] = []

    public init() {}

    public var count: Int { heap.count }
    public var isEmpty: Bool { heap.isEmpty }
    public func contains(_ id: Int32) -> Bool { Int(id) < positions.count && positions[Int(id)] >= 0 }
    public func key(of id: Int32) -> Key? { contains(id) ? keys[Int(id)] : nil }
    /// The id with the smallest key.
    public var minimum: Int32? { heap.first }

    /// Inserts `id` or changes its key.
    public mutating func set(_ id: Int32, key: Key) {
        let index = Int(id)
        if index >= positions.count {
            let grown = max(index + 1, positions.count * 2, 64)
            positions.append(contentsOf: repeatElement(-1, count: grown - positions.count))
            keys.append(contentsOf: repeatElement(nil, count: grown - keys.count))
        }
        if positions[index] >= 0 {
            let old = keys[index]!
            keys[index] = key
            if key < old { siftUp(Int(positions[index])) } else { siftDown(Int(positions[index])) }
        } else {
            keys[index] = key
            heap.append(id)
            positions[index] = Int32(heap.count - 1)
            siftUp(heap.count - 1)
        }
    }

    public mutating func remove(_ id: Int32) {
        guard contains(id) else { return }
        let position = Int(positions[Int(id)])
        let last = heap.count - 1
        swapAt(position, last)
        heap.removeLast()
        positions[Int(id)] = -1
        keys[Int(id)] = nil
        if position < heap.count {
            siftUp(position)
            siftDown(position)
        }
    }

    @discardableResult
    public mutating func popMinimum() -> Int32? {
        guard let first = heap.first else { return nil }
        remove(first)
        return first
    }

    /// Applies `transform` to every key and restores the heap order (O(n)).
    public mutating func transformKeys(_ transform: (Key) -> Key) {
        for id in heap { keys[Int(id)] = transform(keys[Int(id)]!) }
        for position in stride(from: heap.count / 2, through: 0, by: -1) { siftDown(position) }
    }

    private func less(_ a: Int, _ b: Int) -> Bool { keys[Int(heap[a])]! < keys[Int(heap[b])]! }

    private mutating func swapAt(_ a: Int, _ b: Int) {
        guard a != b else { return }
        heap.swapAt(a, b)
        positions[Int(heap[a])] = Int32(a)
        positions[Int(heap[b])] = Int32(b)
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard less(child, parent) else { return }
            swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { return }
            var smallest = left
            if left + 1 < heap.count, less(left + 1, left) { smallest = left + 1 }
            guard less(smallest, parent) else { return }
            swapAt(parent, smallest)
            parent = smallest
        }
    }
}

extension IndexedHeap {
    /// The smallest id that `accept` takes, leaving the heap as it was. Ids it rejects are popped
    /// and pushed back, so the cost grows with how many are rejected (pinned blocks, a window).
    mutating func firstMinimum(where accept: (Int32) -> Bool) -> Int32? {
        var skipped: [(Int32, Key)] = []
        defer { for (id, key) in skipped { set(id, key: key) } }
        while let candidate = minimum {
            if accept(candidate) { return candidate }
            skipped.append((candidate, keys[Int(candidate)]!))
            remove(candidate)
        }
        return nil
    }
}
