import Foundation

/// Byte-level BPE (GPT-2 family) built from a GGUF's `tokenizer.ggml.*` metadata.
///
/// Stages: special tokens are split out first (when parsing them), then the pre-tokenizer cuts
/// the text into words (`BPEPreTokenizer`), each word's UTF-8 bytes are mapped to GPT-2's
/// printable byte alphabet and merged by rank. Decoding maps token strings back to bytes.
public final class BPETokenizer: @unchecked Sendable {
    public let tokens: [String]
    public let tokenTypes: [Int]
    public let preTokenizer: BPEPreTokenizer
    public let bosID: Int?
    public let eosID: Int?
    public let padID: Int?
    public let addBOS: Bool
    /// Control and user-defined tokens, matched literally in text when `parseSpecial` is set.
    public let specialTokens: [String: Int]
    public var vocabularySize: Int { tokens.count }

    private let tokenToID: [String: Int]
    /// (left id << 32 | right id) → (rank, merged id)
    private let merges: [UInt64: (rank: Int32, id: Int32)]
    private let byteToID: [Int32]             // 256 entries
    private let idToBytes: [[UInt8]]
    private let isControl: [Bool]
    private let specialByLength: [(String, Int)]
    private let cache = NSCache<NSString, WordIDs>()

    private final class WordIDs { let ids: [Int32]; init(_ ids: [Int32]) { self.ids = ids } }

    public enum TokenType: Int { case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6 }

    public init(tokens: [String], tokenTypes: [Int], merges mergeStrings: [String], preTokenizer: BPEPreTokenizer,
                bosID: Int?, eosID: Int?, padID: Int?, addBOS: Bool) throws {
        self.tokens = tokens
        self.tokenTypes = tokenTypes.count == tokens.count ? tokenTypes : Array(repeating: 1, count: tokens.count)
        self.preTokenizer = preTokenizer
        self.bosID = bosID
        self.eosID = eosID
        self.padID = padID
        self.addBOS = addBOS
        var t2i: [String: Int] = [:]
        t2i.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() where t2i[t] == nil { t2i[t] = i }
        tokenToID = t2i

        var m: [UInt64: (rank: Int32, id: Int32)] = [:]
        m.reserveCapacity(mergeStrings.count)
        for (rank, line) in mergeStrings.enumerated() {
            guard let sp = line.firstIndex(of: " ") else { throw BPEError.badMerge(line) }
            let a = String(line[..<sp]), b = String(line[line.index(after: sp)...])
            guard let ia = t2i[a], let ib = t2i[b], let ic = t2i[a + b] else { throw BPEError.badMerge(line) }
            let key = UInt64(ia) << 32 | UInt64(ib)
            if m[key] == nil { m[key] = (Int32(rank), Int32(ic)) }
        }
        merges = m

        let (b2u, u2b) = Self.byteAlphabet()
        var byteIDs = [Int32](repeating: -1, count: 256)
        // Some vocabularies lack a few byte tokens (bytes that never occur in valid UTF-8, rare
        // control characters): like Hugging Face's BPE without an unknown token, such bytes are dropped.
        for b in 0..<256 {
            if let id = t2i[String(b2u[b])] { byteIDs[b] = Int32(id) }
        }
        if byteIDs.allSatisfy({ $0 < 0 }) { throw BPEError.missingByteToken(0) }
        byteToID = byteIDs

        var control = [Bool](repeating: false, count: tokens.count)
        var specials: [String: Int] = [:]
        var bytes: [[UInt8]] = []
        bytes.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() {
            let type = self.tokenTypes[i]
            if type == TokenType.control.rawValue || type == TokenType.userDefined.rawValue {
                specials[t] = i
                control[i] = type == TokenType.control.rawValue
                bytes.append(Array(t.utf8))
            } else {
                var out: [UInt8] = []
                for s in t.unicodeScalars {
                    if let b = u2b[s] { out.append(b) } else { out.append(contentsOf: Array(String(s).utf8)) }
                }
                bytes.append(out)
            }
        }
        isControl = control
        specialTokens = specials
        idToBytes = bytes
        specialByLength = specials.sorted { $0.key.utf8.count > $1.key.utf8.count || ($0.key.utf8.count == $1.key.utf8.count && $0.key < $1.key) }
        cache.countLimit = 50_000
    }

    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.model` must be `gpt2`).
    public convenience init(gguf: GGUFFile) throws {
        let model = try gguf.requireString("tokenizer.ggml.model")
        guard model == "gpt2" else { throw BPEError.unsupportedModel(model) }
        let tokens = try gguf.require("tokenizer.ggml.tokens") { $0.strings }
        let merges = try gguf.require("tokenizer.ggml.merges") { $0.strings }
        let types = gguf.metadata["tokenizer.ggml.token_type"]?.ints ?? []
        let pre = gguf.string("tokenizer.ggml.pre") ?? "default"
        guard let preTok = BPEPreTokenizer(name: pre) else { throw BPEError.unsupportedPreTokenizer(pre) }
        try self.init(tokens: tokens, tokenTypes: types, merges: merges, preTokenizer: preTok,
                      bosID: gguf.int("tokenizer.ggml.bos_token_id"), eosID: gguf.int("tokenizer.ggml.eos_token_id"),
                      padID: gguf.int("tokenizer.ggml.padding_token_id"), addBOS: gguf.bool("tokenizer.ggml.add_bos_token") ?? false)
    }

    public func id(of token: String) -> Int? { tokenToID[token] }
    public func isControlToken(_ id: Int) -> Bool { id >= 0 && id < isControl.count && isControl[id] }

    // MARK: encoding

    /// Token ids for `text`. With `parseSpecial`, special-token strings (e.g. `<|im_start|>`) in the
    /// text become their ids; without it they are tokenized as plain text.
    public func encode(_ text: String, parseSpecial: Bool = false, addBOS: Bool? = nil) -> [Int] {
        var out: [Int] = []
        if addBOS ?? self.addBOS, let bos = bosID { out.append(bos) }
        if parseSpecial && !specialByLength.isEmpty {
            var rest = Substring(text)
            while !rest.isEmpty {
                var earliest: (range: Range<Substring.Index>, id: Int)?
                for (s, id) in specialByLength {
                    if let r = rest.range(of: s), earliest == nil || r.lowerBound < earliest!.range.lowerBound {
                        earliest = (r, id)
                    }
                }
                guard let e = earliest else { encodePlain(rest, into: &out); break }
                encodePlain(rest[..<e.range.lowerBound], into: &out)
                out.append(e.id)
                rest = rest[e.range.upperBound...]
            }
        } else {
            encodePlain(Substring(text), into: &out)
        }
        return out
    }

    private func encodePlain(_ text: Substring, into out: inout [Int]) {
        if text.isEmpty { return }
        for word in preTokenizer.split(text) {
            let key = word as NSString
            if let cached = cache.object(forKey: key) {
                for id in cached.ids { out.append(Int(id)) }
                continue
            }
            let ids = bpe(Array(word.utf8))
            if word.utf8.count < 64 { cache.setObject(WordIDs(ids), forKey: key) }
            for id in ids { out.append(Int(id)) }
        }
    }

    /// Merges a word's byte tokens by rank, lowest rank first.
    private func bpe(_ bytes: [UInt8]) -> [Int32] {
        var syms = bytes.map { byteToID[Int($0)] }
        if syms.contains(-1) { syms.removeAll { $0 < 0 } }
        while syms.count > 1 {
            var best: Int32 = .max, at = -1, newID: Int32 = 0
            for i in 0..<(syms.count - 1) {
                if let m = merges[UInt64(UInt32(syms[i])) << 32 | UInt64(UInt32(syms[i + 1]))], m.rank < best {
                    best = m.rank; at = i; newID = m.id
                }
            }
            if at < 0 { break }
            // Merge every occurrence of this pair, left to right (same rank ⇒ same pair).
            let a = syms[at], b = syms[at + 1]
            var merged: [Int32] = []
            merged.reserveCapacity(syms.count)
            var i = 0
            while i < syms.count {
                if i + 1 < syms.count && syms[i] == a && syms[i + 1] == b {
                    merged.append(newID); i += 2
                } else {
                    merged.append(syms[i]); i += 1
                }
            }
            syms = merged
        }
        return syms
    }

    // MARK: decoding

    /// The bytes a token stands for (special tokens: their text).
    public func bytes(of id: Int) -> [UInt8] { id >= 0 && id < idToBytes.count ? idToBytes[id] : [] }

    /// Text for `ids`; control tokens are dropped when `skipSpecial`. Invalid UTF-8 becomes U+FFFD.
    public func decode(_ ids: [Int], skipSpecial: Bool = false) -> String {
        var buf: [UInt8] = []
        for id in ids {
            if skipSpecial && isControlToken(id) { continue }
            buf.append(contentsOf: bytes(of: id))
        }
        return String(decoding: buf, as: UTF8.self)
    }

    /// GPT-2's reversible map from bytes to printable characters.
    static func byteAlphabet() -> ([Character], [Unicode.Scalar: UInt8]) {
        var printable = Array(UInt32(33)...UInt32(126)) + Array(UInt32(161)...UInt32(172)) + Array(UInt32(174)...UInt32(255))
        var codes = printable
        var n: UInt32 = 0
        for b in UInt32(0)..<256 where !printable.contains(b) {
            printable.append(b)
            codes.append(256 + n)
            n += 1
        }
        var b2u = [Character](repeating: " ", count: 256)
        var u2b: [Unicode.Scalar: UInt8] = [:]
        for (b, c) in zip(printable, codes) {
            let s = Unicode.Scalar(c)!
            b2u[Int(b)] = Character(s)
            u2b[s] = UInt8(b)
        }
        return (b2u, u2b)
    }
}

/// Turns a stream of token ids into text chunks, holding back bytes of an unfinished UTF-8
/// sequence until the token that completes it arrives.
public struct StreamingDecoder: Sendable {
    private var pending: [UInt8] = []
    public init() {}

    public mutating func push(_ bytes: [UInt8]) -> String {
        pending.append(contentsOf: bytes)
        // Find the longest prefix that ends on a complete UTF-8 sequence.
        var end = pending.count
        var i = pending.count - 1
        var back = 0
        while i >= 0 && back < 4 {
            let b = pending[i]
            if b & 0xC0 != 0x80 { // lead byte or ASCII
                let need = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
                if pending.count - i < need { end = i }
                break
            }
            i -= 1; back += 1
        }
        let out = String(decoding: pending[..<end], as: UTF8.self)
        pending.removeFirst(end)
        return out
    }

    /// Whatever is held back, invalid bytes replaced.
    public mutating func flush() -> String {
        defer { pending = [] }
        return String(decoding: pending, as: UTF8.self)
    }
}

public enum BPEError: Error, CustomStringConvertible {
    case unsupportedModel(String)
    case unsupportedPreTokenizer(String)
    case badMerge(String)
    case missingByteToken(UInt8)
    public var description: String {
        switch self {
        case .unsupportedModel(let m): "tokenizer model \(m) is not supported (supported: gpt2 byte-level BPE)"
        case .unsupportedPreTokenizer(let p): "BPE pre-tokenizer \(p) is not supported (supported: \(BPEPreTokenizer.supported.joined(separator: ", ")))"
        case .badMerge(let l): "BPE merge \(l.debugDescription) names tokens that are not in the vocabulary"
        case .missingByteToken: "vocabulary has no byte-level tokens (not a GPT-2 style byte-level BPE)"
        }
    }
}
