import Testing
import TierKVAccelerator
import TierKVHostArena
import TierKVStorage
import TierKVTestSupport
@testable import TierKV

#if canImport(Glibc)
import Glibc
#endif

@Suite struct SystemProbeTests {
    @Test func ioRingProbeFindsTheOpcodesTheColdTierUses() throws {
        let capabilities = IORingCapabilities.probe()
        try #require(capabilities.isSupported, "io_uring is not available here: \(capabilities.error ?? "")")
        let names = Dictionary(uniqueKeysWithValues: capabilities.opcodes.map { ($0.name, $0.isSupported) })
        #expect(names["read_fixed"] == true)
        #expect(names["write_fixed"] == true)
        #expect(capabilities.registeredBuffersWork)
        #expect(capabilities.registeredFilesWork)
        #expect(capabilities.supportedOpcodeCount >= 9)
    }

    @Test func directIOProbeWritesAndReadsBack() throws {
        let directory = try TemporaryDirectory()
        let capability = DirectIOCapability.probe(directory: directory.path)
        #expect(capability.filesystem != "unknown")
        #expect(capability.isSupported, "\(capability.error ?? "")")
        // The probe leaves nothing behind.
        #expect(try directory.entries().isEmpty)
    }

    @Test func directIOProbeReportsAMissingDirectory() {
        let capability = DirectIOCapability.probe(directory: "/nonexistent-tierkv-dir")
        #expect(!capability.isSupported)
        #expect(capability.error?.contains("/nonexistent-tierkv-dir") == true)
    }

    @Test func numaTopologyHasANodeWithMemoryAndCPUs() {
        let topology = NUMATopology.current()
        #expect(topology.isAvailable)
        #expect(!topology.nodes.isEmpty)
        #expect(topology.nodes.allSatisfy { $0.memoryByteCount > 0 && $0.freeByteCount <= $0.memoryByteCount })
        #expect(topology.nodes.flatMap(\.cpus).count == Int(sysconf(Int32(_SC_NPROCESSORS_CONF))))
    }

    @Test func memoryLockLimitMatchesGetrlimit() {
        let limits = MemoryLockLimits.probe(testByteCount: 4096)
        var raw = rlimit()
        getrlimit(__rlimit_resource_t(8), &raw)  // RLIMIT_MEMLOCK
        if let soft = limits.softLimitBytes { #expect(soft == UInt64(raw.rlim_cur)) }
        // One page is always within any sane limit.
        #expect(limits.canLockMemory, "\(limits.error ?? "")")
    }

    @Test func hugePageModeIsOneOfTheKernelsWords() {
        let support = HugePageSupport.current()
        if let mode = support.transparentMode { #expect(["always", "madvise", "never"].contains(mode)) }
        #expect(support.hugetlbFreePages <= support.hugetlbTotalPages)
    }

    @Test func missingCUDADriverIsAClearResultNotACrash() {
        let cuda = CUDAAvailability.probe(libraryPath: "/nonexistent/libcuda.so.1")
        #expect(!cuda.isAvailable)
        #expect(cuda.error?.contains("no CUDA driver") == true)
        #expect(cuda.devices.isEmpty)
        #expect(throws: TierKVError.self) { try CUDADriverLibrary.load(path: "/nonexistent/libcuda.so.1") }
    }

    @Test func libraryWithoutCUDASymbolsIsRefusedByName() throws {
        // libnuma is a real shared library that lacks cuInit.
        do {
            _ = try CUDADriverLibrary.load(path: "libnuma.so.1")
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .cudaDriver)
            #expect(error.message.contains("lacks cuInit"))
        }
    }

    @Test func reportJSONHasTheContractFields() {
        let directory = try? TemporaryDirectory()
        let json = SystemReport.probe(cacheDirectory: directory?.path ?? "/tmp").json
        #expect(json["io_uring"]?["supported"] != nil)
        #expect(json["numa"]?["nodes"] != nil)
        #expect(json["cuda"]?["available"] != nil)
        #expect(json["cpu"]?["f16c"] != nil)
        #expect(json["memlock_bytes"] != nil)
        #expect(json["o_direct"]?["supported"] != nil)
    }
}
