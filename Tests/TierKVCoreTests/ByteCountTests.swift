import Testing
@testable import TierKVCore

@Suite struct ByteCountTests {
    @Test(arguments: [
        ("4096", 4096), ("0", 0), ("512MiB", 512 << 20), ("2GiB", 2 << 30), ("2 GiB", 2 << 30),
        ("1.5TB", 1_500_000_000_000), ("64k", 64 << 10), ("64KiB", 64 << 10), ("64kB", 64_000), ("1.5KiB", 1536),
        ("10B", 10), ("3M", 3 << 20), ("1g", 1 << 30), ("0.5GiB", 512 << 20), (" 8 MiB ", 8 << 20), ("1PiB", 1 << 50),
    ] as [(String, UInt64)])
    func parses(_ text: String, _ expected: UInt64) throws {
        #expect(try ByteCount(parsing: text).value == expected)
    }

    @Test(arguments: ["", "abc", "-1GiB", "1.5B", "12 parsecs", "1..5GiB", "GiB", "1e9", "99999999999PiB", "10b", "0.1B"])
    func rejectsNonsense(_ text: String) {
        #expect(throws: TierKVError.self) { try ByteCount(parsing: text) }
    }

    @Test func errorNamesTheInput() {
        do {
            _ = try ByteCount(parsing: "12 parsecs")
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("12 parsecs"))
        }
    }

    @Test(arguments: [(0, "0 B"), (512, "512 B"), (65536, "64 KiB"), (1536, "1.5 KiB"), (3 << 30, "3 GiB")] as [(UInt64, String)])
    func prints(_ value: UInt64, _ expected: String) {
        #expect(ByteCount(value).description == expected)
    }

    @Test func printedSizesParseBack() throws {
        for value: UInt64 in [1, 1024, 65536, 1 << 30, 5 << 40] {
            #expect(try ByteCount(parsing: ByteCount(value).description).value == value)
        }
    }
}
