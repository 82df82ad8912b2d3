internal import CTierKVLinux
import Glibc
import Synchronization
import TierKVCore

/// One call's work for `WorkerPool.run(count:_:)`: `run(worker:item:)` is called once per item.
/// A struct of the pointers and sizes the items need, built on the caller's stack.
public protocol WorkerPoolTask {
    /// Does item `item` on worker `worker` (in `0..<threadCount`; no two concurrent items share
    /// one, so it can index per-worker scratch).
    func run(worker: Int, item: Int)
}

extension WorkerPoolTask {
    /// Runs item `item` of the task at `task` (a `Self`). Called through the task's metatype, so
    /// the pool hands its helpers a pointer and a type, not a closure it would have to box.
    static func run(_ task: UnsafeRawPointer, worker: Int, item: Int) {
        task.assumingMemoryBound(to: Self.self).pointee.run(worker: worker, item: item)
    }
}

/// Runs `count` work items on `threadCount` workers (the caller is one of them) and returns
/// when all are done. The `threadCount - 1` helper threads are started once, in `init`, and
/// live until the pool is released: a call creates no thread, and a call with a
/// `WorkerPoolTask` allocates nothing (the closure form boxes its closure once per call).
///
/// Between calls a helper spins for `spinMicroseconds` (the next layer's call of a decode step
/// usually comes sooner) and then sleeps on a condition variable until the next call. Items
/// are claimed from a shared atomic counter, so uneven items balance themselves.
///
/// Calls are serialised: a second caller waits for the first. A call made from inside an item
/// (a nested call) runs its items on the calling thread instead of deadlocking.
public final class WorkerPool: @unchecked Sendable {
    // @unchecked: `job`, `jobType` and `jobCount` are written only by the caller holding `callLock`, before
    // the release store of `generation`, and read by helpers after its acquire load. A helper
    // joins a call by counting itself in `joined` and then checking that the call is still
    // open; the caller closes the call and then waits for `joined` to drop to 0 (both sides
    // sequentially consistent, so either the caller sees the helper or the helper sees the call
    // closed), and only then clears `job`. A helper that wakes late never touches a finished
    // call, and a call never waits for a helper that is still asleep.
    public let threadCount: Int
    /// How long a helper spins for the next call before it sleeps.
    public let spinMicroseconds: Int
    /// The default spin: a decode step's next layer usually calls within it.
    public static let defaultSpinMicroseconds = 50

    private let generation = Atomic<Int>(0)
    private let nextItem = Atomic<Int>(0)
    private let openCall = Atomic<Int>(0)
    private let joined = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// Serialises calls (a pthread mutex, which ThreadSanitizer sees; `Mutex` it does not).
    private let callLock: UnsafeMutablePointer<pthread_mutex_t>
    private var job: UnsafeRawPointer?
    private var jobType: (any WorkerPoolTask.Type)?
    private var jobCount = 0
    private let sleepers: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>
    private var threads: [pthread_t] = []
    private let starts: UnsafeMutablePointer<HelperStart>

    private struct HelperStart {
        var pool: Unmanaged<WorkerPool>
        var worker: Int
    }

    /// The CPUs the helper threads are restricted to (nil: wherever the scheduler puts them).
    public let cpus: [Int]?
    /// Helper threads running (`threadCount − 1` unless the system refused to create some; the
    /// caller then does their share of the items).
    public var helperCount: Int { threads.count }

    /// - Parameters:
    ///   - threadCount: workers including the caller (at least 1).
    ///   - spinMicroseconds: how long an idle helper polls for the next call before sleeping.
    public convenience init(threadCount: Int, spinMicroseconds: Int = WorkerPool.defaultSpinMicroseconds) {
        self.init(threadCount, spinMicroseconds, nil)
    }

    /// A pool whose helper threads run only on `cpus`: the CPUs of the NUMA node whose memory
    /// the items read (the warm arena's node), so their reads stay local. The calling thread,
    /// worker 0, keeps its own affinity.
    /// - Throws: `.invalidArgument` when `cpus` is empty or names a CPU this process may not run
    ///   on; `.systemCall` when a helper cannot be started with that affinity.
    public convenience init(threadCount: Int, spinMicroseconds: Int = WorkerPool.defaultSpinMicroseconds, cpus: [Int]) throws(TierKVError) {
        let allowed = Self.allowedCPUs()
        guard !cpus.isEmpty else { throw .invalid("a worker pool needs at least one CPU to run its helpers on") }
        if let outside = cpus.first(where: { !allowed.contains($0) }) {
            throw .invalid("CPU \(outside) is not one this process may run on (allowed: \(Self.describe(allowed)))")
        }
        self.init(threadCount, spinMicroseconds, cpus)
        if let failure = startFailure {
            throw TierKVError(
                .systemCall, "cannot start a worker thread on CPUs \(Self.describe(cpus)): \(TierKVError.errnoName(failure))",
                operation: "pthread_create", errno: failure)
        }
    }

    /// The CPUs the calling thread may run on, ascending.
    public static func allowedCPUs() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 4096)
        let count = Int(ctierkv_thread_cpus(&cpus, Int32(cpus.count)))
        return count > 0 ? cpus.prefix(count).map(Int.init) : []
    }

    /// The CPU the calling thread is running on now (`sched_getcpu`), for diagnostics.
    public static func currentCPU() -> Int { Int(ctierkv_current_cpu()) }

    /// The pthread_create error of the first helper that could not start, if any.
    private var startFailure: Int32?

    private init(_ threadCount: Int, _ spinMicroseconds: Int, _ cpus: [Int]?) {
        self.threadCount = max(1, threadCount)
        self.spinMicroseconds = max(0, spinMicroseconds)
        self.cpus = cpus
        sleepers = .allocate(capacity: 1)
        wake = .allocate(capacity: 1)
        callLock = .allocate(capacity: 1)
        pthread_mutex_init(sleepers, nil)
        pthread_mutex_init(callLock, nil)
        pthread_cond_init(wake, nil)
        let helpers = self.threadCount - 1
        starts = .allocate(capacity: max(1, helpers))
        threads.reserveCapacity(helpers)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        if let cpus {
            let set = cpus.map(Int32.init).withUnsafeBufferPointer { ctierkv_attr_set_cpus(&attributes, $0.baseAddress, Int32($0.count)) }
            if set != 0 {
                startFailure = set
                return
            }
        }
        for worker in stride(from: 1, through: helpers, by: 1) {
            (starts + worker - 1).initialize(to: HelperStart(pool: Unmanaged.passUnretained(self), worker: worker))
            var thread = pthread_t()
            let created = pthread_create(&thread, &attributes, { argument in
                let start = argument!.assumingMemoryBound(to: HelperStart.self).pointee
                start.pool.takeUnretainedValue().helperLoop(worker: start.worker)
                return nil
            }, starts + worker - 1)
            guard created == 0 else {
                // The pool still works with fewer helpers (`helperCount` says how many).
                startFailure = created
                break
            }
            threads.append(thread)
        }
    }

    /// `0-3,8` for a list of CPUs.
    static func describe(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var index = 0
        let sorted = cpus.sorted()
        while index < sorted.count {
            var end = index
            while end + 1 < sorted.count, sorted[end + 1] == sorted[end] + 1 { end += 1 }
            parts.append(end > index ? "\(sorted[index])-\(sorted[end])" : "\(sorted[index])")
            index = end + 1
        }
        return parts.isEmpty ? "none" : parts.joined(separator: ",")
    }

    deinit {
        stopping.store(true, ordering: .releasing)
        pthread_mutex_lock(sleepers)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(sleepers)
        for thread in threads { pthread_join(thread, nil) }
        pthread_cond_destroy(wake)
        pthread_mutex_destroy(sleepers)
        pthread_mutex_destroy(callLock)
        callLock.deallocate()
        wake.deallocate()
        sleepers.deallocate()
        starts.deallocate()
    }

    /// Calls `task.run(worker:item:)` once for every item in `0..<count`, concurrently.
    public func run<Task: WorkerPoolTask>(count: Int, _ task: Task) {
        guard count > 0 else { return }
        if threads.isEmpty || count == 1 {
            for item in 0..<count { task.run(worker: 0, item: item) }
            return
        }
        if pthread_mutex_trylock(callLock) != 0 {
            if WorkerPool.currentWorker != nil {
                // Nested inside an item: the pool is busy with the outer call.
                for item in 0..<count { task.run(worker: 0, item: item) }
                return
            }
            pthread_mutex_lock(callLock)
        }
        defer { pthread_mutex_unlock(callLock) }
        withUnsafePointer(to: task) { pointer in dispatch(count, UnsafeRawPointer(pointer), Task.self) }
    }

    /// Calls `body(worker, item)` once for every item in `0..<count`, concurrently; `worker` is
    /// in `0..<threadCount` and no two concurrent calls share one, so it can index per-worker
    /// scratch. Boxes the closure (one allocation per call); hot paths use a `WorkerPoolTask`.
    public func run(count: Int, _ body: (_ worker: Int, _ item: Int) -> Void) {
        withoutActuallyEscaping(body) { body in run(count: count, ClosureTask(body: body)) }
    }

    private struct ClosureTask: WorkerPoolTask {
        let body: (Int, Int) -> Void
        func run(worker: Int, item: Int) { body(worker, item) }
    }

    private func dispatch(_ count: Int, _ task: UnsafeRawPointer, _ type: any WorkerPoolTask.Type) {
        job = task
        jobType = type
        jobCount = count
        nextItem.store(0, ordering: .relaxed)
        pthread_mutex_lock(sleepers)
        let call = generation.add(1, ordering: .releasing).newValue
        openCall.store(call, ordering: .sequentiallyConsistent)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(sleepers)
        let outer = WorkerPool.currentWorker  // set when this thread is another pool's helper
        WorkerPool.currentWorker = 0
        work(worker: 0, task: task, type: type, count: count)
        WorkerPool.currentWorker = outer
        // Every item is claimed. Close the call, then wait for the helpers inside it (at most
        // one item each), yielding if one of them is not on a CPU.
        openCall.store(0, ordering: .sequentiallyConsistent)
        var polls = 0
        while joined.load(ordering: .sequentiallyConsistent) > 0 {
            polls += 1
            if polls < 4096 { ctierkv_cpu_relax() } else { sched_yield() }
        }
        job = nil
        jobType = nil
    }

    private func work(worker: Int, task: UnsafeRawPointer, type: any WorkerPoolTask.Type, count: Int) {
        while true {
            let item = nextItem.add(1, ordering: .relaxed).oldValue
            if item >= count { return }
            type.run(task, worker: worker, item: item)
        }
    }

    private func helperLoop(worker: Int) {
        WorkerPool.currentWorker = worker
        var seen = 0
        while true {
            // Spin for the next call, then sleep until it comes.
            var current = generation.load(ordering: .acquiring)
            if current == seen {
                let deadline = Self.nanoseconds() + UInt64(spinMicroseconds) * 1000
                var polls = 0
                while current == seen, !stopping.load(ordering: .relaxed) {
                    ctierkv_cpu_relax()
                    polls += 1
                    if polls % 64 == 0, Self.nanoseconds() > deadline { break }
                    current = generation.load(ordering: .acquiring)
                }
                if current == seen {
                    pthread_mutex_lock(sleepers)
                    while generation.load(ordering: .acquiring) == seen, !stopping.load(ordering: .acquiring) {
                        pthread_cond_wait(wake, sleepers)
                    }
                    pthread_mutex_unlock(sleepers)
                    current = generation.load(ordering: .acquiring)
                }
            }
            if stopping.load(ordering: .acquiring) { return }
            seen = current
            joined.add(1, ordering: .sequentiallyConsistent)
            if openCall.load(ordering: .sequentiallyConsistent) == current, let task = job, let type = jobType {
                work(worker: worker, task: task, type: type, count: jobCount)
            }
            joined.subtract(1, ordering: .sequentiallyConsistent)
        }
    }

    private static func nanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// The pool worker index of the current thread while it runs items (nil elsewhere), so a
    /// nested call can tell it must not wait for the pool.
    private static let currentWorkerKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    private static var currentWorker: Int? {
        get {
            guard let value = pthread_getspecific(currentWorkerKey) else { return nil }
            return Int(bitPattern: value) - 1
        }
        set {
            pthread_setspecific(currentWorkerKey, newValue.flatMap { UnsafeRawPointer(bitPattern: $0 + 1) })
        }
    }
}
