import Foundation
import Testing
@testable import AlignersEngine
@testable import AlignersSquadModels

/// Token ids must equal HF `tokenizers` (the model's tokenizer.json) on the fixture strings,
/// produced by scripts/reference/encoder_reference.py.
@Suite(.enabled(if: EncoderTestSupport.modelAvailable, EncoderTestSupport.skipMessage))
struct WordPieceTests {
    struct Single: Decodable, Sendable, CustomTestStringConvertible {
        var text: String; var ids: [Int32]
        var testDescription: String { String(text.prefix(40).debugDescription) }
    }
    struct Pair: Decodable, Sendable, CustomTestStringConvertible {
        var a: String; var b: String?; var max_length: Int; var ids: [Int32]; var type_ids: [Int32]
        var testDescription: String { "\(a.prefix(20).debugDescription) / \(String((b ?? "-").prefix(20)).debugDescription) @\(max_length)" }
    }
    static let singles = EncoderTestSupport.decode([Single].self, "tokens.json")
    static let pairs = EncoderTestSupport.decode([Pair].self, "pairs.json")

    @Test func fixtureCoversEnoughStrings() { #expect(Self.singles.count >= 200) }

    @Test(arguments: singles)
    func singleStringIdsMatchReference(_ c: Single) throws {
        let tok = try #require(EncoderTestSupport.tokenizer)
        let e = tok.encode(c.text, maxLength: nil)
        #expect(e.ids == c.ids)
        #expect(e.typeIds == Array(repeating: 0, count: c.ids.count))
    }

    @Test(arguments: pairs)
    func pairEncodingAndTruncationMatchReference(_ c: Pair) throws {
        let tok = try #require(EncoderTestSupport.tokenizer)
        let e = tok.encode(c.a, pair: c.b, maxLength: c.max_length)
        #expect(e.ids == c.ids)
        #expect(e.typeIds == c.type_ids)
    }

    @Test func leftTruncationKeepsTheEndOfTheFirstSequence() throws {
        let tok = try #require(EncoderTestSupport.tokenizer)
        let a = tok.tokenize("one two three four five six seven eight nine ten")
        let b = tok.tokenize("yes")
        let e = tok.build(a, b, maxLength: 8, truncateFirstFromLeft: true)
        #expect(e.ids.count == 8)
        #expect(Array(e.ids[1..<5]) == Array(a.suffix(4)))
        #expect(e.typeIds == [0, 0, 0, 0, 0, 0, 1, 1])
    }

    @Test(arguments: [(3, 20, 13, 3, 10), (20, 3, 13, 10, 3), (10, 20, 13, 6, 7), (20, 10, 13, 7, 6), (30, 30, 13, 6, 7), (5, 5, 13, 5, 5), (40, 2, 10, 8, 2)])
    func longestFirstLengths(l1: Int, l2: Int, budget: Int, n1: Int, n2: Int) {
        let r = WordPieceTokenizer.longestFirst(l1, l2, budget)
        #expect(r.0 == n1 && r.1 == n2)
    }
}

@Suite struct BertNormalizerTests {
    @Test(arguments: [("Héllo WÖRLD", "hello world"), ("a\tb\nc", "a b c"), ("中文", " 中  文 "), ("x\u{0}y\u{200B}z", "xyz")])
    func normalizes(input: String, expected: String) {
        var v = String.UnicodeScalarView(); v.append(contentsOf: BertNormalizer().normalize(input))
        #expect(String(v) == expected)
    }
}
