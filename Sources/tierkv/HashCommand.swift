import ArgumentParser
import TierKV

#if canImport(Glibc)
import Glibc
#endif

struct HashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash",
        abstract: "Print the chained prefix hashes TierKV gives the full blocks of a token sequence.",
        discussion: "Engines in other languages can check their key computation against this."
    )

    @Option(help: "Namespace salt (tenant or model id).")
    var namespace: String = ""

    @Option(help: "Tokens per block.")
    var tokensPerBlock: Int = 16

    @Option(help: "Token ids, separated by commas or spaces.")
    var tokens: String?

    @Option(help: "A file of token ids separated by commas, spaces or newlines.")
    var tokensFile: String?

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        let text: String
        switch (tokens, tokensFile) {
        case (let inline?, nil): text = inline
        case (nil, let path?):
            guard let content = TextFile.read(path, limitBytes: 1 << 30) else {
                throw CommandFailure("cannot read --tokens-file \(path): \(TierKVError.errnoName(errno))")
            }
            text = content
        default: throw CommandFailure("give exactly one of --tokens or --tokens-file")
        }
        var ids: [UInt32] = []
        for (index, field) in text.split(whereSeparator: { $0 == "," || $0.isWhitespace }).enumerated() {
            guard let id = UInt32(field) else {
                throw CommandFailure("token \(index) is '\(field)'; expected an unsigned 32-bit integer")
            }
            ids.append(id)
        }
        let hasher: PrefixHasher
        do { hasher = try PrefixHasher(namespace: namespace, tokensPerBlock: tokensPerBlock) } catch {
            throw CommandFailure(error)
        }
        let hashes = hasher.blockHashes(ids)
        if json {
            Output.printJSON(.object([
                ("namespace", .string(namespace)), ("tokens_per_block", .int(tokensPerBlock)),
                ("tokens", .int(ids.count)), ("chain_version", .string(PrefixHasher.chainVersion)),
                ("block_hashes", .array(hashes.map { .string($0.description) })),
            ]))
        } else {
            for (index, hash) in hashes.enumerated() { print("\(index)\t\(hash)") }
            if ids.count % tokensPerBlock != 0 {
                Output.printError("note: the last \(ids.count % tokensPerBlock) tokens form a partial block and have no key")
            }
        }
    }
}
