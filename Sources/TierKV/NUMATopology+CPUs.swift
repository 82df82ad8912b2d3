import TierKVAttention
import TierKVHostArena

extension NUMATopology {
    /// The CPUs of NUMA node `node` this process may run on, ascending (for worker threads that
    /// should read that node's memory locally); nil when the node has no memory here (does not
    /// exist), empty when it has no CPU this process may use (a memory-only node, or a cpuset
    /// that excludes it).
    public func usableCPUs(ofNode node: Int) -> [Int]? {
        guard let found = nodes.first(where: { $0.id == node }) else { return nil }
        let allowed = Set(WorkerPool.allowedCPUs())
        return found.cpus.filter(allowed.contains)
    }
}
