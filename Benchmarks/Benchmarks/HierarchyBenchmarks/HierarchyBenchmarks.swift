import Benchmark
import Foundation
import TierKV

/// The hierarchy manager's hot paths at Llama-3-8B's block shape (64 KiB), on the emulated
/// accelerator with an instant link, so the figures are TierKV's own bookkeeping and copies, not a
/// modelled PCIe: a store into warm, a round of 64 blocks made resident in hot and released, a
/// prefix lookup over 32 layers, and 64 blocks stored from device memory one call each against one
/// call for all.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(3))

    let layout = try! ModelPreset.llama3_8B.layout()
    func open(hot: Int, warm: Int, accelerator: AcceleratorBackend = .emulated(.instant)) -> Hierarchy {
        var configuration = HierarchyConfiguration(
            layout: layout, hotCapacityBlocks: hot, warmCapacityBlocks: warm, accelerator: accelerator)
        configuration.locksWarmMemory = false
        return try! Hierarchy(configuration)
    }
    let block = [UInt8](repeating: 0x3C, count: layout.blockByteCount)
    let tokens = (0..<(1024 * 16)).map { UInt32(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 8) }

    // Cache-only stores (no sequence): when warm is full its least recent block is dropped.
    let storing = open(hot: 64, warm: 4096)
    let storeKeys = storing.blockKeys(tokens: tokens, layer: 0)
    var next = 0
    Benchmark("store a 64 KiB block into warm (cache only)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for _ in benchmark.scaledIterations {
            let key = BlockKey(prefixHash: PrefixHash(high: UInt64(next), low: 7), layer: 0)
            next += 1
            blackHole(try! block.withUnsafeBytes { try storing.store(key, position: 0, bytes: $0) })
        }
    }

    // Two sets of 64 warm blocks take turns in a 64-block hot tier: every round moves 64 blocks.
    let resident = open(hot: 64, warm: 256)
    let residentKeys = Array(storeKeys.prefix(128))
    for (position, key) in residentKeys.enumerated() {
        _ = try! block.withUnsafeBytes { try resident.store(key, position: position, bytes: $0, sequence: SequenceID(1)) }
    }
    var round = 0
    Benchmark("make 64 warm blocks resident in hot, wait, release") { benchmark in
        for _ in benchmark.scaledIterations {
            let keys = round % 2 == 0 ? Array(residentKeys.prefix(64)) : Array(residentKeys.suffix(64))
            round += 1
            let request = try! resident.makeResident(keys, in: .hot)
            request.wait()
            resident.release(request)
        }
    }

    // The steady state of decode: a layer's 64 blocks are already in hot, as they are for most
    // layers of most steps; the call is TierKV's bookkeeping alone (lookups, pins, the request).
    let steady = open(hot: 128, warm: 256)
    for (position, key) in residentKeys.prefix(64).enumerated() {
        _ = try! block.withUnsafeBytes { try steady.store(key, position: position, bytes: $0, sequence: SequenceID(1)) }
    }
    let steadyKeys = Array(residentKeys.prefix(64))
    let warmUp = try! steady.makeResident(steadyKeys, in: .hot)
    warmUp.wait()
    steady.release(warmUp)
    Benchmark("make 64 blocks already in hot resident, wait, release", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for _ in benchmark.scaledIterations {
            let request = try! steady.makeResident(steadyKeys, in: .hot)
            request.wait()
            steady.release(request)
        }
    }

    // 1,024 blocks of a prompt at all 32 layers, all cached: the lookup walks every layer.
    let lookup = open(hot: 64, warm: 32 * 1024 + 64)
    for layer in 0..<32 {
        for (position, key) in lookup.blockKeys(tokens: tokens, layer: layer).enumerated() {
            _ = try! block.withUnsafeBytes { try lookup.store(key, position: position, bytes: $0) }
        }
    }
    let hashes = lookup.prefixHashes(tokens: tokens)
    Benchmark("prefix lookup of 1024 blocks x 32 layers") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(lookup.lookupPrefix(hashes)) }
    }

    // Device memory standing in for an engine's paged cache: 64 blocks, stored again each round
    // under fresh keys.
    let emulated = EmulatedAccelerator(memoryByteCount: 128 * layout.blockByteCount, link: .instant)
    let fromDevice = open(hot: 64, warm: 4096, accelerator: .custom(emulated))
    let device = try! emulated.allocateMemory(byteCount: 64 * layout.blockByteCount)
    var batch = 0
    func deviceBlocks() -> [Hierarchy.DeviceBlock] {
        batch += 1
        return (0..<64).map {
            Hierarchy.DeviceBlock(
                key: BlockKey(prefixHash: PrefixHash(high: UInt64(batch), low: UInt64($0) + 1), layer: 1), position: $0,
                deviceAddress: device + $0 * layout.blockByteCount)
        }
    }
    Benchmark("store 64 blocks from device memory, one call each") { benchmark in
        for _ in benchmark.scaledIterations {
            for block in deviceBlocks() {
                blackHole(try! fromDevice.store(block.key, position: block.position, deviceAddress: block.deviceAddress))
            }
        }
    }
    Benchmark("store 64 blocks from device memory, one call") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try! fromDevice.store(deviceBlocks: deviceBlocks())) }
    }
}
