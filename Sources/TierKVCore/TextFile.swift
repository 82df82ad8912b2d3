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
