internal import CTierKVLinux
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// One io_uring instance, owned by exactly one value: `deinit` tears the ring down.
///
/// The kernel-shared `struct io_uring` lives on the heap so its address never changes when
/// the owner moves. Not thread-safe: one thread submits (the ring is created with
/// SINGLE_ISSUER where the kernel has it).
public struct IORing: ~Copyable {
    /// Setup flags the ring was created with.
    public let setupFlags: UInt32
    /// Submission queue entries.
    public let entryCount: UInt32
    /// The shim's opaque ring (liburing's `struct io_uring` on the heap, so its address never
    /// changes when the owner moves). Untyped here so no liburing type reaches clients.
    let handle: OpaquePointer

    /// Creates a ring with `entryCount` SQ entries. Tries `preferredFlags` and falls back to
    /// no flags when the kernel rejects them with EINVAL (older kernels); `setupFlags` tells
    /// which were accepted.
    /// - Throws: `.systemCall` with the errno of `io_uring_queue_init` (ENOSYS: no io_uring
    ///   in this kernel; EPERM: disabled by `kernel.io_uring_disabled` or a seccomp filter).
    public init(entryCount: UInt32, preferredFlags: UInt32 = IORing.defaultFlags) throws(TierKVError) {
        var ring: OpaquePointer?
        var flags = preferredFlags
        var result = ctierkv_ring_create(entryCount, flags, &ring)
        if result == -EINVAL, flags != 0 {
            flags = 0
            result = ctierkv_ring_create(entryCount, flags, &ring)
        }
        guard result >= 0, let ring else {
            let hint =
                switch -result {
                case ENOSYS: "this kernel has no io_uring"
                case EPERM: "io_uring is disabled (sysctl kernel.io_uring_disabled or a seccomp filter)"
                case ENOMEM: "not enough locked memory for the ring (raise RLIMIT_MEMLOCK)"
                default: "io_uring_queue_init failed"
                }
            throw TierKVError(
                .systemCall, "\(hint): \(TierKVError.errnoName(-result))", operation: "io_uring_queue_init",
                errno: -result)
        }
        self.handle = ring
        self.setupFlags = flags
        self.entryCount = entryCount
    }

    /// SINGLE_ISSUER | COOP_TASKRUN: one submitting thread, completions run at its next
    /// syscall instead of by interrupting it (fewer IPIs).
    public static var defaultFlags: UInt32 {
        ctierkv_ring_flag_single_issuer() | ctierkv_ring_flag_coop_taskrun()
    }

    deinit { ctierkv_ring_destroy(handle) }

    /// Which opcodes the running kernel supports (`IORING_REGISTER_PROBE`).
    public func supportedOpcodes() throws(TierKVError) -> Set<UInt8> {
        var table = [UInt8](repeating: 0, count: 256)
        let count = ctierkv_ring_probe(handle, &table)
        guard count >= 0 else {
            throw TierKVError(.unsupported, "the kernel does not support io_uring opcode probing", operation: "io_uring_get_probe_ring", errno: -count)
        }
        return Set((0..<256).filter { table[$0] != 0 }.map { UInt8($0) })
    }

    /// Registers `buffers` as fixed buffers (pinned by the kernel once, not per I/O).
    func registerBuffers(_ buffers: [iovec]) throws(TierKVError) {
        let result = buffers.withUnsafeBufferPointer { ctierkv_ring_register_buffers(handle, $0.baseAddress, UInt32($0.count)) }
        try SystemCall.negativeErrno("io_uring_register_buffers", result)
    }

    /// Registers memory regions (an arena's `ioRingBufferRegions`) as fixed buffers, in order.
    public func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) throws(TierKVError) {
        try registerBuffers(regions.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) })
    }

    /// Drops the fixed buffers registered with `registerBuffers`.
    public func unregisterBuffers() throws(TierKVError) {
        try SystemCall.negativeErrno("io_uring_unregister_buffers", ctierkv_ring_unregister_buffers(handle))
    }

    /// Registers file descriptors so SQEs can name them by index (IOSQE_FIXED_FILE).
    public func registerFiles(_ descriptors: [Int32]) throws(TierKVError) {
        let result = descriptors.withUnsafeBufferPointer { ctierkv_ring_register_files(handle, $0.baseAddress, UInt32($0.count)) }
        try SystemCall.negativeErrno("io_uring_register_files", result)
    }

    /// Drops the registered files.
    public func unregisterFiles() throws(TierKVError) {
        try SystemCall.negativeErrno("io_uring_unregister_files", ctierkv_ring_unregister_files(handle))
    }
}
