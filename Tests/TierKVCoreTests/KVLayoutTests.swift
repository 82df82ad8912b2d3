import Testing
@testable import TierKVCore

@Suite struct KVLayoutTests {
    @Test func llama3BlockIs64KiB() throws {
        // DESIGN.md §1: Llama-3-8B, 16 tokens, fp16 → 64 KiB.
        let layout = try ModelPreset.llama3_8B.layout()
        #expect(layout.blockByteCount == 65536)
        #expect(layout.groupSize == 4)
        #expect(layout.tokenByteCount == 2 * 32 * 8 * 128 * 2)
        #expect(layout.blockCount(forTokens: 33) == 3)
    }

    @Test(arguments: DType.allCases)
    func blockBytesScaleWithDType(_ dtype: DType) throws {
        let layout = try KVLayout(layers: 2, kvHeads: 4, queryHeads: 8, headDim: 64, tokensPerBlock: 32, dtype: dtype)
        #expect(layout.blockByteCount == 2 * 32 * 4 * 64 * dtype.byteSize)
    }

    @Test(arguments: [
        (0, 8, 32, 128, 16, "layers"), (32, 0, 32, 128, 16, "kvHeads"), (32, 8, 30, 128, 16, "multiple"),
        (32, 8, 32, 0, 16, "headDim"), (32, 8, 32, 128, 0, "tokensPerBlock"), (32, 8, 32, 100_000, 16, "headDim"),
        (-3, 8, 32, 128, 16, "layers"),
    ] as [(Int, Int, Int, Int, Int, String)])
    func rejectsBadShapes(_ layers: Int, _ kv: Int, _ q: Int, _ dim: Int, _ tokens: Int, _ named: String) {
        do {
            _ = try KVLayout(layers: layers, kvHeads: kv, queryHeads: q, headDim: dim, tokensPerBlock: tokens)
            Issue.record("expected a validation error")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(named), "\(error.message)")
        }
    }

    @Test(arguments: ["fp16", "float16", "BF16", "fp32", "fp8", "fp8-e4m3"])
    func dtypeParses(_ text: String) throws {
        _ = try DType(parsing: text)
    }

    @Test func dtypeRejectsUnknown() {
        #expect(throws: TierKVError.self) { try DType(parsing: "int4") }
    }
}

@Suite struct ModelPresetTests {
    @Test(arguments: ["Llama-3-8B", "llama3-8b", "LLAMA-3-70B", "llama-3.1-405b", "mistral-7b", "qwen2.5-7b", "Qwen2.5-72B"])
    func findsByName(_ name: String) throws {
        let preset = try ModelPreset.named(name)
        _ = try preset.layout()
    }

    @Test func publishedShapes() throws {
        #expect(try ModelPreset.named("Llama-3.1-405B").layers == 126)
        #expect(try ModelPreset.named("Qwen2.5-7B").kvHeads == 4)
        #expect(try ModelPreset.named("Qwen2.5-7B").queryHeads == 28)
        #expect(try ModelPreset.named("Llama-3-70B").queryHeads == 64)
        for preset in ModelPreset.all {
            #expect(preset.hiddenSize == preset.queryHeads * preset.headDim, "\(preset.name)")
        }
    }

    @Test func unknownNameListsKnownOnes() {
        do {
            _ = try ModelPreset.named("gpt-5")
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .notFound)
            #expect(error.message.contains("Llama-3-8B"))
        }
    }
}
