import Dispatch
import Synchronization
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// Host memory standing in for an accelerator, with the same asynchronous semantics: a copy's
/// bytes arrive at its destination only when its modelled time (latency + bytes ÷ bandwidth,
/// queued behind earlier copies on the stream) has passed, so code that reads a destination
/// before its fence completes sees stale bytes in tests, as it would on a GPU.
///
/// Always reported as emulated (`deviceDescription.isEmulated`). Used by tests, the simulator and
/// machines without a GPU; it never stands in for a GPU silently. Thread-safe.
public final class EmulatedAccelerator: Accelerator, @unchecked Sendable {
    // @unchecked: mutable state (the allocation table) is behind a lock; device memory is
    // written only by stream queues, the way a DMA engine would.

    /// Bandwidth and per-copy latency of the modelled host link.
    public struct LinkModel: Sendable, Hashable {
        public var hostToDeviceBytesPerSecond: Double
        public var deviceToHostBytesPerSecond: Double
        public var latencySeconds: Double

        public init(hostToDeviceBytesPerSecond: Double, deviceToHostBytesPerSecond: Double, latencySeconds: Double) {
            self.hostToDeviceBytesPerSecond = hostToDeviceBytesPerSecond
            self.deviceToHostBytesPerSecond = deviceToHostBytesPerSecond
            self.latencySeconds = latencySeconds
        }

        /// PCIe 5.0 x16 as an H100 sees it: 63 GB/s raw per direction, ~50 GB/s achieved with
        /// pinned memory (NVIDIA bandwidthTest figures); ~5 µs per copy call.
        public static let pcieGen5 = LinkModel(
            hostToDeviceBytesPerSecond: 50e9, deviceToHostBytesPerSecond: 50e9, latencySeconds: 5e-6)
        /// No modelled delay: copies complete as soon as the stream's queue runs them.
        public static let instant = LinkModel(
            hostToDeviceBytesPerSecond: .infinity, deviceToHostBytesPerSecond: .infinity, latencySeconds: 0)
    }

    public let link: LinkModel
    public let deviceDescription: AcceleratorDescription
    private let allocations = Locked<[UInt64: Int]>([:])
    private let usedByteCount = Atomic<Int>(0)

    public init(memoryByteCount: Int, link: LinkModel = .pcieGen5) {
        self.link = link
        deviceDescription = AcceleratorDescription(
            name: "emulated accelerator (host memory)", isEmulated: true, memoryByteCount: UInt64(memoryByteCount),
            pciBusID: nil)
    }

    deinit {
        for (address, _) in allocations.withLock({ $0 }) {
            free(UnsafeMutableRawPointer(bitPattern: UInt(address)))
        }
    }

    public func allocateMemory(byteCount: Int) throws(TierKVError) -> DeviceAddress {
        guard byteCount > 0 else { throw .invalid("device allocation of \(byteCount) bytes") }
        let capacity = Int(deviceDescription.memoryByteCount)
        let used = usedByteCount.add(byteCount, ordering: .relaxed).newValue
        guard used <= capacity else {
            usedByteCount.subtract(byteCount, ordering: .relaxed)
            throw TierKVError(
                .capacityExceeded,
                "cannot allocate \(ByteCount(UInt64(byteCount))) on the emulated accelerator: \(ByteCount(UInt64(capacity - (used - byteCount)))) free of \(ByteCount(UInt64(capacity)))")
        }
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, 4096, byteCount) == 0, let pointer else {
            usedByteCount.subtract(byteCount, ordering: .relaxed)
            throw TierKVError(.systemCall, "host allocation for the emulated accelerator failed", operation: "posix_memalign")
        }
        // Garbage, not zeros, so a read of never-written device memory is noticed.
        memset(pointer, 0xA5, byteCount)
        let address = UInt64(UInt(bitPattern: pointer))
        allocations.withLock { $0[address] = byteCount }
        return DeviceAddress(address)
    }

    public func freeMemory(_ address: DeviceAddress) throws(TierKVError) {
        guard let byteCount = allocations.withLock({ $0.removeValue(forKey: address.rawValue) }) else {
            throw .invalid("\(address) is not an allocation of this emulated accelerator (double free?)")
        }
        usedByteCount.subtract(byteCount, ordering: .relaxed)
        free(UnsafeMutableRawPointer(bitPattern: UInt(address.rawValue)))
    }

    public func makeStream() throws(TierKVError) -> any AcceleratorStream { EmulatedStream(accelerator: self) }

    public func registerHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError) {}
    public func unregisterHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError) {}

    /// The host bytes backing `byteCount` bytes at `address`, for tests and the simulator to
    /// inspect "device" memory. - Throws: when the range is not inside one allocation.
    public func deviceBytes(at address: DeviceAddress, byteCount: Int) throws(TierKVError) -> UnsafeMutableRawBufferPointer {
        try checkRange(address, byteCount)
        return UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: UInt(address.rawValue)), count: byteCount)
    }

    /// Like the GPU's MMU: a copy outside any allocation is an error, not a silent scribble.
    func checkRange(_ address: DeviceAddress, _ byteCount: Int) throws(TierKVError) {
        let inside = allocations.withLock { table in
            table.contains { base, size in address.rawValue >= base && address.rawValue + UInt64(byteCount) <= base + UInt64(size) }
        }
        guard inside else {
            throw .invalid("\(byteCount) bytes at \(address) are not inside one emulated device allocation (illegal address)")
        }
    }
}

/// An emulated stream: a serial queue that applies each copy at its modelled completion time.
final class EmulatedStream: AcceleratorStream, @unchecked Sendable {
    // @unchecked: `tailNanoseconds` is behind a lock; pointers handed to the queue follow the
    // stream contract (unchanged until a later fence completes).
    let accelerator: EmulatedAccelerator
    private let queue = DispatchQueue(label: "tierkv.emulated-stream")
    private let tailNanoseconds = Locked<UInt64>(0)

    init(accelerator: EmulatedAccelerator) { self.accelerator = accelerator }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Books the copy on the modelled link and returns when it completes.
    private func schedule(byteCount: Int, bytesPerSecond: Double) -> UInt64 {
        let link = accelerator.link
        let seconds = link.latencySeconds + (bytesPerSecond.isFinite ? Double(byteCount) / bytesPerSecond : 0)
        return tailNanoseconds.withLock { tail in
            tail = max(tail, Self.now()) + UInt64(seconds * 1e9)
            return tail
        }
    }

    private func enqueue(until end: UInt64, _ work: @escaping @Sendable () -> Void) {
        queue.async {
            Self.sleep(until: end)
            work()
        }
    }

    static func sleep(until deadline: UInt64) {
        while true {
            let now = now()
            if now >= deadline { return }
            let remaining = deadline - now
            if remaining > 100_000 {
                var request = timespec(tv_sec: Int(remaining / 1_000_000_000), tv_nsec: Int(remaining % 1_000_000_000))
                nanosleep(&request, nil)
            }
        }
    }

    func copyToDevice(from source: UnsafeRawPointer, to destination: DeviceAddress, byteCount: Int) throws(TierKVError) {
        try accelerator.checkRange(destination, byteCount)
        let end = schedule(byteCount: byteCount, bytesPerSecond: accelerator.link.hostToDeviceBytesPerSecond)
        let copy = RawCopy(destination: UnsafeMutableRawPointer(bitPattern: UInt(destination.rawValue))!, source: source, byteCount: byteCount)
        enqueue(until: end) { copy.perform() }
    }

    func copyToHost(from source: DeviceAddress, to destination: UnsafeMutableRawPointer, byteCount: Int) throws(TierKVError) {
        try accelerator.checkRange(source, byteCount)
        let end = schedule(byteCount: byteCount, bytesPerSecond: accelerator.link.deviceToHostBytesPerSecond)
        let copy = RawCopy(destination: destination, source: UnsafeRawPointer(bitPattern: UInt(source.rawValue))!, byteCount: byteCount)
        enqueue(until: end) { copy.perform() }
    }

    func recordFence(timing: Bool) throws(TierKVError) -> any AcceleratorFence {
        let end = tailNanoseconds.withLock { tail in max(tail, Self.now()) }
        let fence = EmulatedFence(modelledNanoseconds: end)
        enqueue(until: end) { fence.complete() }
        return fence
    }

    func synchronize() throws(TierKVError) {
        try recordFence(timing: false).wait()
    }
}

/// A memcpy to run later on a stream queue.
struct RawCopy: @unchecked Sendable {
    // @unchecked: the stream contract keeps both ranges alive and untouched until completion.
    let destination: UnsafeMutableRawPointer
    let source: UnsafeRawPointer
    let byteCount: Int
    func perform() { memcpy(destination, source, byteCount) }
}

final class EmulatedFence: AcceleratorFence, Sendable {
    let modelledNanoseconds: UInt64
    private let done = Atomic<Bool>(false)
    private let group = DispatchGroup()

    init(modelledNanoseconds: UInt64) {
        self.modelledNanoseconds = modelledNanoseconds
        group.enter()
    }

    func complete() {
        done.store(true, ordering: .releasing)
        group.leave()
    }

    func isComplete() throws(TierKVError) -> Bool { done.load(ordering: .acquiring) }

    func wait() throws(TierKVError) { group.wait() }

    func seconds(since earlier: any AcceleratorFence) throws(TierKVError) -> Double {
        guard let start = earlier as? EmulatedFence else {
            throw .invalid("an emulated fence can only be timed against another emulated fence")
        }
        return Double(Int64(modelledNanoseconds) - Int64(start.modelledNanoseconds)) / 1e9
    }
}
