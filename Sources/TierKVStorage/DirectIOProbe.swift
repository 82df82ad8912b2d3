internal import CTierKVLinux
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// Whether O_DIRECT works in a directory, found by writing and reading back a 4 KiB block.
public struct DirectIOCapability: Sendable {
    public var directory: String
    public var isSupported: Bool
    /// The filesystem the directory is on (`ext4`, `xfs`, `tmpfs`...), from `statfs`.
    public var filesystem: String
    public var error: String?

    public var json: JSONValue {
        .object([
            ("supported", .bool(isSupported)), ("directory", .string(directory)),
            ("filesystem", .string(filesystem)), ("error", .optional(error)),
        ])
    }

    /// Writes, syncs, reads back and compares one aligned 4 KiB block with O_DIRECT, then
    /// removes the test file. Never throws: a failure is reported in `error`.
    public static func probe(directory: String) -> DirectIOCapability {
        let filesystem = filesystemName(directory)
        do {
            try run(directory: directory)
            return DirectIOCapability(directory: directory, isSupported: true, filesystem: filesystem, error: nil)
        } catch {
            return DirectIOCapability(
                directory: directory, isSupported: false, filesystem: filesystem, error: error.description)
        }
    }

    private static func run(directory: String) throws(TierKVError) {
        let path = directory + "/.tierkv-odirect-probe-\(getpid())"
        let flags = O_RDWR | O_CREAT | O_EXCL | ctierkv_o_direct() | ctierkv_o_nofollow_cloexec()
        let descriptor: Int32
        do {
            descriptor = try SystemCall.retrying("open(O_DIRECT)", path: path) { open(path, flags, 0o600) }
        } catch where error.errno == EINVAL {
            throw TierKVError(.unsupported, "the filesystem at \(directory) does not support O_DIRECT",
                operation: "open(O_DIRECT)", path: path, errno: EINVAL)
        }
        defer {
            close(descriptor)
            unlink(path)
        }
        let block = try AlignedBuffer(byteCount: 4096)
        for index in 0..<4096 { block.base.storeBytes(of: UInt8(truncatingIfNeeded: index &* 31 &+ 7), toByteOffset: index, as: UInt8.self) }
        let written = try SystemCall.retrying("pwrite(O_DIRECT)", path: path) { pwrite(descriptor, block.base, 4096, 0) }
        guard written == 4096 else { throw TierKVError(.systemCall, "short O_DIRECT write of \(written) bytes", path: path) }
        try SystemCall.retrying("fdatasync", path: path) { fdatasync(descriptor) }
        let readBack = try AlignedBuffer(byteCount: 4096)
        let got = try SystemCall.retrying("pread(O_DIRECT)", path: path) { pread(descriptor, readBack.base, 4096, 0) }
        guard got == 4096, memcmp(block.base, readBack.base, 4096) == 0 else {
            throw TierKVError(.corruption, "O_DIRECT read-back differs from what was written", path: path)
        }
    }

    /// Maps `statfs.f_type` to a name for the filesystems a cache directory is likely on.
    public static func filesystemName(_ path: String) -> String {
        var info = statfs()
        guard statfs(path, &info) == 0 else { return "unknown" }
        let names: [Int: String] = [
            0xEF53: "ext4", 0x5846_5342: "xfs", 0x0102_1994: "tmpfs", 0x9123_683E: "btrfs",
            0x794C_7630: "overlayfs", 0x6969: "nfs", 0x2FC1_2FC1: "zfs", 0x6573_5546: "fuse", 0x8584_58F6: "ramfs",
            0x0102_1997: "9p", 0xF2F5_2010: "f2fs",
        ]
        return names[Int(info.f_type)] ?? "0x" + String(UInt64(bitPattern: Int64(info.f_type)), radix: 16)
    }
}
