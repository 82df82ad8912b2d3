import TierKVAccelerator
import TierKVCore
import TierKVHostArena

#if canImport(Glibc)
import Glibc
#endif

/// Measures host↔accelerator copy bandwidth from the NUMA host arena, block by block, the way
/// the hot tier moves KV blocks: one async copy per block on one stream, timed between fences
/// (device-measured CUDA events on a GPU; the modelled clock on the emulated device).
public struct TransferBenchmark: Sendable {
    public struct Result: Sendable {
        public var blockByteCount: Int
        public var totalByteCount: Int
        public var hostToDeviceGBPerSecond: Double
        public var deviceToHostGBPerSecond: Double
    }

    public var accelerator: any Accelerator
    /// Bytes copied per pass; the arena and the device buffer are this large.
    public var totalByteCount: Int
    public var blockByteCounts: [Int]
    /// Timed passes per direction and block size; the median is reported.
    public var passes: Int
    public var numaNode: Int?
    public var locksMemory: Bool

    public init(
        accelerator: any Accelerator, totalByteCount: Int, blockByteCounts: [Int], passes: Int = 5,
        numaNode: Int? = nil, locksMemory: Bool = true
    ) {
        self.accelerator = accelerator
        self.totalByteCount = totalByteCount
        self.blockByteCounts = blockByteCounts
        self.passes = passes
        self.numaNode = numaNode
        self.locksMemory = locksMemory
    }

    /// Runs every block size. `progress` is called with a line per finished size.
    public func run(progress: (String) -> Void = { _ in }) throws(TierKVError) -> [Result] {
        guard let smallest = blockByteCounts.min(), smallest >= 4096, blockByteCounts.allSatisfy({ $0 % smallest == 0 })
        else { throw .invalid("block sizes must be at least 4 KiB and multiples of the smallest") }
        guard passes >= 1 else { throw .invalid("passes must be at least 1") }
        let largest = blockByteCounts.max()!
        let total = max(largest, totalByteCount / largest * largest)
        let arena = try HostArena(.init(
            slotByteCount: smallest, slotCount: total / smallest, numaNode: numaNode, locksMemory: locksMemory))
        try accelerator.registerHostMemory(arena.region)
        defer { try? accelerator.unregisterHostMemory(arena.region) }
        let device = try accelerator.allocateMemory(byteCount: total)
        defer { try? accelerator.freeMemory(device) }
        let stream = try accelerator.makeStream()
        for offset in stride(from: 0, to: total, by: 4096) {
            arena.base.storeBytes(of: UInt32(truncatingIfNeeded: offset), toByteOffset: offset, as: UInt32.self)
        }
        var results: [Result] = []
        for blockByteCount in blockByteCounts {
            let blocks = total / blockByteCount
            func timedPass(toDevice: Bool) throws(TierKVError) -> Double {
                let start = try stream.recordFence(timing: true)
                for block in 0..<blocks {
                    let host = arena.base + block * blockByteCount
                    let deviceAddress = device + block * blockByteCount
                    if toDevice {
                        try stream.copyToDevice(from: host, to: deviceAddress, byteCount: blockByteCount)
                    } else {
                        try stream.copyToHost(from: deviceAddress, to: host, byteCount: blockByteCount)
                    }
                }
                let end = try stream.recordFence(timing: true)
                try end.wait()
                return try end.seconds(since: start)
            }
            _ = try timedPass(toDevice: true)  // warm-up: first-touch mappings in the driver
            var upload: [Double] = []
            var download: [Double] = []
            for _ in 0..<passes {
                upload.append(try timedPass(toDevice: true))
                download.append(try timedPass(toDevice: false))
            }
            let bytes = Double(blocks * blockByteCount)
            let result = Result(
                blockByteCount: blockByteCount, totalByteCount: blocks * blockByteCount,
                hostToDeviceGBPerSecond: bytes / median(upload) / 1e9,
                deviceToHostGBPerSecond: bytes / median(download) / 1e9)
            results.append(result)
            progress(
                "block \(ByteCount(UInt64(blockByteCount))): h2d \(Self.format(result.hostToDeviceGBPerSecond)) GB/s, d2h \(Self.format(result.deviceToHostGBPerSecond)) GB/s")
        }
        return results
    }


    static func format(_ value: Double) -> String { String((value * 100).rounded() / 100) }
}

/// Allocates device slots, copies a seeded pattern host→device→host through the NUMA arena and
/// compares every byte: the check that a CUDA setup really works end to end.
public struct AcceleratorSelfTest: Sendable {
    public struct Outcome: Sendable {
        public var device: AcceleratorDescription
        public var passed: Bool
        public var byteCount: Int
        public var mismatchedBytes: Int
        public var hostToDeviceGBPerSecond: Double
        public var deviceToHostGBPerSecond: Double
        public var arenaNode: Int?

        public var json: JSONValue {
            .object([
                ("device", .string(device.name)), ("emulated", .bool(device.isEmulated)), ("passed", .bool(passed)),
                ("bytes", .int(byteCount)), ("mismatched_bytes", .int(mismatchedBytes)),
                ("h2d_gb_per_s", .number(hostToDeviceGBPerSecond)), ("d2h_gb_per_s", .number(deviceToHostGBPerSecond)),
                ("arena_numa_node", arenaNode.map { .int($0) } ?? .null),
            ])
        }
    }

    /// Runs the test with `slotCount` slots of `slotByteCount` bytes.
    public static func run(
        accelerator: any Accelerator, slotByteCount: Int = 1 << 20, slotCount: Int = 64, seed: UInt64 = 0x7EE5
    ) throws(TierKVError) -> Outcome {
        let node = NUMATopology.current().nearestNode(acceleratorPCIBusID: accelerator.deviceDescription.pciBusID, cacheDirectory: nil)
        // Twice the slots: the first half is the source, the second receives the round trip.
        let arena = try HostArena(.init(slotByteCount: slotByteCount, slotCount: 2 * slotCount, numaNode: node))
        try accelerator.registerHostMemory(arena.region)
        defer { try? accelerator.unregisterHostMemory(arena.region) }
        let pool = try DeviceSlotPool(accelerator: accelerator, slotByteCount: slotByteCount, slotCount: slotCount)
        var state = seed
        let words = slotCount * slotByteCount / 8
        let source = arena.base.bindMemory(to: UInt64.self, capacity: words)
        for index in 0..<words {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            source[index] = state
        }
        let stream = try accelerator.makeStream()
        var slots: [Int] = []
        for _ in 0..<slotCount {
            guard let slot = pool.allocateSlot() else { throw TierKVError(.capacityExceeded, "device slot pool ran out") }
            slots.append(slot)
        }
        let start = try stream.recordFence(timing: true)
        for (index, slot) in slots.enumerated() {
            try stream.copyToDevice(from: arena.address(ofSlot: index), to: pool.address(ofSlot: slot), byteCount: slotByteCount)
        }
        let uploaded = try stream.recordFence(timing: true)
        for (index, slot) in slots.enumerated() {
            try stream.copyToHost(
                from: pool.address(ofSlot: slot), to: arena.address(ofSlot: slotCount + index), byteCount: slotByteCount)
        }
        let downloaded = try stream.recordFence(timing: true)
        try downloaded.wait()
        let bytes = slotCount * slotByteCount
        let returned = (arena.base + bytes).assumingMemoryBound(to: UInt8.self)
        let original = arena.base.assumingMemoryBound(to: UInt8.self)
        var mismatches = 0
        if memcmp(original, returned, bytes) != 0 {
            for index in 0..<bytes where original[index] != returned[index] { mismatches += 1 }
        }
        for slot in slots { try pool.freeSlot(slot) }
        return Outcome(
            device: accelerator.deviceDescription, passed: mismatches == 0, byteCount: bytes, mismatchedBytes: mismatches,
            hostToDeviceGBPerSecond: Double(bytes) / (try uploaded.seconds(since: start)) / 1e9,
            deviceToHostGBPerSecond: Double(bytes) / (try downloaded.seconds(since: uploaded)) / 1e9,
            arenaNode: arena.placement.singleNode)
    }
}

/// The median of timed repetitions (the upper middle for an even count).
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}
