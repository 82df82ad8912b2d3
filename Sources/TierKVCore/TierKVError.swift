#if canImport(Glibc)
import Glibc
#endif

/// The one error type TierKV throws.
///
/// It carries what failed (`operation`), on what (`path` or object), the errno when a system
/// call failed, and a message a user can act on. `code` is an extensible set of categories so
/// callers can branch without string matching (the swift-nio `FileSystemError` pattern).
public struct TierKVError: Error, Sendable, CustomStringConvertible {
    /// A category of failure. Extensible: new codes do not break callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public init(_ name: String) { self.name = name }
        public var description: String { name }

        /// A value given by the caller is out of range or malformed.
        public static let invalidArgument = Code("invalid argument")
        /// A system call failed; `errno` says why.
        public static let systemCall = Code("system call failed")
        /// The machine or filesystem lacks a feature TierKV needs.
        public static let unsupported = Code("unsupported")
        /// Stored data failed verification.
        public static let corruption = Code("corruption")
        /// A named thing (file, preset, block) does not exist.
        public static let notFound = Code("not found")
        /// A tier or pool is full.
        public static let capacityExceeded = Code("capacity exceeded")
        /// The CUDA driver returned an error or is missing.
        public static let cudaDriver = Code("CUDA driver")
        /// An object was used after it was closed.
        public static let closed = Code("closed")
    }

    public var code: Code
    /// What to tell the user: what is wrong and, where possible, what to do.
    public var message: String
    /// The operation that failed (`open`, `io_uring_queue_init`, `cuMemAlloc`...).
    public var operation: String?
    /// The file or object concerned.
    public var path: String?
    /// The errno of a failed system call, if any.
    public var errno: Int32?
    /// Where in TierKV the error was raised.
    public var file: String
    public var line: Int

    public init(
        _ code: Code, _ message: String, operation: String? = nil, path: String? = nil, errno: Int32? = nil,
        file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.operation = operation
        self.path = path
        self.errno = errno
        self.file = file
        self.line = line
    }

    /// `"invalid argument: message"` followed by the operation, path and errno when known.
    public var description: String {
        var text = "\(code): \(message)"
        var context: [String] = []
        if let operation { context.append("operation \(operation)") }
        if let path { context.append("path \(path)") }
        if let errno { context.append("errno \(errno) (\(Self.errnoName(errno)))") }
        if !context.isEmpty { text += " [" + context.joined(separator: ", ") + "]" }
        return text
    }

    /// `strerror` text for an errno value.
    public static func errnoName(_ value: Int32) -> String {
        guard let text = strerror(value) else { return "unknown error" }
        return String(cString: text)
    }

    /// Shorthand for a bad caller-supplied value.
    public static func invalid(_ message: String, file: String = #fileID, line: Int = #line) -> TierKVError {
        TierKVError(.invalidArgument, message, file: file, line: line)
    }
}
