// swift-tools-version: 6.1
// TierKV's hot-path benchmarks (ordo-one/package-benchmark), a separate package so the main
// build and `swift test` stay fast. Run: cd Benchmarks && swift package benchmark
import PackageDescription

let package = Package(
    name: "TierKVBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/package-benchmark", from: "1.29.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "CoreBenchmarks",
            dependencies: [
                .product(name: "TierKV", package: "main"),
                .product(name: "Benchmark", package: "package-benchmark"),
            ],
            path: "Benchmarks/CoreBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
        )
    ]
)
