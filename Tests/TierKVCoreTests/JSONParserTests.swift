import Testing
#if canImport(Glibc)
import Glibc
#endif
import TierKVCore

@Suite struct JSONParserTests {
    @Test func parsesEveryKindOfValue() throws {
        let value = try JSONValue(parsing: #" {"a": [1, -2, 3.5, 1e3, true, false, null], "b": {"c": "x\"\\\/\n\u00e9\ud83d\ude00"}, "big": 18446744073709551615} "#)
        #expect(value["a"] == .array([.integer(1), .integer(-2), .number(3.5), .number(1000), .bool(true), .bool(false), .null]))
        #expect(value["b"]?["c"]?.stringValue == "x\"\\/\né😀")
        #expect(value["big"] == .unsigned(UInt64.max))
        #expect(value["a"]?.rendered() == "[1,-2,3.5,1000,true,false,null]")
        #expect(try JSONValue(parsing: value.rendered()) == value)
        #expect(JSONValue.number(4).integerValue == 4 && JSONValue.number(4.5).integerValue == nil)
    }

    @Test func malformedTextNamesTheOffsetAndTheProblem() {
        let cases: [(String, String)] = [
            ("", "unexpected end"), ("{\"a\" 1}", "expected ':'"), ("[1, 2", "unterminated array"),
            ("{\"a\": 1, \"a\": 2}", "appears twice"), ("\"abc", "unterminated string"), ("tru", "expected true"),
            ("[1] x", "after the JSON value"), ("{a: 1}", "quoted member name"), ("\"\\q\"", "unknown escape"),
            ("-", "expected a value"), (String(repeating: "[", count: 300), "nested deeper"),
        ]
        for (text, expected) in cases {
            do {
                _ = try JSONValue(parsing: text)
                Issue.record("\(text) parsed")
            } catch {
                #expect(error.message.contains(expected), "\(text): \(error.message)")
                #expect(error.message.contains("JSON at byte"))
            }
        }
    }
}

@Suite struct ModelConfigFileTests {
    @Test func aHuggingFaceConfigGivesTheModelShape() throws {
        let directory = "/tmp/tierkv-model-config-\(getpid())"
        mkdir(directory, 0o700)
        defer { unlink(directory + "/config.json"); rmdir(directory) }
        // Llama-3.2-1B's published config.json figures (tied embeddings).
        let text = #"{"num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 2048, "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": true}"#
        try BinaryFile.write(Array(text.utf8), to: directory + "/config.json")
        let model = try ModelPreset.named(directory)
        #expect(model.layers == 16 && model.queryHeads == 32 && model.kvHeads == 8 && model.headDim == 64)
        #expect(model.maximumContextTokens == 131072)
        // 1.24 B parameters published; the Llama-style count must land within 1%.
        #expect(abs(Double(model.parameterCount) / 1.2358e9 - 1) < 0.01, "\(model.parameterCount)")
        try BinaryFile.write(Array(#"{"num_hidden_layers": 2}"#.utf8), to: directory + "/config.json")
        #expect(throws: TierKVError.self) { try ModelPreset.named(directory + "/config.json") }
    }
}
