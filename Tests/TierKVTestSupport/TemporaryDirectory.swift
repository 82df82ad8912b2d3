import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents on deinit.
public final class TemporaryDirectory {
    public let path: String

    public init() throws {
        var template = Array(((getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp") + "/tierkv-test-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TierKVError(.systemCall, "mkdtemp failed", errno: errno)
        }
        path = String(cString: made)
    }

    /// Names in the directory, without `.` and `..`.
    public func entries() throws -> [String] {
        guard let names = Self.names(in: path) else { throw TierKVError(.systemCall, "opendir failed", path: path) }
        return names
    }

    /// Names in the directory at `path`, without `.` and `..`; nil when it cannot be opened.
    private static func names(in path: String) -> [String]? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    deinit { Self.remove(path) }

    /// Removes `path` and everything under it (tests make cache directories inside), without
    /// following symbolic links.
    private static func remove(_ path: String) {
        var status = stat()
        guard lstat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFDIR else {
            unlink(path)
            return
        }
        for name in names(in: path) ?? [] { remove(path + "/" + name) }
        rmdir(path)
    }
}
