import Testing
@testable import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

@Suite struct JSONValueTests {
    @Test func rendersInOrderWithEscapesAndNulls() {
        let value: JSONValue = .object([
            ("b", 1), ("a", .string("x\"y\n")), ("n", nil), ("list", .array([true, 2.5, .int(UInt64.max)])),
        ])
        #expect(value.rendered() == #"{"b":1,"a":"x\"y\n","n":null,"list":[true,2.5,18446744073709551615]}"#)
        #expect(value["a"] == .string("x\"y\n"))
        #expect(value["missing"] == nil)
    }

    @Test func nonFiniteNumbersBecomeNull() {
        #expect(JSONValue.number(.nan).rendered() == "null")
    }
}

@Suite struct TierKVErrorTests {
    @Test func systemCallErrorCarriesErrnoAndPath() {
        do {
            try SystemCall.retrying("open", path: "/nonexistent/x") { open("/nonexistent/x", O_RDONLY) }
            Issue.record("expected an error")
        } catch {
            #expect(error.errno == ENOENT)
            #expect(error.code == .systemCall)
            #expect(error.description.contains("/nonexistent/x"))
            #expect(error.description.contains("No such file"))
        }
    }

    @Test func negativeErrnoPassesSuccessThrough() throws {
        #expect(try SystemCall.negativeErrno("op", 7) == 7)
        #expect(throws: TierKVError.self) { try SystemCall.negativeErrno("op", -EIO) }
    }
}

@Suite struct CPUFeaturesTests {
    @Test func detectionAgreesWithProcCPUInfo() {
        let flags = Set((TextFile.read("/proc/cpuinfo") ?? "").split(separator: "\n")
            .first(where: { $0.hasPrefix("flags") })?.split(separator: " ").map(String.init) ?? [])
        let features = CPUFeatures.current
        #expect(features.avx2 == flags.contains("avx2"))
        #expect(features.f16c == flags.contains("f16c"))
        #expect(features.fma == flags.contains("fma"))
        #expect(features.avx512f == flags.contains("avx512f"))
    }
}
