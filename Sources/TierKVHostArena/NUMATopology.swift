internal import CTierKVLinux
#if canImport(Glibc)
import Glibc
#endif
import TierKVCore

/// The machine's NUMA nodes as libnuma reports them.
public struct NUMATopology: Sendable {
    public struct Node: Sendable {
        public var id: Int
        public var memoryByteCount: UInt64
        public var freeByteCount: UInt64
        public var cpus: [Int]
    }

    /// Whether the kernel has NUMA support (`numa_available()`); a single-node machine still has it.
    public var isAvailable: Bool
    /// Nodes with memory, ascending.
    public var nodes: [Node]

    /// Reads the topology now.
    public static func current() -> NUMATopology {
        guard numa_available() >= 0 else { return NUMATopology(isAvailable: false, nodes: []) }
        let maximumNode = numa_max_node()
        var nodes: [Node] = []
        guard let cpuMask = numa_allocate_cpumask() else { return NUMATopology(isAvailable: true, nodes: []) }
        defer { numa_free_cpumask(cpuMask) }
        let cpuCount = Int(numa_num_possible_cpus())
        for node in 0...Int(max(0, maximumNode)) {
            if ctierkv_numa_node_has_memory(Int32(node)) == 0 { continue }
            var free: Int64 = 0
            let total = numa_node_size64(Int32(node), &free)
            guard total >= 0 else { continue }
            var cpus: [Int] = []
            if numa_node_to_cpus(Int32(node), cpuMask) == 0 {
                for cpu in 0..<cpuCount where numa_bitmask_isbitset(cpuMask, UInt32(cpu)) != 0 { cpus.append(cpu) }
            }
            nodes.append(Node(id: node, memoryByteCount: UInt64(total), freeByteCount: UInt64(max(0, free)), cpus: cpus))
        }
        return NUMATopology(isAvailable: true, nodes: nodes)
    }

    public var json: JSONValue {
        .object([
            ("available", .bool(isAvailable)),
            ("nodes", .int(nodes.count)),
            ("node_details", .array(nodes.map { node in
                .object([
                    ("node", .int(node.id)), ("memory_bytes", .int(node.memoryByteCount)),
                    ("free_bytes", .int(node.freeByteCount)), ("cpus", .array(node.cpus.map { .int($0) })),
                ])
            })),
        ])
    }
}

extension NUMATopology {
    /// The NUMA node a PCI device (a GPU, an NVMe controller) is attached to, from sysfs;
    /// nil when the platform does not say (single-node machines report -1).
    /// - Parameter busID: `0000:65:00.0` form (as `cuDeviceGetPCIBusId` prints it), any case.
    public static func node(ofPCIDevice busID: String) -> Int? {
        var id = busID.lowercased()
        // CUDA prints an 8-digit domain (00000000:65:00.0); sysfs uses 4.
        if let colon = id.firstIndex(of: ":"), id.distance(from: id.startIndex, to: colon) == 8 {
            id = String(id.dropFirst(4))
        }
        guard let text = TextFile.readTrimmed("/sys/bus/pci/devices/\(id)/numa_node"), let node = Int(text), node >= 0
        else { return nil }
        return node
    }

    /// The NUMA node of the block device under `path` (the cache directory's NVMe), if sysfs says.
    public static func node(ofFilesystemAt path: String) -> Int? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let major = (info.st_dev >> 8) & 0xFFF
        let minor = (info.st_dev & 0xFF) | ((info.st_dev >> 12) & 0xFFF00)
        for candidate in ["/sys/dev/block/\(major):\(minor)/device/numa_node", "/sys/dev/block/\(major):\(minor)/../device/numa_node"] {
            if let text = TextFile.readTrimmed(candidate), let node = Int(text), node >= 0 { return node }
        }
        return nil
    }

    /// The node to put the warm tier on: the accelerator's if known, else the cache
    /// directory's device's, else the lowest node with memory.
    public func nearestNode(acceleratorPCIBusID: String?, cacheDirectory: String?) -> Int? {
        if let bus = acceleratorPCIBusID, let node = Self.node(ofPCIDevice: bus) { return node }
        if let directory = cacheDirectory, let node = Self.node(ofFilesystemAt: directory) { return node }
        return nodes.first?.id
    }
}
