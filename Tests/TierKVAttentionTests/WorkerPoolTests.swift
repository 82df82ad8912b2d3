import Glibc
import Synchronization
import Testing
import TierKVCore
import TierKVTestSupport
@testable import TierKVAttention
import TierKVAttentionKernels

/// Counts, per item, how often it ran, and checks that no two items run on one worker at once.
private final class Ledger: Sendable {
    private struct State {
        var runs: [Int]
        var busy: [Bool]
        var clashes = 0
        var badWorkers = 0
    }
    private let state: Locked<State>  // a pthread mutex: ThreadSanitizer sees it

    init(items: Int, workers: Int) {
        state = Locked(State(runs: [Int](repeating: 0, count: items), busy: [Bool](repeating: false, count: workers)))
    }

    func record(worker: Int, item: Int, spin: Int) {
        let valid = state.withLock { state in
            guard worker >= 0, worker < state.busy.count else {
                state.badWorkers += 1
                return false
            }
            if state.busy[worker] { state.clashes += 1 }
            state.busy[worker] = true
            state.runs[item] += 1
            return true
        }
        guard valid else { return }
        var x = UInt64(item)
        for _ in 0..<spin { x = x &* 6_364_136_223_846_793_005 &+ 1 }
        state.withLock { state in
            state.busy[worker] = false
            if x == 42 { state.clashes += 0 }  // keeps the loop
        }
    }

    var eachRanOnce: Bool { state.withLock { $0.runs.allSatisfy { $0 == 1 } } }
    var clashes: Int { state.withLock { $0.clashes } }
    var badWorkers: Int { state.withLock { $0.badWorkers } }
}

private struct LedgerTask: WorkerPoolTask {
    let ledger: Ledger
    let spin: Int
    func run(worker: Int, item: Int) { ledger.record(worker: worker, item: item, spin: spin) }
}

@Suite struct WorkerPoolTests {
    @Test(arguments: [1, 2, 4])
    func everyItemRunsOnceOnAWorkerOfItsOwn(threads: Int) {
        let pool = WorkerPool(threadCount: threads)
        // Back-to-back calls (helpers still spinning), then calls after the helpers went to sleep.
        for (index, count) in [1, 2, 7, 64, 1000, 3].enumerated() {
            let ledger = Ledger(items: count, workers: threads)
            if index % 2 == 0 {
                pool.run(count: count, LedgerTask(ledger: ledger, spin: 2000))
            } else {
                pool.run(count: count) { worker, item in ledger.record(worker: worker, item: item, spin: 2000) }
            }
            #expect(ledger.eachRanOnce, "\(count) items on \(threads) threads")
            #expect(ledger.clashes == 0)
            #expect(ledger.badWorkers == 0)
            if index == 3 { usleep(UInt32(pool.spinMicroseconds * 4)) }
        }
        pool.run(count: 0) { _, _ in Issue.record("an empty call ran an item") }
    }

    @Test func aCallFromInsideAnItemRunsOnTheCallingThread() {
        let pool = WorkerPool(threadCount: 3)
        let outer = Ledger(items: 6, workers: 3)
        let inner = Atomic<Int>(0)
        pool.run(count: 6) { worker, item in
            outer.record(worker: worker, item: item, spin: 100)
            pool.run(count: 5) { _, _ in inner.add(1, ordering: .relaxed) }
        }
        #expect(outer.eachRanOnce)
        #expect(inner.load(ordering: .relaxed) == 30)
    }

    @Test func callersOnSeveralThreadsTakeTurns() async {
        let pool = WorkerPool(threadCount: 2)
        let ledgers = (0..<4).map { _ in Ledger(items: 200, workers: 2) }
        await withTaskGroup(of: Void.self) { group in
            for ledger in ledgers {
                group.addTask {
                    pool.run(count: 200, LedgerTask(ledger: ledger, spin: 500))
                }
            }
        }
        for ledger in ledgers {
            #expect(ledger.eachRanOnce)
            #expect(ledger.clashes == 0)
        }
    }

    @Test func helpersRunOnlyOnTheCPUsTheyAreGiven() throws {
        let allowed = WorkerPool.allowedCPUs()
        try #require(!allowed.isEmpty)
        let target = allowed.last!
        let pool = try WorkerPool(threadCount: 3, cpus: [target])
        #expect(pool.helperCount == 2 && pool.cpus == [target])
        let seen = Locked<Set<Int>>([])
        for _ in 0..<20 {
            pool.run(count: 64) { worker, _ in
                var x = 0.0
                for index in 0..<20_000 { x += Double(index & 7) }
                if worker != 0 { _ = seen.withLock { $0.insert(WorkerPool.currentCPU()) } }
                if x < 0 { Issue.record("unreachable") }
            }
        }
        // Every item a helper ran, it ran on the one CPU it was given (the caller, worker 0,
        // runs wherever it was).
        #expect(seen.withLock { $0 } == [target])
    }

    @Test func cpusThisProcessMayNotUseAreRefusedByName() {
        #expect(throws: TierKVError.self) { try WorkerPool(threadCount: 2, cpus: []) }
        do {
            _ = try WorkerPool(threadCount: 2, cpus: [100_000])
            Issue.record("CPU 100000 was accepted")
        } catch {
            #expect(error.message.contains("CPU 100000 is not one this process may run on (allowed: "), "\(error.message)")
        }
        #expect(WorkerPool.describe([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11")
    }

    @Test func pinnedAttentionGivesTheSameResultAsUnpinned() throws {
        let shape = try AttentionShape(queryHeads: 8, kvHeads: 2, headDim: 64, dtype: .fp32)
        let tokens = 100
        let row = shape.kvHeads * shape.headDim
        var generator = SeededGenerator(seed: 5)
        let keys = (0..<(tokens * row)).map { _ in Float.random(in: -1...1, using: &generator) }
        let values = (0..<(tokens * row)).map { _ in Float.random(in: -1...1, using: &generator) }
        let query = (0..<(shape.queryHeads * shape.headDim)).map { _ in Float.random(in: -1...1, using: &generator) }
        try keys.withUnsafeBytes { k in
            try values.withUnsafeBytes { v in
                let blocks = stride(from: 0, to: tokens, by: 16).map { first in
                    KVBlockView(
                        keys: k.baseAddress! + first * row * 4, values: v.baseAddress! + first * row * 4,
                        tokenCount: min(16, tokens - first))
                }
                let free = try CPUAttention(threadCount: 2).partial(shape, query: query, blocks: blocks, splits: 4)
                let pinned = try CPUAttention(threadCount: 2, cpus: [WorkerPool.allowedCPUs().first!])
                    .partial(shape, query: query, blocks: blocks, splits: 4)
                #expect(pinned.output == free.output && pinned.maxima == free.maxima && pinned.sums == free.sums)
            }
        }
    }

    @Test func releasingAPoolStopsItsThreads() {
        // Pools that are created, used (or not) and released: deinit wakes and joins the
        // helpers, spinning or asleep, without hanging.
        for round in 0..<50 {
            let pool = WorkerPool(threadCount: 3, spinMicroseconds: round % 2 == 0 ? 0 : 1000)
            if round % 3 != 0 {
                let ledger = Ledger(items: 10, workers: 3)
                pool.run(count: 10, LedgerTask(ledger: ledger, spin: 10))
                #expect(ledger.eachRanOnce)
            }
        }
    }
}
