/// A number of bytes, parsed from and printed as human sizes (`512MiB`, `2GiB`, `1.5TB`).
///
/// Units: `B`; decimal `kB`/`KB`, `MB`, `GB`, `TB`, `PB` (powers of 1000); binary `KiB`, `MiB`,
/// `GiB`, `TiB`, `PiB` (powers of 1024). The single letters `K`, `M`, `G`, `T`, `P` are binary,
/// as in fio and `dd`. Case-insensitive except that `b` alone is refused (bits vs bytes).
public struct ByteCount: Hashable, Sendable, Comparable, Codable, CustomStringConvertible,
    ExpressibleByIntegerLiteral
{
    public var value: UInt64

    public init(_ value: UInt64) { self.value = value }
    public init(integerLiteral value: UInt64) { self.value = value }

    public static func kibibytes(_ count: UInt64) -> ByteCount { ByteCount(count << 10) }
    public static func mebibytes(_ count: UInt64) -> ByteCount { ByteCount(count << 20) }
    public static func gibibytes(_ count: UInt64) -> ByteCount { ByteCount(count << 30) }

    public static func < (lhs: ByteCount, rhs: ByteCount) -> Bool { lhs.value < rhs.value }

    private static let units: [(suffix: String, multiplier: UInt64)] = [
        ("pib", 1 << 50), ("tib", 1 << 40), ("gib", 1 << 30), ("mib", 1 << 20), ("kib", 1 << 10),
        ("pb", 1_000_000_000_000_000), ("tb", 1_000_000_000_000), ("gb", 1_000_000_000), ("mb", 1_000_000),
        ("kb", 1000),
        ("p", 1 << 50), ("t", 1 << 40), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10), ("", 1),
    ]

    /// Parses a size. Whitespace between number and unit is allowed; a fraction is allowed when
    /// the result is a whole number of bytes (`1.5KiB` is 1536, `1.5B` is an error).
    /// - Throws: `.invalidArgument` naming the text and what was expected.
    public init(parsing text: String) throws(TierKVError) {
        let trimmed = text.trimmingSpaces
        let expected = "expected a number with an optional unit, like 4096, 64KiB, 512MiB, 2GiB or 1.5TB"
        guard !trimmed.isEmpty else { throw .invalid("empty size; \(expected)") }
        var lowered = trimmed.lowercased()
        if lowered.hasSuffix("b"), !lowered.hasSuffix("ib"), trimmed.last == "b",
            lowered.dropLast().last.map({ $0.isNumber || $0 == " " }) ?? true
        {
            throw .invalid("size '\(text)': 'b' would mean bits; write 'B' for bytes")
        }
        if lowered.hasSuffix("b"), !lowered.hasSuffix("ib"), lowered.count >= 2 {
            let beforeB = lowered[lowered.index(lowered.endIndex, offsetBy: -2)]
            if beforeB.isNumber || beforeB == " " { lowered.removeLast() }
        }
        guard let unit = Self.units.first(where: { lowered.hasSuffix($0.suffix) }) else {
            throw .invalid("size '\(text)' has an unknown unit; \(expected)")
        }
        let number = String(lowered.dropLast(unit.suffix.count)).trimmingSpaces
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
            number.filter({ $0 == "." }).count <= 1, number != "."
        else {
            throw .invalid("size '\(text)' is not a non-negative number with a unit; \(expected)")
        }
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard let whole = UInt64(parts[0].isEmpty ? "0" : String(parts[0])) else {
            throw .invalid("size '\(text)' is too large")
        }
        let (wholeBytes, overflow) = whole.multipliedReportingOverflow(by: unit.multiplier)
        guard !overflow else { throw .invalid("size '\(text)' is too large (over 16 EiB)") }
        var total = wholeBytes
        if parts.count == 2, !parts[1].isEmpty {
            // Exact fraction: digits / 10^n × multiplier must be a whole number of bytes.
            let digits = String(parts[1].prefix(18))
            guard let numerator = UInt64(digits) else { throw .invalid("size '\(text)' has a bad fraction") }
            var denominator: UInt64 = 1
            for _ in 0..<digits.count { denominator *= 10 }
            let product = numerator.multipliedFullWidth(by: unit.multiplier)
            let (quotient, remainder) = denominator.dividingFullWidth(product)
            guard remainder == 0 else {
                throw .invalid("size '\(text)' is not a whole number of bytes")
            }
            let (sum, sumOverflow) = total.addingReportingOverflow(quotient)
            guard !sumOverflow else { throw .invalid("size '\(text)' is too large (over 16 EiB)") }
            total = sum
        }
        value = total
    }

    /// Binary units with up to two decimals: `64 KiB`, `1.5 GiB`, `512 B`.
    public var description: String {
        let names = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var unitIndex = 0
        var scaled = Double(value)
        while scaled >= 1024, unitIndex < names.count - 1 {
            scaled /= 1024
            unitIndex += 1
        }
        if unitIndex == 0 { return "\(value) B" }
        let rounded = (scaled * 100).rounded() / 100
        var text = String(rounded)
        if text.hasSuffix(".0") { text.removeLast(2) }
        return "\(text) \(names[unitIndex])"
    }
}

extension String {
    package var trimmingSpaces: String {
        var view = Substring(self)
        while view.first?.isWhitespace == true { view.removeFirst() }
        while view.last?.isWhitespace == true { view.removeLast() }
        return String(view)
    }
}
