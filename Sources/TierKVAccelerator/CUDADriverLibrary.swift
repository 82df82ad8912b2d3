internal import CTierKVLinux
import Synchronization
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// The CUDA driver API (`libcuda.so.1`), loaded at run time with `dlopen` so TierKV builds and
/// runs where there is no CUDA at all. Every `CUresult` is checked and becomes a
/// `TierKVError(.cudaDriver)` naming the function and the driver's own error name and text.
///
/// Thread-safety: the driver API is thread-safe and this type's state is immutable after
/// `load`, so one instance is shared freely.
public final class CUDADriverLibrary: @unchecked Sendable {
    // @unchecked: every stored property is a `let` set once in init; the C functions are thread-safe.
    typealias CUresult = Int32
    typealias InitFunction = @convention(c) (UInt32) -> CUresult
    typealias IntOutFunction = @convention(c) (UnsafeMutablePointer<Int32>?) -> CUresult
    typealias DeviceGetFunction = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> CUresult
    typealias DeviceStringFunction = @convention(c) (UnsafeMutablePointer<CChar>?, Int32, Int32) -> CUresult
    typealias DeviceTotalMemFunction = @convention(c) (UnsafeMutablePointer<Int>?, Int32) -> CUresult
    typealias DeviceAttributeFunction = @convention(c) (UnsafeMutablePointer<Int32>?, Int32, Int32) -> CUresult
    typealias ErrorStringFunction = @convention(c) (CUresult, UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> CUresult
    typealias HandleOutFunction = @convention(c) (UnsafeMutablePointer<OpaquePointer?>?, UInt32) -> CUresult
    typealias ContextRetainFunction = @convention(c) (UnsafeMutablePointer<OpaquePointer?>?, Int32) -> CUresult
    typealias DeviceFunction = @convention(c) (Int32) -> CUresult
    typealias HandleFunction = @convention(c) (OpaquePointer?) -> CUresult
    typealias MemAllocFunction = @convention(c) (UnsafeMutablePointer<UInt64>?, Int) -> CUresult
    typealias MemFreeFunction = @convention(c) (UInt64) -> CUresult
    typealias MemGetInfoFunction = @convention(c) (UnsafeMutablePointer<Int>?, UnsafeMutablePointer<Int>?) -> CUresult
    typealias CopyHtoDFunction = @convention(c) (UInt64, UnsafeRawPointer?, Int, OpaquePointer?) -> CUresult
    typealias CopyDtoHFunction = @convention(c) (UnsafeMutableRawPointer?, UInt64, Int, OpaquePointer?) -> CUresult
    typealias EventRecordFunction = @convention(c) (OpaquePointer?, OpaquePointer?) -> CUresult
    typealias EventElapsedFunction = @convention(c) (UnsafeMutablePointer<Float>?, OpaquePointer?, OpaquePointer?) -> CUresult
    typealias HostRegisterFunction = @convention(c) (UnsafeMutableRawPointer?, Int, UInt32) -> CUresult
    typealias HostUnregisterFunction = @convention(c) (UnsafeMutableRawPointer?) -> CUresult
    typealias GetProcAddressFunction = @convention(c) (
        UnsafePointer<CChar>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?, Int32, UInt64, UnsafeMutablePointer<Int32>?
    ) -> CUresult
    /// `cuMemcpyBatchAsync` as CUDA 12.8 declared it (dsts, srcs, sizes, count, attrs, attrsIdxs,
    /// numAttrs, failIdx, stream); CUDA 13 dropped `failIdx` from the header's version, and
    /// `cuGetProcAddress` with version 12080 returns this one from either driver.
    typealias MemcpyBatchFunction = @convention(c) (
        UnsafeMutablePointer<UInt64>?, UnsafeMutablePointer<UInt64>?, UnsafeMutablePointer<Int>?, Int,
        UnsafeMutablePointer<ctierkv_cu_memcpy_attributes>?, UnsafeMutablePointer<Int>?, Int, UnsafeMutablePointer<Int>?,
        OpaquePointer?
    ) -> CUresult

    /// `CUDA_ERROR_NOT_READY`: an event or stream has work pending.
    static let notReady: CUresult = 600

    /// The environment variable that overrides which library is loaded (tests use a test double).
    public static let libraryEnvironmentVariable = "TIERKV_CUDA_LIBRARY"
    /// The soname the NVIDIA driver installs.
    public static let defaultLibraryName = "libcuda.so.1"
    /// `TIERKV_CUDA_BATCHED_COPIES=off` makes every copy its own `cuMemcpy*Async` call even where
    /// the driver has `cuMemcpyBatchAsync` (to compare the two, or to step around a driver fault).
    public static let batchedCopiesEnvironmentVariable = "TIERKV_CUDA_BATCHED_COPIES"

    /// The path or soname that was loaded.
    public let path: String
    let handle: UnsafeMutableRawPointer
    let cuInit: InitFunction
    let cuDriverGetVersion: IntOutFunction
    let cuDeviceGetCount: IntOutFunction
    let cuDeviceGet: DeviceGetFunction
    let cuDeviceGetName: DeviceStringFunction
    let cuDeviceGetPCIBusId: DeviceStringFunction
    let cuDeviceTotalMem: DeviceTotalMemFunction
    let cuDeviceGetAttribute: DeviceAttributeFunction
    let cuGetErrorName: ErrorStringFunction
    let cuGetErrorString: ErrorStringFunction
    let cuDevicePrimaryCtxRetain: ContextRetainFunction
    let cuDevicePrimaryCtxRelease: DeviceFunction
    let cuCtxSetCurrent: HandleFunction
    let cuMemAlloc: MemAllocFunction
    let cuMemFree: MemFreeFunction
    let cuMemGetInfo: MemGetInfoFunction
    let cuMemcpyHtoDAsync: CopyHtoDFunction
    let cuMemcpyDtoHAsync: CopyDtoHFunction
    let cuStreamCreate: HandleOutFunction
    let cuStreamDestroy: HandleFunction
    let cuStreamSynchronize: HandleFunction
    let cuEventCreate: HandleOutFunction
    let cuEventRecord: EventRecordFunction
    let cuEventQuery: HandleFunction
    let cuEventSynchronize: HandleFunction
    let cuEventElapsedTime: EventElapsedFunction
    let cuEventDestroy: HandleFunction
    let cuMemHostRegister: HostRegisterFunction
    let cuMemHostUnregister: HostUnregisterFunction
    /// Present from CUDA 12.8 drivers on: many copies in one submission.
    let cuMemcpyBatchAsync: MemcpyBatchFunction?
    /// Why `cuMemcpyBatchAsync` is not used, when it is not.
    public let batchedCopiesUnavailableReason: String?

    /// Libraries already loaded and initialised, by requested path. libcuda is never unloaded:
    /// after `cuInit` it runs threads of its own, and `dlclose` under them crashes the process.
    private static let loaded = Locked<[String: CUDADriverLibrary]>([:])

    /// Loads the driver library once per process and path, resolves the functions TierKV uses,
    /// and calls `cuInit(0)`. Later calls with the same path return the same instance.
    /// - Parameter path: a path or soname; default `$TIERKV_CUDA_LIBRARY` or `libcuda.so.1`.
    /// - Throws: `.cudaDriver` "no CUDA driver" when the library cannot be loaded, naming the
    ///   `dlerror` text; `.cudaDriver` naming a missing symbol; or `cuInit`'s error.
    public static func load(path: String? = nil) throws(TierKVError) -> CUDADriverLibrary {
        let chosen = path ?? getenv(libraryEnvironmentVariable).map { String(cString: $0) } ?? defaultLibraryName
        return try loaded.withLock { (cache) throws(TierKVError) -> CUDADriverLibrary in
            if let library = cache[chosen] { return library }
            let library = try open(chosen)
            cache[chosen] = library
            return library
        }
    }

    private static func open(_ chosen: String) throws(TierKVError) -> CUDADriverLibrary {
        guard let handle = dlopen(chosen, ctierkv_rtld_now_local()) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            throw TierKVError(
                .cudaDriver,
                "no CUDA driver: could not load \(chosen) (\(reason)); install the NVIDIA driver or run where a GPU is present",
                operation: "dlopen", path: chosen)
        }
        let library: CUDADriverLibrary
        do {
            library = try CUDADriverLibrary(path: chosen, handle: handle)
        } catch {
            dlclose(handle)  // no cuInit ran yet, so unloading is safe
            throw error
        }
        // A failed cuInit leaves the library loaded (unloading after cuInit is not safe).
        try library.check(library.cuInit(0), "cuInit")
        return library
    }

    private init(path: String, handle: UnsafeMutableRawPointer) throws(TierKVError) {
        func symbol<F>(_ name: String, as type: F.Type) throws(TierKVError) -> F {
            guard let pointer = dlsym(handle, name) else {
                throw TierKVError(
                    .cudaDriver, "the CUDA driver at \(path) lacks \(name); the driver is too old for TierKV",
                    operation: "dlsym", path: path)
            }
            return unsafeBitCast(pointer, to: type)
        }
        self.path = path
        self.handle = handle
        cuInit = try symbol("cuInit", as: InitFunction.self)
        cuDriverGetVersion = try symbol("cuDriverGetVersion", as: IntOutFunction.self)
        cuDeviceGetCount = try symbol("cuDeviceGetCount", as: IntOutFunction.self)
        cuDeviceGet = try symbol("cuDeviceGet", as: DeviceGetFunction.self)
        cuDeviceGetName = try symbol("cuDeviceGetName", as: DeviceStringFunction.self)
        cuDeviceGetPCIBusId = try symbol("cuDeviceGetPCIBusId", as: DeviceStringFunction.self)
        cuDeviceTotalMem = try symbol("cuDeviceTotalMem_v2", as: DeviceTotalMemFunction.self)
        cuDeviceGetAttribute = try symbol("cuDeviceGetAttribute", as: DeviceAttributeFunction.self)
        cuGetErrorName = try symbol("cuGetErrorName", as: ErrorStringFunction.self)
        cuGetErrorString = try symbol("cuGetErrorString", as: ErrorStringFunction.self)
        cuDevicePrimaryCtxRetain = try symbol("cuDevicePrimaryCtxRetain", as: ContextRetainFunction.self)
        cuDevicePrimaryCtxRelease = try symbol("cuDevicePrimaryCtxRelease_v2", as: DeviceFunction.self)
        cuCtxSetCurrent = try symbol("cuCtxSetCurrent", as: HandleFunction.self)
        cuMemAlloc = try symbol("cuMemAlloc_v2", as: MemAllocFunction.self)
        cuMemFree = try symbol("cuMemFree_v2", as: MemFreeFunction.self)
        cuMemGetInfo = try symbol("cuMemGetInfo_v2", as: MemGetInfoFunction.self)
        cuMemcpyHtoDAsync = try symbol("cuMemcpyHtoDAsync_v2", as: CopyHtoDFunction.self)
        cuMemcpyDtoHAsync = try symbol("cuMemcpyDtoHAsync_v2", as: CopyDtoHFunction.self)
        cuStreamCreate = try symbol("cuStreamCreate", as: HandleOutFunction.self)
        cuStreamDestroy = try symbol("cuStreamDestroy_v2", as: HandleFunction.self)
        cuStreamSynchronize = try symbol("cuStreamSynchronize", as: HandleFunction.self)
        cuEventCreate = try symbol("cuEventCreate", as: HandleOutFunction.self)
        cuEventRecord = try symbol("cuEventRecord", as: EventRecordFunction.self)
        cuEventQuery = try symbol("cuEventQuery", as: HandleFunction.self)
        cuEventSynchronize = try symbol("cuEventSynchronize", as: HandleFunction.self)
        cuEventElapsedTime = try symbol("cuEventElapsedTime", as: EventElapsedFunction.self)
        cuEventDestroy = try symbol("cuEventDestroy_v2", as: HandleFunction.self)
        cuMemHostRegister = try symbol("cuMemHostRegister_v2", as: HostRegisterFunction.self)
        cuMemHostUnregister = try symbol("cuMemHostUnregister", as: HostUnregisterFunction.self)
        (cuMemcpyBatchAsync, batchedCopiesUnavailableReason) = Self.resolveBatchedCopies(handle)
    }

    /// `cuMemcpyBatchAsync` in its CUDA 12.8 form, through `cuGetProcAddress_v2` (which resolves a
    /// symbol for the API version asked, so one function type serves 12.8 and 13.x drivers), or
    /// nil and the reason.
    private static func resolveBatchedCopies(_ handle: UnsafeMutableRawPointer) -> (MemcpyBatchFunction?, String?) {
        if let setting = getenv(batchedCopiesEnvironmentVariable).map({ String(cString: $0) }) {
            switch setting.lowercased() {
            case "off", "0", "false", "no": return (nil, "switched off by \(batchedCopiesEnvironmentVariable)=\(setting)")
            case "on", "1", "true", "yes", "": break
            default:
                return (nil, "\(batchedCopiesEnvironmentVariable)=\(setting) is neither on nor off; batched copies stay off")
            }
        }
        guard let getProcAddress = dlsym(handle, "cuGetProcAddress_v2") else {
            return (nil, "the driver has no cuGetProcAddress_v2 (older than CUDA 12.0)")
        }
        let resolve = unsafeBitCast(getProcAddress, to: GetProcAddressFunction.self)
        var function: UnsafeMutableRawPointer?
        var status: Int32 = -1
        // cudaVersion 12080: the signature with failIdx; flags 0 = CU_GET_PROC_ADDRESS_DEFAULT.
        let result = resolve("cuMemcpyBatchAsync", &function, 12080, 0, &status)
        guard result == 0, status == 0, let function else {
            return (nil, "the driver has no cuMemcpyBatchAsync (needs CUDA 12.8 or later; cuGetProcAddress gave \(result), status \(status))")
        }
        return (unsafeBitCast(function, to: MemcpyBatchFunction.self), nil)
    }

    /// How copy batches are submitted: `cuMemcpyBatchAsync` or `one call per copy`.
    public var batchSubmission: String { cuMemcpyBatchAsync == nil ? "one call per copy" : "cuMemcpyBatchAsync" }

    /// Turns a non-zero `CUresult` into an error: `cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory)`.
    func check(_ result: CUresult, _ function: String) throws(TierKVError) {
        guard result != 0 else { return }
        throw TierKVError(
            .cudaDriver, "\(function) failed: \(errorDescription(result))", operation: function, path: path)
    }

    /// The driver's name and text for a `CUresult`.
    public func errorDescription(_ result: Int32) -> String {
        var name: UnsafePointer<CChar>?
        var text: UnsafePointer<CChar>?
        let nameText = cuGetErrorName(result, &name) == 0 ? name.map { String(cString: $0) } : nil
        let detail = cuGetErrorString(result, &text) == 0 ? text.map { String(cString: $0) } : nil
        return "\(nameText ?? "CUresult \(result)") (\(detail ?? "no description"))"
    }

    static func string(fromNullTerminated characters: [CChar]) -> String {
        String(decoding: characters.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The driver's CUDA version as `major.minor` (e.g. 12.4).
    public func driverVersion() throws(TierKVError) -> String {
        var version: Int32 = 0
        try check(cuDriverGetVersion(&version), "cuDriverGetVersion")
        return "\(version / 1000).\(version % 1000 / 10)"
    }

    /// Devices the driver sees.
    public func devices() throws(TierKVError) -> [CUDADeviceInfo] {
        var count: Int32 = 0
        try check(cuDeviceGetCount(&count), "cuDeviceGetCount")
        var devices: [CUDADeviceInfo] = []
        for ordinal in 0..<count {
            var device: Int32 = 0
            try check(cuDeviceGet(&device, ordinal), "cuDeviceGet")
            var name = [CChar](repeating: 0, count: 256)
            try check(cuDeviceGetName(&name, Int32(name.count), device), "cuDeviceGetName")
            var bus = [CChar](repeating: 0, count: 64)
            try check(cuDeviceGetPCIBusId(&bus, Int32(bus.count), device), "cuDeviceGetPCIBusId")
            var memory = 0
            try check(cuDeviceTotalMem(&memory, device), "cuDeviceTotalMem_v2")
            var major: Int32 = 0
            var minor: Int32 = 0
            // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76 (cuda.h).
            try check(cuDeviceGetAttribute(&major, 75, device), "cuDeviceGetAttribute")
            try check(cuDeviceGetAttribute(&minor, 76, device), "cuDeviceGetAttribute")
            devices.append(
                CUDADeviceInfo(
                    ordinal: Int(ordinal), name: Self.string(fromNullTerminated: name), totalMemoryByteCount: UInt64(memory),
                    pciBusID: Self.string(fromNullTerminated: bus), computeCapability: "\(major).\(minor)"))
        }
        return devices
    }
}

/// One CUDA device as the driver describes it.
public struct CUDADeviceInfo: Sendable, Hashable {
    public var ordinal: Int
    public var name: String
    public var totalMemoryByteCount: UInt64
    /// `0000:65:00.0` form, as sysfs names PCI devices.
    public var pciBusID: String
    public var computeCapability: String

    public var json: JSONValue {
        .object([
            ("ordinal", .int(ordinal)), ("name", .string(name)), ("memory_bytes", .int(totalMemoryByteCount)),
            ("pci_bus_id", .string(pciBusID)), ("compute_capability", .string(computeCapability)),
        ])
    }
}

/// What `tierkv doctor` reports about CUDA.
public struct CUDAAvailability: Sendable {
    public var isAvailable: Bool
    public var library: String
    public var driverVersion: String?
    public var devices: [CUDADeviceInfo]
    public var error: String?
    /// How copy batches are submitted (`cuMemcpyBatchAsync`, or `one call per copy` and why).
    public var batchSubmission: String?

    /// Loads the driver, initialises it and lists devices; never throws.
    public static func probe(libraryPath: String? = nil) -> CUDAAvailability {
        let requested = libraryPath ?? getenv(CUDADriverLibrary.libraryEnvironmentVariable).map { String(cString: $0) }
            ?? CUDADriverLibrary.defaultLibraryName
        do {
            let library = try CUDADriverLibrary.load(path: requested)
            let devices = try library.devices()
            return CUDAAvailability(
                isAvailable: !devices.isEmpty, library: library.path, driverVersion: try library.driverVersion(),
                devices: devices, error: devices.isEmpty ? "the CUDA driver loaded but sees no devices" : nil,
                batchSubmission: library.batchSubmission
                    + (library.batchedCopiesUnavailableReason.map { " (\($0))" } ?? ""))
        } catch {
            return CUDAAvailability(
                isAvailable: false, library: requested, driverVersion: nil, devices: [], error: error.description,
                batchSubmission: nil)
        }
    }

    public var json: JSONValue {
        .object([
            ("available", .bool(isAvailable)), ("library", .string(library)),
            ("driver_version", .optional(driverVersion)), ("devices", .array(devices.map(\.json))),
            ("error", .optional(error)), ("batch_submission", .optional(batchSubmission)),
        ])
    }
}
