import TierKV

#if canImport(Glibc)
import Glibc
#endif

/// How commands print: a JSON object on stdout with `--json`, a table otherwise; progress and
/// diagnostics on stderr.
enum Output {
    static func printJSON(_ value: JSONValue) {
        print(value.rendered(pretty: true))
    }

    /// Prints rows as two aligned columns under an optional heading.
    static func printTable(_ heading: String?, _ rows: [(String, String)]) {
        if let heading { print(heading) }
        let width = rows.map(\.0.count).max() ?? 0
        for (key, value) in rows {
            print("  " + key + String(repeating: " ", count: width - key.count) + "  " + value)
        }
    }

    static func printError(_ message: String, newline: Bool = true) {
        var line = message + (newline ? "\n" : "")
        line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

/// Wraps a `TierKVError` so argument-parser prints its message and exits non-zero.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ error: TierKVError) { description = error.description }
    init(_ message: String) { description = message }
}

/// Parses a size option (`512MiB`), naming the option in the error.
func parseByteCount(_ text: String, option: String) throws -> Int {
    do {
        let value = try ByteCount(parsing: text).value
        guard value <= UInt64(Int.max) else { throw CommandFailure("\(option) \(text) is too large") }
        return Int(value)
    } catch let error as TierKVError {
        throw CommandFailure("\(option): \(error.message)")
    }
}
