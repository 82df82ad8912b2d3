import Synchronization
import TierKVCore

/// A ticket for a submitted transfer, used to cancel it while it is still queued.
public struct TransferTicket: Hashable, Sendable {
    public let id: UInt64
}

/// Per-link counters: what moved, how long it waited and how busy the link was.
public struct TransferStatistics: Sendable, Equatable {
    public var completedTransfers: [TransferPriority: Int] = [:]
    public var completedBytes: [TransferPriority: Int] = [:]
    public var cancelledTransfers = 0
    public var failedTransfers = 0
    /// Sum over completed transfers of submit→completion time.
    public var totalLatencyNanoseconds: UInt64 = 0
    /// Time with at least one transfer in flight.
    public var busyNanoseconds: UInt64 = 0
    public var queuedTransfers = 0
    public var inFlightBytes = 0

    public var totalCompletedBytes: Int { completedBytes.values.reduce(0, +) }
}

/// Runs transfers on one link in priority order (demand > prefetch > write-back, FIFO within a
/// priority) with at most `maximumBytesInFlight` bytes started and not yet completed (one
/// transfer may always run, however large). Queued transfers can be cancelled. Thread-safe;
/// completions arrive on the link's threads and start the next transfers from there.
public final class TransferScheduler<Link: TransferLink>: Sendable {
    public let link: Link
    public let maximumBytesInFlight: Int
    private let clock: any TransferClock
    private let state: Locked<State>

    private struct Pending: Sendable {
        let ticket: TransferTicket
        let request: Link.Request
        let byteCount: Int
        let priority: TransferPriority
        let submittedNanoseconds: UInt64
        let completion: @Sendable (TransferOutcome) -> Void
    }

    private struct State: Sendable {
        var queues: [[Pending]] = Array(repeating: [], count: TransferPriority.allCases.count)
        var queueHeads: [Int] = Array(repeating: 0, count: TransferPriority.allCases.count)
        var nextTicket: UInt64 = 1
        var inFlightCount = 0
        var busySinceNanoseconds: UInt64 = 0
        var statistics = TransferStatistics()
    }

    public init(link: Link, maximumBytesInFlight: Int, clock: any TransferClock = MonotonicClock()) {
        self.link = link
        self.maximumBytesInFlight = max(1, maximumBytesInFlight)
        self.clock = clock
        self.state = Locked(State())
    }

    /// Queues `request`; `completion` is called exactly once (completed, cancelled or failed).
    @discardableResult
    public func submit(
        _ request: Link.Request, priority: TransferPriority,
        completion: @escaping @Sendable (TransferOutcome) -> Void = { _ in }
    ) -> TransferTicket {
        let byteCount = link.byteCount(of: request)
        let now = clock.nanoseconds()
        let ticket = state.withLock { state in
            let ticket = TransferTicket(id: state.nextTicket)
            state.nextTicket += 1
            state.queues[priority.rawValue].append(
                Pending(ticket: ticket, request: request, byteCount: byteCount, priority: priority,
                    submittedNanoseconds: now, completion: completion))
            state.statistics.queuedTransfers += 1
            return ticket
        }
        dispatch()
        return ticket
    }

    /// Removes a queued transfer; its completion is called with `.cancelled`. Returns false when
    /// it already started or finished (in-flight transfers are never torn).
    @discardableResult
    public func cancel(_ ticket: TransferTicket) -> Bool {
        let removed: Pending? = state.withLock { state in
            for priority in TransferPriority.allCases {
                let queue = priority.rawValue
                let head = state.queueHeads[queue]
                if let index = state.queues[queue][head...].firstIndex(where: { $0.ticket == ticket }) {
                    let pending = state.queues[queue].remove(at: index)
                    state.statistics.queuedTransfers -= 1
                    state.statistics.cancelledTransfers += 1
                    return pending
                }
            }
            return nil
        }
        removed?.completion(.cancelled)
        return removed != nil
    }

    /// Counters so far (queued and in-flight included).
    public var statistics: TransferStatistics {
        let now = clock.nanoseconds()
        return state.withLock { state in
            var snapshot = state.statistics
            if state.inFlightCount > 0 { snapshot.busyNanoseconds += now - state.busySinceNanoseconds }
            return snapshot
        }
    }

    /// Starts as many queued transfers as the in-flight bound allows, highest priority first.
    private func dispatch() {
        while true {
            let now = clock.nanoseconds()
            let next: Pending? = state.withLock { state in
                for queue in 0..<state.queues.count where state.queueHeads[queue] < state.queues[queue].count {
                    let candidate = state.queues[queue][state.queueHeads[queue]]
                    let fits = state.statistics.inFlightBytes + candidate.byteCount <= maximumBytesInFlight
                    guard fits || state.inFlightCount == 0 else { return nil }
                    state.queueHeads[queue] += 1
                    // Drop started entries (they hold their completion closures and whatever those
                    // capture): at once when the queue empties, else in amortised chunks.
                    if state.queueHeads[queue] == state.queues[queue].count {
                        state.queues[queue].removeAll(keepingCapacity: true)
                        state.queueHeads[queue] = 0
                    } else if state.queueHeads[queue] > 64, state.queueHeads[queue] * 2 > state.queues[queue].count {
                        state.queues[queue].removeFirst(state.queueHeads[queue])
                        state.queueHeads[queue] = 0
                    }
                    state.statistics.queuedTransfers -= 1
                    if state.inFlightCount == 0 { state.busySinceNanoseconds = now }
                    state.inFlightCount += 1
                    state.statistics.inFlightBytes += candidate.byteCount
                    return candidate
                }
                return nil
            }
            guard let next else { return }
            let token = clock.transferStarted(link: link.name, byteCount: next.byteCount)
            link.start(next.request) { [self, clock] outcome in
                clock.transferFinished(token) { [self] in finish(next, outcome) }
            }
        }
    }

    private func finish(_ pending: Pending, _ outcome: TransferOutcome) {
        let now = clock.nanoseconds()
        state.withLock { state in
            state.inFlightCount -= 1
            state.statistics.inFlightBytes -= pending.byteCount
            if state.inFlightCount == 0 { state.statistics.busyNanoseconds += now - state.busySinceNanoseconds }
            switch outcome {
            case .completed:
                state.statistics.completedTransfers[pending.priority, default: 0] += 1
                state.statistics.completedBytes[pending.priority, default: 0] += pending.byteCount
                state.statistics.totalLatencyNanoseconds += now - pending.submittedNanoseconds
            case .failed: state.statistics.failedTransfers += 1
            case .cancelled: state.statistics.cancelledTransfers += 1
            }
        }
        pending.completion(outcome)
        dispatch()
    }
}
