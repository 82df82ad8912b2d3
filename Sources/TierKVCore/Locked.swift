#if canImport(Glibc)
import Glibc
#endif

/// A value behind a `pthread_mutex_t`: `withLock` gives exclusive access.
///
/// TierKV uses this instead of `Synchronization.Mutex` because ThreadSanitizer on Linux does not
/// see `Mutex` (Swift 6.3 locks it with raw futex calls TSan does not intercept) and reports every
/// access behind it as a race (measured: 4 reports per run of an 8-thread push/pop loop), which
/// would make the TSan stress tests useless. pthread mutexes are intercepted; uncontended they cost
/// about the same.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched between pthread_mutex_lock and _unlock.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value. Do not call back into the same lock.
    @inline(__always)
    public func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// A pthread mutex guarding a section rather than a value. Not a `Locked<Void>`: ThreadSanitizer
/// reported the exclusivity accesses to an empty value as races (a zero-sized property has no
/// address of its own; seen in CI on the two such locks there were).
public final class PlainLock: Sendable {
    /// A one-byte value: its accesses have an address of their own, under the mutex.
    private let locked = Locked(false)

    public init() {}

    /// Runs `body` with the lock held. Do not call back into the same lock.
    @inline(__always)
    public func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        try locked.withLock { (_: inout Bool) throws(Failure) -> Result in try body() }
    }
}

/// A value behind a pthread mutex with a condition variable, for code that must wait until
/// another thread changes the value (a free slot, a finished transfer).
public final class ConditionLocked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with the mutex held.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var value: Value

    /// What a `waitingWithLock` step decided.
    public enum Step<Result> {
        case done(Result)
        /// Release the lock until another thread calls `broadcast`, then run the step again.
        case wait
    }

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deinitialize(count: 1)
        condition.deallocate()
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    @inline(__always)
    public func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Runs `step` under the lock until it returns `.done`, sleeping on the condition after each `.wait`.
    public func waitingWithLock<Result, Failure: Error>(_ step: (inout Value) throws(Failure) -> Step<Result>) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            switch try step(&value) {
            case .done(let result): return result
            case .wait: pthread_cond_wait(condition, mutex)
            }
        }
    }

    /// Like `waitingWithLock(_:)`, but before sleeping it calls `makeProgress` without the lock
    /// held: while that returns true (something changed, e.g. a virtual clock ran an event) the
    /// step runs again; when it returns false the thread sleeps on the condition as usual.
    public func waitingWithLock<Result, Failure: Error>(
        makingProgress makeProgress: () -> Bool, _ step: (inout Value) throws(Failure) -> Step<Result>
    ) throws(Failure) -> Result {
        while true {
            let outcome = try withLock { (value) throws(Failure) in try step(&value) }
            if case .done(let result) = outcome { return result }
            if !makeProgress() { return try waitingWithLock(step) }
        }
    }

    /// Wakes every waiter; call after changing what they wait for (with or without the lock held).
    public func broadcast() { pthread_cond_broadcast(condition) }
}
