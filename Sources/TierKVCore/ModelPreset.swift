/// Published architecture figures of well-known models, so users can name a model
/// instead of typing its KV shape. Figures are from each model's `config.json` on its
/// official Hugging Face repository (num_hidden_layers, num_attention_heads,
/// num_key_value_heads, hidden_size / num_attention_heads, intermediate_size, vocab_size).
public struct ModelPreset: Hashable, Sendable, Codable {
    public let name: String
    public let layers: Int
    public let queryHeads: Int
    public let kvHeads: Int
    public let headDim: Int
    public let hiddenSize: Int
    public let intermediateSize: Int
    public let vocabularySize: Int
    /// Total parameters, for the decode compute model (weights read per token).
    public let parameterCount: Int
    /// Context length the model was released with.
    public let maximumContextTokens: Int

    public init(
        name: String, layers: Int, queryHeads: Int, kvHeads: Int, headDim: Int, hiddenSize: Int, intermediateSize: Int,
        vocabularySize: Int, parameterCount: Int, maximumContextTokens: Int
    ) {
        self.name = name
        self.layers = layers
        self.queryHeads = queryHeads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.vocabularySize = vocabularySize
        self.parameterCount = parameterCount
        self.maximumContextTokens = maximumContextTokens
    }

    /// The KV layout of this model for a block size and dtype.
    public func layout(tokensPerBlock: Int = 16, dtype: DType = .fp16) throws(TierKVError) -> KVLayout {
        try KVLayout(
            layers: layers, kvHeads: kvHeads, queryHeads: queryHeads, headDim: headDim,
            tokensPerBlock: tokensPerBlock, dtype: dtype)
    }

    public static let llama3_8B = ModelPreset(
        name: "Llama-3-8B", layers: 32, queryHeads: 32, kvHeads: 8, headDim: 128, hiddenSize: 4096,
        intermediateSize: 14336, vocabularySize: 128_256, parameterCount: 8_030_261_248, maximumContextTokens: 8192)
    public static let llama3_70B = ModelPreset(
        name: "Llama-3-70B", layers: 80, queryHeads: 64, kvHeads: 8, headDim: 128, hiddenSize: 8192,
        intermediateSize: 28672, vocabularySize: 128_256, parameterCount: 70_553_706_496, maximumContextTokens: 8192)
    public static let llama3_1_8B = ModelPreset(
        name: "Llama-3.1-8B", layers: 32, queryHeads: 32, kvHeads: 8, headDim: 128, hiddenSize: 4096,
        intermediateSize: 14336, vocabularySize: 128_256, parameterCount: 8_030_261_248,
        maximumContextTokens: 131_072)
    public static let llama3_1_70B = ModelPreset(
        name: "Llama-3.1-70B", layers: 80, queryHeads: 64, kvHeads: 8, headDim: 128, hiddenSize: 8192,
        intermediateSize: 28672, vocabularySize: 128_256, parameterCount: 70_553_706_496,
        maximumContextTokens: 131_072)
    public static let llama3_1_405B = ModelPreset(
        name: "Llama-3.1-405B", layers: 126, queryHeads: 128, kvHeads: 8, headDim: 128, hiddenSize: 16384,
        intermediateSize: 53248, vocabularySize: 128_256, parameterCount: 405_853_388_800,
        maximumContextTokens: 131_072)
    public static let llama3_2_1B = ModelPreset(
        name: "Llama-3.2-1B", layers: 16, queryHeads: 32, kvHeads: 8, headDim: 64, hiddenSize: 2048,
        intermediateSize: 8192, vocabularySize: 128_256, parameterCount: 1_235_814_400, maximumContextTokens: 131_072)
    public static let llama3_2_3B = ModelPreset(
        name: "Llama-3.2-3B", layers: 28, queryHeads: 24, kvHeads: 8, headDim: 128, hiddenSize: 3072,
        intermediateSize: 8192, vocabularySize: 128_256, parameterCount: 3_212_749_824, maximumContextTokens: 131_072)
    public static let mistral7B = ModelPreset(
        name: "Mistral-7B", layers: 32, queryHeads: 32, kvHeads: 8, headDim: 128, hiddenSize: 4096,
        intermediateSize: 14336, vocabularySize: 32000, parameterCount: 7_241_732_096, maximumContextTokens: 32768)
    public static let qwen2_5_7B = ModelPreset(
        name: "Qwen2.5-7B", layers: 28, queryHeads: 28, kvHeads: 4, headDim: 128, hiddenSize: 3584,
        intermediateSize: 18944, vocabularySize: 152_064, parameterCount: 7_615_616_512, maximumContextTokens: 131_072)
    public static let qwen2_5_72B = ModelPreset(
        name: "Qwen2.5-72B", layers: 80, queryHeads: 64, kvHeads: 8, headDim: 128, hiddenSize: 8192,
        intermediateSize: 29568, vocabularySize: 152_064, parameterCount: 72_706_203_648,
        maximumContextTokens: 131_072)

    /// Every preset, in the order `tierkv` lists them.
    public static let all: [ModelPreset] = [
        llama3_8B, llama3_70B, llama3_1_8B, llama3_1_70B, llama3_1_405B, llama3_2_1B, llama3_2_3B, mistral7B, qwen2_5_7B,
        qwen2_5_72B,
    ]

    /// Finds a preset by name, ignoring case, `-`, `_`, `.` and spaces (`llama3-8b` finds Llama-3-8B).
    /// - Throws: `.notFound` listing the known names.
    /// A path (containing `/`, or ending in `.json`) is read as a Hugging Face `config.json`, or a
    /// model directory holding one (`ModelPreset(configFile:)`).
    public static func named(_ name: String) throws(TierKVError) -> ModelPreset {
        if name.contains("/") || name.hasSuffix(".json") {
            let isDirectory = TextFile.read(name + "/config.json") != nil
            return try ModelPreset(configFile: isDirectory ? name + "/config.json" : name)
        }
        let wanted = normalise(name)
        if let preset = all.first(where: { normalise($0.name) == wanted }) { return preset }
        throw TierKVError(
            .notFound, "unknown model '\(name)'; known models: " + all.map(\.name).joined(separator: ", "))
    }

    /// The shape of a model from its Hugging Face `config.json` (`num_hidden_layers`,
    /// `num_attention_heads`, `num_key_value_heads`, `head_dim` or hidden / heads, `hidden_size`,
    /// `intermediate_size`, `vocab_size`, `max_position_embeddings`, `tie_word_embeddings`). The
    /// parameter count is computed for a Llama-style decoder (q, k, v, o projections, a gated MLP,
    /// embeddings, and an LM head unless tied).
    /// - Throws: `.notFound` when the file cannot be read; `.invalidArgument` naming a missing field.
    public init(configFile path: String) throws(TierKVError) {
        guard let text = TextFile.read(path, limitBytes: 16 << 20) else {
            throw TierKVError(.notFound, "cannot read the model config \(path)", path: path)
        }
        let config = try JSONValue(parsing: text)
        func field(_ name: String, default value: Int? = nil) throws(TierKVError) -> Int {
            if let number = config[name]?.integerValue, number > 0 { return number }
            if let value { return value }
            throw .invalid("\(path): \"\(name)\" is missing or not a positive integer")
        }
        let layers = try field("num_hidden_layers")
        let heads = try field("num_attention_heads")
        let kvHeads = try field("num_key_value_heads", default: heads)
        let hidden = try field("hidden_size")
        let headDim = try field("head_dim", default: hidden / heads)
        let intermediate = try field("intermediate_size")
        let vocabulary = try field("vocab_size")
        let tied = config["tie_word_embeddings"]?.boolValue ?? false
        let perLayer = hidden * headDim * (2 * heads + 2 * kvHeads) + 3 * hidden * intermediate + 2 * hidden
        let name = (path.split(separator: "/").dropLast().last.map(String.init)) ?? path
        self.init(
            name: name, layers: layers, queryHeads: heads, kvHeads: kvHeads, headDim: headDim, hiddenSize: hidden,
            intermediateSize: intermediate, vocabularySize: vocabulary,
            parameterCount: layers * perLayer + vocabulary * hidden * (tied ? 1 : 2) + hidden,
            maximumContextTokens: try field("max_position_embeddings", default: 4096))
    }

    private static func normalise(_ name: String) -> String {
        String(name.lowercased().filter { $0 != "-" && $0 != "_" && $0 != " " && $0 != "." })
    }
}
