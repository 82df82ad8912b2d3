/// The element type of stored K and V tensors.
public enum DType: String, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case fp16
    case bf16
    case fp32
    /// OCP FP8 E4M3 (as used by vLLM's fp8 KV cache).
    case fp8E4M3 = "fp8-e4m3"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .fp16, .bf16: 2
        case .fp32: 4
        case .fp8E4M3: 1
        }
    }

    public var description: String { rawValue }

    /// Parses `fp16`, `float16`, `half`, `bf16`, `bfloat16`, `fp32`, `float32`, `fp8`, `fp8-e4m3`.
    public init(parsing text: String) throws(TierKVError) {
        switch text.lowercased() {
        case "fp16", "float16", "half", "f16": self = .fp16
        case "bf16", "bfloat16": self = .bf16
        case "fp32", "float32", "float", "f32": self = .fp32
        case "fp8", "fp8-e4m3", "fp8_e4m3", "e4m3": self = .fp8E4M3
        default:
            throw .invalid("unknown dtype '\(text)'; expected one of fp16, bf16, fp32, fp8-e4m3")
        }
    }
}
