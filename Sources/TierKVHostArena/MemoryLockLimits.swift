internal import CTierKVLinux
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// RLIMIT_MEMLOCK and whether this process can actually lock memory.
public struct MemoryLockLimits: Sendable {
    /// Soft limit in bytes; nil when unlimited.
    public var softLimitBytes: UInt64?
    /// Hard limit in bytes; nil when unlimited.
    public var hardLimitBytes: UInt64?
    /// Whether `mlock` of `testedByteCount` bytes succeeded (root or CAP_IPC_LOCK may exceed the limit).
    public var canLockMemory: Bool
    public var testedByteCount: Int
    public var error: String?

    /// Reads the limits and tries to lock (then unlock) `testByteCount` bytes.
    public static func probe(testByteCount: Int = 16 << 20) -> MemoryLockLimits {
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(UInt32(ctierkv_rlimit_memlock())), &limit)
        let infinity = ctierkv_rlim_infinity()
        let soft = UInt64(limit.rlim_cur) == infinity ? nil : UInt64(limit.rlim_cur)
        let hard = UInt64(limit.rlim_max) == infinity ? nil : UInt64(limit.rlim_max)
        let memory = mmap(nil, testByteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let memory, memory != ctierkv_map_failed() else {
            return MemoryLockLimits(
                softLimitBytes: soft, hardLimitBytes: hard, canLockMemory: false, testedByteCount: testByteCount,
                error: "mmap of the test region failed: \(TierKVError.errnoName(errno))")
        }
        defer { munmap(memory, testByteCount) }
        let locked = mlock(memory, testByteCount) == 0
        let failure = locked ? nil : "mlock(\(ByteCount(UInt64(testByteCount)))) failed: \(TierKVError.errnoName(errno))"
        if locked { munlock(memory, testByteCount) }
        return MemoryLockLimits(
            softLimitBytes: soft, hardLimitBytes: hard, canLockMemory: locked, testedByteCount: testByteCount,
            error: failure)
    }
}
