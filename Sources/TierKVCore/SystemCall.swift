#if canImport(Glibc)
import Glibc
#endif

/// The one place TierKV turns a failed C call into a `TierKVError`.
///
/// Above this line no code looks at `errno` or negative return values.
public enum SystemCall {
    /// Runs a call that returns -1 and sets `errno` on failure, retrying on `EINTR`.
    @discardableResult
    public static func retrying<Result: BinaryInteger>(
        _ operation: String, path: String? = nil, file: String = #fileID, line: Int = #line,
        _ body: () -> Result
    ) throws(TierKVError) -> Result {
        while true {
            let result = body()
            if result != -1 { return result }
            let code = Glibc.errno
            if code == EINTR { continue }
            throw TierKVError(
                .systemCall, "\(operation) failed: \(TierKVError.errnoName(code))",
                operation: operation, path: path, errno: code, file: file, line: line)
        }
    }

    /// Checks a call that returns `-errno` on failure (liburing, io_uring CQE results).
    @discardableResult
    public static func negativeErrno(
        _ operation: String, path: String? = nil, file: String = #fileID, line: Int = #line,
        _ result: Int32
    ) throws(TierKVError) -> Int32 {
        if result >= 0 { return result }
        let code = -result
        throw TierKVError(
            .systemCall, "\(operation) failed: \(TierKVError.errnoName(code))",
            operation: operation, path: path, errno: code, file: file, line: line)
    }
}
