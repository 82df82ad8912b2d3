#if canImport(Glibc)
import Glibc
#endif

/// A file replaced all at once: bytes go to `path.tmp` through a buffer, and `commit` syncs it,
/// renames it over `path` and syncs the directory, so a crash leaves either the old file or the
/// new one, never a mixture. Used for the cold index checkpoint and the key-summary file.
public final class AtomicFileWriter {
    public let path: String
    let temporaryPath: String
    private var descriptor: Int32
    private var buffer: [UInt8] = []
    private let bufferLimit: Int
    /// Bytes handed to `append` so far.
    public private(set) var byteCount = 0

    /// Creates (truncates) `path.tmp`, mode 0600, not following a symlink.
    /// - Throws: `.systemCall` naming the path.
    public init(path: String, bufferBytes: Int = 1 << 20) throws(TierKVError) {
        self.path = path
        temporaryPath = path + ".tmp"
        bufferLimit = max(4096, bufferBytes)
        let temporary = temporaryPath
        descriptor = try SystemCall.retrying("open", path: temporary) {
            open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        }
        buffer.reserveCapacity(bufferLimit)
    }

    deinit { abandon() }

    public func append(_ bytes: UnsafeRawBufferPointer) throws(TierKVError) {
        byteCount += bytes.count
        if buffer.count + bytes.count > bufferLimit { try drain() }
        if bytes.count >= bufferLimit {
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    public func append(_ bytes: [UInt8]) throws(TierKVError) {
        let failure = bytes.withUnsafeBytes { raw -> TierKVError? in
            do throws(TierKVError) { try append(raw) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    public func append<T: FixedWidthInteger>(_ value: T) throws(TierKVError) {
        try append(withUnsafeBytes(of: value.littleEndian) { Array($0) })
    }

    /// Writes what is buffered, syncs, and renames the file into place (then syncs the
    /// directory). On failure the temporary file is removed and the old file is left as it was.
    /// - Throws: `.capacityExceeded` for ENOSPC, `.systemCall` for other errors, naming the path.
    public func commit() throws(TierKVError) {
        guard descriptor >= 0 else { throw .invalid("\(path) was already committed or abandoned") }
        do throws(TierKVError) {
            try drain()
            if fsync(descriptor) != 0 { throw failure("fsync", errno) }
            close(descriptor)
            descriptor = -1
            if rename(temporaryPath, path) != 0 { throw failure("rename", errno) }
        } catch {
            abandon()
            throw error
        }
        let directory = open(Self.directory(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
    }

    /// Closes and removes the temporary file (nothing happens to `path`). Idempotent.
    public func abandon() {
        if descriptor >= 0 {
            close(descriptor)
            descriptor = -1
        }
        unlink(temporaryPath)
    }

    private func drain() throws(TierKVError) {
        guard !buffer.isEmpty else { return }
        let failure = buffer.withUnsafeBytes { raw -> TierKVError? in
            do throws(TierKVError) { try writeAll(raw) } catch { return error }
            return nil
        }
        buffer.removeAll(keepingCapacity: true)
        if let failure { throw failure }
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws(TierKVError) {
        var written = 0
        while written < bytes.count {
            let result = Glibc.write(descriptor, bytes.baseAddress! + written, bytes.count - written)
            if result < 0, errno == EINTR { continue }
            guard result > 0 else { throw failure("write", result < 0 ? errno : EIO) }
            written += result
        }
    }

    private func failure(_ operation: String, _ code: Int32) -> TierKVError {
        TierKVError(
            code == ENOSPC ? .capacityExceeded : .systemCall, "cannot write \(path): \(TierKVError.errnoName(code))",
            operation: operation, path: temporaryPath, errno: code)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

/// Reads a file front to back in exact-sized pieces through a buffer (files too large to read
/// whole, such as the key-summary file of a large cold tier).
public final class SequentialFileReader {
    public let path: String
    private let descriptor: Int32
    private var buffer: [UInt8]
    private var start = 0
    private var end = 0
    private var atEnd = false

    /// Nil when `path` cannot be opened (it does not exist, or is a symlink).
    public init?(path: String, bufferBytes: Int = 1 << 20) {
        self.path = path
        descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard descriptor >= 0 else { return nil }
        buffer = [UInt8](repeating: 0, count: max(4096, bufferBytes))
    }

    deinit { close(descriptor) }

    /// Copies the next `count` bytes into `destination`; false when the file ends first (or a
    /// read fails), leaving `destination` partly written.
    public func read(into destination: UnsafeMutableRawPointer, count: Int) -> Bool {
        var copied = 0
        while copied < count {
            if start == end {
                guard refill() else { return false }
            }
            let piece = min(count - copied, end - start)
            buffer.withUnsafeBytes { destination.advanced(by: copied).copyMemory(from: $0.baseAddress! + start, byteCount: piece) }
            start += piece
            copied += piece
        }
        return true
    }

    /// Whether every byte has been read.
    public var isAtEnd: Bool {
        if start < end { return false }
        return !refill()
    }

    private func refill() -> Bool {
        guard !atEnd else { return false }
        start = 0
        end = 0
        while true {
            let got = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if got < 0, errno == EINTR { continue }
            if got <= 0 {
                atEnd = true
                return false
            }
            end = got
            return true
        }
    }
}
