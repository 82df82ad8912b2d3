import Testing
import TierKVCore
import TierKVTestSupport
@testable import TierKVAttention

#if canImport(Glibc)
import Glibc
#endif

@Suite struct NumpyAttentionTests {
    @Test func npyFilesRoundTrip() throws {
        let directory = try TemporaryDirectory()
        let values: [Float] = (0..<24).map { Float($0) * 0.5 - 3 }
        let array = NumpyArray(shape: [2, 3, 4], float32: values)
        try array.write(to: directory.path + "/a.npy")
        let back = try NumpyArray.read(directory.path + "/a.npy")
        #expect(back.shape == [2, 3, 4])
        #expect(back.elementType == .float32)
        #expect(back.floats() == values)
        let scalarList = NumpyArray(shape: [5], float32: [1, 2, 3, 4, 5])
        try scalarList.write(to: directory.path + "/b.npy")
        #expect(try NumpyArray.read(directory.path + "/b.npy").shape == [5])
    }

    @Test func badFilesAreRefusedWithTheFileAndTheReason() throws {
        let directory = try TemporaryDirectory()
        // A float64 array (header written by hand, as NumPy would) is refused by dtype.
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }"
        let padded = header + String(repeating: " ", count: (64 - (10 + header.utf8.count + 1) % 64) % 64) + "\n"
        let file: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(padded.utf8.count), 0] + Array(padded.utf8) + Array(repeating: 0, count: 16)
        let path = directory.path + "/f8.npy"
        let handle = fopen(path, "wb")
        try #require(handle != nil)
        fwrite(file, 1, file.count, handle)
        fclose(handle)
        do {
            _ = try NumpyArray.read(path)
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("f8.npy"))
            #expect(error.message.contains("<f8"))
        }
        do {
            _ = try NumpyArray.read(directory.path + "/missing.npy")
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("missing.npy"))
        }
        do {
            _ = try NumpyArray.read("/proc/self/status")
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("not a .npy file"))
        }
    }

    @Test func shapeErrorsNameTheFilesAndShapes() throws {
        let attention = try CPUAttention(threadCount: 1)
        let query = NumpyArray(shape: [8, 64], float32: Array(repeating: 0.1, count: 512))
        let keys = NumpyArray(shape: [10, 2, 64], float32: Array(repeating: 0.2, count: 1280))
        let wrongValues = NumpyArray(shape: [10, 2, 32], float32: Array(repeating: 0.3, count: 640))
        do {
            _ = try NumpyAttention.attend(query: query, keys: keys, values: wrongValues, scale: nil, attention: attention, names: ("q.npy", "k.npy", "v.npy"))
            Issue.record("expected an error")
        } catch {
            #expect(error.message.contains("v.npy"))
            #expect(error.message.contains("[10, 2, 32]"))
            #expect(error.message.contains("[10, 2, 64]"))
        }
        let flatKeys = NumpyArray(shape: [640], float32: Array(repeating: 0.2, count: 640))
        #expect(throws: TierKVError.self) {
            try NumpyAttention.attend(query: query, keys: flatKeys, values: flatKeys, scale: nil, attention: attention)
        }
    }

    /// Q [batch, heads, dim] against K/V [batch, tokens, kvHeads, dim] gives the same as each
    /// sequence alone, and the LSE is m + ln l of the kernel's partial.
    @Test func batchedArraysMatchPerSequenceResults() throws {
        let attention = try CPUAttention(threadCount: 2)
        var generator = SeededGenerator(seed: 3)
        let (batch, heads, kvHeads, dim, tokens) = (2, 8, 2, 64, 300)
        let q = (0..<(batch * heads * dim)).map { _ in generator.normal() }
        let k = (0..<(batch * tokens * kvHeads * dim)).map { _ in generator.normal() }
        let v = (0..<(batch * tokens * kvHeads * dim)).map { _ in generator.normal() }
        let result = try NumpyAttention.attend(
            query: NumpyArray(shape: [batch, heads, dim], float32: q), keys: NumpyArray(shape: [batch, tokens, kvHeads, dim], float32: k),
            values: NumpyArray(shape: [batch, tokens, kvHeads, dim], float32: v), scale: nil, attention: attention)
        #expect(result.output.shape == [batch, heads, dim])
        #expect(result.logSumExp.shape == [batch, heads])
        let output = result.output.floats()
        let lse = result.logSumExp.floats()
        for sequence in 0..<batch {
            let stride = tokens * kvHeads * dim
            let single = try NumpyAttention.attend(
                query: NumpyArray(shape: [heads, dim], float32: Array(q[(sequence * heads * dim)..<((sequence + 1) * heads * dim)])),
                keys: NumpyArray(shape: [tokens, kvHeads, dim], float32: Array(k[(sequence * stride)..<((sequence + 1) * stride)])),
                values: NumpyArray(shape: [tokens, kvHeads, dim], float32: Array(v[(sequence * stride)..<((sequence + 1) * stride)])),
                scale: nil, attention: attention)
            let expected = single.output.floats()
            for index in 0..<(heads * dim) { #expect(abs(expected[index] - output[sequence * heads * dim + index]) <= 1e-5) }
            let expectedLSE = single.logSumExp.floats()
            for head in 0..<heads { #expect(abs(expectedLSE[head] - lse[sequence * heads + head]) <= 1e-4) }
        }
    }
}
