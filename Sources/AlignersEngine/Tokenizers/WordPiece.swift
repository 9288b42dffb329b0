import Foundation

/// Token ids and token type ids of one encoded input (no padding: batching pads).
public struct BertEncoding: Sendable, Equatable {
    public var ids: [Int32]
    public var typeIds: [Int32]
    public init(ids: [Int32], typeIds: [Int32]) {
        self.ids = ids
        self.typeIds = typeIds
    }
    public var count: Int { ids.count }
}

public struct WordPieceError: Error, CustomStringConvertible {
    public let description: String
}

/// A BERT WordPiece tokenizer compatible with HF `BertTokenizer`/`tokenizers` as configured for
/// all-MiniLM-L6-v2: `BertNormalizer` (lower-case, strip accents, CJK splitting, clean text),
/// `BertPreTokenizer`, greedy longest-match-first WordPiece with `##` continuation and `[UNK]`
/// for words that cannot be covered (or have more than 100 characters), `[CLS] A [SEP] (B [SEP])`
/// with token type ids, and longest-first truncation.
public final class WordPieceTokenizer: Sendable {
    public let vocab: [String]
    private let ids: [[UInt8]: Int32]
    public let normalizer: BertNormalizer
    public let preTokenizer = BertPreTokenizer()
    public let unkId: Int32, clsId: Int32, sepId: Int32, padId: Int32, maskId: Int32
    public let maxInputCharsPerWord: Int
    /// Special tokens matched verbatim in raw text before normalization (like HF added tokens).
    private let specials: [(text: [Unicode.Scalar], id: Int32)]

    public init(vocab: [String], normalizer: BertNormalizer = BertNormalizer(), maxInputCharsPerWord: Int = 100) throws {
        self.vocab = vocab
        var ids: [[UInt8]: Int32] = [:]
        ids.reserveCapacity(vocab.count)
        for (i, token) in vocab.enumerated() where ids[Array(token.utf8)] == nil { ids[Array(token.utf8)] = Int32(i) }
        self.ids = ids
        func need(_ t: String) throws -> Int32 {
            guard let id = ids[Array(t.utf8)] else { throw WordPieceError(description: "vocabulary lacks \(t)") }
            return id
        }
        unkId = try need("[UNK]"); clsId = try need("[CLS]"); sepId = try need("[SEP]")
        padId = try need("[PAD]"); maskId = try need("[MASK]")
        self.normalizer = normalizer
        self.maxInputCharsPerWord = maxInputCharsPerWord
        specials = [("[PAD]", padId), ("[UNK]", unkId), ("[CLS]", clsId), ("[SEP]", sepId), ("[MASK]", maskId)]
            .map { (Array($0.0.unicodeScalars), $0.1) }
    }

    /// Loads `vocab.txt` (one token per line, id = line number).
    public convenience init(vocabFile: URL, lowercase: Bool = true) throws {
        let text: String
        do { text = try String(contentsOf: vocabFile, encoding: .utf8) } catch {
            throw WordPieceError(description: "\(vocabFile.path): cannot read vocabulary: \(error.localizedDescription)")
        }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map {
            String($0.hasSuffix("\r") ? $0.dropLast() : $0)
        }
        if lines.last == "" { lines.removeLast() }
        do { try self.init(vocab: lines, normalizer: BertNormalizer(lowercase: lowercase)) } catch let e as WordPieceError {
            throw WordPieceError(description: "\(vocabFile.path): \(e.description)")
        }
    }

    public func id(of token: String) -> Int32? { ids[Array(token.utf8)] }
    public func token(of id: Int32) -> String { vocab[Int(id)] }

    /// Word-piece ids of `text`, without special tokens or truncation.
    public func tokenize(_ text: String) -> [Int32] {
        var out: [Int32] = []
        // Cut the raw text at verbatim special tokens, as HF does for added tokens.
        let scalars = Array(text.unicodeScalars)
        var segStart = 0
        var i = 0
        if text.utf8.contains(UInt8(ascii: "[")) {
            while i < scalars.count {
                if scalars[i] == "[", let sp = specials.first(where: { matches($0.text, scalars, at: i) }) {
                    if segStart < i { tokenizeSegment(scalars[segStart..<i], into: &out) }
                    out.append(sp.id)
                    i += sp.text.count
                    segStart = i
                } else {
                    i += 1
                }
            }
        }
        if segStart < scalars.count { tokenizeSegment(scalars[segStart...], into: &out) }
        return out
    }

    private func matches(_ pattern: [Unicode.Scalar], _ s: [Unicode.Scalar], at i: Int) -> Bool {
        guard i + pattern.count <= s.count else { return false }
        for k in 0..<pattern.count where s[i + k] != pattern[k] { return false }
        return true
    }

    private func tokenizeSegment(_ raw: ArraySlice<Unicode.Scalar>, into out: inout [Int32]) {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: raw)
        let normalized = normalizer.normalize(String(v))
        for word in preTokenizer.split(normalized) { wordPiece(word, into: &out) }
    }

    private func wordPiece(_ word: ArraySlice<Unicode.Scalar>, into out: inout [Int32]) {
        if word.count > maxInputCharsPerWord { out.append(unkId); return }
        // UTF-8 bytes of the word, and the byte offset where each scalar starts.
        var bytes: [UInt8] = []
        var starts: [Int] = []
        bytes.reserveCapacity(word.count * 2 + 2)
        for s in word {
            starts.append(bytes.count)
            for b in UTF8.encode(s)! { bytes.append(b) }
        }
        starts.append(bytes.count)
        let n = word.count
        var pieces: [Int32] = []
        var start = 0
        var key: [UInt8] = []
        key.reserveCapacity(bytes.count + 2)
        while start < n {
            var end = n
            var found: Int32? = nil
            while start < end {
                key.removeAll(keepingCapacity: true)
                if start > 0 { key.append(0x23); key.append(0x23) }
                key.append(contentsOf: bytes[starts[start]..<starts[end]])
                if let id = ids[key] { found = id; break }
                end -= 1
            }
            guard let id = found else { out.append(unkId); return }
            pieces.append(id)
            start = end
        }
        out.append(contentsOf: pieces)
    }

    /// `[CLS] a [SEP]`, or `[CLS] a [SEP] b [SEP]` with type ids 0…0 1…1, truncated longest-first
    /// so the total is at most `maxLength` (HF `TruncationStrategy::LongestFirst`).
    public func encode(_ a: String, pair b: String? = nil, maxLength: Int? = 128) -> BertEncoding {
        build(tokenize(a), b.map { tokenize($0) }, maxLength: maxLength)
    }

    /// Assembles special tokens around already tokenized sequences. `truncateFirstFromLeft` keeps
    /// the end of the first sequence when it is cut (useful for conversations: the last turn
    /// matters most); the reference tokenizer always cuts from the right.
    public func build(_ a: [Int32], _ b: [Int32]?, maxLength: Int?, truncateFirstFromLeft: Bool = false) -> BertEncoding {
        var a = a
        var b = b
        if let maxLength {
            let budget = max(0, maxLength - (b == nil ? 2 : 3))
            if var bb = b {
                var (n1, n2) = Self.longestFirst(a.count, bb.count, budget)
                n1 = min(n1, a.count); n2 = min(n2, bb.count)
                if n1 < a.count { a = truncateFirstFromLeft ? Array(a.suffix(n1)) : Array(a.prefix(n1)) }
                if n2 < bb.count { bb = Array(bb.prefix(n2)) }
                b = bb
            } else if a.count > budget {
                a = truncateFirstFromLeft ? Array(a.suffix(budget)) : Array(a.prefix(budget))
            }
        }
        var ids: [Int32] = [clsId]
        ids.append(contentsOf: a)
        ids.append(sepId)
        var types = [Int32](repeating: 0, count: ids.count)
        if let b {
            ids.append(contentsOf: b)
            ids.append(sepId)
            types.append(contentsOf: repeatElement(1, count: b.count + 1))
        }
        return BertEncoding(ids: ids, typeIds: types)
    }

    /// Lengths to keep of two sequences so that they fit `budget`: the shorter stays whole when
    /// the longer can absorb the cut; otherwise both get half (the longer one the odd token).
    static func longestFirst(_ l1: Int, _ l2: Int, _ budget: Int) -> (Int, Int) {
        if l1 + l2 <= budget { return (l1, l2) }
        let swap = l1 > l2
        var n1 = swap ? l2 : l1
        var n2: Int
        if n1 > budget { n2 = n1 } else { n2 = max(n1, budget - n1) }
        if n1 + n2 > budget {
            n1 = budget / 2
            n2 = n1 + budget % 2
        }
        return swap ? (n2, n1) : (n1, n2)
    }
}
