internal import CTierKVLinux

/// What the CPU (and the OS, via XSAVE state) supports, read with CPUID/XGETBV.
public struct CPUFeatures: Sendable, Codable, Hashable {
    public var avx2: Bool
    public var fma: Bool
    public var f16c: Bool
    public var sse42: Bool
    public var avx512f: Bool
    public var avx512fp16: Bool
    /// Whether the OS saves YMM state (AVX usable at all).
    public var osSavesYMM: Bool

    /// Reads the features of the CPU this process runs on.
    public static let current: CPUFeatures = detect()

    /// The features TierKV's SIMD kernels are compiled for (x86-64-v3: AVX2, FMA, F16C).
    public var meetsKernelRequirements: Bool { avx2 && fma && f16c && osSavesYMM }

    /// Throws a clear error (instead of dying of SIGILL later) when the kernels cannot run here.
    public func requireKernelSupport() throws(TierKVError) {
        guard meetsKernelRequirements else {
            var missing: [String] = []
            if !avx2 { missing.append("AVX2") }
            if !fma { missing.append("FMA") }
            if !f16c { missing.append("F16C") }
            if !osSavesYMM { missing.append("OS support for AVX state") }
            throw TierKVError(
                .unsupported,
                "this CPU lacks \(missing.joined(separator: ", ")); TierKV's attention kernels need an x86-64-v3 CPU (Intel Haswell or AMD Zen 1 and later)"
            )
        }
    }

    private static func detect() -> CPUFeatures {
        var a: UInt32 = 0, b: UInt32 = 0, c: UInt32 = 0, d: UInt32 = 0
        _ = ctierkv_cpuid(1, 0, &a, &b, &c, &d)
        let leaf1ECX = c
        let osxsave = leaf1ECX & (1 << 27) != 0
        let xcr0 = osxsave ? ctierkv_xgetbv(0) : 0
        let ymm = xcr0 & 0b110 == 0b110
        let zmm = xcr0 & 0b1110_0110 == 0b1110_0110
        let hasLeaf7 = ctierkv_cpuid(7, 0, &a, &b, &c, &d) != 0
        let leaf7EBX = hasLeaf7 ? b : 0
        let leaf7EDX = hasLeaf7 ? d : 0
        return CPUFeatures(
            avx2: ymm && leaf7EBX & (1 << 5) != 0,
            fma: ymm && leaf1ECX & (1 << 12) != 0,
            f16c: ymm && leaf1ECX & (1 << 29) != 0,
            sse42: leaf1ECX & (1 << 20) != 0,
            avx512f: zmm && leaf7EBX & (1 << 16) != 0,
            avx512fp16: zmm && leaf7EDX & (1 << 23) != 0,
            osSavesYMM: ymm)
    }
}
