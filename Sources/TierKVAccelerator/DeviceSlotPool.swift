import TierKVCore

/// Hot-tier slots: one device allocation (or a region the engine owns, such as its paged KV
/// pool) carved into fixed-size slots, handed out in O(1) by a `SlotAllocator`. Thread-safe.
public final class DeviceSlotPool: Sendable {
    public let accelerator: any Accelerator
    public let base: DeviceAddress
    public let slotByteCount: Int
    /// Distance between slots: `slotByteCount` rounded up to 256 bytes (CUDA's allocation alignment).
    public let slotStride: Int
    public let slotCount: Int
    /// Whether this pool allocated `base` (and frees it) or borrows the engine's memory.
    public let ownsMemory: Bool
    private let allocator: SlotAllocator

    public static let slotAlignment = 256

    /// Allocates one region for `slotCount` slots on `accelerator`.
    public init(accelerator: any Accelerator, slotByteCount: Int, slotCount: Int) throws(TierKVError) {
        guard slotByteCount >= 1, slotCount >= 1 else {
            throw .invalid("device slot pool needs slotByteCount ≥ 1 and slotCount ≥ 1 (got \(slotByteCount), \(slotCount))")
        }
        let stride = (slotByteCount + Self.slotAlignment - 1) / Self.slotAlignment * Self.slotAlignment
        self.accelerator = accelerator
        self.slotByteCount = slotByteCount
        self.slotStride = stride
        self.slotCount = slotCount
        self.allocator = try SlotAllocator(slotCount: slotCount)
        self.base = try accelerator.allocateMemory(byteCount: stride * slotCount)
        self.ownsMemory = true
    }

    /// Uses device memory the engine owns: `slotCount` slots of `slotByteCount` bytes, `slotStride` apart.
    /// TierKV never frees it.
    public init(
        accelerator: any Accelerator, borrowing base: DeviceAddress, slotByteCount: Int, slotStride: Int, slotCount: Int
    ) throws(TierKVError) {
        guard slotByteCount >= 1, slotCount >= 1, slotStride >= slotByteCount else {
            throw .invalid("engine-owned pool needs slotByteCount ≥ 1, slotCount ≥ 1 and slotStride ≥ slotByteCount")
        }
        self.accelerator = accelerator
        self.base = base
        self.slotByteCount = slotByteCount
        self.slotStride = slotStride
        self.slotCount = slotCount
        self.allocator = try SlotAllocator(slotCount: slotCount)
        self.ownsMemory = false
    }

    deinit {
        if ownsMemory { try? accelerator.freeMemory(base) }
    }

    public func allocateSlot() -> Int? { allocator.allocate() }
    public func freeSlot(_ slot: Int) throws(TierKVError) { try allocator.free(slot) }
    public func address(ofSlot slot: Int) -> DeviceAddress {
        precondition(slot >= 0 && slot < slotCount, "device slot \(slot) out of range")
        return base + slot * slotStride
    }
    public var statistics: SlotAllocator.Statistics { allocator.statistics }
}
