import ArgumentParser
import TierKV

#if canImport(Glibc)
import Glibc
#endif

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Probe what this machine supports: io_uring, O_DIRECT, NUMA, huge pages, memory locking, CPU features, CUDA."
    )

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    @Option(help: "Directory whose filesystem is checked for O_DIRECT (default: the current directory).")
    var cacheDir: String = "."

    @Flag(help: "Also allocate CUDA device slots, copy a pattern host→device→host from the NUMA arena, compare and time it.")
    var cudaSelftest = false

    func run() throws {
        var info = stat()
        guard stat(cacheDir, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw CommandFailure("--cache-dir \(cacheDir) is not an existing directory")
        }
        let report = SystemReport.probe(cacheDirectory: cacheDir)
        var selftest: JSONValue?
        var selftestFailed = false
        if cudaSelftest {
            do {
                let outcome = try AcceleratorSelfTest.run(accelerator: try CUDADriver())
                selftest = outcome.json
                selftestFailed = !outcome.passed
            } catch {
                selftest = .object([("passed", false), ("error", .string(error.description))])
                selftestFailed = true
            }
        }
        if json {
            var document = report.json
            if let selftest, case .object(var members) = document {
                members.append(("cuda_selftest", selftest))
                document = .object(members)
            }
            Output.printJSON(document)
        } else {
            printHuman(report)
            if let selftest { printSelfTest(selftest) }
        }
        if selftestFailed { throw ExitCode(2) }
    }

    private func printSelfTest(_ outcome: JSONValue) {
        print()
        var rows: [(String, String)] = []
        if case .object(let members) = outcome {
            for (key, value) in members { rows.append((key, value.rendered())) }
        }
        Output.printTable("CUDA self-test", rows)
    }

    private func yesNo(_ value: Bool) -> String { value ? "yes" : "no" }

    private func printHuman(_ report: SystemReport) {
        print("TierKV \(TierKVVersion.string) doctor — kernel \(report.kernelRelease)\n")
        let cpu = report.cpu
        Output.printTable("CPU", [
            ("model", report.cpuModel), ("logical CPUs", "\(report.logicalCPUCount)"),
            ("AVX2 / FMA / F16C", "\(yesNo(cpu.avx2)) / \(yesNo(cpu.fma)) / \(yesNo(cpu.f16c))"),
            ("AVX-512F", yesNo(cpu.avx512f)),
            ("attention kernels", cpu.meetsKernelRequirements ? "supported (x86-64-v3)" : "NOT supported: needs AVX2, FMA, F16C"),
        ])
        let ring = report.ioRing
        var ringRows: [(String, String)] = [("supported", yesNo(ring.isSupported))]
        if let error = ring.error { ringRows.append(("error", error)) }
        if ring.isSupported {
            ringRows.append(("setup flags", ring.acceptedSetupFlags.isEmpty ? "none" : ring.acceptedSetupFlags.joined(separator: ", ")))
            ringRows.append(("opcodes", ring.opcodes.map { "\($0.name)\($0.isSupported ? "" : " (missing)")" }.joined(separator: ", ")))
            ringRows.append(("registered buffers", yesNo(ring.registeredBuffersWork)))
            ringRows.append(("registered files", yesNo(ring.registeredFilesWork)))
        }
        print()
        Output.printTable("io_uring", ringRows)
        print()
        let direct = report.directIO
        Output.printTable("O_DIRECT", [
            ("directory", direct.directory), ("filesystem", direct.filesystem),
            ("supported", direct.isSupported ? "yes" : "no — \(direct.error ?? "")"),
        ])
        print()
        var numaRows: [(String, String)] = [("available", yesNo(report.numa.isAvailable)), ("nodes", "\(report.numa.nodes.count)")]
        for node in report.numa.nodes {
            numaRows.append(("node \(node.id)", "\(ByteCount(node.memoryByteCount)) (\(ByteCount(node.freeByteCount)) free), CPUs \(Self.ranges(node.cpus))"))
        }
        Output.printTable("NUMA", numaRows)
        print()
        let huge = report.hugePages
        Output.printTable("Huge pages", [
            ("transparent", huge.transparentMode ?? "not available"),
            ("hugetlb", "\(huge.hugetlbFreePages) free of \(huge.hugetlbTotalPages) × \(huge.hugetlbPageByteCount.map { ByteCount($0).description } ?? "?")"),
        ])
        print()
        let lock = report.memoryLock
        Output.printTable("Memory locking", [
            ("RLIMIT_MEMLOCK", lock.softLimitBytes.map { ByteCount($0).description } ?? "unlimited"),
            ("can lock \(ByteCount(UInt64(lock.testedByteCount)))", lock.canLockMemory ? "yes" : "no — \(lock.error ?? "")"),
        ])
        print()
        let cuda = report.cuda
        var cudaRows: [(String, String)] = [("available", yesNo(cuda.isAvailable)), ("library", cuda.library)]
        if let version = cuda.driverVersion { cudaRows.append(("driver CUDA version", version)) }
        if let error = cuda.error { cudaRows.append(("error", error)) }
        if let submission = cuda.batchSubmission { cudaRows.append(("copy batches", submission)) }
        for device in cuda.devices {
            cudaRows.append(("device \(device.ordinal)", "\(device.name), \(ByteCount(device.totalMemoryByteCount)), sm_\(device.computeCapability.replacingDots()), PCI \(device.pciBusID)"))
        }
        Output.printTable("CUDA", cudaRows)
    }

    /// `[0,1,2,3,8]` → `0-3,8`.
    static func ranges(_ values: [Int]) -> String {
        guard !values.isEmpty else { return "none" }
        var parts: [String] = []
        var start = values[0]
        var previous = values[0]
        for value in values.dropFirst() + [Int.min] {
            if value == previous + 1 { previous = value; continue }
            parts.append(start == previous ? "\(start)" : "\(start)-\(previous)")
            start = value
            previous = value
        }
        return parts.joined(separator: ",")
    }
}

extension String {
    fileprivate func replacingDots() -> String { String(filter { $0 != "." }) }
}
