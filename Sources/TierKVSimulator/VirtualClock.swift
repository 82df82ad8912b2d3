import TierKV

/// A modelled data path: what a transfer of `n` bytes costs in virtual time.
///
/// A link moves one transfer at a time at `bytesPerSecond` (transfers queue behind each other,
/// so two concurrent fetches share the bandwidth) and each transfer pays `latencySeconds` on top,
/// overlapped with the next transfer's data phase: a pipelined link, like a DMA engine or an NVMe
/// drive at queue depth. How many transfers are outstanding at once is the transfer scheduler's
/// business (its bytes-in-flight bound), exactly as with real links.
public struct LinkModel: Sendable, Equatable, Codable {
    public var bytesPerSecond: Double
    public var latencySeconds: Double

    public init(bytesPerSecond: Double, latencySeconds: Double) {
        self.bytesPerSecond = bytesPerSecond
        self.latencySeconds = latencySeconds
    }

    /// Seconds a transfer of `byteCount` bytes occupies the link (latency excluded).
    public func occupancySeconds(_ byteCount: Double) -> Double { byteCount / bytesPerSecond }
}

/// Counters of one modelled link, in virtual time.
public struct VirtualLinkStatistics: Sendable, Equatable {
    public var transfers = 0
    /// Modelled bytes (the real bytes times the clock's byte scale).
    public var bytes: Double = 0
    /// Virtual seconds the link was moving data.
    public var busySeconds: Double = 0
}

/// The simulator's clock: virtual time that moves only when a waiter asks it to.
///
/// It sits under the real `Hierarchy` and `TransferScheduler` through `TransferClock`. When a
/// scheduler starts a transfer, the clock prices it on the link's model; the real link then runs
/// (real memory copies, real io_uring I/O on small stand-in blocks) and reports back, and the
/// clock holds that report until virtual time reaches the modelled finish. Time moves when a
/// thread that must wait (`ResidencyRequest.wait`, a store waiting for a slot, `advance`) runs
/// the next event. Events are ordered by (finish time, start order), so a run is deterministic
/// whatever the real threads do: the clock waits for every started transfer's real completion
/// before it decides what comes next.
///
/// Bytes: the simulator keeps stand-in blocks much smaller than the model's (so a 2 GiB KV
/// cache simulates in megabytes); `byteScale` converts real bytes to modelled ones.
public final class VirtualClock: TransferClock, @unchecked Sendable {
    // @unchecked: every mutable field is behind `state`.
    private struct Event {
        let finish: UInt64
        let order: UInt64
        let deliver: @Sendable () -> Void
    }

    private struct LinkState {
        var model: LinkModel
        var busyUntil: UInt64 = 0
        var statistics = VirtualLinkStatistics()
    }

    private struct State {
        var now: UInt64 = 0
        var nextToken: UInt64 = 1
        /// Started transfers whose real completion has not arrived: token → modelled finish.
        var started: [UInt64: UInt64] = [:]
        /// Started transfers on measured links: token → (link, wall-clock start).
        var measuring: [UInt64: (link: String, wallStart: UInt64)] = [:]
        var events: [Event] = []  // a binary min-heap on (finish, order)
        var links: [String: LinkState] = [:]
    }

    public let byteScale: Double
    /// Links whose time is the real transfer's measured wall time instead of a model
    /// (`--real-io`: the cold tier's real NVMe reads and writes).
    public let measuredLinks: Set<String>
    private let state: ConditionLocked<State>
    private let wallClock = MonotonicClock()

    /// - Parameters:
    ///   - links: the model of each link by its name (`h2d`, `d2h`, `nvme_read`, `nvme_write`).
    ///     A transfer on a link with no model costs no time.
    ///   - byteScale: modelled bytes per real byte.
    public init(links: [String: LinkModel], byteScale: Double = 1, measuredLinks: Set<String> = []) {
        self.byteScale = byteScale
        self.measuredLinks = measuredLinks
        var initial = State()
        for (name, model) in links { initial.links[name] = LinkState(model: model) }
        state = ConditionLocked(initial)
    }

    public func nanoseconds() -> UInt64 { state.withLock { $0.now } }

    public var seconds: Double { Double(nanoseconds()) / 1e9 }

    public func transferStarted(link: String, byteCount: Int) -> UInt64 {
        state.withLock { state in
            let token = state.nextToken
            state.nextToken += 1
            var finish = state.now
            if measuredLinks.contains(link) {
                state.measuring[token] = (link, wallClock.nanoseconds())
                var measured = state.links[link] ?? LinkState(model: LinkModel(bytesPerSecond: .infinity, latencySeconds: 0))
                measured.statistics.transfers += 1
                measured.statistics.bytes += Double(byteCount) * byteScale
                state.links[link] = measured
            } else if var modelled = state.links[link] {
                let bytes = Double(byteCount) * byteScale
                let occupancy = UInt64((modelled.model.occupancySeconds(bytes) * 1e9).rounded())
                let start = max(state.now, modelled.busyUntil)
                modelled.busyUntil = start + occupancy
                modelled.statistics.transfers += 1
                modelled.statistics.bytes += bytes
                modelled.statistics.busySeconds += Double(occupancy) / 1e9
                finish = modelled.busyUntil + UInt64((modelled.model.latencySeconds * 1e9).rounded())
                state.links[link] = modelled
            }
            state.started[token] = finish
            return token
        }
    }

    public func transferFinished(_ token: UInt64, deliver: @escaping @Sendable () -> Void) {
        let wallEnd = wallClock.nanoseconds()
        state.withLock { state in
            var finish = state.started.removeValue(forKey: token) ?? state.now
            if let measuring = state.measuring.removeValue(forKey: token), var link = state.links[measuring.link] {
                // The transfer took its real time, from when the link was free in virtual time.
                let start = max(finish, link.busyUntil)
                let duration = wallEnd - measuring.wallStart
                finish = start + duration
                link.busyUntil = finish
                link.statistics.busySeconds += Double(duration) / 1e9
                state.links[measuring.link] = link
            }
            Self.push(Event(finish: finish, order: token, deliver: deliver), into: &state.events)
        }
        state.broadcast()
    }

    /// Runs the next event (moving time to it) once every started transfer has reported back.
    /// Returns false when nothing is pending: nothing can change any more.
    public func advanceToNextEvent() -> Bool {
        guard let event = nextEvent(notAfter: nil) else { return false }
        event.deliver()
        return true
    }

    /// Runs every event due by `now + seconds`, then sets the time there: the engine computed for
    /// `seconds` while transfers went on.
    public func advance(bySeconds seconds: Double) {
        let target = nanoseconds() + UInt64((max(0, seconds) * 1e9).rounded())
        while let event = nextEvent(notAfter: target) { event.deliver() }
        state.withLock { $0.now = max($0.now, target) }
    }

    /// Runs events until `condition` holds. Returns false when it does not hold and nothing is
    /// pending (it never will).
    @discardableResult
    public func run(until condition: () -> Bool) -> Bool {
        while !condition() {
            if !advanceToNextEvent() { return condition() }
        }
        return true
    }

    /// Per link: transfers, modelled bytes and busy time so far.
    public var linkStatistics: [String: VirtualLinkStatistics] {
        state.withLock { state in state.links.mapValues(\.statistics) }
    }

    private func nextEvent(notAfter limit: UInt64?) -> Event? {
        state.waitingWithLock { state -> ConditionLocked<State>.Step<Event?> in
            // A transfer still running for real may finish before every queued event in
            // modelled time: wait for its report before choosing.
            guard state.started.isEmpty else { return .wait }
            guard let first = state.events.first else { return .done(nil) }
            if let limit, first.finish > limit { return .done(nil) }
            let event = Self.pop(from: &state.events)
            state.now = max(state.now, event.finish)
            return .done(event)
        }
    }

    // MARK: Heap on (finish, order)

    private static func precedes(_ a: Event, _ b: Event) -> Bool {
        a.finish != b.finish ? a.finish < b.finish : a.order < b.order
    }

    private static func push(_ event: Event, into heap: inout [Event]) {
        heap.append(event)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard precedes(heap[child], heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private static func pop(from heap: inout [Event]) -> Event {
        let first = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < heap.count, precedes(heap[left], heap[smallest]) { smallest = left }
                if right < heap.count, precedes(heap[right], heap[smallest]) { smallest = right }
                if smallest == parent { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return first
    }
}
