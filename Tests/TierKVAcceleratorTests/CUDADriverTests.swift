import CTierKVLinux
import Testing
import TierKVTestSupport
@testable import TierKV

#if canImport(Glibc)
import Glibc
#endif

/// Builds `Tests/CUDADriverTestDouble/cuda_driver_test_double.c` (a TEST DOUBLE of libcuda, no
/// GPU) into shared libraries once per test run: `path` a CUDA 12.4 driver (no batched copies),
/// `batchedPath` a 12.8 one with `cuMemcpyBatchAsync`.
enum CUDADriverTestDouble {
    static let path: String? = build(name: "libcuda-test-double.so", defines: [])
    static let batchedPath: String? = build(
        name: "libcuda-test-double-batched.so", defines: ["-DTIERKV_DOUBLE_BATCHED_COPIES"])

    private static func build(name: String, defines: [String]) -> String? {
        let source = String(#filePath).split(separator: "/").dropLast(2).joined(separator: "/")
        let input = "/" + source + "/CUDADriverTestDouble/cuda_driver_test_double.c"
        guard let directory = try? TemporaryDirectory() else { return nil }
        let output = directory.path + "/" + name
        let status = run(["/usr/bin/env", "cc", "-shared", "-fPIC", "-O1"] + defines + ["-o", output, input])
        guard status == 0 else { return nil }
        leakedDirectories.append(directory)  // keep the .so for the whole run
        return output
    }

    nonisolated(unsafe) static var leakedDirectories: [TemporaryDirectory] = []

    /// A function the double at `library` (default `path`) exports for tests (failure injection,
    /// counters).
    static func function<F>(_ name: String, as type: F.Type, in library: String? = path) throws -> F {
        let library: String = try #require(library, "the CUDA test double was not built")
        let handle = try #require(dlopen(library, RTLD_NOW))
        return unsafeBitCast(try #require(dlsym(handle, name)), to: type)
    }

    static func fail(_ function: String, code: Int32, in library: String? = path) throws {
        typealias Fail = @convention(c) (UnsafePointer<CChar>, Int32) -> Void
        try Self.function("tierkv_double_fail", as: Fail.self, in: library)(function, code)
    }

    /// The batched double's count of `cuMemcpyBatchAsync` calls and of the copies in them.
    static func batchCounters() throws -> (calls: Int, copies: Int) {
        typealias Counter = @convention(c) () -> Int
        return (
            try function("tierkv_double_batch_calls", as: Counter.self, in: batchedPath)(),
            try function("tierkv_double_batch_copies", as: Counter.self, in: batchedPath)()
        )
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

    @Test func aDriverOlderThan12_8SubmitsOneCallPerCopy() throws {
        let path: String = try #require(CUDADriverTestDouble.path)
        let library = try CUDADriverLibrary.load(path: path)
        #expect(library.batchSubmission == "one call per copy")
        #expect(library.batchedCopiesUnavailableReason?.contains("needs CUDA 12.8 or later") == true)
        let driver = try CUDADriver(library: library)
        #expect(try AcceleratorSelfTest.run(accelerator: driver, slotByteCount: 4096, slotCount: 4).batchSubmission
            == "one call per copy")
    }

    /// Three copies to scattered device offsets and back, in one `cuMemcpyBatchAsync` each way:
    /// the bytes land where each copy says (the arrays and attributes reach the driver in the
    /// layout it reads), and the double counts one call per direction.
    @Test func batchesGoThroughCuMemcpyBatchAsyncWhereTheDriverHasIt() throws {
        let path = try #require(CUDADriverTestDouble.batchedPath, "could not build the batched CUDA test double")
        let library = try CUDADriverLibrary.load(path: path)
        #expect(library.batchSubmission == "cuMemcpyBatchAsync")
        #expect(library.batchedCopiesUnavailableReason == nil)
        #expect(CUDAAvailability.probe(libraryPath: path).batchSubmission == "cuMemcpyBatchAsync")
        let driver = try CUDADriver(library: library)
        let stream = try driver.makeStream()
        #expect(stream.batchSubmission == "cuMemcpyBatchAsync")
        let device = try driver.allocateMemory(byteCount: 3 * 4096)
        defer { try? driver.freeMemory(device) }
        let host = UnsafeMutableRawBufferPointer.allocate(byteCount: 6 * 4096, alignment: 4096)
        defer { host.deallocate() }
        for index in 0..<(3 * 4096) { host[index] = UInt8(truncatingIfNeeded: index &* 31 &+ index / 4096) }
        let before = try CUDADriverTestDouble.batchCounters()
        // Host block i → device block 2 - i, then device block j → host block 3 + j.
        try stream.copyToDevice((0..<3).map { DeviceCopy(host: host.baseAddress! + $0 * 4096, device: device + (2 - $0) * 4096, byteCount: 4096) })
        try stream.copyToHost((0..<3).map { DeviceCopy(host: host.baseAddress! + (3 + $0) * 4096, device: device + $0 * 4096, byteCount: 4096) })
        try stream.synchronize()
        for block in 0..<3 {
            let sent = host.baseAddress! + (2 - block) * 4096
            #expect(memcmp(sent, host.baseAddress! + (3 + block) * 4096, 4096) == 0, "device block \(block)")
        }
        let after = try CUDADriverTestDouble.batchCounters()
        #expect(after.calls - before.calls == 2 && after.copies - before.copies == 6)
        let outcome = try AcceleratorSelfTest.run(accelerator: driver, slotByteCount: 4096, slotCount: 8)
        #expect(outcome.passed && outcome.batchSubmission == "cuMemcpyBatchAsync")
        #expect(try CUDADriverTestDouble.batchCounters().copies - after.copies == 16)

        try CUDADriverTestDouble.fail("cuMemcpyBatchAsync", code: 1, in: path)
        do {
            try stream.copyToDevice((0..<3).map { DeviceCopy(host: host.baseAddress! + $0 * 4096, device: device + $0 * 4096, byteCount: 4096) })
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .cudaDriver)
            #expect(error.message.hasPrefix("cuMemcpyBatchAsync failed on copy 1 of 3 (4096 bytes, device "))
            #expect(error.message.hasSuffix("CUDA_ERROR_INVALID_VALUE (invalid argument)"))
        }
    }

    @Test func batchedCopiesCanBeSwitchedOff() throws {
        let original = try #require(CUDADriverTestDouble.batchedPath)
        let directory = try TemporaryDirectory()
        let copy = directory.path + "/libcuda-switched-off.so"  // another path: the library cache is per path
        #expect(CUDADriverTestDouble.run(["/bin/cp", original, copy]) == 0)
        setenv(CUDADriverLibrary.batchedCopiesEnvironmentVariable, "off", 1)
        defer { unsetenv(CUDADriverLibrary.batchedCopiesEnvironmentVariable) }
        let library = try CUDADriverLibrary.load(path: copy)
        #expect(library.batchSubmission == "one call per copy")
        #expect(library.batchedCopiesUnavailableReason == "switched off by TIERKV_CUDA_BATCHED_COPIES=off")
        CUDADriverTestDouble.leakedDirectories.append(directory)  // libcuda stays loaded: keep its file
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
