import Histogram
import TierKVCore
import TierKVHostArena
import TierKVStorage
import TierKVTransfer

#if canImport(Glibc)
import Glibc
#endif

/// Cold-tier throughput through the real `BlockStore` path: real blocks with headers and
/// checksums, so the directory a write run leaves (even if killed) is a valid cache that fsck
/// checks and a reopen recovers. Block content depends only on the key (`fillPayload`), as KV
/// content depends only on its prefix, so any valid copy of a key can be checked byte for byte.
///
/// It keeps `queueDepth` I/Os in flight through the store's pipelined path (refilling as each
/// completes). Writes are flushed and acknowledged in groups of `queueDepth`; a block's latency is
/// submit→acknowledge (flush included) for writes and submit→verified completion for reads.
public struct StorageBenchmark: Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        case read, write, randread, randwrite
        var isWrite: Bool { self == .write || self == .randwrite }
        var isRandom: Bool { self == .randread || self == .randwrite }
    }

    public struct Result: Sendable {
        public var mode: Mode
        public var blockByteCount: Int
        public var queueDepth: Int
        public var seconds: Double
        public var byteCount: Int
        public var operations: Int
        public var latencyMicroseconds: (p50: Double, p99: Double, p999: Double)
        public var isDirect: Bool
        public var syncsWrites: Bool

        public var mibPerSecond: Double { Double(byteCount) / seconds / 1_048_576 }
        public var iops: Double { Double(operations) / seconds }

        public var json: JSONValue {
            .object([
                ("rw", .string(mode.rawValue)), ("block_size", .int(blockByteCount)), ("queue_depth", .int(queueDepth)),
                ("seconds", .number(seconds)), ("bytes", .int(byteCount)), ("mib_per_s", .number(mibPerSecond)),
                ("iops", .number(iops)),
                ("latency_us", .object([
                    ("p50", .number(latencyMicroseconds.p50)), ("p99", .number(latencyMicroseconds.p99)),
                    ("p999", .number(latencyMicroseconds.p999)),
                ])),
                ("o_direct", .bool(isDirect)), ("flush_per_batch", .bool(syncsWrites)),
            ])
        }
    }

    public var directory: String
    public var fileByteCount: Int
    /// Slot size: header + payload, a multiple of 4 KiB.
    public var blockByteCount: Int
    public var queueDepth: Int
    public var mode: Mode
    public var seconds: Double
    public var syncsWrites: Bool
    /// Open the block file buffered where the filesystem refuses O_DIRECT (tmpfs), reported in
    /// the result's `isDirect`; without it such a filesystem is an error.
    public var allowsBufferedFallback: Bool
    /// Called with each batch of key indices once acknowledged (the crash test logs them).
    public var onAcknowledged: @Sendable ([Int]) -> Void

    public init(
        directory: String, fileByteCount: Int, blockByteCount: Int, queueDepth: Int, mode: Mode, seconds: Double,
        syncsWrites: Bool = true, allowsBufferedFallback: Bool = false, onAcknowledged: @escaping @Sendable ([Int]) -> Void = { _ in }
    ) {
        self.allowsBufferedFallback = allowsBufferedFallback
        self.directory = directory
        self.fileByteCount = fileByteCount
        self.blockByteCount = blockByteCount
        self.queueDepth = queueDepth
        self.mode = mode
        self.seconds = seconds
        self.syncsWrites = syncsWrites
        self.onAcknowledged = onAcknowledged
    }

    /// The key of block `index` (layer 0, a fixed namespace of the benchmark).
    public static func key(_ index: Int) -> BlockKey {
        BlockKey(prefixHash: PrefixHash(high: 0x7469_6572_6B76_6265, low: UInt64(index)), layer: 0)
    }

    /// Deterministic payload of block `index`.
    public static func fillPayload(_ destination: UnsafeMutableRawPointer, byteCount: Int, index: Int) {
        var state = UInt64(index) &* 0x9E37_79B9_7F4A_7C15 | 1
        let words = destination.bindMemory(to: UInt64.self, capacity: byteCount / 8)
        for word in 0..<(byteCount / 8) {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            words[word] = state
        }
    }

    public func run(progress: (String) -> Void = { _ in }) throws(TierKVError) -> Result {
        guard blockByteCount >= 4096, blockByteCount % 4096 == 0 else {
            throw .invalid("--block-size \(blockByteCount) must be a multiple of 4 KiB")
        }
        guard queueDepth >= 1, queueDepth <= 4096 else { throw .invalid("--queue-depth \(queueDepth) must be 1...4096") }
        let slotCount = fileByteCount / blockByteCount
        guard slotCount > 4 * queueDepth else {
            throw .invalid("--size \(ByteCount(UInt64(fileByteCount))) holds \(slotCount) blocks; it needs more than 4 × the queue depth \(queueDepth)")
        }
        let store = try BlockStore(
            directory: directory, geometry: .init(slotByteCount: blockByteCount, slotCount: slotCount),
            allowBufferedFallback: allowsBufferedFallback, queueDepth: UInt32(min(queueDepth, 4096)), syncsWrites: syncsWrites)
        let payload = store.payloadCapacity
        // Live keys leave room for a queue depth in flight and one awaiting its flush (copy-on-write).
        let keySpace = slotCount - 2 * queueDepth
        let arena = try HostArena(.init(slotByteCount: blockByteCount, slotCount: queueDepth, locksMemory: false))
        if !mode.isWrite, store.statistics.blocks < keySpace {
            progress("filling \(keySpace) blocks to read")
            var index = 0
            while index < keySpace {
                let batch = Array(index..<min(keySpace, index + queueDepth))
                let writes = batch.enumerated().map { position, key in
                    Self.fillPayload(arena.address(ofSlot: position) + ColdSlotHeader.byteCount, byteCount: payload, index: key)
                    return BlockStore.Write(key: Self.key(key), buffer: arena.address(ofSlot: position), payloadByteCount: payload)
                }
                for result in store.write(writes) { if case .failed(let error) = result { throw error } }
                index += batch.count
            }
        }
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var random = UInt64(0x5EED)
        func keyIndex(_ operation: Int) -> Int {
            guard mode.isRandom else { return operation % keySpace }
            random = random &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((random >> 33) % UInt64(keySpace))
        }
        let buffers = (0..<queueDepth).map { arena.address(ofSlot: $0) }
        var submittedByOperation: [Int: UInt64] = [:]
        var operations = 0
        let start = monotonicNanoseconds()
        let deadline = start + UInt64(seconds * 1e9)
        var lastReport = start
        func report(_ now: UInt64) {
            guard now - lastReport > 1_000_000_000 else { return }
            lastReport = now
            let elapsed = Double(now - start) / 1e9
            progress("\(Int(elapsed)) s: \(Int(Double(operations * blockByteCount) / elapsed / 1_048_576)) MiB/s, \(Int(Double(operations) / elapsed)) IOPS")
        }
        if mode.isWrite {
            var keys: [Int: Int] = [:]
            let summary = store.writePipelined(
                count: Int.max, buffers: buffers, flushEvery: queueDepth,
                prepare: { operation, position in
                    let index = keyIndex(operation)
                    keys[operation] = index
                    Self.fillPayload(buffers[position] + ColdSlotHeader.byteCount, byteCount: payload, index: index)
                    submittedByOperation[operation] = monotonicNanoseconds()
                    return (Self.key(index), payload)
                },
                shouldContinue: { monotonicNanoseconds() < deadline },
                acknowledged: { done in
                    let now = monotonicNanoseconds()
                    for operation in done {
                        if let time = submittedByOperation.removeValue(forKey: operation) { _ = histogram.record((now - time) / 1000) }
                    }
                    operations += done.count
                    onAcknowledged(done.compactMap { keys.removeValue(forKey: $0) })
                    report(now)
                })
            if summary.failed > 0 { throw TierKVError(.systemCall, "\(summary.failed) writes failed during the benchmark") }
        } else {
            var failure: TierKVError?
            _ = store.readPipelined(
                count: Int.max, buffers: buffers,
                key: { operation in
                    submittedByOperation[operation] = monotonicNanoseconds()
                    return Self.key(keyIndex(operation))
                },
                shouldContinue: { monotonicNanoseconds() < deadline && failure == nil },
                completed: { operation, _, result in
                    let now = monotonicNanoseconds()
                    if let time = submittedByOperation.removeValue(forKey: operation) { _ = histogram.record((now - time) / 1000) }
                    if result != .hit(payloadByteCount: payload) {
                        failure = failure ?? TierKVError(.corruption, "read \(operation) gave \(result)")
                    }
                    operations += 1
                    report(now)
                })
            if let failure { throw failure }
        }
        let now = monotonicNanoseconds()
        let bytes = operations * blockByteCount
        return Result(
            mode: mode, blockByteCount: blockByteCount, queueDepth: queueDepth, seconds: Double(now - start) / 1e9,
            byteCount: bytes, operations: operations,
            latencyMicroseconds: (Double(histogram.valueAtPercentile(50)), Double(histogram.valueAtPercentile(99)), Double(histogram.valueAtPercentile(99.9))),
            isDirect: store.file.isDirect, syncsWrites: syncsWrites)
    }

    func monotonicNanoseconds() -> UInt64 { MonotonicClock().nanoseconds() }
}
