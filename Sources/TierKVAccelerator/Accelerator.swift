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

/// An in-order queue of asynchronous copies. A copy's source must stay untouched and its
/// destination unread until a fence recorded after it completes.
public protocol AcceleratorStream: AnyObject, Sendable {
    func copyToDevice(from source: UnsafeRawPointer, to destination: DeviceAddress, byteCount: Int) throws(TierKVError)
    func copyToHost(from source: DeviceAddress, to destination: UnsafeMutableRawPointer, byteCount: Int) throws(TierKVError)
    /// A fence that completes when every copy enqueued before it has completed.
    /// - Parameter timing: whether `seconds(since:)` will be asked of it (costs a little on CUDA).
    func recordFence(timing: Bool) throws(TierKVError) -> any AcceleratorFence
    /// Blocks until every enqueued copy has completed.
    func synchronize() throws(TierKVError)
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
