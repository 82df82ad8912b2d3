import TierKV

/// An accelerator for the decode compute model: dense BF16 tensor throughput and HBM bandwidth.
public struct GPUModel: Sendable, Equatable, Codable {
    public var name: String
    /// Dense (no sparsity) BF16 tensor-core FLOP/s.
    public var flopsPerSecond: Double
    public var memoryBytesPerSecond: Double
    public var memoryBytes: Double
}

/// A machine the simulator models: the GPU, its host link (each direction), the NVMe drive and
/// host memory. Figures are the vendors' published ones (sources beside each); a real system
/// reaches less, which `--efficiency` (compute) and the link flags let a user set.
public struct HardwarePreset: Sendable, Equatable, Codable {
    public var name: String
    public var gpu: GPUModel
    public var hostToDevice: LinkModel
    public var deviceToHost: LinkModel
    public var nvmeRead: LinkModel
    public var nvmeWrite: LinkModel
    /// Host DRAM read bandwidth (for CPU attention over warm blocks).
    public var hostMemoryBytesPerSecond: Double

    /// The link models by the names the hierarchy's links carry.
    public var links: [String: LinkModel] {
        ["h2d": hostToDevice, "d2h": deviceToHost, "nvme_read": nvmeRead, "nvme_write": nvmeWrite]
    }

    // MARK: Parts

    // NVIDIA H100 Tensor Core GPU datasheet (2023): H100 SXM 989 TFLOPS BF16 dense (1,979 with
    // sparsity), 3.35 TB/s HBM3, 80 GB; H100 PCIe 756 TFLOPS dense, 2.0 TB/s HBM2e, 80 GB.
    public static let h100SXM = GPUModel(name: "H100 SXM", flopsPerSecond: 989e12, memoryBytesPerSecond: 3.35e12, memoryBytes: 80e9)
    public static let h100PCIe = GPUModel(name: "H100 PCIe", flopsPerSecond: 756e12, memoryBytesPerSecond: 2.0e12, memoryBytes: 80e9)
    // NVIDIA GH200 Grace Hopper Superchip datasheet: H100 with 96 GB HBM3 at 4 TB/s, 989 TFLOPS
    // BF16 dense; NVLink-C2C 900 GB/s total (450 GB/s each way); up to 480 GB LPDDR5X at up to
    // 512 GB/s.
    public static let gh200GPU = GPUModel(name: "GH200 (H100 96GB)", flopsPerSecond: 989e12, memoryBytesPerSecond: 4.0e12, memoryBytes: 96e9)
    // NVIDIA A100 datasheet: A100 80GB PCIe 312 TFLOPS BF16 dense, 1,935 GB/s HBM2e.
    public static let a100PCIe = GPUModel(name: "A100 80GB PCIe", flopsPerSecond: 312e12, memoryBytesPerSecond: 1.935e12, memoryBytes: 80e9)

    // PCI-SIG: PCIe 5.0 x16 = 32 GT/s × 16 lanes × 128/130 encoding = 63.0 GB/s each way;
    // PCIe 4.0 x16 = 31.5 GB/s. Latency per transfer: 10 µs is our assumption for launching and
    // fencing one batch of async copies (not a published figure; override it with the flags).
    public static let pcieGen5x16 = LinkModel(bytesPerSecond: 63.0e9, latencySeconds: 10e-6)
    public static let pcieGen4x16 = LinkModel(bytesPerSecond: 31.5e9, latencySeconds: 10e-6)
    // GH200 datasheet: NVLink-C2C 900 GB/s bidirectional, 450 GB/s each way.
    public static let nvlinkC2C = LinkModel(bytesPerSecond: 450e9, latencySeconds: 5e-6)
    // Samsung 990 PRO (PCIe 4.0 NVMe) datasheet: 7,450 MB/s sequential read, 6,900 MB/s
    // sequential write. Latencies (70 µs read, 30 µs write to the drive's cache) are our
    // assumption for TLC NAND, not published figures.
    public static let nvmeGen4Read = LinkModel(bytesPerSecond: 7.45e9, latencySeconds: 70e-6)
    public static let nvmeGen4Write = LinkModel(bytesPerSecond: 6.9e9, latencySeconds: 30e-6)
    // Crucial T705 (PCIe 5.0 NVMe) datasheet: 14,500 MB/s sequential read, 12,700 MB/s write.
    public static let nvmeGen5Read = LinkModel(bytesPerSecond: 14.5e9, latencySeconds: 60e-6)
    public static let nvmeGen5Write = LinkModel(bytesPerSecond: 12.7e9, latencySeconds: 30e-6)
    // JEDEC DDR5-4800: 38.4 GB/s per channel; 8 channels per socket (Xeon Sapphire Rapids,
    // the H100 SXM host in DGX H100) = 307 GB/s.
    public static let ddr5x8Channels = 307.2e9
    // GH200 datasheet: LPDDR5X up to 512 GB/s.
    public static let lpddr5xGrace = 512e9

    // MARK: Machines

    public static let h100SXMGen4NVMe = HardwarePreset(
        name: "h100-sxm", gpu: h100SXM, hostToDevice: pcieGen5x16, deviceToHost: pcieGen5x16,
        nvmeRead: nvmeGen4Read, nvmeWrite: nvmeGen4Write, hostMemoryBytesPerSecond: ddr5x8Channels)
    public static let h100PCIeGen5NVMe = HardwarePreset(
        name: "h100-pcie", gpu: h100PCIe, hostToDevice: pcieGen5x16, deviceToHost: pcieGen5x16,
        nvmeRead: nvmeGen5Read, nvmeWrite: nvmeGen5Write, hostMemoryBytesPerSecond: ddr5x8Channels)
    public static let gh200 = HardwarePreset(
        name: "gh200", gpu: gh200GPU, hostToDevice: nvlinkC2C, deviceToHost: nvlinkC2C,
        nvmeRead: nvmeGen5Read, nvmeWrite: nvmeGen5Write, hostMemoryBytesPerSecond: lpddr5xGrace)
    public static let a100PCIeGen4 = HardwarePreset(
        name: "a100-pcie", gpu: a100PCIe, hostToDevice: pcieGen4x16, deviceToHost: pcieGen4x16,
        nvmeRead: nvmeGen4Read, nvmeWrite: nvmeGen4Write, hostMemoryBytesPerSecond: ddr5x8Channels)

    public static let all = [h100SXMGen4NVMe, h100PCIeGen5NVMe, gh200, a100PCIeGen4]

    public static func named(_ name: String) throws(TierKVError) -> HardwarePreset {
        if let preset = all.first(where: { $0.name == name.lowercased() }) { return preset }
        throw TierKVError(.notFound, "unknown hardware '\(name)'; known: " + all.map(\.name).joined(separator: ", "))
    }
}

/// Decode time per layer from a roofline: a layer reads its weights once per step and each
/// sequence's KV, and does 2 FLOPs per weight per sequence plus 4 per (context token × query head
/// × head dim) for attention; its time is the larger of FLOPs / peak and bytes / HBM bandwidth,
/// divided by `efficiency`. The LM head (vocabulary × hidden) runs once per step.
public struct DecodeComputeModel: Sendable, Equatable {
    public var model: ModelPreset
    public var gpu: GPUModel
    public var bytesPerWeight: Double
    public var kvBytesPerElement: Double
    /// Fraction of the roofline reached (1 = the bound itself).
    public var efficiency: Double

    public init(model: ModelPreset, gpu: GPUModel, bytesPerWeight: Double = 2, kvBytesPerElement: Double = 2, efficiency: Double = 1) {
        self.model = model
        self.gpu = gpu
        self.bytesPerWeight = bytesPerWeight
        self.kvBytesPerElement = kvBytesPerElement
        self.efficiency = efficiency
    }

    /// Weights of one transformer layer from the architecture (Llama family): Q and O
    /// projections hidden × (query heads × head dim), K and V hidden × (KV heads × head dim), and
    /// the gated MLP's three hidden × intermediate matrices (norms are negligible). Exact for
    /// tied and untied embeddings alike, which a subtraction from the parameter count is not.
    public var weightsPerLayer: Double {
        let hidden = Double(model.hiddenSize)
        let attention = 2 * hidden * Double(model.queryHeads * model.headDim) + 2 * hidden * Double(model.kvHeads * model.headDim)
        return attention + 3 * hidden * Double(model.intermediateSize)
    }

    /// Seconds for one layer of one decode step over `batch` sequences of `contextTokens` each.
    public func layerSeconds(batch: Int, contextTokens: Int) -> Double {
        let b = Double(batch), context = Double(contextTokens)
        let attentionFLOPs = 4 * context * Double(model.queryHeads * model.headDim) * b
        let flops = 2 * weightsPerLayer * b + attentionFLOPs
        let kvBytes = context * 2 * Double(model.kvHeads * model.headDim) * kvBytesPerElement * b
        let bytes = weightsPerLayer * bytesPerWeight + kvBytes
        return max(flops / gpu.flopsPerSecond, bytes / gpu.memoryBytesPerSecond) / efficiency
    }

    /// Seconds for the LM head of one decode step.
    public func headSeconds(batch: Int) -> Double {
        let weights = Double(model.vocabularySize) * Double(model.hiddenSize)
        return max(2 * weights * Double(batch) / gpu.flopsPerSecond, weights * bytesPerWeight / gpu.memoryBytesPerSecond) / efficiency
    }
}
