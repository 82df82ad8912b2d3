internal import CTierKVLinux
import TierKVCore

#if canImport(Glibc)
import Glibc
#endif

/// The warm tier's memory: one mapping of fixed-size slots on a chosen NUMA node, pre-faulted,
/// locked, and aligned so every slot is a valid O_DIRECT and DMA target.
///
/// Slots are handed out by a `SlotAllocator` (O(1), sharded, thread-safe). The whole region is
/// exposed for registration with io_uring (`ioRingBufferRegions`) and with an accelerator
/// (`region`), so NVMe reads land in slots and DMA reads from them with no bounce copy.
/// Thread-safety: all methods may be called from any thread.
public final class HostArena: @unchecked Sendable {
    // @unchecked: the mapping is immutable after init; slot state lives in the thread-safe allocator.

    /// How the arena uses huge pages.
    public enum HugePages: String, Sendable, CaseIterable {
        /// 4 KiB pages only.
        case none
        /// `madvise(MADV_HUGEPAGE)` when THP is in `madvise` or `always` mode (the default).
        case transparent
        /// Explicit hugetlb pages (`MAP_HUGETLB`); fails clearly when too few are reserved.
        case hugetlb
    }

    public struct Configuration: Sendable {
        /// Bytes per slot (one KV block); rounded up to 4 KiB for the stride.
        public var slotByteCount: Int
        public var slotCount: Int
        /// The node to bind to; nil binds to none (first-touch), see `NUMATopology.nearestNode`.
        public var numaNode: Int?
        public var hugePages: HugePages
        /// Lock the pages (`mlock`). When false the arena is not locked and says so in `isLocked`.
        public var locksMemory: Bool

        public init(
            slotByteCount: Int, slotCount: Int, numaNode: Int? = nil, hugePages: HugePages = .transparent,
            locksMemory: Bool = true
        ) {
            self.slotByteCount = slotByteCount
            self.slotCount = slotCount
            self.numaNode = numaNode
            self.hugePages = hugePages
            self.locksMemory = locksMemory
        }
    }

    /// Alignment of every slot: the O_DIRECT logical block size of any NVMe drive and a page.
    public static let slotAlignment = 4096
    /// Largest buffer io_uring accepts for one fixed-buffer registration.
    public static let maximumIORingBufferBytes = 1 << 30

    public let configuration: Configuration
    /// Start of the slots.
    public let base: UnsafeMutableRawPointer
    /// Distance between slots: `slotByteCount` rounded up to `slotAlignment`.
    public let slotStride: Int
    /// Bytes of the whole mapping (slots plus alignment tail).
    public let mappedByteCount: Int
    public let isLocked: Bool
    /// Where the pages really are, read back from the kernel after allocation.
    public let placement: PagePlacement
    private let mappingStart: UnsafeMutableRawPointer
    private let allocator: SlotAllocator

    /// Maps, binds, pre-faults and locks the arena.
    /// - Throws: `.invalidArgument` for bad sizes or a node that does not exist; `.systemCall`
    ///   for mmap/mbind failures; `.capacityExceeded` with the amount asked, the limit and how to
    ///   raise it when the memory cannot be locked.
    public init(_ configuration: Configuration) throws(TierKVError) {
        guard configuration.slotByteCount >= 1, configuration.slotCount >= 1 else {
            throw .invalid(
                "host arena needs slotByteCount ≥ 1 and slotCount ≥ 1 (got \(configuration.slotByteCount), \(configuration.slotCount))")
        }
        let stride = (configuration.slotByteCount + Self.slotAlignment - 1) / Self.slotAlignment * Self.slotAlignment
        let (slotBytes, overflow) = stride.multipliedReportingOverflow(by: configuration.slotCount)
        guard !overflow else { throw .invalid("host arena of \(configuration.slotCount) × \(stride) bytes overflows") }
        let hugePageBytes = 2 << 20
        let byteCount = (slotBytes + hugePageBytes - 1) / hugePageBytes * hugePageBytes
        let topology = NUMATopology.current()
        if let node = configuration.numaNode, !topology.nodes.contains(where: { $0.id == node }) {
            throw .invalid("NUMA node \(node) does not exist; nodes with memory: \(topology.nodes.map(\.id))")
        }

        let start = try Self.map(byteCount: byteCount, hugePages: configuration.hugePages)
        var keepMapping = false
        defer { if !keepMapping { munmap(start, byteCount) } }

        if configuration.hugePages == .transparent, let mode = HugePageSupport.current().transparentMode, mode != "never" {
            _ = madvise(start, byteCount, MADV_HUGEPAGE)  // advisory: failure only costs TLB reach
        }
        if let node = configuration.numaNode {
            try Self.bind(start, byteCount: byteCount, to: node)
        }
        // Touch every page so it is allocated now, on the bound node, not on the hot path.
        var offset = 0
        while offset < byteCount {
            start.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self)
            offset += 4096
        }
        var locked = false
        if configuration.locksMemory {
            if mlock(start, byteCount) != 0 {
                let code = errno
                let limits = MemoryLockLimits.probe(testByteCount: 4096)
                let limit = limits.softLimitBytes.map { ByteCount($0).description } ?? "unlimited"
                throw TierKVError(
                    .capacityExceeded,
                    "cannot lock \(ByteCount(UInt64(byteCount))) of warm-tier memory (RLIMIT_MEMLOCK is \(limit)): "
                        + "raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in systemd, --ulimit memlock=-1 in Docker) "
                        + "or grant CAP_IPC_LOCK; or run with locking off (locksMemory: false, --no-lock) and accept "
                        + "that pages may be swapped and DMA may bounce",
                    operation: "mlock", errno: code)
            }
            locked = true
        }
        self.configuration = configuration
        self.mappingStart = start
        self.base = start
        self.slotStride = stride
        self.mappedByteCount = byteCount
        self.isLocked = locked
        self.placement = PagePlacement.query(start, byteCount: byteCount)
        self.allocator = try SlotAllocator(slotCount: configuration.slotCount)
        keepMapping = true
    }

    deinit { munmap(mappingStart, mappedByteCount) }

    /// Maps `byteCount` bytes, 2 MiB-aligned so transparent huge pages can back it.
    private static func map(byteCount: Int, hugePages: HugePages) throws(TierKVError) -> UnsafeMutableRawPointer {
        let protection = PROT_READ | PROT_WRITE
        if hugePages == .hugetlb {
            let support = HugePageSupport.current()
            let memory = mmap(nil, byteCount, protection, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0)
            guard let memory, memory != ctierkv_map_failed() else {
                let page = support.hugetlbPageByteCount ?? (2 << 20)
                throw TierKVError(
                    .systemCall,
                    "cannot map \(ByteCount(UInt64(byteCount))) of hugetlb pages: \(support.hugetlbFreePages) free pages of \(ByteCount(page)); reserve more (echo N > /proc/sys/vm/nr_hugepages) or use transparent huge pages",
                    operation: "mmap(MAP_HUGETLB)", errno: errno)
            }
            return memory
        }
        let alignment = 2 << 20
        let padded = byteCount + alignment
        guard let raw = mmap(nil, padded, protection, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != ctierkv_map_failed()
        else {
            throw TierKVError(
                .systemCall, "cannot map \(ByteCount(UInt64(byteCount))) for the host arena: \(TierKVError.errnoName(errno))",
                operation: "mmap", errno: errno)
        }
        let address = UInt(bitPattern: raw)
        let aligned = (address + UInt(alignment) - 1) & ~UInt(alignment - 1)
        let head = Int(aligned - address)
        if head > 0 { munmap(raw, head) }
        let tail = padded - head - byteCount
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + UInt(byteCount)), tail) }
        return UnsafeMutableRawPointer(bitPattern: aligned)!
    }

    private static func bind(_ start: UnsafeMutableRawPointer, byteCount: Int, to node: Int) throws(TierKVError) {
        let words = node / 64 + 1
        var mask = [UInt](repeating: 0, count: words)
        mask[node / 64] |= 1 << UInt(node % 64)
        // The kernel reads maxnode - 1 bits of the mask.
        let result = mask.withUnsafeBufferPointer {
            mbind(start, UInt(byteCount), MPOL_BIND, $0.baseAddress, UInt(words * 64 + 1), UInt32(MPOL_MF_STRICT | MPOL_MF_MOVE))
        }
        guard result == 0 else {
            throw TierKVError(
                .systemCall, "cannot bind the host arena to NUMA node \(node): \(TierKVError.errnoName(errno))",
                operation: "mbind", errno: errno)
        }
    }

    // MARK: Slots

    /// Takes a free slot; nil when the arena is full. O(1).
    public func allocateSlot() -> Int? { allocator.allocate() }

    /// Returns a slot. - Throws: on a double free or an index out of range.
    public func freeSlot(_ slot: Int) throws(TierKVError) { try allocator.free(slot) }

    /// The slot's first byte. - Precondition: `slot` is in range.
    public func address(ofSlot slot: Int) -> UnsafeMutableRawPointer {
        precondition(slot >= 0 && slot < configuration.slotCount, "slot \(slot) out of range")
        return base + slot * slotStride
    }

    /// The slot's bytes (`slotByteCount` of them).
    public func bytes(ofSlot slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: address(ofSlot: slot), count: configuration.slotByteCount)
    }

    /// The slot whose bytes contain `address`, if any.
    public func slot(containing address: UnsafeRawPointer) -> Int? {
        let offset = Int(bitPattern: address) - Int(bitPattern: base)
        guard offset >= 0, offset < slotStride * configuration.slotCount else { return nil }
        return offset / slotStride
    }

    public var statistics: SlotAllocator.Statistics { allocator.statistics }
    public var slotCount: Int { configuration.slotCount }

    /// The whole mapping, for registering with an accelerator (`cuMemHostRegister`).
    public var region: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: mappedByteCount)
    }

    // MARK: io_uring fixed buffers

    /// The arena cut into io_uring fixed buffers of at most 1 GiB, each a whole number of slots,
    /// in registration order.
    public var ioRingBufferRegions: [UnsafeMutableRawBufferPointer] {
        let slotsPerBuffer = max(1, Self.maximumIORingBufferBytes / slotStride)
        return stride(from: 0, to: configuration.slotCount, by: slotsPerBuffer).map { first in
            let count = min(slotsPerBuffer, configuration.slotCount - first)
            return UnsafeMutableRawBufferPointer(start: base + first * slotStride, count: count * slotStride)
        }
    }

    /// Which registered buffer holds `slot` (the index into `ioRingBufferRegions`).
    public func ioRingBufferIndex(ofSlot slot: Int) -> Int {
        slot / max(1, Self.maximumIORingBufferBytes / slotStride)
    }
}

/// Where a region's pages are, sampled with `move_pages(2)` after allocation.
public struct PagePlacement: Sendable, Equatable {
    /// Sampled pages per NUMA node.
    public var pagesPerNode: [Int: Int]
    /// Sampled pages the kernel could not place (not present, or an error).
    public var unplacedPages: Int
    public var sampledPages: Int

    /// The node holding every sampled page, if there is exactly one.
    public var singleNode: Int? {
        pagesPerNode.count == 1 && unplacedPages == 0 ? pagesPerNode.keys.first : nil
    }

    /// Samples up to `maximumSamples` pages evenly and asks the kernel where each one is.
    public static func query(_ start: UnsafeRawPointer, byteCount: Int, maximumSamples: Int = 1024) -> PagePlacement {
        let pageCount = max(1, byteCount / 4096)
        let samples = min(maximumSamples, pageCount)
        var pages: [UnsafeMutableRawPointer?] = (0..<samples).map { index in
            UnsafeMutableRawPointer(mutating: start + (index * pageCount / samples) * 4096)
        }
        var status = [Int32](repeating: -1, count: samples)
        let result = pages.withUnsafeMutableBufferPointer { pageBuffer in
            status.withUnsafeMutableBufferPointer { statusBuffer in
                move_pages(0, UInt(samples), pageBuffer.baseAddress, nil, statusBuffer.baseAddress, 0)
            }
        }
        guard result == 0 else { return PagePlacement(pagesPerNode: [:], unplacedPages: samples, sampledPages: samples) }
        var perNode: [Int: Int] = [:]
        var unplaced = 0
        for value in status {
            if value >= 0 { perNode[Int(value), default: 0] += 1 } else { unplaced += 1 }
        }
        return PagePlacement(pagesPerNode: perNode, unplacedPages: unplaced, sampledPages: samples)
    }
}
