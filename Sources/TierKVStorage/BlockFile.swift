internal import CTierKVLinux
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// The cold tier's file: a cache directory (0700) holding an exclusive lock file and
/// `blocks.tkv`, a preallocated file (0600) of fixed-size slots after a 4 KiB file header,
/// opened O_DIRECT | O_NOFOLLOW. Owns the descriptors; closing releases the lock.
///
/// File header (little-endian): magic `TKVFILE1` (8) · version (4) · reserved (4) · slot bytes
/// (8) · slot count (8) · XXH64 of the preceding 32 bytes (8).
public final class BlockFile: @unchecked Sendable {
    // @unchecked: every property is immutable after init; the descriptors are used with pread/
    // pwrite-style calls that carry their own offsets.
    public struct Geometry: Sendable, Equatable {
        /// Bytes per slot: a multiple of 4 KiB, header included.
        public var slotByteCount: Int
        public var slotCount: Int

        public init(slotByteCount: Int, slotCount: Int) {
            self.slotByteCount = slotByteCount
            self.slotCount = slotCount
        }

        /// The slot size for a payload: header + payload rounded up to 4 KiB.
        public static func slotByteCount(forPayload payload: Int) -> Int {
            (ColdSlotHeader.byteCount + payload + 4095) / 4096 * 4096
        }

        public var fileByteCount: Int { BlockFile.fileHeaderByteCount + slotByteCount * slotCount }
    }

    public static let fileHeaderByteCount = 4096
    public static let fileName = "blocks.tkv"
    public static let lockFileName = "lock"
    static let magic: UInt64 = 0x3145_4C49_4656_4B54  // "TKVFILE1"
    static let version: UInt32 = 1

    public let directory: String
    public let path: String
    public let geometry: Geometry
    public let descriptor: Int32
    /// False when the filesystem refused O_DIRECT and the caller allowed the buffered fallback;
    /// always reported, never silent.
    public let isDirect: Bool
    /// Whether the file was created by this open (versus an existing cache reopened).
    public let wasCreated: Bool
    private let lockDescriptor: Int32
    private let isLockReleased = Locked(false)

    /// Opens (or creates) the block file in `directory`.
    /// - Parameter allowBufferedFallback: on a filesystem without O_DIRECT (EINVAL), open buffered
    ///   instead of failing; `isDirect` then says so.
    /// - Throws: a second opener gets `.unsupported` naming the holder; a foreign, truncated or
    ///   differently-shaped file is refused with what was found; ENOSPC on preallocation removes
    ///   the half-made file and says how much was needed.
    public init(directory: String, geometry: Geometry, allowBufferedFallback: Bool = false) throws(TierKVError) {
        guard geometry.slotByteCount >= 4096, geometry.slotByteCount % 4096 == 0, geometry.slotCount >= 1 else {
            throw .invalid("slot size \(geometry.slotByteCount) must be a positive multiple of 4096 and slot count \(geometry.slotCount) at least 1")
        }
        if mkdir(directory, 0o700) != 0, errno != EEXIST {
            throw TierKVError(.systemCall, "cannot create cache directory: \(TierKVError.errnoName(errno))", operation: "mkdir", path: directory, errno: errno)
        }
        let lockPath = directory + "/" + Self.lockFileName
        let lock = try SystemCall.retrying("open", path: lockPath) { open(lockPath, O_RDWR | O_CREAT | ctierkv_o_nofollow_cloexec(), 0o600) }
        if !Self.lockExclusively(lock, path: lockPath) {
            let holder = TextFile.readTrimmed(lockPath) ?? "another process"
            close(lock)
            throw TierKVError(
                .unsupported, "cache directory \(directory) is in use by process \(holder); one process owns a cache directory at a time",
                operation: "flock", path: lockPath, errno: EWOULDBLOCK)
        }
        var pid = "\(getpid())\n"
        _ = ftruncate(lock, 0)
        _ = pid.withUTF8 { pwrite(lock, $0.baseAddress, $0.count, 0) }
        var keepLock = false
        defer { if !keepLock { close(lock) } }

        let path = directory + "/" + Self.fileName
        var info = stat()
        let exists = lstat(path, &info) == 0
        let base = O_RDWR | ctierkv_o_nofollow_cloexec() | (exists ? 0 : O_CREAT | O_EXCL)
        var direct = true
        var descriptor = open(path, base | ctierkv_o_direct(), 0o600)
        if descriptor < 0, errno == EINVAL {
            // Some filesystems (ramfs) create the file before refusing O_DIRECT: remove it, so
            // neither this error nor the buffered retry (O_EXCL) trips over an empty file.
            if !exists { unlink(path) }
            guard allowBufferedFallback else {
                throw TierKVError(
                    .unsupported,
                    "the filesystem of \(directory) (\(DirectIOCapability.filesystemName(directory))) does not support O_DIRECT; use a directory on ext4/xfs on the NVMe drive, or allow the buffered fallback (page cache, slower, double-buffered)",
                    operation: "open(O_DIRECT)", path: path, errno: EINVAL)
            }
            direct = false
            descriptor = open(path, base, 0o600)
        }
        guard descriptor >= 0 else {
            throw TierKVError(.systemCall, "cannot open \(path): \(TierKVError.errnoName(errno))", operation: "open", path: path, errno: errno)
        }
        var keepFile = false
        defer {
            if !keepFile {
                close(descriptor)
                if !exists { unlink(path) }
            }
        }
        let header = try AlignedBuffer(byteCount: Self.fileHeaderByteCount)
        if exists {
            try Self.validate(descriptor, path: path, expected: geometry, header: header)
        } else {
            let result = posix_fallocate(descriptor, 0, off_t(geometry.fileByteCount))
            if result != 0 {
                let reason = result == ENOSPC
                    ? "not enough space for the cold tier: \(ByteCount(UInt64(geometry.fileByteCount))) needed in \(directory); lower --cold or free space"
                    : "cannot preallocate \(ByteCount(UInt64(geometry.fileByteCount))): \(TierKVError.errnoName(result))"
                throw TierKVError(result == ENOSPC ? .capacityExceeded : .systemCall, reason, operation: "posix_fallocate", path: path, errno: result)
            }
            Self.encode(geometry, into: header.base)
            let written = try SystemCall.retrying("pwrite", path: path) { pwrite(descriptor, header.base, Self.fileHeaderByteCount, 0) }
            guard written == Self.fileHeaderByteCount else { throw TierKVError(.systemCall, "short write of the file header", path: path) }
            try SystemCall.retrying("fdatasync", path: path) { fdatasync(descriptor) }
        }
        self.directory = directory
        self.path = path
        self.geometry = geometry
        self.descriptor = descriptor
        self.isDirect = direct
        self.wasCreated = !exists
        self.lockDescriptor = lock
        keepLock = true
        keepFile = true
    }

    /// The geometry recorded in an existing cache directory's file header (for tools like fsck
    /// that open a cache without knowing its shape). Takes no lock.
    public static func recordedGeometry(directory: String) throws(TierKVError) -> Geometry {
        let path = directory + "/" + fileName
        let descriptor = open(path, O_RDONLY | ctierkv_o_nofollow_cloexec())
        guard descriptor >= 0 else {
            throw TierKVError(.notFound, "no TierKV block file at \(path): \(TierKVError.errnoName(errno))", operation: "open", path: path, errno: errno)
        }
        defer { close(descriptor) }
        let header = try AlignedBuffer(byteCount: fileHeaderByteCount)
        let got = pread(descriptor, header.base, fileHeaderByteCount, 0)
        guard got == fileHeaderByteCount, UInt64(littleEndian: header.base.load(as: UInt64.self)) == magic,
            UInt64(littleEndian: header.base.load(fromByteOffset: 32, as: UInt64.self)) == XXHash64.hash(UnsafeRawBufferPointer(start: header.base, count: 32))
        else {
            throw TierKVError(.invalidArgument, "\(path) is not a TierKV block file (no valid TKVFILE1 header)", path: path)
        }
        return Geometry(
            slotByteCount: Int(UInt64(littleEndian: header.base.load(fromByteOffset: 16, as: UInt64.self))),
            slotCount: Int(UInt64(littleEndian: header.base.load(fromByteOffset: 24, as: UInt64.self))))
    }

    deinit {
        close(descriptor)
        releaseDirectoryLock()
    }

    /// Takes the directory's flock. When the last holder was this process (a hierarchy closed a
    /// moment ago), its lock can outlive the close for a moment: a process another thread is
    /// spawning holds a copy of every descriptor until its exec closes them (O_CLOEXEC). Such
    /// a lock is retried for up to 0.5 s; another process's lock fails at once.
    private static func lockExclusively(_ descriptor: Int32, path: String) -> Bool {
        if flock(descriptor, LOCK_EX | LOCK_NB) == 0 { return true }
        guard TextFile.readTrimmed(path) == "\(getpid())" else { return false }
        for _ in 0..<250 {
            usleep(2000)
            if flock(descriptor, LOCK_EX | LOCK_NB) == 0 { return true }
        }
        return false
    }

    /// Gives up the directory lock now (on close), so another opener can take the directory even
    /// while a completion thread still holds the last reference to this file. Idempotent.
    public func releaseDirectoryLock() {
        let shouldClose = isLockReleased.withLock { released in
            defer { released = true }
            return !released
        }
        if shouldClose { close(lockDescriptor) }  // releases the flock
    }

    /// Byte offset of a slot in the file.
    public func offset(ofSlot slot: Int) -> UInt64 { UInt64(Self.fileHeaderByteCount + slot * geometry.slotByteCount) }

    static func encode(_ geometry: Geometry, into base: UnsafeMutableRawPointer) {
        base.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt64.self)
        base.storeBytes(of: version.littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: UInt64(geometry.slotByteCount).littleEndian, toByteOffset: 16, as: UInt64.self)
        base.storeBytes(of: UInt64(geometry.slotCount).littleEndian, toByteOffset: 24, as: UInt64.self)
        let checksum = XXHash64.hash(UnsafeRawBufferPointer(start: base, count: 32))
        base.storeBytes(of: checksum.littleEndian, toByteOffset: 32, as: UInt64.self)
    }

    static func validate(_ descriptor: Int32, path: String, expected: Geometry, header: borrowing AlignedBuffer) throws(TierKVError) {
        let got = try SystemCall.retrying("pread", path: path) { pread(descriptor, header.base, fileHeaderByteCount, 0) }
        let base = header.base
        guard got == fileHeaderByteCount, UInt64(littleEndian: base.load(as: UInt64.self)) == magic else {
            throw TierKVError(.invalidArgument, "\(path) is not a TierKV block file (no TKVFILE1 header); move it away or choose another cache directory", path: path)
        }
        let checksum = XXHash64.hash(UnsafeRawBufferPointer(start: base, count: 32))
        guard UInt64(littleEndian: base.load(fromByteOffset: 32, as: UInt64.self)) == checksum else {
            throw TierKVError(.corruption, "\(path) has a corrupt file header (checksum mismatch)", path: path)
        }
        let version = UInt32(littleEndian: base.load(fromByteOffset: 8, as: UInt32.self))
        guard version == Self.version else {
            throw TierKVError(.unsupported, "\(path) is block-file format version \(version); this TierKV reads version \(Self.version)", path: path)
        }
        let found = Geometry(
            slotByteCount: Int(UInt64(littleEndian: base.load(fromByteOffset: 16, as: UInt64.self))),
            slotCount: Int(UInt64(littleEndian: base.load(fromByteOffset: 24, as: UInt64.self))))
        guard found == expected else {
            throw TierKVError(
                .invalidArgument,
                "\(path) holds \(found.slotCount) slots of \(found.slotByteCount) bytes, but \(expected.slotCount) of \(expected.slotByteCount) were asked for; use the same layout and capacity, or another directory",
                path: path)
        }
        var info = stat()
        fstat(descriptor, &info)
        guard Int(info.st_size) >= found.fileByteCount else {
            throw TierKVError(.corruption, "\(path) is truncated: \(info.st_size) bytes, the header promises \(found.fileByteCount)", path: path)
        }
    }
}
