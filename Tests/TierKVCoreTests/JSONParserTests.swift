import Testing
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
