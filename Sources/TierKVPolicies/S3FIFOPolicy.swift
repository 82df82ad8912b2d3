/// S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23): new blocks
/// enter a small FIFO; one not used again while there leaves (and is remembered in a ghost FIFO),
/// one that was moves to the main FIFO. The main FIFO reinserts blocks with a nonzero use count
/// (decrementing it) and evicts the rest. A block re-inserted while remembered as a ghost goes
/// straight to main. Use counts saturate at 3, as in the paper.
public final class S3FIFOPolicy: EvictionPolicy {
    private var small = IntrusiveList()
    private var main = IntrusiveList()
    private var frequency: [UInt8] = []
    /// Ghost membership: the ghost sequence number at which an id was evicted; it is a ghost
    /// while fewer than `main.count` evictions happened since (the paper sizes G like M).
    private var ghostStamp: [UInt64] = []
    private var ghostSequence: UInt64 = 0
    private var pendingVictim: Int32 = -1
    private let smallFraction: Double

    public init(smallFraction: Double = 0.1) { self.smallFraction = min(max(smallFraction, 0.01), 0.9) }
    public var name: String { "s3fifo" }
    public var count: Int { small.count + main.count }

    private func reserve(_ id: Int32) {
        let needed = Int(id) + 1
        guard needed > frequency.count else { return }
        let grown = max(needed, frequency.count * 2, 64)
        frequency.append(contentsOf: repeatElement(0, count: grown - frequency.count))
        ghostStamp.append(contentsOf: repeatElement(0, count: grown - ghostStamp.count))
    }

    private func isGhost(_ id: Int32) -> Bool {
        let stamp = ghostStamp[Int(id)]
        return stamp > 0 && ghostSequence - stamp < UInt64(max(main.count, 1))
    }

    public func insert(_ id: Int32, context: PolicyBlockContext) {
        reserve(id)
        guard !small.contains(id), !main.contains(id) else { return access(id) }
        frequency[Int(id)] = 0
        if isGhost(id) {
            ghostStamp[Int(id)] = 0
            main.pushFront(id)
        } else {
            small.pushFront(id)
        }
    }

    public func access(_ id: Int32) {
        guard Int(id) < frequency.count, small.contains(id) || main.contains(id) else { return }
        frequency[Int(id)] = min(frequency[Int(id)] + 1, 3)
    }

    public func remove(_ id: Int32) {
        guard small.contains(id) || main.contains(id) else { return }
        if id == pendingVictim, small.contains(id) {
            ghostSequence += 1
            ghostStamp[Int(id)] = ghostSequence
        }
        if id == pendingVictim { pendingVictim = -1 }
        small.remove(id)
        main.remove(id)
    }

    public func victim(where isEvictable: (Int32) -> Bool) -> Int32? {
        // Each block is visited at most 5 times (3 use-count decrements, a move, a skip) before
        // the search gives up: nothing evictable is left.
        var budget = 5 * count + 2
        while budget > 0, count > 0 {
            budget -= 1
            let smallTarget = max(1, Int(Double(count) * smallFraction))
            if small.count >= smallTarget || main.count == 0 {
                let candidate = small.tail
                if !isEvictable(candidate) {
                    small.moveToFront(candidate)
                } else if frequency[Int(candidate)] > 0 {
                    frequency[Int(candidate)] = 0
                    small.remove(candidate)
                    main.pushFront(candidate)
                } else {
                    pendingVictim = candidate
                    return candidate
                }
            } else {
                let candidate = main.tail
                if !isEvictable(candidate) {
                    main.moveToFront(candidate)
                } else if frequency[Int(candidate)] > 0 {
                    frequency[Int(candidate)] -= 1
                    main.moveToFront(candidate)
                } else {
                    pendingVictim = candidate
                    return candidate
                }
            }
        }
        return nil
    }
}
