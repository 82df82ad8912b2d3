internal import CTierKVLinux
import TierKVCore

/// The hot tier on a real NVIDIA GPU through the CUDA driver API.
///
/// Uses the device's primary context (the one the CUDA runtime, PyTorch and vLLM use), so device
/// pointers are interchangeable with the engine's. Every call makes the context current on the
/// calling thread first, so any thread may call. Every `CUresult` is checked.
public final class CUDADriver: Accelerator, @unchecked Sendable {
    // @unchecked: `context` is an opaque driver handle that is immutable after init; the driver
    // API is thread-safe.
    public let library: CUDADriverLibrary
    public let ordinal: Int
    public let deviceDescription: AcceleratorDescription
    let device: Int32
    let context: OpaquePointer?

    /// Opens device `ordinal` through `library` (default: `CUDADriverLibrary.load()`).
    /// - Throws: `.cudaDriver` with the driver's error, or `.invalidArgument` for a missing ordinal.
    public init(ordinal: Int = 0, library given: CUDADriverLibrary? = nil) throws(TierKVError) {
        let library: CUDADriverLibrary
        if let given { library = given } else { library = try CUDADriverLibrary.load() }
        let devices = try library.devices()
        guard let info = devices.first(where: { $0.ordinal == ordinal }) else {
            throw TierKVError(
                .invalidArgument, "CUDA device \(ordinal) does not exist; the driver sees \(devices.count) device(s)")
        }
        var device: Int32 = 0
        try library.check(library.cuDeviceGet(&device, Int32(ordinal)), "cuDeviceGet")
        var context: OpaquePointer?
        try library.check(library.cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain")
        self.library = library
        self.ordinal = ordinal
        self.device = device
        self.context = context
        self.deviceDescription = AcceleratorDescription(
            name: info.name, isEmulated: false, memoryByteCount: info.totalMemoryByteCount, pciBusID: info.pciBusID)
    }

    deinit { _ = library.cuDevicePrimaryCtxRelease(device) }

    func makeCurrent() throws(TierKVError) {
        try library.check(library.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    }

    public func allocateMemory(byteCount: Int) throws(TierKVError) -> DeviceAddress {
        try makeCurrent()
        var pointer: UInt64 = 0
        let result = library.cuMemAlloc(&pointer, byteCount)
        if result == 2 {  // CUDA_ERROR_OUT_OF_MEMORY
            var free = 0
            var total = 0
            _ = library.cuMemGetInfo(&free, &total)
            throw TierKVError(
                .capacityExceeded,
                "cannot allocate \(ByteCount(UInt64(byteCount))) on \(deviceDescription.name): \(ByteCount(UInt64(free))) free of \(ByteCount(UInt64(total))); lower the hot-tier capacity",
                operation: "cuMemAlloc_v2")
        }
        try library.check(result, "cuMemAlloc_v2")
        return DeviceAddress(pointer)
    }

    public func freeMemory(_ address: DeviceAddress) throws(TierKVError) {
        try makeCurrent()
        try library.check(library.cuMemFree(address.rawValue), "cuMemFree_v2")
    }

    public func makeStream() throws(TierKVError) -> any AcceleratorStream {
        try makeCurrent()
        var stream: OpaquePointer?
        // CU_STREAM_NON_BLOCKING: never serialise behind the engine's legacy default stream.
        try library.check(library.cuStreamCreate(&stream, 1), "cuStreamCreate")
        return CUDAStream(driver: self, stream: stream)
    }

    public func registerHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError) {
        try makeCurrent()
        // CU_MEMHOSTREGISTER_PORTABLE: usable from every context (the engine's and ours).
        try library.check(library.cuMemHostRegister(region.baseAddress, region.count, 1), "cuMemHostRegister_v2")
    }

    public func unregisterHostMemory(_ region: UnsafeMutableRawBufferPointer) throws(TierKVError) {
        try makeCurrent()
        try library.check(library.cuMemHostUnregister(region.baseAddress), "cuMemHostUnregister")
    }
}

/// A `CUstream` (non-blocking) owned by TierKV.
final class CUDAStream: AcceleratorStream, @unchecked Sendable {
    // @unchecked: the stream handle is immutable; the driver serialises work on it.
    let driver: CUDADriver
    let stream: OpaquePointer?

    init(driver: CUDADriver, stream: OpaquePointer?) {
        self.driver = driver
        self.stream = stream
    }

    deinit {
        try? driver.makeCurrent()
        _ = driver.library.cuStreamDestroy(stream)
    }

    func copyToDevice(from source: UnsafeRawPointer, to destination: DeviceAddress, byteCount: Int) throws(TierKVError) {
        try driver.makeCurrent()
        try driver.library.check(
            driver.library.cuMemcpyHtoDAsync(destination.rawValue, source, byteCount, stream), "cuMemcpyHtoDAsync_v2")
    }

    func copyToHost(from source: DeviceAddress, to destination: UnsafeMutableRawPointer, byteCount: Int) throws(TierKVError) {
        try driver.makeCurrent()
        try driver.library.check(
            driver.library.cuMemcpyDtoHAsync(destination, source.rawValue, byteCount, stream), "cuMemcpyDtoHAsync_v2")
    }

    var batchSubmission: String { driver.library.batchSubmission }

    func copyToDevice(_ copies: [DeviceCopy]) throws(TierKVError) { try submit(copies, toDevice: true) }

    func copyToHost(_ copies: [DeviceCopy]) throws(TierKVError) { try submit(copies, toDevice: false) }

    /// One `cuMemcpyBatchAsync` for all the copies where the driver has it, else one call each.
    /// Host addresses pass as device pointers: the warm arena is registered
    /// (`cuMemHostRegister`), and with unified addressing a registered host pointer is valid as
    /// is. Sources are read in stream order (after the work enqueued before), the same ordering as
    /// the single-copy calls.
    private func submit(_ copies: [DeviceCopy], toDevice: Bool) throws(TierKVError) {
        guard copies.count > 1, let batch = driver.library.cuMemcpyBatchAsync else {
            for copy in copies {
                if toDevice {
                    try copyToDevice(from: copy.host, to: copy.deviceAddress, byteCount: copy.byteCount)
                } else {
                    try copyToHost(from: copy.deviceAddress, to: copy.host, byteCount: copy.byteCount)
                }
            }
            return
        }
        try driver.makeCurrent()
        var devices = copies.map(\.deviceAddress.rawValue)
        var hosts = copies.map { UInt64($0.hostAddress) }
        var sizes = copies.map(\.byteCount)
        var attributes = ctierkv_cu_memcpy_attributes(
            src_access_order: 1, src_location_type: 0, src_location_id: 0, dst_location_type: 0, dst_location_id: 0, flags: 0)
        var attributeStarts = [0]
        var failedIndex = Int.max
        let result = toDevice
            ? batch(&devices, &hosts, &sizes, copies.count, &attributes, &attributeStarts, 1, &failedIndex, stream)
            : batch(&hosts, &devices, &sizes, copies.count, &attributes, &attributeStarts, 1, &failedIndex, stream)
        guard result == 0 else {
            let which = failedIndex < copies.count
                ? "copy \(failedIndex) of \(copies.count) (\(copies[failedIndex].byteCount) bytes, device \(copies[failedIndex].deviceAddress))"
                : "a batch of \(copies.count) copies"
            throw TierKVError(
                .cudaDriver, "cuMemcpyBatchAsync failed on \(which): \(driver.library.errorDescription(result))",
                operation: "cuMemcpyBatchAsync", path: driver.library.path)
        }
    }

    func recordFence(timing: Bool) throws(TierKVError) -> any AcceleratorFence {
        try driver.makeCurrent()
        var event: OpaquePointer?
        // CU_EVENT_DISABLE_TIMING = 2 makes query/synchronize cheaper when no timing is needed.
        try driver.library.check(driver.library.cuEventCreate(&event, timing ? 0 : 2), "cuEventCreate")
        let fence = CUDAEvent(driver: driver, event: event)
        try driver.library.check(driver.library.cuEventRecord(event, stream), "cuEventRecord")
        return fence
    }

    func synchronize() throws(TierKVError) {
        try driver.makeCurrent()
        try driver.library.check(driver.library.cuStreamSynchronize(stream), "cuStreamSynchronize")
    }
}

/// A `CUevent` recorded on a stream.
final class CUDAEvent: AcceleratorFence, @unchecked Sendable {
    // @unchecked: the event handle is immutable; cuEventQuery/Synchronize are thread-safe.
    let driver: CUDADriver
    let event: OpaquePointer?

    init(driver: CUDADriver, event: OpaquePointer?) {
        self.driver = driver
        self.event = event
    }

    deinit {
        try? driver.makeCurrent()
        _ = driver.library.cuEventDestroy(event)
    }

    func isComplete() throws(TierKVError) -> Bool {
        try driver.makeCurrent()
        let result = driver.library.cuEventQuery(event)
        if result == CUDADriverLibrary.notReady { return false }
        try driver.library.check(result, "cuEventQuery")
        return true
    }

    func wait() throws(TierKVError) {
        try driver.makeCurrent()
        try driver.library.check(driver.library.cuEventSynchronize(event), "cuEventSynchronize")
    }

    func seconds(since earlier: any AcceleratorFence) throws(TierKVError) -> Double {
        guard let start = earlier as? CUDAEvent else {
            throw .invalid("a CUDA fence can only be timed against another CUDA fence")
        }
        try driver.makeCurrent()
        var milliseconds: Float = 0
        try driver.library.check(driver.library.cuEventElapsedTime(&milliseconds, start.event, event), "cuEventElapsedTime")
        return Double(milliseconds) / 1000
    }
}
