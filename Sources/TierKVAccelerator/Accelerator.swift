import TierKVCore

/// An address in accelerator memory (`CUdeviceptr` for CUDA; a host address for the emulation).
public struct DeviceAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func + (lhs: DeviceAddress, rhs: Int) -> DeviceAddress { DeviceAddress(lhs.rawValue + UInt64(rhs)) }
    public static func < (lhs: DeviceAddress, rhs: DeviceAddress) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// What a backend says about itself. Anything that reports a device shows `isEmulated`.
public struct AcceleratorDescription: Sendable, Hashable {
    public var name: String
    /// True for `EmulatedAccelerator`: host memory standing in for a device, never a GPU.
    public var isEmulated: Bool
    public var memoryByteCount: UInt64
    public var pciBusID: String?

    /// `NVIDIA H100 80GB HBM3` or `emulated accelerator (host memory)`.
    public var displayName: String { isEmulated ? "\(name) [EMULATED: host memory, modelled link]" : name }
}

/// The hot tier's backend: device memory and asynchronous copies to and from host memory.
///
/// Implementations: `CUDADriver` (the real driver, loaded with dlopen) and
/// `EmulatedAccelerator` (host memory with the same asynchronous semantics, for tests, the
/// simulator and machines without a GPU). Thread-safe.
public protocol Accelerator: AnyObject, Sendable {
    var deviceDescription: AcceleratorDescription { get }
    /// One device allocation; carve it into slots with `DeviceSlotPool` rather than allocating per block.
    func allocateMemory(byteCount: Int) throws(TierKVError) -> DeviceAddress
    func freeMemory(_ address: DeviceAddress) throws(TierKVError)
    /// A new in-order queue of copies.
    func makeStream() throws(TierKVError) -> any AcceleratorStream
    /// Pins and registers host memory so copies from and to it are true DMA (`cuMemHostRegister`).
    func registerHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError)
    func unregisterHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError)
}

/// One copy between a host address (a warm slot) and a device address (a hot slot).
public struct DeviceCopy: Sendable, Equatable {
    // Raw addresses: the caller owns both ranges and keeps them alive until completion.
    public var hostAddress: UInt
    public var deviceAddress: DeviceAddress
    public var byteCount: Int

    public init(host: UnsafeMutableRawPointer, device: DeviceAddress, byteCount: Int) {
        self.hostAddress = UInt(bitPattern: host)
        self.deviceAddress = device
        self.byteCount = byteCount
    }

    public var host: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: hostAddress)! }

    /// The same copies with every run that is contiguous on both sides (the next copy starts
    /// where the previous one ends, in host and in device memory) merged into one copy, ordered
    /// by device address. A transfer costs a few microseconds per copy call whatever its size
    /// (measured on an H100 over PCIe: 64 KiB copies reach 17.7 GB/s, 8 MiB ones 54), so fewer,
    /// larger copies move the same bytes sooner. The copies must not overlap, and each side's
    /// ranges must lie in one allocation (a hierarchy's hot slot pool and warm arena): a merged
    /// copy must not cross from one allocation into a neighbouring one.
    public static func coalescing(_ copies: [DeviceCopy]) -> [DeviceCopy] {
        guard copies.count > 1 else { return copies }
        let sorted = copies.sorted { $0.deviceAddress < $1.deviceAddress }
        var merged: [DeviceCopy] = []
        merged.reserveCapacity(sorted.count)
        for copy in sorted {
            if let last = merged.last, last.deviceAddress + last.byteCount == copy.deviceAddress,
                last.hostAddress + UInt(last.byteCount) == copy.hostAddress
            {
                merged[merged.count - 1].byteCount += copy.byteCount
            } else {
                merged.append(copy)
            }
        }
        return merged
    }
}

/// An in-order queue of asynchronous copies. A copy's source must stay untouched and its
/// destination unread until a fence recorded after it completes.
public protocol AcceleratorStream: AnyObject, Sendable {
    func copyToDevice(from source: UnsafeRawPointer, to destination: DeviceAddress, byteCount: Int) throws(TierKVError)
    func copyToHost(from source: DeviceAddress, to destination: UnsafeMutableRawPointer, byteCount: Int) throws(TierKVError)
    /// Enqueues `copies` host→device as one submission where the backend has one (CUDA ≥ 12.8:
    /// `cuMemcpyBatchAsync`), else one call per copy. The batch runs in stream order as a whole;
    /// copies within it may run in any order, so their destinations must not overlap.
    func copyToDevice(_ copies: [DeviceCopy]) throws(TierKVError)
    /// The same device→host.
    func copyToHost(_ copies: [DeviceCopy]) throws(TierKVError)
    /// How `copyToDevice(_:)` and `copyToHost(_:)` submit a batch: `cuMemcpyBatchAsync`, or
    /// `one call per copy`.
    var batchSubmission: String { get }
    /// A fence that completes when every copy enqueued before it has completed.
    /// - Parameter timing: whether `seconds(since:)` will be asked of it (costs a little on CUDA).
    func recordFence(timing: Bool) throws(TierKVError) -> any AcceleratorFence
    /// Blocks until every enqueued copy has completed.
    func synchronize() throws(TierKVError)
}

extension AcceleratorStream {
    public func copyToDevice(_ copies: [DeviceCopy]) throws(TierKVError) {
        for copy in copies { try copyToDevice(from: copy.host, to: copy.deviceAddress, byteCount: copy.byteCount) }
    }

    public func copyToHost(_ copies: [DeviceCopy]) throws(TierKVError) {
        for copy in copies { try copyToHost(from: copy.deviceAddress, to: copy.host, byteCount: copy.byteCount) }
    }

    public var batchSubmission: String { "one call per copy" }
}

/// Completion of the work a stream had enqueued when the fence was recorded.
public protocol AcceleratorFence: AnyObject, Sendable {
    /// Whether the work has completed; never blocks.
    func isComplete() throws(TierKVError) -> Bool
    /// Blocks until the work has completed.
    func wait() throws(TierKVError)
    /// Device-measured seconds between `earlier` and this fence (both recorded with timing).
    func seconds(since earlier: any AcceleratorFence) throws(TierKVError) -> Double
}
