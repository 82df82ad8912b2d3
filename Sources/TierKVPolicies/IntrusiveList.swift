/// A doubly linked list over dense ids, stored in two arrays: O(1) push, remove and move, no
/// allocation per node. Ids may live in at most one list.
struct IntrusiveList {
    private(set) var head: Int32 = -1
    private(set) var tail: Int32 = -1
    private(set) var count = 0
    private var next: [Int32] = []
    private var previous: [Int32] = []
    private var member: [Bool] = []

    mutating func reserve(_ id: Int32) {
        let needed = Int(id) + 1
        guard needed > next.count else { return }
        let grown = max(needed, next.count * 2, 64)
        next.append(contentsOf: repeatElement(-1, count: grown - next.count))
        previous.append(contentsOf: repeatElement(-1, count: grown - previous.count))
        member.append(contentsOf: repeatElement(false, count: grown - member.count))
    }

    func contains(_ id: Int32) -> Bool { Int(id) < member.count && member[Int(id)] }

    /// Inserts at the head (most recent end).
    mutating func pushFront(_ id: Int32) {
        reserve(id)
        let index = Int(id)
        member[index] = true
        previous[index] = -1
        next[index] = head
        if head >= 0 { previous[Int(head)] = id } else { tail = id }
        head = id
        count += 1
    }

    mutating func remove(_ id: Int32) {
        guard contains(id) else { return }
        let index = Int(id)
        let before = previous[index], after = next[index]
        if before >= 0 { next[Int(before)] = after } else { head = after }
        if after >= 0 { previous[Int(after)] = before } else { tail = before }
        member[index] = false
        count -= 1
    }

    mutating func moveToFront(_ id: Int32) {
        guard head != id else { return }
        remove(id)
        pushFront(id)
    }

    /// The id nearer the head than `id`, or -1.
    func towardsHead(from id: Int32) -> Int32 { previous[Int(id)] }
}
