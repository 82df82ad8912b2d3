import Dispatch
import Synchronization

/// Runs `count` work items on `threadCount` workers (the caller is one of them) and returns
/// when all are done. Built on libdispatch's persistent thread pool: no thread is created per
/// call. Items are claimed from a shared atomic counter, so uneven items balance themselves.
public struct WorkerPool: Sendable {
    public let threadCount: Int

    public init(threadCount: Int) {
        self.threadCount = max(1, threadCount)
    }

    /// Calls `body(worker, item)` once for every item in `0..<count`, concurrently; `worker` is
    /// in `0..<threadCount` and no two concurrent calls share one, so it can index per-worker scratch.
    public func run(count: Int, _ body: (_ worker: Int, _ item: Int) -> Void) {
        guard count > 0 else { return }
        let workers = min(threadCount, count)
        if workers == 1 {
            for item in 0..<count { body(0, item) }
            return
        }
        let next = Atomic<Int>(0)
        withoutActuallyEscaping(body) { body in
            let work = UncheckedBody(body: body)
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                while true {
                    let item = next.add(1, ordering: .relaxed).oldValue
                    if item >= count { return }
                    work.body(worker, item)
                }
            }
        }
    }
}

/// The caller's closure, shared with the pool's threads for the duration of `run`.
private struct UncheckedBody: @unchecked Sendable {
    // @unchecked: each item index is claimed once, and callers write only to that item's outputs.
    let body: (Int, Int) -> Void
}
