import TierKVAccelerator
import TierKVCore
import TierKVHostArena
import TierKVStorage

#if canImport(Glibc)
import Glibc
#endif

/// Everything `tierkv doctor` finds out about this machine, from real probes: a ring is set
/// up, a file is written with O_DIRECT, memory is locked, the CUDA driver is loaded.
public struct SystemReport: Sendable {
    public var kernelRelease: String
    public var cpuModel: String
    public var logicalCPUCount: Int
    public var cpu: CPUFeatures
    public var ioRing: IORingCapabilities
    public var directIO: DirectIOCapability
    public var numa: NUMATopology
    public var hugePages: HugePageSupport
    public var memoryLock: MemoryLockLimits
    public var cuda: CUDAAvailability

    /// Runs every probe. `cacheDirectory` is where the O_DIRECT probe writes its test file.
    public static func probe(cacheDirectory: String) -> SystemReport {
        var names = utsname()
        uname(&names)
        let release = withUnsafeBytes(of: &names.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let cpuinfo = TextFile.read("/proc/cpuinfo") ?? ""
        let model = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("model name") })
            .flatMap { $0.split(separator: ":", maxSplits: 1).last.map { String($0).trimmingSpaces } } ?? "unknown"
        return SystemReport(
            kernelRelease: release, cpuModel: model, logicalCPUCount: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
            cpu: CPUFeatures.current, ioRing: IORingCapabilities.probe(),
            directIO: DirectIOCapability.probe(directory: cacheDirectory), numa: NUMATopology.current(),
            hugePages: HugePageSupport.current(), memoryLock: MemoryLockLimits.probe(),
            cuda: CUDAAvailability.probe())
    }

    /// The `--json` document. Field names are a contract (DESIGN.md §6).
    public var json: JSONValue {
        .object([
            ("tierkv_version", .string(TierKVVersion.string)),
            ("kernel", .string(kernelRelease)),
            ("cpu", .object([
                ("model", .string(cpuModel)), ("logical_cpus", .int(logicalCPUCount)),
                ("avx2", .bool(cpu.avx2)), ("fma", .bool(cpu.fma)), ("f16c", .bool(cpu.f16c)),
                ("sse4_2", .bool(cpu.sse42)), ("avx512f", .bool(cpu.avx512f)), ("avx512fp16", .bool(cpu.avx512fp16)),
                ("kernels_supported", .bool(cpu.meetsKernelRequirements)),
            ])),
            ("io_uring", ioRing.json),
            ("o_direct", directIO.json),
            ("numa", numa.json),
            ("huge_pages", hugePages.json),
            ("memlock_bytes", memoryLock.softLimitBytes.map { .int($0) } ?? .null),
            ("memlock_hard_bytes", memoryLock.hardLimitBytes.map { .int($0) } ?? .null),
            ("memlock_unlimited", .bool(memoryLock.softLimitBytes == nil)),
            ("can_lock_memory", .bool(memoryLock.canLockMemory)),
            ("memory_lock_error", .optional(memoryLock.error)),
            ("cuda", cuda.json),
        ])
    }
}
