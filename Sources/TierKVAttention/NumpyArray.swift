#if canImport(Glibc)
import Glibc
#endif
import TierKVCore

/// A NumPy `.npy` array of float16 or float32, C order, little-endian (format versions 1–3).
/// Enough of the format for users to hand TierKV their framework's tensors and read ours back.
public struct NumpyArray: Sendable {
    public enum ElementType: String, Sendable {
        case float16 = "<f2"
        case float32 = "<f4"

        public var byteSize: Int { self == .float16 ? 2 : 4 }
        public var dtype: DType { self == .float16 ? .fp16 : .fp32 }
    }

    public var shape: [Int]
    public var elementType: ElementType
    /// Raw little-endian element bytes, C order.
    public var bytes: [UInt8]

    public var elementCount: Int { shape.reduce(1, *) }

    public init(shape: [Int], elementType: ElementType, bytes: [UInt8]) {
        self.shape = shape
        self.elementType = elementType
        self.bytes = bytes
    }

    /// A float32 array from values.
    public init(shape: [Int], float32 values: [Float]) {
        precondition(shape.reduce(1, *) == values.count)
        self.shape = shape
        elementType = .float32
        bytes = values.withUnsafeBytes { Array($0) }
    }

    /// Every element as Float.
    public func floats() -> [Float] {
        bytes.withUnsafeBytes { raw in
            switch elementType {
            case .float32: return Array(raw.bindMemory(to: Float.self))
            case .float16: return raw.bindMemory(to: Float16.self).map { Float($0) }
            }
        }
    }

    /// Reads `path`. - Throws: `.invalidArgument` naming the file and what is wrong with it.
    public static func read(_ path: String) throws(TierKVError) -> NumpyArray {
        let file = try BinaryFile.read(path)
        func bad(_ reason: String) -> TierKVError { TierKVError(.invalidArgument, "\(path): \(reason)", path: path) }
        guard file.count >= 10, file[0] == 0x93, Array(file[1...5]) == Array("NUMPY".utf8) else {
            throw bad("not a .npy file (no \\x93NUMPY magic)")
        }
        let major = file[6]
        let headerLength: Int
        let headerStart: Int
        switch major {
        case 1:
            headerLength = Int(file[8]) | Int(file[9]) << 8
            headerStart = 10
        case 2, 3:
            guard file.count >= 12 else { throw bad("truncated header") }
            headerLength = Int(file[8]) | Int(file[9]) << 8 | Int(file[10]) << 16 | Int(file[11]) << 24
            headerStart = 12
        default: throw bad(".npy format version \(major) is not supported (1, 2 or 3)")
        }
        guard file.count >= headerStart + headerLength else { throw bad("truncated header") }
        let header = String(decoding: file[headerStart..<(headerStart + headerLength)], as: UTF8.self)
        guard let descr = value(of: "descr", in: header)?.stripping("'\" ") else {
            throw bad("header has no 'descr'")
        }
        guard let type = ElementType(rawValue: descr) else {
            throw bad("dtype \(descr) is not supported; expected float16 (<f2) or float32 (<f4), little-endian")
        }
        if value(of: "fortran_order", in: header)?.contains("True") == true {
            throw bad("Fortran-order arrays are not supported; save with np.ascontiguousarray")
        }
        guard let shapeText = value(of: "shape", in: header) else { throw bad("header has no 'shape'") }
        let shape = try shapeText.stripping("() ").split(separator: ",")
            .map { String($0).stripping(" ") }.filter { !$0.isEmpty }
            .map { (field) throws(TierKVError) -> Int in
                guard let value = Int(field), value >= 0 else { throw bad("bad shape entry '\(field)'") }
                return value
            }
        let payload = file.count - headerStart - headerLength
        let expected = shape.reduce(1, *) * type.byteSize
        guard payload == expected else {
            throw bad("data is \(payload) bytes; shape \(shape) of \(descr) needs \(expected)")
        }
        return NumpyArray(shape: shape, elementType: type, bytes: Array(file[(headerStart + headerLength)...]))
    }

    /// The text after `'key':` up to the next top-level comma (a tuple counts as one value).
    private static func value(of key: String, in header: String) -> String? {
        guard let range = header.firstRange(of: "'\(key)':") ?? header.firstRange(of: "\"\(key)\":") else { return nil }
        var depth = 0
        var result = ""
        for character in header[range.upperBound...] {
            if character == "(" { depth += 1 }
            if character == ")" { depth -= 1; if depth < 0 { break } }
            if (character == "," || character == "}") && depth == 0 { break }
            result.append(character)
        }
        return result.stripping(" ")
    }

    /// Writes the array as a version 1.0 `.npy` file.
    public func write(to path: String) throws(TierKVError) {
        let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(elementType.rawValue)', 'fortran_order': False, 'shape': \(shapeText), }"
        // Pad so the data starts on a 64-byte boundary, ending the header with a newline.
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var file: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        let length = header.utf8.count
        file += [UInt8(length & 0xFF), UInt8(length >> 8)]
        file += Array(header.utf8)
        file += bytes
        try BinaryFile.write(file, to: path)
    }
}

extension String {
    /// The string without leading and trailing characters from `characters`.
    fileprivate func stripping(_ characters: String) -> String {
        let set = Set(characters)
        var view = Substring(self)
        while let first = view.first, set.contains(first) { view.removeFirst() }
        while let last = view.last, set.contains(last) { view.removeLast() }
        return String(view)
    }
}
