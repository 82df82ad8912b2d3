import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// Heap memory aligned for O_DIRECT and DMA (4 KiB by default), freed when the owner goes.
public struct AlignedBuffer: ~Copyable {
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int

    /// Allocates `byteCount` zeroed bytes aligned to `alignment` (a power of two ≥ 8).
    public init(byteCount: Int, alignment: Int = 4096) throws(TierKVError) {
        guard byteCount > 0, alignment >= 8, alignment & (alignment - 1) == 0 else {
            throw .invalid("aligned buffer of \(byteCount) bytes at alignment \(alignment) is not valid")
        }
        var pointer: UnsafeMutableRawPointer?
        let result = posix_memalign(&pointer, alignment, byteCount)
        guard result == 0, let pointer else {
            throw TierKVError(.systemCall, "cannot allocate \(ByteCount(UInt64(byteCount))) of aligned memory",
                operation: "posix_memalign", errno: result)
        }
        memset(pointer, 0, byteCount)
        base = pointer
        self.byteCount = byteCount
    }

    deinit { free(base) }

    /// The bytes as a buffer pointer, valid while `self` lives.
    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: byteCount) }
}
