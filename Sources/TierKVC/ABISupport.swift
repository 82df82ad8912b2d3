#if canImport(Glibc)
import Glibc
#endif
import CTierKVABI
import TierKV

// Plumbing shared by every function of the C ABI: status codes, the thread-local error message,
// the handle registry and argument checks. Nothing here may trap on caller input: every
// conversion from a C value is checked and reported as an error status.

extension TierKVError.Code {
    /// A handle that is closed, released or never was one.
    static let invalidHandle = TierKVError.Code("invalid handle")
    static let timeout = TierKVError.Code("timeout")
    static let bufferTooSmall = TierKVError.Code("buffer too small")
    static let internalError = TierKVError.Code("internal error")
}

/// The C status of an error (tierkv.h's TIERKV_ERROR_*).
func status(of error: TierKVError) -> tierkv_status {
    switch error.code {
    case .invalidArgument: TIERKV_ERROR_INVALID_ARGUMENT
    case .invalidHandle: TIERKV_ERROR_INVALID_HANDLE
    case .notFound: TIERKV_ERROR_NOT_FOUND
    case .capacityExceeded: TIERKV_ERROR_CAPACITY
    case .corruption: TIERKV_ERROR_CORRUPTION
    case .systemCall: TIERKV_ERROR_SYSTEM
    case .unsupported: TIERKV_ERROR_UNSUPPORTED
    case .cudaDriver: TIERKV_ERROR_CUDA
    case .closed: TIERKV_ERROR_CLOSED
    case .timeout: TIERKV_ERROR_TIMEOUT
    case .bufferTooSmall: TIERKV_ERROR_BUFFER_TOO_SMALL
    default: TIERKV_ERROR_INTERNAL
    }
}

/// Names of the status codes, in code order (static C strings for `tierkv_status_name`).
nonisolated(unsafe) let statusNames: [UnsafeMutablePointer<CChar>] = ([
    "ok", "invalid argument", "invalid handle", "not found", "capacity exceeded", "corruption", "system call failed",
    "unsupported", "CUDA driver", "closed", "timeout", "buffer too small", "internal error",
] as [String]).map { strdup($0)! }
nonisolated(unsafe) let unknownStatusName: UnsafeMutablePointer<CChar> = strdup("unknown status")!
nonisolated(unsafe) let emptyCString: UnsafeMutablePointer<CChar> = strdup("")!
nonisolated(unsafe) let versionCString: UnsafeMutablePointer<CChar> = strdup(TierKVVersion.string)!

/// The message of the last failed call, per thread (a strdup'd string freed when replaced or
/// when the thread exits).
enum LastError {
    static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    static func set(_ message: String) {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, strdup(message))
        free(previous)
    }

    static var current: UnsafePointer<CChar> {
        guard let pointer = pthread_getspecific(key) else { return UnsafePointer(emptyCString) }
        return UnsafePointer(pointer.assumingMemoryBound(to: CChar.self))
    }
}

/// Runs one ABI call: success is TIERKV_OK; an error sets this thread's message (prefixed with
/// the function's name) and returns its status.
func abiCall(_ function: StaticString, _ body: () throws(TierKVError) -> Void) -> tierkv_status {
    do {
        try body()
        return TIERKV_OK
    } catch {
        var text = "\(function): \(error.message)"
        var context: [String] = []
        if let operation = error.operation { context.append("operation \(operation)") }
        if let path = error.path { context.append("path \(path)") }
        if let code = error.errno { context.append("errno \(code) (\(TierKVError.errnoName(code)))") }
        if !context.isEmpty { text += " [" + context.joined(separator: ", ") + "]" }
        LastError.set(text)
        return status(of: error)
    }
}

// MARK: Handles

/// Every live handle, by address. A handle is valid exactly while it is in here, so a closed or
/// foreign pointer is reported instead of dereferenced.
enum HandleRegistry {
    static let handles = Locked<[UInt: AnyObject]>([:])

    static func register(_ object: AnyObject) -> OpaquePointer {
        let address = UInt(bitPattern: Unmanaged.passUnretained(object).toOpaque())
        handles.withLock { $0[address] = object }
        return OpaquePointer(bitPattern: address)!
    }

    static func lookup<Handle: AnyObject>(_ pointer: OpaquePointer?, as type: Handle.Type, _ role: String) throws(TierKVError) -> Handle {
        guard let pointer else { throw TierKVError(.invalidHandle, "the \(role) handle is NULL") }
        let address = UInt(bitPattern: pointer)
        guard let handle = handles.withLock({ $0[address] }) as? Handle else {
            throw TierKVError(.invalidHandle, "\(describe(pointer)) is not an open \(role) handle (closed, released, or never opened)")
        }
        return handle
    }

    /// Removes and returns the handle, or throws when it is not a live one of `type`.
    static func remove<Handle: AnyObject>(_ pointer: OpaquePointer?, as type: Handle.Type, _ role: String) throws(TierKVError) -> Handle {
        guard let pointer else { throw TierKVError(.invalidHandle, "the \(role) handle is NULL") }
        let address = UInt(bitPattern: pointer)
        let removed = handles.withLock { handles -> Handle? in
            guard let handle = handles[address] as? Handle else { return nil }
            handles[address] = nil
            return handle
        }
        guard let removed else {
            throw TierKVError(.invalidHandle, "\(describe(pointer)) is not an open \(role) handle (closed, released, or never opened)")
        }
        return removed
    }

    static func describe(_ pointer: OpaquePointer) -> String { "0x" + String(UInt(bitPattern: pointer), radix: 16) }
}

/// A `tierkv_hierarchy`: the hierarchy, its open requests and a CPU attention pool made on first use.
final class HierarchyHandle: @unchecked Sendable {
    // @unchecked: mutable state is behind `Locked`.
    let hierarchy: Hierarchy
    let cpuThreads: Int?
    let cpuSpinMicroseconds: Int
    let openRequests = Locked<[UInt: RequestHandle]>([:])
    let openTickets = Locked<[UInt: PrefetchTicketHandle]>([:])
    let openPredictors = Locked<[UInt: PredictorHandle]>([:])
    let attention = Locked<CPUAttention?>(nil)
    /// The prefetcher behind `tierkv_prefetch`, made on first use; budgets come with each call,
    /// and its statistics accumulate over the handle's life.
    private let prefetcherState = Locked<Prefetcher?>(nil)

    init(hierarchy: Hierarchy, cpuThreads: Int?, cpuSpinMicroseconds: Int) {
        self.hierarchy = hierarchy
        self.cpuThreads = cpuThreads
        self.cpuSpinMicroseconds = cpuSpinMicroseconds
    }

    /// The prefetcher, made on first use with `predictor` (every call passes its own masses;
    /// the predictor is what the Swift API's `prefetch(_:hint:)` would use).
    func prefetcher(_ predictor: (any BlockPredictor)?) throws(TierKVError) -> Prefetcher {
        try prefetcherState.withLock { (state) throws(TierKVError) -> Prefetcher in
            if let state { return state }
            guard let predictor else { throw .invalid("no prefetch has been made on this hierarchy") }
            let made = try Prefetcher(
                hierarchy: hierarchy, predictor: predictor,
                configuration: .init(budgetBlocks: 0, hostToDeviceBytesPerSecond: 1, coldReadBytesPerSecond: 1))
            state = made
            return made
        }
    }

    var prefetchStatistics: PrefetchStatistics { prefetcherState.withLock { $0?.statistics ?? PrefetchStatistics() } }

    /// The CPU attention pool, made on first use: a worker thread per CPU by default, on the
    /// CPUs of the warm arena's NUMA node when the hierarchy is bound to one.
    func cpuAttention() throws(TierKVError) -> CPUAttention {
        try attention.withLock { (attention) throws(TierKVError) -> CPUAttention in
            if let attention { return attention }
            // On the warm arena's node when it has CPUs we may use (a memory-only node has none).
            var nodeCPUs = hierarchy.configuration.numaNode.flatMap { NUMATopology.current().usableCPUs(ofNode: $0) }
            if nodeCPUs?.isEmpty == true { nodeCPUs = nil }
            let made = try CPUAttention(threadCount: cpuThreads, spinMicroseconds: cpuSpinMicroseconds, cpus: nodeCPUs)
            attention = made
            return made
        }
    }
}

/// A `tierkv_request`.
final class RequestHandle: @unchecked Sendable {
    // @unchecked: immutable after init; `ResidencyRequest` is thread-safe.
    let request: ResidencyRequest
    let owner: HierarchyHandle

    init(request: ResidencyRequest, owner: HierarchyHandle) {
        self.request = request
        self.owner = owner
    }
}

// MARK: Argument checks

/// `count` elements at `pointer`, which may be NULL only when `count` is 0.
func buffer<Element>(_ pointer: UnsafePointer<Element>?, count: Int, _ name: String) throws(TierKVError) -> UnsafeBufferPointer<Element> {
    guard count >= 0, count <= Int.max / max(1, MemoryLayout<Element>.stride) else {
        throw .invalid("\(name): count \(UInt(bitPattern: count)) is too large")
    }
    if count == 0 { return UnsafeBufferPointer(start: nil, count: 0) }
    guard let pointer else { throw .invalid("\(name) is NULL but its count is \(count)") }
    return UnsafeBufferPointer(start: pointer, count: count)
}

func mutableBuffer<Element>(_ pointer: UnsafeMutablePointer<Element>?, count: Int, _ name: String) throws(TierKVError) -> UnsafeMutableBufferPointer<Element> {
    guard count >= 0, count <= Int.max / max(1, MemoryLayout<Element>.stride) else {
        throw .invalid("\(name): count \(UInt(bitPattern: count)) is too large")
    }
    if count == 0 { return UnsafeMutableBufferPointer(start: nil, count: 0) }
    guard let pointer else { throw .invalid("\(name) is NULL but its count is \(count)") }
    return UnsafeMutableBufferPointer(start: pointer, count: count)
}

func required<Pointee>(_ pointer: UnsafeMutablePointer<Pointee>?, _ name: String) throws(TierKVError) -> UnsafeMutablePointer<Pointee> {
    guard let pointer else { throw .invalid("\(name) is NULL") }
    return pointer
}

func required<Pointee>(_ pointer: UnsafePointer<Pointee>?, _ name: String) throws(TierKVError) -> UnsafePointer<Pointee> {
    guard let pointer else { throw .invalid("\(name) is NULL") }
    return pointer
}

extension BlockKey {
    init(_ key: tierkv_block_key, _ name: String) throws(TierKVError) {
        guard key.reserved == 0 else { throw .invalid("\(name): the key's reserved field is \(key.reserved); it must be 0") }
        self.init(prefixHash: PrefixHash(high: key.prefix_high, low: key.prefix_low), layer: key.layer)
    }

    var cKey: tierkv_block_key {
        tierkv_block_key(prefix_high: prefixHash.high, prefix_low: prefixHash.low, layer: layer, reserved: 0)
    }
}

func blockKeys(_ pointer: UnsafePointer<tierkv_block_key>?, count: Int, _ name: String) throws(TierKVError) -> [BlockKey] {
    let keys = try buffer(pointer, count: count, name)
    var result: [BlockKey] = []
    result.reserveCapacity(keys.count)
    for (index, key) in keys.enumerated() { result.append(try BlockKey(key, "\(name)[\(index)]")) }
    return result
}

/// A sequence id from C (`TIERKV_NO_SEQUENCE` is none).
func sequenceID(_ raw: UInt64) -> SequenceID? { raw == UInt64.max ? nil : SequenceID(raw) }
