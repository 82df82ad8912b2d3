import Benchmark
import Foundation
import TierKV

/// The cold tier's hot paths: sealing and verifying a slot (header + XXH64 over a 64 KiB payload)
/// and a batch of 32 whole-slot writes and reads through io_uring on a real file (no flush, so
/// the figure is the submit/complete path, not the device's flush).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(3))

    let slotBytes = BlockFile.Geometry.slotByteCount(forPayload: 64 << 10)
    let slot = UnsafeMutableRawPointer.allocate(byteCount: slotBytes, alignment: 4096)
    StorageBenchmark.fillPayload(slot + ColdSlotHeader.byteCount, byteCount: 64 << 10, index: 1)
    let header = ColdSlotHeader(key: StorageBenchmark.key(1), payloadByteCount: 64 << 10, sequence: 1)

    Benchmark("seal and verify a 64 KiB slot") { benchmark in
        for _ in benchmark.scaledIterations {
            header.seal(into: slot)
            blackHole(ColdSlotHeader.verify(slot, slotByteCount: slotBytes))
        }
    }

    let directory = NSTemporaryDirectory() + "tierkv-bench-\(getpid())"
    let store = try! BlockStore(
        directory: directory, geometry: .init(slotByteCount: slotBytes, slotCount: 512), queueDepth: 32, syncsWrites: false)
    let buffers = UnsafeMutableRawPointer.allocate(byteCount: 32 * slotBytes, alignment: 4096)
    for index in 0..<32 { StorageBenchmark.fillPayload(buffers + index * slotBytes + ColdSlotHeader.byteCount, byteCount: 64 << 10, index: index) }
    let writes = (0..<32).map { BlockStore.Write(key: StorageBenchmark.key($0), buffer: buffers + $0 * slotBytes, payloadByteCount: 64 << 10) }
    let reads = (0..<32).map { (key: StorageBenchmark.key($0), buffer: buffers + $0 * slotBytes) }
    _ = store.write(writes)  // so the read benchmark reads real blocks whatever order they run in

    Benchmark("block store: write 32 x 64 KiB slots (QD32, no flush)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(store.write(writes)) }
    }
    Benchmark("block store: read and verify 32 x 64 KiB slots (QD32)") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(store.read(reads)) }
    }
}
