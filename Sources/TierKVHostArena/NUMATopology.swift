import CTierKVLinux
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
