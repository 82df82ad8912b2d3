// swift-tools-version: 6.1
// TierKV: tiered KV-cache offloading (accelerator / NUMA host RAM / NVMe via io_uring).
// Module graph (a module depends only on modules above it in this list):
//   CTierKVLinux  C shim: liburing, libnuma, cpuid, O_DIRECT constants. No logic.
//   TierKVCore    layouts, dtypes, keys and prefix hashing, byte sizes, errors, CPU features.
//   TierKVStorage cold tier: io_uring and the NVMe block file.
//   TierKVHostArena warm tier: NUMA topology, pinned host arena.
//   TierKVAccelerator hot tier: CUDA driver (dlopen) and the emulated accelerator.
//   TierKVAttentionKernels SIMD kernels (x86-64-v3); TierKVAttention CPU decode attention on warm blocks.
//   TierKVPolicies  eviction policies (LRU, LFU, S3-FIFO, H2O, TOVA, StreamingLLM): no dependencies.
//   TierKVPrediction key summaries, predictors (bound, speculative, history), the fetch/CPU/skip cost model.
//   TierKVTransfer  the transfer engine: per-link priority scheduling over the tiers' links.
//   TierKV        what engines import: the hierarchy, system report.
//   tierkv        the command-line tool.
import PackageDescription

#if canImport(Glibc)
import Glibc
#endif

// `tools/build-portable` sets TIERKV_STATIC_SYSTEM_LIBS=1 to link liburing and libnuma from their
// static archives, so the binary runs on machines without them (e.g. a GPU box with no Swift).
// `tools/build-library` sets it to `uring`: Debian's libnuma.a is not position-independent, so the
// shared library links liburing statically and libnuma (libnuma1, on most servers) dynamically.
let staticSystemLibraries = getenv("TIERKV_STATIC_SYSTEM_LIBS").map { String(cString: $0) }
let systemLibraryLinkerSettings: [LinkerSetting] =
    switch staticSystemLibraries {
    case nil: [.linkedLibrary("uring"), .linkedLibrary("numa"), .linkedLibrary("dl")]
    case "uring"?: [.unsafeFlags(["-Xlinker", "-l:liburing.a"]), .linkedLibrary("numa"), .linkedLibrary("dl")]
    default: [.unsafeFlags(["-Xlinker", "-l:liburing.a", "-Xlinker", "-l:libnuma.a"]), .linkedLibrary("dl")]
    }

/// The C ABI's version (TIERKV_ABI_VERSION in include/tierkv.h): the shared library's soname.
let abiVersion = 1

let package = Package(
    name: "TierKV",
    products: [
        .library(name: "TierKV", targets: ["TierKV"]),
        .executable(name: "tierkv", targets: ["tierkv"]),
        // The C ABI (include/tierkv.h) as a shared library; `tools/build-library` links the Swift
        // runtime into it statically and installs it as libtierkv.so.
        .library(name: "TierKVC", type: .dynamic, targets: ["TierKVC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        .target(
            name: "CTierKVLinux",
            linkerSettings: systemLibraryLinkerSettings
        ),
        .target(name: "TierKVCore", dependencies: ["CTierKVLinux"], exclude: ["README.md"]),
        .target(name: "TierKVStorage", dependencies: ["TierKVCore", "CTierKVLinux"], exclude: ["README.md"]),
        .target(name: "TierKVHostArena", dependencies: ["TierKVCore", "CTierKVLinux"], exclude: ["README.md"]),
        .target(name: "TierKVAccelerator", dependencies: ["TierKVCore", "CTierKVLinux"], exclude: ["README.md"]),
        // The only target built for x86-64-v3 (AVX2, FMA, F16C): SIMD kernels and nothing else, so
        // no code that runs before `CPUFeatures.requireKernelSupport()` can contain AVX.
        .target(
            name: "TierKVAttentionKernels", dependencies: ["TierKVCore", "CTierKVLinux"],
            swiftSettings: [.unsafeFlags(["-Xcc", "-march=x86-64-v3", "-Ounchecked"])]
        ),
        .target(name: "TierKVPolicies", exclude: ["README.md"]),
        .target(name: "TierKVAttention", dependencies: ["TierKVCore", "TierKVAttentionKernels", "CTierKVLinux"], exclude: ["README.md"]),
        .target(name: "TierKVPrediction", dependencies: ["TierKVCore", "TierKVAttentionKernels"], exclude: ["README.md"]),
        .target(
            name: "TierKVTransfer", dependencies: ["TierKVCore", "TierKVAccelerator", "TierKVStorage"], exclude: ["README.md"]),
        .target(
            name: "TierKV",
            dependencies: [
                "TierKVCore", "TierKVStorage", "TierKVHostArena", "TierKVAccelerator", "TierKVTransfer", "TierKVAttention",
                "TierKVPolicies", "TierKVPrediction",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            exclude: ["README.md"]
        ),
        // The offload simulator: trace replay and (next) virtual-time runs of the real hierarchy.
        .target(name: "TierKVSimulator", dependencies: ["TierKV", "TierKVPolicies"], exclude: ["README.md"]),
        // Prometheus export for engines that scrape: kept out of `TierKV` so engines with their own
        // metrics backend do not pull it in.
        .target(
            name: "TierKVPrometheus",
            dependencies: [
                "TierKV", .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // The C ABI: `include/tierkv.h`, imported so each `@c @implementation` is checked against it.
        .systemLibrary(name: "CTierKVABI", path: "Sources/CTierKVABI"),
        .target(
            name: "TierKVC", dependencies: ["TierKV", "CTierKVABI"],
            linkerSettings: [
                .unsafeFlags([
                    "-Xlinker", "-soname=libtierkv.so.\(abiVersion)",
                    "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/CTierKVABI/exports.map",
                ])
            ]
        ),
        .executableTarget(
            name: "tierkv",
            dependencies: ["TierKV", "TierKVSimulator", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // Shared by the test targets: temporary directories, seeded generators, process helpers.
        .target(name: "TierKVTestSupport", dependencies: ["TierKVCore"], path: "Tests/TierKVTestSupport"),
        .testTarget(name: "TierKVCoreTests", dependencies: ["TierKVCore"]),
        .testTarget(name: "TierKVSystemTests", dependencies: ["TierKV", "TierKVTestSupport"]),
        .testTarget(
            name: "TierKVHostArenaTests", dependencies: ["TierKVHostArena", "TierKVStorage", "CTierKVLinux", "TierKVTestSupport"]),
        .testTarget(name: "TierKVAcceleratorTests", dependencies: ["TierKV", "TierKVTestSupport"]),
        .testTarget(name: "TierKVTransferTests", dependencies: ["TierKV", "CTierKVLinux", "TierKVTestSupport"]),
        .testTarget(name: "TierKVStorageTests", dependencies: ["TierKVStorage", "TierKVTestSupport"]),
        .testTarget(name: "TierKVAttentionTests", dependencies: ["TierKVAttention", "TierKVTestSupport"]),
        .testTarget(name: "TierKVPoliciesTests", dependencies: ["TierKVPolicies"]),
        .testTarget(name: "TierKVPredictionTests", dependencies: ["TierKVPrediction", "TierKVTestSupport"]),
        .testTarget(name: "HierarchyTests", dependencies: ["TierKV", "TierKVPrometheus", "TierKVTestSupport"]),
        .testTarget(name: "TierKVSimulatorTests", dependencies: ["TierKVSimulator", "TierKVTestSupport"]),
        .testTarget(name: "TierKVCLITests", dependencies: ["TierKV", "TierKVTestSupport"]),
    ]
)
