internal import CTierKVLinux
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// What io_uring can do on this machine, found by setting up a real ring.
public struct IORingCapabilities: Sendable {
    public var isSupported: Bool
    /// Why a ring could not be set up, when it could not.
    public var error: String?
    /// The setup flags the kernel accepted, by name.
    public var acceptedSetupFlags: [String]
    /// The opcodes TierKV uses, by name, and whether the kernel supports each.
    public var opcodes: [(name: String, isSupported: Bool)]
    /// Number of opcodes the kernel reports as supported (of those this liburing knows).
    public var supportedOpcodeCount: Int
    /// Whether registering a 64 KiB page-aligned buffer as a fixed buffer worked.
    public var registeredBuffersWork: Bool
    /// Whether registering a file descriptor worked.
    public var registeredFilesWork: Bool
    /// `/proc/sys/kernel/io_uring_disabled` (0 enabled, 1 root/group only, 2 disabled), if present.
    public var disabledSysctl: Int?

    public var json: JSONValue {
        .object([
            ("supported", .bool(isSupported)),
            ("error", .optional(error)),
            ("setup_flags", .array(acceptedSetupFlags.map(JSONValue.string))),
            ("opcodes", .object(opcodes.map { ($0.name, .bool($0.isSupported)) })),
            ("supported_opcode_count", .int(supportedOpcodeCount)),
            ("registered_buffers", .bool(registeredBuffersWork)),
            ("registered_files", .bool(registeredFilesWork)),
            ("io_uring_disabled_sysctl", disabledSysctl.map { .int($0) } ?? .null),
        ])
    }

    /// Probes by creating a ring, reading the opcode probe and registering a buffer and a file.
    public static func probe() -> IORingCapabilities {
        let sysctl = TextFile.readTrimmed("/proc/sys/kernel/io_uring_disabled").flatMap { Int($0) }
        let ring: IORing
        do {
            ring = try IORing(entryCount: 8)
        } catch {
            return IORingCapabilities(
                isSupported: false, error: error.description, acceptedSetupFlags: [], opcodes: [],
                supportedOpcodeCount: 0, registeredBuffersWork: false, registeredFilesWork: false,
                disabledSysctl: sysctl)
        }
        var flagNames: [String] = []
        if ring.setupFlags & ctierkv_ring_flag_single_issuer() != 0, ctierkv_ring_flag_single_issuer() != 0 {
            flagNames.append("SINGLE_ISSUER")
        }
        if ring.setupFlags & ctierkv_ring_flag_coop_taskrun() != 0, ctierkv_ring_flag_coop_taskrun() != 0 {
            flagNames.append("COOP_TASKRUN")
        }
        let supported = (try? ring.supportedOpcodes()) ?? []
        let named = ["read", "write", "read_fixed", "write_fixed", "readv", "writev", "fsync", "fallocate", "nop"]
        let buffersWork = probeRegisteredBuffer(ring)
        let filesWork = probeRegisteredFile(ring)
        return IORingCapabilities(
            isSupported: true, error: nil, acceptedSetupFlags: flagNames,
            opcodes: named.map { name in
                let opcode = ctierkv_ring_opcode(name)
                return (name, opcode >= 0 && supported.contains(UInt8(opcode)))
            },
            supportedOpcodeCount: supported.count, registeredBuffersWork: buffersWork,
            registeredFilesWork: filesWork, disabledSysctl: sysctl)
    }

    private static func probeRegisteredBuffer(_ ring: borrowing IORing) -> Bool {
        let byteCount = 64 << 10
        guard let memory = try? AlignedBuffer(byteCount: byteCount, alignment: 4096) else { return false }
        do {
            try ring.registerBuffers([iovec(iov_base: memory.base, iov_len: byteCount)])
            try ring.unregisterBuffers()
            return true
        } catch {
            return false
        }
    }

    private static func probeRegisteredFile(_ ring: borrowing IORing) -> Bool {
        let descriptor = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        do {
            try ring.registerFiles([descriptor])
            try ring.unregisterFiles()
            return true
        } catch {
            return false
        }
    }
}
