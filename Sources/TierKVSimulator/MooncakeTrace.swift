import Foundation
import TierKVCore

/// A request-level prefix trace in the Mooncake FAST'25 format: one JSON object per line with
/// `timestamp` (ms), `input_length` and `output_length` (tokens) and `hash_ids`, the ids of the
/// prompt's 512-token blocks (equal ids = equal prefix blocks).
public struct MooncakeTrace: Sendable {
    public struct Request: Sendable, Equatable {
        public var timestamp: Int
        public var inputLength: Int
        public var outputLength: Int
        public var hashIDs: [Int]

        public init(timestamp: Int, inputLength: Int, outputLength: Int, hashIDs: [Int]) {
            self.timestamp = timestamp
            self.inputLength = inputLength
            self.outputLength = outputLength
            self.hashIDs = hashIDs
        }
    }

    /// Tokens per `hash_ids` block in the published traces.
    public static let tokensPerBlock = 512

    public var requests: [Request]
    /// Every request's blocks as dense ids (0..<distinctBlocks), in file order: the access sequence.
    public let accesses: [Int32]
    /// Where each request's blocks start in `accesses` (and one past the end).
    public let requestStarts: [Int]
    public let distinctBlocks: Int

    /// Parses `text`; a malformed line is refused with its number and what is wrong with it.
    public init(parsing text: String, source: String = "trace") throws(TierKVError) {
        var requests: [Request] = []
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            requests.append(try Self.parseLine(trimmed, lineNumber: lineNumber, source: source))
        }
        guard !requests.isEmpty else { throw .invalid("\(source): no requests (expected JSON lines with hash_ids)") }
        self.init(requests: requests)
    }

    public init(requests: [Request]) {
        self.requests = requests
        var dense: [Int: Int32] = [:]
        var accesses: [Int32] = []
        var starts: [Int] = []
        accesses.reserveCapacity(requests.reduce(0) { $0 + $1.hashIDs.count })
        for request in requests {
            starts.append(accesses.count)
            for id in request.hashIDs {
                if let known = dense[id] {
                    accesses.append(known)
                } else {
                    let next = Int32(dense.count)
                    dense[id] = next
                    accesses.append(next)
                }
            }
        }
        starts.append(accesses.count)
        self.accesses = accesses
        self.requestStarts = starts
        self.distinctBlocks = dense.count
    }

    /// Reads a trace file.
    public static func load(path: String) throws(TierKVError) -> MooncakeTrace {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TierKVError(.notFound, "cannot read trace file \(path)", path: path)
        }
        guard let text = String(data: data, encoding: .utf8) else { throw .invalid("trace file \(path) is not UTF-8") }
        return try MooncakeTrace(parsing: text, source: path)
    }

    private static func parseLine(_ line: String, lineNumber: Int, source: String) throws(TierKVError) -> Request {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(line.utf8))
        } catch {
            throw .invalid("\(source):\(lineNumber): not valid JSON (\(line.prefix(60))...)")
        }
        guard let fields = object as? [String: Any] else { throw .invalid("\(source):\(lineNumber): expected a JSON object") }
        func integer(_ name: String) throws(TierKVError) -> Int {
            guard let number = fields[name] as? NSNumber, Double(number.intValue) == number.doubleValue, number.intValue >= 0
            else {
                throw .invalid("\(source):\(lineNumber): field \"\(name)\" must be a non-negative integer (found \(fields[name].map { "\($0)" } ?? "nothing"))")
            }
            return number.intValue
        }
        guard let ids = fields["hash_ids"] as? [Any] else {
            throw .invalid("\(source):\(lineNumber): field \"hash_ids\" must be an array of block ids")
        }
        var hashIDs: [Int] = []
        hashIDs.reserveCapacity(ids.count)
        for (position, value) in ids.enumerated() {
            guard let number = value as? NSNumber, number.intValue >= 0, Double(number.intValue) == number.doubleValue else {
                throw .invalid("\(source):\(lineNumber): hash_ids[\(position)] is \(value), not a non-negative integer")
            }
            hashIDs.append(number.intValue)
        }
        return Request(timestamp: try integer("timestamp"), inputLength: try integer("input_length"),
            outputLength: try integer("output_length"), hashIDs: hashIDs)
    }
}
