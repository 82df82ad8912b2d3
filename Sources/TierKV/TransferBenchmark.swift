import TierKVAccelerator
import TierKVCore
import TierKVHostArena

#if canImport(Glibc)
import Glibc
#endif

/// Measures host↔accelerator copy bandwidth from the NUMA host arena, block by block, the way
/// the hot tier moves KV blocks, timed between fences on one stream (device-measured CUDA events
/// on a GPU; the modelled clock on the emulated device). Each block size runs two ways: one async
/// copy call per block, and batches of `copiesPerBatch` blocks in one submission
/// (`AcceleratorStream.copyToDevice(_:)`: `cuMemcpyBatchAsync` where the driver has it). The
/// blocks' device slots are a seeded permutation of their host slots, as in a warm and a hot
/// tier that have been running a while, so no two neighbouring blocks are contiguous on both
/// sides and nothing can merge them.
public struct TransferBenchmark: Sendable {
    public struct Result: Sendable {
        public var blockByteCount: Int
        public var totalByteCount: Int
        /// One copy call per block.
        public var hostToDeviceGBPerSecond: Double
        public var deviceToHostGBPerSecond: Double
        /// `copiesPerBatch` blocks per submission.
        public var hostToDeviceBatchedGBPerSecond: Double
        public var deviceToHostBatchedGBPerSecond: Double
    }

    public var accelerator: any Accelerator
    /// Bytes copied per pass; the arena and the device buffer are this large.
    public var totalByteCount: Int
    public var blockByteCounts: [Int]
    /// Timed passes per direction and block size; the median is reported.
    public var passes: Int
    public var numaNode: Int?
    public var locksMemory: Bool
    /// Blocks per submission in the batched passes.
    public var copiesPerBatch: Int

    public init(
        accelerator: any Accelerator, totalByteCount: Int, blockByteCounts: [Int], passes: Int = 5,
        numaNode: Int? = nil, locksMemory: Bool = true, copiesPerBatch: Int = 64
    ) {
        self.accelerator = accelerator
        self.totalByteCount = totalByteCount
        self.blockByteCounts = blockByteCounts
        self.passes = passes
        self.numaNode = numaNode
        self.locksMemory = locksMemory
        self.copiesPerBatch = copiesPerBatch
    }

    /// Runs every block size. `progress` is called with a line per finished size.
    public func run(progress: (String) -> Void = { _ in }) throws(TierKVError) -> [Result] {
        guard let smallest = blockByteCounts.min(), smallest >= 4096, blockByteCounts.allSatisfy({ $0 % smallest == 0 })
        else { throw .invalid("block sizes must be at least 4 KiB and multiples of the smallest") }
        guard passes >= 1 else { throw .invalid("passes must be at least 1") }
        guard copiesPerBatch >= 1 else { throw .invalid("copies per batch must be at least 1") }
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
            var order = Array(0..<blocks)
            var seed: UInt64 = 0x7EA5
            for index in stride(from: blocks - 1, to: 0, by: -1) {
                seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                order.swapAt(index, Int((seed >> 33) % UInt64(index + 1)))
            }
            let copies = (0..<blocks).map { block in
                DeviceCopy(host: arena.base + block * blockByteCount, device: device + order[block] * blockByteCount,
                    byteCount: blockByteCount)
            }
            func timedPass(toDevice: Bool, batched: Bool) throws(TierKVError) -> Double {
                let start = try stream.recordFence(timing: true)
                if batched {
                    for first in stride(from: 0, to: blocks, by: copiesPerBatch) {
                        let batch = Array(copies[first..<min(first + copiesPerBatch, blocks)])
                        if toDevice { try stream.copyToDevice(batch) } else { try stream.copyToHost(batch) }
                    }
                } else {
                    for copy in copies {
                        if toDevice {
                            try stream.copyToDevice(from: copy.host, to: copy.deviceAddress, byteCount: blockByteCount)
                        } else {
                            try stream.copyToHost(from: copy.deviceAddress, to: copy.host, byteCount: blockByteCount)
                        }
                    }
                }
                let end = try stream.recordFence(timing: true)
                try end.wait()
                return try end.seconds(since: start)
            }
            _ = try timedPass(toDevice: true, batched: false)  // warm-up: first-touch mappings in the driver
            var timings: [[Double]] = [[], [], [], []]  // h2d, d2h, h2d batched, d2h batched
            for _ in 0..<passes {  // interleaved, so a drift in the machine hits both ways alike
                timings[0].append(try timedPass(toDevice: true, batched: false))
                timings[1].append(try timedPass(toDevice: false, batched: false))
                timings[2].append(try timedPass(toDevice: true, batched: true))
                timings[3].append(try timedPass(toDevice: false, batched: true))
            }
            let bytes = Double(blocks * blockByteCount)
            let rates = timings.map { bytes / median($0) / 1e9 }
            let result = Result(
                blockByteCount: blockByteCount, totalByteCount: blocks * blockByteCount,
                hostToDeviceGBPerSecond: rates[0], deviceToHostGBPerSecond: rates[1],
                hostToDeviceBatchedGBPerSecond: rates[2], deviceToHostBatchedGBPerSecond: rates[3])
            results.append(result)
            progress(
                "block \(ByteCount(UInt64(blockByteCount))): h2d \(Self.format(rates[0])) GB/s (batched \(Self.format(rates[2]))), d2h \(Self.format(rates[1])) GB/s (batched \(Self.format(rates[3])))")
        }
        return results
    }

    /// How the batched passes submit their copies on this accelerator.
    public func batchSubmission() throws(TierKVError) -> String { try accelerator.makeStream().batchSubmission }

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
        /// How the copies were submitted: `cuMemcpyBatchAsync` or `one call per copy`.
        public var batchSubmission: String

        public var json: JSONValue {
            .object([
                ("device", .string(device.name)), ("emulated", .bool(device.isEmulated)), ("passed", .bool(passed)),
                ("batch_submission", .string(batchSubmission)),
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
        // Host slot i goes to device slot n-1-i and comes back to host slot n+i: every copy is
        // its own (nothing contiguous on both sides), submitted as one batch each way, the way
        // the hierarchy moves blocks.
        let start = try stream.recordFence(timing: true)
        try stream.copyToDevice(slots.reversed().enumerated().map { index, slot in
            DeviceCopy(host: arena.address(ofSlot: index), device: pool.address(ofSlot: slot), byteCount: slotByteCount)
        })
        let uploaded = try stream.recordFence(timing: true)
        try stream.copyToHost(slots.reversed().enumerated().map { index, slot in
            DeviceCopy(host: arena.address(ofSlot: slotCount + index), device: pool.address(ofSlot: slot), byteCount: slotByteCount)
        })
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
            arenaNode: arena.placement.singleNode, batchSubmission: stream.batchSubmission)
    }
}

/// The median of timed repetitions (the upper middle for an even count).
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}
