import Foundation
import Testing
@testable import AlignersEngine
@testable import AlignersSquadModels
import AlignersCore

@Suite(.enabled(if: DecoderTestModel.available, DecoderTestModel.skipMessage))
struct BPETests {
    static func cases() throws -> [(String, [Int])] {
        let j = try Fixtures.json("tokenizer")
        let cases = try #require(j["cases"] as? [[String: Any]])
        return cases.map { ($0["text"] as! String, ($0["ids"] as! [Any]).map { ($0 as! NSNumber).intValue }) }
    }

    @Test func matchesReferenceTokenizer() throws {
        let tok = try #require(DecoderTestModel.tokenizer)
        let cases = try Self.cases()
        #expect(cases.count >= 200)
        var mismatches = 0
        for (text, ids) in cases {
            // The reference parses special-token strings (added tokens), as chat prompts need.
            let ours = tok.encode(text, parseSpecial: true)
            if ours != ids {
                mismatches += 1
                Issue.record("\(text.debugDescription): ours \(ours) reference \(ids)")
            }
        }
        #expect(mismatches == 0)
    }

    @Test func roundTrips() throws {
        let tok = try #require(DecoderTestModel.tokenizer)
        for (text, _) in try Self.cases() {
            #expect(tok.decode(tok.encode(text)) == text)
            #expect(tok.decode(tok.encode(text, parseSpecial: true)) == text)
        }
    }

    @Test func specialTokensOnlyWhenAsked() throws {
        let tok = try #require(DecoderTestModel.tokenizer)
        #expect(tok.encode("<|im_start|>", parseSpecial: true) == [1])
        #expect(tok.encode("<|im_start|>", parseSpecial: false).count > 1)
        #expect(tok.decode([1, 2], skipSpecial: true) == "")
        #expect(tok.eosID == 2 && tok.bosID == 1)
    }

    @Test func rendersChatMLLikeTheTemplate() throws {
        let f = try #require(DecoderTestModel.gguf)
        let tok = try #require(DecoderTestModel.tokenizer)
        let jinja = try #require(f.string("tokenizer.chat_template"))
        let template = try #require(ChatTemplate(jinja: jinja))
        #expect(template.defaultSystem == "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        let j = try Fixtures.json("tokenizer")
        for c in try #require(j["chats"] as? [[String: Any]]) {
            let turns = (c["messages"] as! [[String: String]]).map { Turn(role: $0["role"]!, content: $0["content"]!) }
            let text = template.render(turns)
            #expect(text == c["text"] as? String)
            #expect(tok.encode(text, parseSpecial: true) == (c["ids"] as! [Any]).map { ($0 as! NSNumber).intValue })
        }
    }

    @Test func streamingDecoderHoldsPartialUTF8() {
        var d = StreamingDecoder()
        let bytes = Array("é👍".utf8)  // 2 + 4 bytes
        var out = ""
        for b in bytes { out += d.push([b]) }
        out += d.flush()
        #expect(out == "é👍")
        var d2 = StreamingDecoder()
        #expect(d2.push([0xF0, 0x9F]) == "")
        #expect(d2.push([0x91, 0x8D, 0x41]) == "👍A")
    }
}
