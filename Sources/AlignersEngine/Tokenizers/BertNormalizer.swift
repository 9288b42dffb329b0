import Foundation

/// The normalizer stage of a BERT tokenizer (HF `BertNormalizer` semantics): drop control
/// characters and map whitespace to spaces, put spaces around CJK ideographs, strip accents
/// (canonical decomposition, then drop nonspacing marks), lower-case per code point.
/// Works on Unicode scalars, as the reference does on Rust `char`s.
public struct BertNormalizer: Sendable {
    public var cleanText: Bool
    public var handleChineseChars: Bool
    public var stripAccents: Bool
    public var lowercase: Bool

    /// `stripAccents: nil` follows `lowercase`, as in BertTokenizer.
    public init(cleanText: Bool = true, handleChineseChars: Bool = true, stripAccents: Bool? = nil, lowercase: Bool = true) {
        self.cleanText = cleanText
        self.handleChineseChars = handleChineseChars
        self.stripAccents = stripAccents ?? lowercase
        self.lowercase = lowercase
    }

    public func normalize(_ text: String) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(text.unicodeScalars.count + 8)
        for s in text.unicodeScalars {
            if cleanText {
                if s.value == 0 || s.value == 0xFFFD || Self.isControl(s) { continue }
                if Self.isWhitespace(s) { out.append(" "); continue }
            }
            if handleChineseChars && Self.isChineseChar(s) {
                out.append(" "); out.append(s); out.append(" ")
                continue
            }
            out.append(s)
        }
        if stripAccents {
            var decomposed: [Unicode.Scalar] = []
            decomposed.reserveCapacity(out.count)
            var run = String.UnicodeScalarView()
            // Decompose ASCII-free stretches only: ASCII is already in NFD.
            func flush() {
                if run.isEmpty { return }
                let nfd = String(run).decomposedStringWithCanonicalMapping
                for d in nfd.unicodeScalars where d.properties.generalCategory != .nonspacingMark { decomposed.append(d) }
                run = String.UnicodeScalarView()
            }
            for s in out {
                if s.isASCII { flush(); decomposed.append(s) } else { run.append(s) }
            }
            flush()
            out = decomposed
        }
        if lowercase {
            var lowered: [Unicode.Scalar] = []
            lowered.reserveCapacity(out.count)
            for s in out {
                if s.isASCII {
                    let v = s.value
                    lowered.append((v >= 65 && v <= 90) ? Unicode.Scalar(v + 32)! : s)
                } else {
                    let m = s.properties.lowercaseMapping
                    lowered.append(contentsOf: m.unicodeScalars)
                }
            }
            out = lowered
        }
        return out
    }

    @inline(__always)
    static func isWhitespace(_ s: Unicode.Scalar) -> Bool {
        switch s {
        case "\t", "\n", "\r", " ": return true
        default: return s.value > 127 && s.properties.isWhitespace
        }
    }

    @inline(__always)
    static func isControl(_ s: Unicode.Scalar) -> Bool {
        switch s {
        case "\t", "\n", "\r": return false
        default:
            if s.value >= 32 && s.value < 127 { return false }
            switch s.properties.generalCategory {
            case .control, .format, .unassigned, .privateUse, .surrogate: return true
            default: return false
            }
        }
    }

    @inline(__always)
    static func isChineseChar(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F,
             0x2B740...0x2B81F, 0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F:
            return true
        default: return false
        }
    }
}

/// The pre-tokenizer stage (HF `BertPreTokenizer` semantics): split on whitespace (dropped) and
/// isolate every punctuation character (ASCII punctuation, or Unicode general category P*).
public struct BertPreTokenizer: Sendable {
    public init() {}

    public func split(_ scalars: [Unicode.Scalar]) -> [ArraySlice<Unicode.Scalar>] {
        var words: [ArraySlice<Unicode.Scalar>] = []
        var start = -1
        for i in scalars.indices {
            let s = scalars[i]
            if BertNormalizer.isWhitespace(s) {
                if start >= 0 { words.append(scalars[start..<i]); start = -1 }
            } else if Self.isPunctuation(s) {
                if start >= 0 { words.append(scalars[start..<i]); start = -1 }
                words.append(scalars[i..<(i + 1)])
            } else if start < 0 {
                start = i
            }
        }
        if start >= 0 { words.append(scalars[start..<scalars.count]) }
        return words
    }

    @inline(__always)
    static func isPunctuation(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 128 {
            return (v >= 33 && v <= 47) || (v >= 58 && v <= 64) || (v >= 91 && v <= 96) || (v >= 123 && v <= 126)
        }
        switch s.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            return true
        default: return false
        }
    }
}
