/// Splits text into the words BPE merges within, by the rules a GGUF's `tokenizer.ggml.pre` names.
///
/// `gpt2`/`default`: GPT-2's pattern
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
/// `smollm` (and StarCoder's family): every \p{N} character is first isolated, then GPT-2's
/// pattern applies to the rest. Hand-written over Unicode scalars (no regex engine).
public struct BPEPreTokenizer: Sendable {
    public let name: String
    public let isolateDigits: Bool

    public static let supported = ["gpt2", "default", "smollm", "starcoder", "refact", "codeshell"]

    public init?(name: String) {
        switch name {
        case "gpt2", "default": isolateDigits = false
        case "smollm", "starcoder", "refact", "codeshell": isolateDigits = true
        default: return nil
        }
        self.name = name
    }

    enum Kind { case letter, number, space, other }

    @inline(__always)
    static func kind(_ s: Unicode.Scalar) -> Kind {
        if s.value < 128 {
            let v = s.value
            if (v >= 65 && v <= 90) || (v >= 97 && v <= 122) { return .letter }
            if v >= 48 && v <= 57 { return .number }
            if v == 32 || (v >= 9 && v <= 13) { return .space }
            return .other
        }
        let p = s.properties
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return p.isWhitespace ? .space : .other
        }
    }

    public func split(_ text: Substring) -> [Substring] {
        let scalars = text.unicodeScalars
        var idx: [String.UnicodeScalarView.Index] = []
        var kinds: [Kind] = []
        var chars: [UInt32] = []
        idx.reserveCapacity(scalars.count + 1)
        for i in scalars.indices {
            idx.append(i)
            let s = scalars[i]
            kinds.append(Self.kind(s))
            chars.append(s.value)
        }
        idx.append(scalars.endIndex)
        var out: [Substring] = []
        func emit(_ a: Int, _ b: Int) {
            out.append(Substring(text.unicodeScalars[idx[a]..<idx[b]]))
        }
        if isolateDigits {
            var start = 0
            for i in 0..<kinds.count where kinds[i] == .number {
                if start < i { gpt2(kinds, chars, start, i, emit) }
                emit(i, i + 1)
                start = i + 1
            }
            if start < kinds.count { gpt2(kinds, chars, start, kinds.count, emit) }
        } else {
            gpt2(kinds, chars, 0, kinds.count, emit)
        }
        return out
    }

    private func gpt2(_ k: [Kind], _ c: [UInt32], _ lo: Int, _ hi: Int, _ emit: (Int, Int) -> Void) {
        var i = lo
        let apostrophe: UInt32 = 39
        while i < hi {
            // Contractions: 's 't 're 've 'm 'll 'd (case-sensitive).
            if c[i] == apostrophe && i + 1 < hi {
                let a = c[i + 1]
                if a == 115 || a == 116 || a == 109 || a == 100 { emit(i, i + 2); i += 2; continue } // s t m d
                if i + 2 < hi {
                    let b = c[i + 2]
                    if (a == 114 && b == 101) || (a == 118 && b == 101) || (a == 108 && b == 108) { emit(i, i + 3); i += 3; continue }
                }
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            var j = i
            if c[i] == 32 && i + 1 < hi && k[i + 1] != .space { j = i + 1 }
            let kind = k[j]
            if kind != .space {
                var e = j + 1
                while e < hi && k[e] == kind { e += 1 }
                emit(i, e); i = e; continue
            }
            // `\s+(?!\S)` then `\s+`
            var e = i + 1
            while e < hi && k[e] == .space { e += 1 }
            if e < hi && e - i > 1 { e -= 1 }
            emit(i, e); i = e
        }
    }
}
