import Dispatch
import Synchronization
import Testing
@testable import TierKV

#if canImport(Glibc)
import Glibc
#endif

/// A link whose transfers finish only when the test says so.
final class ManualLink: TransferLink, Sendable {
    struct Started: Sendable {
        let label: String
        let completion: @Sendable (TransferOutcome) -> Void
    }
    let started = Locked<[Started]>([])
    var name: String { "manual" }
    func byteCount(of request: (String, Int)) -> Int { request.1 }
    func start(_ request: (String, Int), completion: @escaping @Sendable (TransferOutcome) -> Void) {
        started.withLock { $0.append(Started(label: request.0, completion: completion)) }
    }
    var labels: [String] { started.withLock { $0.map(\.label) } }
    func finish(_ label: String, _ outcome: TransferOutcome = .completed) {
        let entry = started.withLock { list in list.first { $0.label == label } }
        entry?.completion(outcome)
    }
}

/// A clock the test moves by hand.
final class ManualClock: TransferClock, Sendable {
    let now = Atomic<UInt64>(0)
    func nanoseconds() -> UInt64 { now.load(ordering: .relaxed) }
    func advance(_ nanoseconds: UInt64) { now.add(nanoseconds, ordering: .relaxed) }
}

/// Collects outcomes by label.
final class Outcomes: Sendable {
    let values = Locked<[String: String]>([:])
    func record(_ label: String) -> @Sendable (TransferOutcome) -> Void {
        { outcome in
            let text: String
            switch outcome {
            case .completed: text = "completed"
            case .cancelled: text = "cancelled"
            case .failed(let error): text = "failed: \(error.message)"
            }
            self.values.withLock { $0[label] = text }
        }
    }
    subscript(label: String) -> String? { values.withLock { $0[label] } }
}

@Suite struct TransferSchedulerTests {
    @Test func servesDemandBeforePrefetchBeforeWriteBackWithinTheInFlightBound() {
        let link = ManualLink()
        let scheduler = TransferScheduler(link: link, maximumBytesInFlight: 100)
        scheduler.submit(("w1", 60), priority: .writeBack)  // starts at once: the link was idle
        scheduler.submit(("w2", 60), priority: .writeBack)
        scheduler.submit(("p1", 60), priority: .prefetch)
        scheduler.submit(("d1", 60), priority: .demand)
        #expect(link.labels == ["w1"])
        link.finish("w1")
        #expect(link.labels == ["w1", "d1"])
        link.finish("d1")
        #expect(link.labels == ["w1", "d1", "p1"])
        link.finish("p1")
        #expect(link.labels == ["w1", "d1", "p1", "w2"])
    }

    @Test func boundsBytesInFlightButAlwaysRunsOne() {
        let link = ManualLink()
        let scheduler = TransferScheduler(link: link, maximumBytesInFlight: 100)
        scheduler.submit(("big", 500), priority: .demand)
        scheduler.submit(("a", 40), priority: .demand)
        #expect(link.labels == ["big"])
        link.finish("big")
        scheduler.submit(("b", 40), priority: .demand)
        scheduler.submit(("c", 40), priority: .demand)
        #expect(link.labels == ["big", "a", "b"])
        #expect(scheduler.statistics.inFlightBytes == 80)
        #expect(scheduler.statistics.queuedTransfers == 1)
    }

    @Test func cancelsQueuedPrefetchesButNotStartedOnes() {
        let link = ManualLink()
        let outcomes = Outcomes()
        let scheduler = TransferScheduler(link: link, maximumBytesInFlight: 10)
        let running = scheduler.submit(("p1", 10), priority: .prefetch, completion: outcomes.record("p1"))
        let queued = scheduler.submit(("p2", 10), priority: .prefetch, completion: outcomes.record("p2"))
        #expect(scheduler.cancel(queued))
        #expect(outcomes["p2"] == "cancelled")
        #expect(!scheduler.cancel(running))
        #expect(!scheduler.cancel(queued), "cancelling twice does nothing")
        link.finish("p1")
        #expect(outcomes["p1"] == "completed")
        #expect(link.labels == ["p1"])
        #expect(scheduler.statistics.cancelledTransfers == 1)
    }

    @Test func countsBytesLatencyBusyTimeAndFailures() {
        let link = ManualLink()
        let clock = ManualClock()
        let outcomes = Outcomes()
        let scheduler = TransferScheduler(link: link, maximumBytesInFlight: 1000, clock: clock)
        scheduler.submit(("a", 100), priority: .demand)
        scheduler.submit(("b", 200), priority: .prefetch)
        clock.advance(1000)
        link.finish("a")
        clock.advance(500)
        link.finish("b", .failed(TierKVError(.systemCall, "EIO")))
        clock.advance(10_000)  // idle: not busy
        scheduler.submit(("c", 50), priority: .writeBack, completion: outcomes.record("c"))
        clock.advance(250)
        link.finish("c")
        let statistics = scheduler.statistics
        #expect(statistics.completedBytes == [.demand: 100, .writeBack: 50])
        #expect(statistics.failedTransfers == 1)
        #expect(statistics.busyNanoseconds == 1500 + 250)
        #expect(statistics.totalLatencyNanoseconds == 1000 + 250)
        #expect(outcomes["c"] == "completed")
    }
}

@Suite struct AcceleratorLinkTests {
    @Test func scheduledCopiesMoveRealBytesBothWays() throws {
        let accelerator = EmulatedAccelerator(memoryByteCount: 16 << 20)
        let arena = try HostArena(.init(slotByteCount: 64 << 10, slotCount: 8, locksMemory: false))
        let pool = try DeviceSlotPool(accelerator: accelerator, slotByteCount: 64 << 10, slotCount: 4)
        let upload = TransferScheduler(link: try AcceleratorLink(accelerator: accelerator, direction: .hostToDevice), maximumBytesInFlight: 1 << 20)
        let download = TransferScheduler(link: try AcceleratorLink(accelerator: accelerator, direction: .deviceToHost), maximumBytesInFlight: 1 << 20)
        for slot in 0..<4 { memset(arena.address(ofSlot: slot), Int32(slot + 1), 64 << 10) }
        let copies = (0..<4).map { DeviceCopy(host: arena.address(ofSlot: $0), device: pool.address(ofSlot: $0), byteCount: 64 << 10) }
        let uploaded = Completion()
        upload.submit(copies, priority: .demand) { uploaded.signal($0) }
        uploaded.wait()
        let back = (0..<4).map { DeviceCopy(host: arena.address(ofSlot: 4 + $0), device: pool.address(ofSlot: $0), byteCount: 64 << 10) }
        let downloaded = Completion()
        download.submit(back, priority: .demand) { downloaded.signal($0) }
        downloaded.wait()
        #expect(uploaded.succeeded && downloaded.succeeded)
        for slot in 0..<4 { #expect(memcmp(arena.address(ofSlot: slot), arena.address(ofSlot: 4 + slot), 64 << 10) == 0) }
        #expect(upload.statistics.completedBytes[.demand] == 256 << 10)
    }

    @Test func aBadCopyFailsTheTransferWithTheBackendsError() throws {
        let accelerator = EmulatedAccelerator(memoryByteCount: 1 << 20)
        let scheduler = TransferScheduler(link: try AcceleratorLink(accelerator: accelerator, direction: .hostToDevice), maximumBytesInFlight: 1 << 20)
        var host = [UInt8](repeating: 0, count: 64)
        let done = Completion()
        host.withUnsafeMutableBytes { bytes in
            _ = scheduler.submit([DeviceCopy(host: bytes.baseAddress!, device: DeviceAddress(16), byteCount: 64)], priority: .demand) { done.signal($0) }
        }
        done.wait()
        #expect(!done.succeeded)
        #expect(scheduler.statistics.failedTransfers == 1)
    }

    /// A batch whose third copy is bad: the two before it are already on the stream. The failure
    /// is reported only once they have landed, so the caller may free or reuse their memory then.
    @Test func aFailedBatchIsReportedOnlyAfterItsEnqueuedCopiesLand() throws {
        let slow = EmulatedAccelerator.LinkModel(hostToDeviceBytesPerSecond: 1e9, deviceToHostBytesPerSecond: 1e9, latencySeconds: 0.02)
        let accelerator = EmulatedAccelerator(memoryByteCount: 1 << 20, link: slow)
        let pool = try DeviceSlotPool(accelerator: accelerator, slotByteCount: 4096, slotCount: 2)
        let link = try AcceleratorLink(accelerator: accelerator, direction: .deviceToHost)
        let source = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try source.withUnsafeBytes { bytes in
            let upload = try accelerator.makeStream()
            try upload.copyToDevice(from: bytes.baseAddress!, to: pool.address(ofSlot: 0), byteCount: 4096)
            try upload.copyToDevice(from: bytes.baseAddress!, to: pool.address(ofSlot: 1), byteCount: 4096)
            try upload.synchronize()
        }
        let landed = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * 4096, alignment: 64)
        defer { landed.deallocate() }
        landed.initializeMemory(as: UInt8.self, repeating: 0)
        // Past the end of device memory, and after the good ones in device order (the link
        // coalesces and orders copies by device address).
        let bad = DeviceCopy(host: landed.baseAddress!, device: pool.address(ofSlot: 1) + (4 << 20), byteCount: 4096)
        let copies = [
            DeviceCopy(host: landed.baseAddress!, device: pool.address(ofSlot: 0), byteCount: 4096),
            DeviceCopy(host: landed.baseAddress! + 4096, device: pool.address(ofSlot: 1), byteCount: 4096), bad,
        ]
        let failed = Completion()
        let sawLanded = Locked(false)
        let address = UInt(bitPattern: landed.baseAddress!)
        link.start(copies) { outcome in
            // What the caller sees when it is told: both good copies are in place.
            let base = UnsafeRawPointer(bitPattern: address)!
            sawLanded.withLock { $0 = memcmp(base, source, 4096) == 0 && memcmp(base + 4096, source, 4096) == 0 }
            failed.signal(outcome)
        }
        failed.wait()
        #expect(!failed.succeeded)
        #expect(sawLanded.withLock { $0 })
    }
}

@Suite struct CopyCoalescingTests {
    @Test func runsContiguousOnBothSidesMergeAndNothingElseDoes() {
        let host = UnsafeMutableRawPointer(bitPattern: 0x10_0000)!
        func copy(_ hostOffset: Int, _ deviceOffset: Int, _ bytes: Int = 4096) -> DeviceCopy {
            DeviceCopy(host: host + hostOffset, device: DeviceAddress(0x9000_0000) + deviceOffset, byteCount: bytes)
        }
        // Given out of order: device 0-8K (host 0-8K) merge; device 8K continues in device memory
        // but its host range does not; device 16K-32K (host 64K-80K) merge across a 8 KiB copy.
        let copies = [copy(65536 + 8192, 24576, 8192), copy(4096, 4096), copy(40960, 8192), copy(0, 0), copy(65536, 16384, 8192)]
        #expect(DeviceCopy.coalescing(copies) == [copy(0, 0, 8192), copy(40960, 8192), copy(65536, 16384, 16384)])
        #expect(DeviceCopy.coalescing([copy(0, 0)]) == [copy(0, 0)])
        #expect(DeviceCopy.coalescing([]) == [])
        // Contiguous on the host only: two copies.
        #expect(DeviceCopy.coalescing([copy(0, 0), copy(4096, 8192)]).count == 2)
    }

    /// What reaches the stream: the link merges contiguous copies and submits the rest as one
    /// batch; the bytes still land where each block's copy says.
    @Test func theLinkSubmitsOneMergedBatch() throws {
        let inner = EmulatedAccelerator(memoryByteCount: 1 << 20, link: .instant)
        let accelerator = BatchRecordingAccelerator(inner)
        let arena = try HostArena(.init(slotByteCount: 4096, slotCount: 8, locksMemory: false))
        let pool = try DeviceSlotPool(accelerator: inner, slotByteCount: 4096, slotCount: 4)
        for slot in 0..<4 { memset(arena.address(ofSlot: slot), Int32(slot + 1), 4096) }
        let link = TransferScheduler(
            link: try AcceleratorLink(accelerator: accelerator, direction: .hostToDevice), maximumBytesInFlight: 1 << 20)
        let pairs = [(0, 0), (1, 1), (3, 2), (2, 3)]  // host slot → device slot
        let done = Completion()
        link.submit(pairs.map { DeviceCopy(host: arena.address(ofSlot: $0.0), device: pool.address(ofSlot: $0.1), byteCount: 4096) },
            priority: .demand) { done.signal($0) }
        done.wait()
        #expect(done.succeeded)
        #expect(accelerator.batches.withLock { $0 } == [[8192, 4096, 4096]])
        for (host, device) in pairs {
            let bytes = try inner.deviceBytes(at: pool.address(ofSlot: device), byteCount: 4096)
            #expect(memcmp(bytes.baseAddress!, arena.address(ofSlot: host), 4096) == 0)
        }
    }
}

/// An accelerator that records the byte counts of every batch its streams are handed, and
/// passes everything on to the emulation.
final class BatchRecordingAccelerator: Accelerator, Sendable {
    let inner: EmulatedAccelerator
    let batches = Locked<[[Int]]>([])
    init(_ inner: EmulatedAccelerator) { self.inner = inner }
    var deviceDescription: AcceleratorDescription { inner.deviceDescription }
    func allocateMemory(byteCount: Int) throws(TierKVError) -> DeviceAddress { try inner.allocateMemory(byteCount: byteCount) }
    func freeMemory(_ address: DeviceAddress) throws(TierKVError) { try inner.freeMemory(address) }
    func makeStream() throws(TierKVError) -> any AcceleratorStream { Stream(try inner.makeStream(), batches) }
    func registerHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError) {}
    func unregisterHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError) {}

    final class Stream: AcceleratorStream, Sendable {
        let inner: any AcceleratorStream
        let batches: Locked<[[Int]]>
        init(_ inner: any AcceleratorStream, _ batches: Locked<[[Int]]>) {
            self.inner = inner
            self.batches = batches
        }
        func copyToDevice(from source: UnsafeRawPointer, to destination: DeviceAddress, byteCount: Int) throws(TierKVError) {
            try inner.copyToDevice(from: source, to: destination, byteCount: byteCount)
        }
        func copyToHost(from source: DeviceAddress, to destination: UnsafeMutableRawPointer, byteCount: Int) throws(TierKVError) {
            try inner.copyToHost(from: source, to: destination, byteCount: byteCount)
        }
        func copyToDevice(_ copies: [DeviceCopy]) throws(TierKVError) {
            batches.withLock { $0.append(copies.map(\.byteCount)) }
            try inner.copyToDevice(copies)
        }
        func copyToHost(_ copies: [DeviceCopy]) throws(TierKVError) {
            batches.withLock { $0.append(copies.map(\.byteCount)) }
            try inner.copyToHost(copies)
        }
        func recordFence(timing: Bool) throws(TierKVError) -> any AcceleratorFence { try inner.recordFence(timing: timing) }
        func synchronize() throws(TierKVError) { try inner.synchronize() }
    }
}

/// Waits for one completion.
final class Completion: Sendable {
    private let outcome = Locked<Bool?>(nil)
    private let semaphore = DispatchSemaphore(value: 0)
    func signal(_ value: TransferOutcome) {
        outcome.withLock { if case .completed = value { $0 = true } else { $0 = false } }
        semaphore.signal()
    }
    func wait() { semaphore.wait() }
    var succeeded: Bool { outcome.withLock { $0 } == true }
}
