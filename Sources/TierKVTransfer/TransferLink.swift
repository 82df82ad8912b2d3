import TierKVCore

/// Why a transfer runs, in the order the scheduler serves them: the engine is waiting for a
/// demand fetch; a prefetch is a bet on the future; a write-back only frees space later.
public enum TransferPriority: Int, Sendable, Comparable, CaseIterable, CustomStringConvertible {
    case demand = 0
    case prefetch = 1
    case writeBack = 2

    public static func < (lhs: TransferPriority, rhs: TransferPriority) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String {
        switch self {
        case .demand: "demand"
        case .prefetch: "prefetch"
        case .writeBack: "write-back"
        }
    }
}

/// How a transfer ended.
public enum TransferOutcome: Sendable {
    case completed
    /// Removed from the queue by `cancel` before it started.
    case cancelled
    case failed(TierKVError)
}

/// One direction of data movement (host→device, device→host, NVMe→host, host→NVMe) that runs
/// requests asynchronously. The `TransferScheduler` decides what runs when; the link only runs it.
public protocol TransferLink: AnyObject, Sendable {
    associatedtype Request: Sendable
    /// Name for counters and logs (`h2d`, `nvme_read`...).
    var name: String { get }
    /// Bytes `request` moves, for the in-flight bound and counters.
    func byteCount(of request: Request) -> Int
    /// Starts `request`; calls `completion` exactly once, on any thread, when it has finished.
    func start(_ request: Request, completion: @escaping @Sendable (TransferOutcome) -> Void)
}

/// Where time comes from: the monotonic clock in the library, a virtual clock in the simulator.
///
/// A clock also decides when a finished transfer is reported. A real clock reports it at once.
/// A virtual clock (the simulator's) holds it until the transfer is done in modelled time, so the
/// real manager and scheduler run unchanged over modelled links: they see transfers complete in
/// the order and at the times the model says.
public protocol TransferClock: Sendable {
    func nanoseconds() -> UInt64
    /// A transfer of `byteCount` bytes starts on the link named `link` now. Returns a token for
    /// `transferFinished`.
    func transferStarted(link: String, byteCount: Int) -> UInt64
    /// The link finished the transfer `token`; `deliver` runs when it is finished in this clock's
    /// time (at once, on the calling thread, for a real clock).
    func transferFinished(_ token: UInt64, deliver: @escaping @Sendable () -> Void)
    /// Called by a thread about to wait for transfers to finish. A virtual clock runs its next
    /// event on this thread (time moves to it) and returns true; a real clock returns false and
    /// the caller waits as usual.
    func advanceToNextEvent() -> Bool
}

extension TransferClock {
    public func transferStarted(link: String, byteCount: Int) -> UInt64 { 0 }
    public func transferFinished(_ token: UInt64, deliver: @escaping @Sendable () -> Void) { deliver() }
    public func advanceToNextEvent() -> Bool { false }
}

/// `CLOCK_MONOTONIC`.
public struct MonotonicClock: TransferClock {
    public init() {}
    public func nanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

#if canImport(Glibc)
import Glibc
#endif
