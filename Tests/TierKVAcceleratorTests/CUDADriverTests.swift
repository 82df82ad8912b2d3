import CTierKVLinux
import Testing
import TierKVTestSupport
@testable import TierKV

#if canImport(Glibc)
import Glibc
#endif

/// Builds `Tests/CUDADriverTestDouble/cuda_driver_test_double.c` (a TEST DOUBLE of libcuda, no
/// GPU) into a shared library once per test run.
enum CUDADriverTestDouble {
    static let path: String? = {
        let source = String(#filePath).split(separator: "/").dropLast(2).joined(separator: "/")
        let input = "/" + source + "/CUDADriverTestDouble/cuda_driver_test_double.c"
        guard let directory = try? TemporaryDirectory() else { return nil }
        let output = directory.path + "/libcuda-test-double.so"
        let status = run(["/usr/bin/env", "cc", "-shared", "-fPIC", "-O1", "-o", output, input])
        guard status == 0 else { return nil }
        leakedDirectories.append(directory)  // keep the .so for the whole run
        return output
    }()

    nonisolated(unsafe) static var leakedDirectories: [TemporaryDirectory] = []

    /// A function the double exports for tests (failure injection, counters).
    static func function<F>(_ name: String, as type: F.Type) throws -> F {
        let handle = try #require(dlopen(try #require(path), RTLD_NOW))
        return unsafeBitCast(try #require(dlsym(handle, name)), to: type)
    }

    static func fail(_ function: String, code: Int32) throws {
        typealias Fail = @convention(c) (UnsafePointer<CChar>, Int32) -> Void
        try Self.function("tierkv_double_fail", as: Fail.self)(function, code)
    }

    static func run(_ arguments: [String]) -> Int32 {
        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawn(&pid, arguments[0], nil, nil, argv, environ) == 0 else { return -1 }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return status
    }
}

@Suite(.serialized) struct CUDADriverTests {
    @Test func loadsTheDoubleAndListsItsDevice() throws {
        let path = try #require(CUDADriverTestDouble.path, "could not build the CUDA test double with cc")
        let library = try CUDADriverLibrary.load(path: path)
        #expect(try library.driverVersion() == "12.4")
        let devices = try library.devices()
        #expect(devices.map(\.name) == ["TierKV CUDA driver test double"])
        #expect(devices.first?.computeCapability == "9.0")
        let availability = CUDAAvailability.probe(libraryPath: path)
        #expect(availability.isAvailable)
        #expect(try CUDADriverLibrary.load(path: path) === library, "one instance per process and path")
    }

    @Test func selfTestRunsThroughTheDriverCodePath() throws {
        let path = try #require(CUDADriverTestDouble.path)
        let driver = try CUDADriver(library: try CUDADriverLibrary.load(path: path))
        #expect(!driver.deviceDescription.isEmulated)
        let outcome = try AcceleratorSelfTest.run(accelerator: driver, slotByteCount: 64 << 10, slotCount: 8)
        #expect(outcome.passed)
        #expect(outcome.byteCount == 8 << 16)
    }

    @Test func driverErrorsNameTheFunctionAndTheDriversText() throws {
        let path = try #require(CUDADriverTestDouble.path)
        let driver = try CUDADriver(library: try CUDADriverLibrary.load(path: path))
        let stream = try driver.makeStream()
        let device = try driver.allocateMemory(byteCount: 4096)
        defer { try? driver.freeMemory(device) }
        var host = [UInt8](repeating: 1, count: 4096)
        try CUDADriverTestDouble.fail("cuMemcpyHtoDAsync_v2", code: 1)
        do {
            try host.withUnsafeBytes { try stream.copyToDevice(from: $0.baseAddress!, to: device, byteCount: 4096) }
            Issue.record("expected an error")
        } catch let error as TierKVError {
            #expect(error.code == .cudaDriver)
            #expect(error.message == "cuMemcpyHtoDAsync_v2 failed: CUDA_ERROR_INVALID_VALUE (invalid argument)")
        }
        try CUDADriverTestDouble.fail("cuMemAlloc_v2", code: 2)
        do {
            _ = try driver.allocateMemory(byteCount: 1 << 20)
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .capacityExceeded)
            #expect(error.message.contains("lower the hot-tier capacity"))
        }
        try CUDADriverTestDouble.fail("cuEventQuery", code: 600)
        let fence = try stream.recordFence(timing: false)
        #expect(try fence.isComplete() == false, "CUDA_ERROR_NOT_READY means pending, not failure")
        #expect(try fence.isComplete() == true)
        host[0] = 0
    }

    @Test func unknownDriverErrorCodesStillProduceAMessage() throws {
        let path = try #require(CUDADriverTestDouble.path)
        let library = try CUDADriverLibrary.load(path: path)
        #expect(library.errorDescription(12345) == "CUresult 12345 (no description)")
    }

    @Test func missingOrdinalIsAnError() throws {
        let path = try #require(CUDADriverTestDouble.path)
        #expect(throws: TierKVError.self) { try CUDADriver(ordinal: 3, library: try CUDADriverLibrary.load(path: path)) }
    }
}
