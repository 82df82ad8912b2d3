import Benchmark
import TierKV

/// Hashing runs once per stored block on the engine's thread, so it must cost far less than
/// the block's transfer (a 64 KiB block over PCIe Gen5 takes ~1.3 µs).
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(2))

    let megabyte = [UInt8](repeating: 0x5A, count: 1 << 20)
    Benchmark("XXH64 1 MiB", configuration: .init(scalingFactor: .one)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(megabyte.withUnsafeBytes { XXHash64.hash($0) })
        }
    }

    let tokens = (0..<131_072).map { UInt32($0 &* 2_654_435_761 % 128_256) }
    let hasher = try! PrefixHasher(namespace: "bench", tokensPerBlock: 16)
    Benchmark("prefix hashes of a 128k-token prompt (8192 blocks)") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(hasher.blockHashes(tokens))
        }
    }
}
