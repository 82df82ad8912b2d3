import CTierKVLinux
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
    let ring: UnsafeMutablePointer<io_uring>

    /// Creates a ring with `entryCount` SQ entries. Tries `preferredFlags` and falls back to
    /// no flags when the kernel rejects them with EINVAL (older kernels); `setupFlags` tells
    /// which were accepted.
    /// - Throws: `.systemCall` with the errno of `io_uring_queue_init` (ENOSYS: no io_uring
    ///   in this kernel; EPERM: disabled by `kernel.io_uring_disabled` or a seccomp filter).
    public init(entryCount: UInt32, preferredFlags: UInt32 = IORing.defaultFlags) throws(TierKVError) {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        ring.initialize(to: io_uring())
        var flags = preferredFlags
        var result = io_uring_queue_init(entryCount, ring, flags)
        if result == -EINVAL, flags != 0 {
            flags = 0
            result = io_uring_queue_init(entryCount, ring, flags)
        }
        if result < 0 {
            ring.deallocate()
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
        self.ring = ring
        self.setupFlags = flags
        self.entryCount = entryCount
    }

    /// SINGLE_ISSUER | COOP_TASKRUN: one submitting thread, completions run at its next
    /// syscall instead of by interrupting it (fewer IPIs).
    public static var defaultFlags: UInt32 {
        ctierkv_ioring_setup_single_issuer() | ctierkv_ioring_setup_coop_taskrun()
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    /// Which opcodes the running kernel supports (`IORING_REGISTER_PROBE`).
    public func supportedOpcodes() throws(TierKVError) -> Set<UInt8> {
        guard let probe = io_uring_get_probe_ring(ring) else {
            throw TierKVError(.unsupported, "the kernel does not support io_uring opcode probing",
                operation: "io_uring_get_probe_ring")
        }
        defer { io_uring_free_probe(probe) }
        var supported: Set<UInt8> = []
        for opcode in 0..<Int32(ctierkv_ioring_op_last()) where io_uring_opcode_supported(probe, opcode) != 0 {
            supported.insert(UInt8(opcode))
        }
        return supported
    }

    /// Registers `buffers` as fixed buffers (pinned by the kernel once, not per I/O).
    public func registerBuffers(_ buffers: [iovec]) throws(TierKVError) {
        let result = buffers.withUnsafeBufferPointer { io_uring_register_buffers(ring, $0.baseAddress, UInt32($0.count)) }
        try SystemCall.negativeErrno("io_uring_register_buffers", result)
    }

    /// Registers memory regions (an arena's `ioRingBufferRegions`) as fixed buffers, in order.
    public func registerBuffers(_ regions: [UnsafeMutableRawBufferPointer]) throws(TierKVError) {
        try registerBuffers(regions.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) })
    }

    /// Drops the fixed buffers registered with `registerBuffers`.
    public func unregisterBuffers() throws(TierKVError) {
        try SystemCall.negativeErrno("io_uring_unregister_buffers", io_uring_unregister_buffers(ring))
    }

    /// Registers file descriptors so SQEs can name them by index (IOSQE_FIXED_FILE).
    public func registerFiles(_ descriptors: [Int32]) throws(TierKVError) {
        let result = descriptors.withUnsafeBufferPointer { io_uring_register_files(ring, $0.baseAddress, UInt32($0.count)) }
        try SystemCall.negativeErrno("io_uring_register_files", result)
    }

    /// Drops the registered files.
    public func unregisterFiles() throws(TierKVError) {
        try SystemCall.negativeErrno("io_uring_unregister_files", io_uring_unregister_files(ring))
    }
}
