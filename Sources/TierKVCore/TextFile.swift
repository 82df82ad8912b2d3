#if canImport(Glibc)
import Glibc
#endif

/// Reads small text files from /proc and /sys (where `stat` sizes are 0 and must not be trusted).
public enum TextFile {
    /// The whole file as UTF-8, or nil when it cannot be opened.
    public static func read(_ path: String, limitBytes: Int = 1 << 20) -> String? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limitBytes {
            let got = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if got < 0, errno == EINTR { continue }
            if got <= 0 { break }
            bytes.append(contentsOf: chunk[0..<got])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The file's content with surrounding whitespace removed.
    public static func readTrimmed(_ path: String) -> String? { read(path)?.trimmingSpaces }
}

/// Whole-file reads and writes of binary data (`.npy` files), with errors naming the path.
public enum BinaryFile {
    /// Every byte of `path`.
    /// - Throws: `.notFound` when it cannot be opened, `.systemCall` on a read error.
    public static func read(_ path: String) throws(TierKVError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let code = errno
            throw TierKVError(.notFound, "cannot read \(path): \(String(cString: strerror(code)))", path: path, errno: code)
        }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let got = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if got < 0, errno == EINTR { continue }
            if got < 0 {
                let code = errno
                throw TierKVError(.systemCall, "cannot read \(path): \(String(cString: strerror(code)))", path: path, errno: code)
            }
            if got == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<got])
        }
    }

    /// Writes `bytes` to `path` (created 0644 or truncated).
    /// - Throws: `.systemCall` naming the path and the errno.
    public static func write(_ bytes: [UInt8], to path: String) throws(TierKVError) {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        func failure() -> TierKVError {
            let code = errno
            return TierKVError(.systemCall, "cannot write \(path): \(String(cString: strerror(code)))", path: path, errno: code)
        }
        guard descriptor >= 0 else { throw failure() }
        defer { close(descriptor) }
        var offset = 0
        while offset < bytes.count {
            let wrote = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
            if wrote < 0, errno == EINTR { continue }
            guard wrote > 0 else { throw failure() }
            offset += wrote
        }
    }
}
